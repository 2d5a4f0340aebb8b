"""Compiles every kernel, in the configurations the launchers use, to a Hopper (sm_90) cubin.

Runs as its own process (tests/test_gpu_compile.py starts it) because the kernels must be defined
with Triton's compiler rather than its interpreter, and no GPU is needed: Triton compiles ahead of
time for a named target. This catches what the interpreter lets through, such as non-power-of-two
ranges, tl.dot size limits, or globals that are not constexpr.
"""

import inspect
import itertools
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lenet_triton.kernels import config, conv, linear, pool, reduce  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
TRITON_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                torch.int64: "i64"}


def compile_kernel(kernel, pointer_dtypes, constexprs, index=tl.int32):
    """Compiles kernel with every *_ptr typed by pointer_dtypes (name -> torch dtype; default: the
    first entry) and every other non-constexpr argument a 32- or 64-bit int, following `index`."""
    params = list(inspect.signature(kernel.fn).parameters)
    default_dtype = next(iter(pointer_dtypes.values()))
    scalar = "i64" if index == tl.int64 else "i32"
    signature = {}
    for name in params:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + TRITON_NAMES[pointer_dtypes.get(name, default_dtype)]
        else:
            signature[name] = scalar
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(params.index(k),): v for k, v in constexprs.items()})
    triton.compile(source, target=TARGET)


def gemm(rows, cols, red):
    bm, bn, bk = config.gemm_tile(rows, cols, red)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)


def configurations():
    """(name, kernel, pointer dtypes, constexprs) for each compiled variant: every flag combination
    in float32, all flags on in the other dtypes, and 64-bit offsets once per kernel family."""
    lenet = gemm(64 * 28 * 28, 6, 25)
    for dtype, flags in itertools.chain(
            ((torch.float32, f) for f in itertools.product([False, True], repeat=2)),
            ((d, (True, True)) for d in (torch.float16, torch.bfloat16, torch.float64))):
        common = dict(IDX=tl.int32, ACC=config.accumulator_dtype(dtype), DOT_PRECISION=config.dot_precision(dtype))
        a, b = flags
        yield ("conv2d_forward", conv.conv2d_forward_kernel, {"x_ptr": dtype},
               dict(HAS_BIAS=a, APPLY_RELU=b, **common, **lenet))
        yield ("conv2d_grad_input", conv.conv2d_grad_input_kernel, {"g_ptr": dtype},
               dict(GATE_RELU=a, UNIT_STRIDE=b, **common, **gemm(64 * 14 * 14, 6, 400)))
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        yield ("conv2d_grad_weight", conv.conv2d_grad_weight_kernel, {"g_ptr": dtype, "dw_ptr": acc, "db_ptr": acc},
               dict(GATE_RELU=a, HAS_BIAS=b, **common, **gemm(16, 150, 6400)))
        for gate, rowsum in {(False, False), (a, b)}:
            yield ("linear", linear.linear_kernel, {"a_ptr": dtype, "rowsum_ptr": acc},
                   dict(GATE_RELU=gate, HAS_BIAS=a, APPLY_RELU=b, ROWSUM=rowsum, **common, **gemm(256, 120, 400)))
        if flags == (True, True):
            yield ("max_pool2d_forward", pool.max_pool2d_forward_kernel, {"x_ptr": dtype, "idx_ptr": torch.int64},
                   dict(IDX=tl.int32, BLOCK=config.elementwise_block(1 << 20)))
            yield ("max_pool2d_backward", pool.max_pool2d_backward_kernel, {"g_ptr": dtype, "idx_ptr": torch.int64},
                   dict(IDX=tl.int32, ACC=common["ACC"], BLOCK=config.elementwise_block(1 << 20)))
            yield ("sum_partials", reduce.sum_partials_kernel, {"partial_ptr": acc, "out_ptr": dtype},
                   dict(IDX=tl.int32, BLOCK=config.elementwise_block(1 << 20)))
    common = dict(IDX=tl.int64, ACC=tl.float32, DOT_PRECISION="ieee")
    yield ("conv2d_forward int64", conv.conv2d_forward_kernel, {"x_ptr": torch.float32},
           dict(HAS_BIAS=True, APPLY_RELU=True, **common, **lenet))
    yield ("linear int64", linear.linear_kernel, {"a_ptr": torch.float32},
           dict(GATE_RELU=True, HAS_BIAS=True, APPLY_RELU=True, ROWSUM=True, **common, **gemm(256, 120, 400)))
    yield ("max_pool2d_backward int64", pool.max_pool2d_backward_kernel, {"g_ptr": torch.float32,
                                                                          "idx_ptr": torch.int64},
           dict(IDX=tl.int64, ACC=tl.float32, BLOCK=config.elementwise_block(1 << 20)))


def main():
    assert not config.interpreting(), "this check needs the kernels defined for the compiler"
    failures = 0
    for name, kernel, pointers, constexprs in configurations():
        flags = ",".join([str(next(iter(pointers.values())))] +
                         [f"{k}={v}" for k, v in constexprs.items() if not k.startswith("BLOCK")])
        try:
            compile_kernel(kernel, pointers, constexprs, constexprs["IDX"])
            print(f"ok   {name} [{flags}]", flush=True)
        except Exception as error:  # report every failing variant, not only the first
            failures += 1
            print(f"FAIL {name} [{flags}]: {type(error).__name__}: {error}", flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
