"""Sum of split-K partial buffers: out = partials.sum(0), in the partials' precision, cast on store."""

import triton
import triton.language as tl

from . import config


@triton.jit
def sum_partials_kernel(partial_ptr, out_ptr, SPLITS, NUMEL, IDX: tl.constexpr, BLOCK: tl.constexpr):
    """out[j] = sum_s partial[s, j] for a contiguous (SPLITS, NUMEL) partial buffer and contiguous out."""
    offs = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK).to(IDX)
    mask = offs < NUMEL
    total = tl.load(partial_ptr + offs, mask=mask, other=0.0)
    for s in range(1, SPLITS):
        total += tl.load(partial_ptr + s * NUMEL + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


def sum_partials(partials, out):
    """Reduces contiguous partials of shape (splits, *out.shape) into the contiguous tensor out."""
    numel = out.numel()
    block = config.elementwise_block(numel)
    sum_partials_kernel[(config.cdiv(numel, block),)](
        partials, out, partials.shape[0], numel, IDX=config.index_dtype(partials), BLOCK=block,
        **config.LAUNCH_OPTIONS["reduce"])
