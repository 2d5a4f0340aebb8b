"""Small kernels with each hazard that only a real launch meets, sent through bench.rehearsal's
stand-in driver: each must be refused there, as a GPU would refuse it, while a sound kernel passes
and reports its resources. tests/test_rehearsal.py runs this as its own process (the kernels must
be defined for the compiler). Prints one line per case, "ok" or "FAIL", then the count of failures.
"""

import sys

from bench import rehearsal  # first: it sets TRITON_INTERPRET=0 before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

PLAIN_INT = 4


@triton.jit
def sound_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)


@triton.jit
def argument_named_params_kernel(params, y_ptr):
    # The binder that JITFunction.run generates has a local named `params`.
    tl.store(y_ptr, tl.load(params[0]))


@triton.jit
def plain_int_global_kernel(x_ptr):
    tl.store(x_ptr + tl.arange(0, PLAIN_INT), 1.0)


@triton.jit
def huge_shared_memory_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    # A dot of 128x128 fp32 tiles, software-pipelined in 4 stages: 512 KB of shared memory, over 227.
    rows, cols = tl.arange(0, BLOCK), tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    for k in range(0, 4096, BLOCK):
        a = tl.load(a_ptr + rows[:, None] * 4096 + (k + cols)[None, :])
        b = tl.load(b_ptr + (k + rows)[:, None] * BLOCK + cols[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rows[:, None] * BLOCK + cols[None, :], acc)


def cases():
    x, y = torch.empty(1000), torch.empty(1000)
    return {
        "sound kernel": (lambda: sound_kernel[(4,)](x, y, 1000, BLOCK=256), None),
        "argument named params": (lambda: argument_named_params_kernel[(1,)]((x,), y), "failed to specialize"),
        "undeclared keyword": (lambda: sound_kernel[(4,)](x, y, 1000, BLOCK=256, BLOCK_KD=32),
                               "Keyword argument BLOCK_KD"),
        "plain-int global": (lambda: plain_int_global_kernel[(1,)](x), "global variable"),
        "too many threads": (lambda: sound_kernel[(4,)](x, y, 1000, BLOCK=2048, num_warps=64), "threads"),
        "too much shared memory": (lambda: huge_shared_memory_kernel[(1,)](
            torch.empty(128, 4096), torch.empty(4096, 128), torch.empty(128, 128), BLOCK=128, num_stages=4),
            "shared memory"),
    }


def main() -> int:
    failures = 0
    with rehearsal.rehearsal():
        for name, (launch, expected_error) in cases().items():
            compiled, error = None, None
            try:
                compiled = launch()  # kernel[grid](...) returns triton's CompiledKernel
            except Exception as raised:  # each case reports what it raised
                error = f"{type(raised).__name__}: {raised}"
            if expected_error is None:
                good = error is None and compiled.n_regs > 0 and compiled.n_spills == 0
                detail = error or f"{compiled.n_regs} registers, {compiled.metadata.shared} bytes of shared memory"
            else:
                good = error is not None and expected_error.lower() in error.lower()
                detail = (error or "no error").splitlines()[0][:200]
            failures += not good
            print(f"{'ok  ' if good else 'FAIL'} {name}: {detail}", flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
