"""A small kernel that calls triton's own @jit helpers, so lenet_triton.triton_mode can check that
they run under the interpreter after rebuilding them."""

import torch
import triton
import triton.language as tl

PROBE_SIZE = 16


@triton.jit
def probe_helpers_kernel(x_ptr, out_ptr, SIZE: tl.constexpr):
    offs = tl.arange(0, SIZE)
    x = tl.zeros((SIZE,), dtype=tl.float32) + tl.load(x_ptr + offs)
    tl.store(out_ptr + 0, tl.sum(x, axis=0))
    tl.store(out_ptr + 1, x.sum(axis=0))
    tl.store(out_ptr + 2, tl.max(x, axis=0))
    tl.store(out_ptr + 3, tl.min(x, axis=0))
    tl.store(out_ptr + 4, tl.cdiv(SIZE + 1, 2))


def probe_helpers() -> str | None:
    """None when the helpers compute what torch does on a small vector, else what differed."""
    x = torch.arange(1, PROBE_SIZE + 1, dtype=torch.float32) * torch.tensor(-1.0) ** torch.arange(PROBE_SIZE)
    out = torch.zeros(5, dtype=torch.float32)
    probe_helpers_kernel[(1,)](x, out, SIZE=PROBE_SIZE)
    expected = torch.tensor([x.sum(), x.sum(), x.max(), x.min(), (PROBE_SIZE + 2) // 2])
    if torch.equal(out, expected):
        return None
    return f"tl.sum, tensor.sum, tl.max, tl.min, tl.cdiv gave {out.tolist()}, expected {expected.tolist()}"
