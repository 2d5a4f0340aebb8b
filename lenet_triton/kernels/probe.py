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


@triton.jit
def _scaled_sum(values, scale):
    # A nested @triton.jit call that itself calls a triton helper (tl.sum, defined in tl.core's
    # namespace): what the launch's language patch must already cover.
    return tl.sum(values * scale, axis=0)


@triton.jit
def probe_adjustments_kernel(x_ptr, out_ptr, big, SIZE: tl.constexpr):
    offs = tl.arange(0, SIZE)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + 0, _scaled_sum(x, 2.0))
    tl.store(out_ptr + 1, tl.max(x, axis=0) + _scaled_sum(x, 0.5))
    # int32 arithmetic that wraps: the same answer with or without the overflow checks.
    wrapped = (offs.to(tl.int32) + big) * 3 - 1
    tl.store(out_ptr + 2 + offs, wrapped.to(tl.float32))


def probe_adjustments(adjusted: tuple) -> str | None:
    """None when a kernel with a nested call and int32 arithmetic computes what torch does under
    `adjusted`, the interpreter adjustments in effect (lenet_triton.triton_mode), and each took
    effect; else what went wrong."""
    from triton.runtime import interpreter

    x = torch.arange(1, PROBE_SIZE + 1, dtype=torch.float32) * torch.tensor(-1.0) ** torch.arange(PROBE_SIZE)
    big = 2**31 - 5
    out = torch.zeros(2 + PROBE_SIZE, dtype=torch.float32)
    patches = []
    stock_patch = interpreter._stock_patch_lang

    def counted(fn):
        patches.append(fn)
        return stock_patch(fn)

    interpreter._stock_patch_lang = counted
    try:
        probe_adjustments_kernel[(1,)](x, out, big, SIZE=PROBE_SIZE)
    finally:
        interpreter._stock_patch_lang = stock_patch
    wrapped = ((torch.arange(PROBE_SIZE, dtype=torch.int64) + big) * 3 - 1 + 2**31) % 2**32 - 2**31
    expected = torch.cat([torch.stack([(x * 2).sum(), x.max() + (x * 0.5).sum()]), wrapped.float()])
    if not torch.equal(out, expected):
        return f"the probe kernel gave {out.tolist()}, expected {expected.tolist()}"
    # Five nested calls (_scaled_sum twice, tl.sum twice inside it, tl.max), two language modules:
    # tl at the launch, tl.core at the first triton helper.
    if "patch-once" in adjusted and len(patches) != 2:
        return f"the language was patched {len(patches)} times in a launch with five nested calls, not twice"
    if "no-overflow-checks" in adjusted and interpreter.interpreter_builder.options.sanitize_overflow:
        return "the interpreter still computes overflow checks"
    return None
