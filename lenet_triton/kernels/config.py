"""Launch choices shared by every kernel: block sizes, index width, accumulator type, dot precision.

This file is the one place where block sizes are chosen. Triton's interpreter (CPU tensors) pays
per program instance, so there we launch few, large programs; on a GPU we use tiles that fill the
streaming multiprocessors and keep registers in check.
"""

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INT32_LIMIT = 2**31 - 1

# Triton's tl.dot needs every tile dimension to be at least 16 on a GPU.
MIN_DOT_TILE = 16

# GPU tile caps for the implicit-GEMM and matmul kernels, as (rows, cols, reduction).
_GPU_GEMM_TILE = (64, 64, 32)
# Under the interpreter each tl op costs a fixed Python overhead (about 0.3 ms) plus numpy time per
# element; on the 2-core CPU a LeNet training step ran fastest with tiles of Triton's largest size
# (2**20 elements: 1.8 s at batch 64, against 2.3 s with 2**17).
_INTERPRETER_TILE_ELEMENTS = 1 << 20
_INTERPRETER_MAX_COLS = 256

# Elements per program for the elementwise-style kernels (pooling, split-K reduction).
_GPU_ELEMENTWISE_BLOCK = 1024
_INTERPRETER_ELEMENTWISE_BLOCK = _INTERPRETER_TILE_ELEMENTS

# Split-K target: enough programs to keep every SM busy when the output tile grid is small.
_GPU_MIN_PROGRAMS = 264

# Passed to triton's compiler by every launch, per kernel file. Given no register limit, ptxas holds a
# kernel's registers at an occupancy step and spills a few bytes to stay there. At its default
# register usage level (5), ptxas 13 (triton 3.9's, which runs it with --regAllocOptLevel=2)
# spilled 8 to 24 bytes in linear and pool kernels that wanted 72 to 168 registers, and at level 6
# or 7 ptxas 12 (triton 3.6's) did so in conv and pool kernels; these levels keep every per-op
# launch in registers on both. The whole-network kernels spilled 4 to 24 bytes at some plan at every
# level on one version or the other; with the limit set to 255 neither spills at any plan (they
# then take up to 255 registers: 2 blocks of 4 warps per SM). bench/rehearsal.py checks every
# launch the public API makes, on both versions.
_PTXAS_REGISTER_LEVEL = {"conv": 5, "linear": 3, "pool": 3, "reduce": 3}
LAUNCH_OPTIONS = {family: {"ptx_options": f"--register-usage-level {level}"}
                  for family, level in _PTXAS_REGISTER_LEVEL.items()}
LAUNCH_OPTIONS["lenet"] = {"maxnreg": 255}

# triton.jit picks interpreter or compiler when each kernel is defined, i.e. when this package is
# imported, so the choice is read once here and stays fixed for the process.
_INTERPRETING = bool(triton.knobs.runtime.interpret)


def interpreting() -> bool:
    """True when the kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETING


# Which launch plan the launchers choose: the interpreter's few large programs, or the GPU's tiles.
# It follows the mode; tests set it to False under the interpreter to run the GPU plan on the CPU.
_INTERPRETER_PLAN = _INTERPRETING


def _interpreter_plan() -> bool:
    return _INTERPRETER_PLAN


# Host-side integer helpers. triton.cdiv and triton.next_power_of_2 go through Triton's constexpr-
# function wrapper, which costs about a microsecond per call; the launchers call these ~100 times
# per LeNet training step, so plain int arithmetic is worth having.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _pow2_tile(extent: int, cap: int) -> int:
    return max(MIN_DOT_TILE, min(cap, next_power_of_2(max(extent, 1))))


# The plans below are pure functions of their arguments and the module's settings (which tests
# patch), cached on both: a training step asks for the same few shapes every time.
_plan_cache = functools.lru_cache(maxsize=4096)


def gemm_tile(rows: int, cols: int, reduction: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for a GEMM of rows x cols reducing over `reduction`."""
    return _gemm_tile(rows, cols, reduction, _interpreter_plan())


@_plan_cache
def _gemm_tile(rows: int, cols: int, reduction: int, interpreter_plan: bool) -> tuple[int, int, int]:
    if not interpreter_plan:
        return tuple(_pow2_tile(extent, cap) for extent, cap in zip((rows, cols, reduction), _GPU_GEMM_TILE))
    # Interpreter: the whole reduction in as few steps as the element budget allows, then as many
    # rows as still fit, so most launches are a handful of programs.
    block_n = _pow2_tile(cols, _INTERPRETER_MAX_COLS)
    block_k = _pow2_tile(reduction, _INTERPRETER_TILE_ELEMENTS // max(block_n, MIN_DOT_TILE))
    block_m = _pow2_tile(rows, _INTERPRETER_TILE_ELEMENTS // max(block_k, block_n))
    return block_m, block_n, block_k


def split_plan(tiles: int, reduction: int, block_k: int, allow_split: bool = True) -> tuple[int, int]:
    """(splits, steps_per_split): how many slices to cut a long reduction into, so that small
    outputs still fill a GPU, and how many BLOCK_K steps each slice takes. An empty reduction is
    one slice of one (masked) step, so the kernel still writes its output."""
    return _split_plan(tiles, reduction, block_k, allow_split, _interpreter_plan(), _GPU_MIN_PROGRAMS)


@_plan_cache
def _split_plan(tiles, reduction, block_k, allow_split, interpreter_plan, min_programs) -> tuple[int, int]:
    steps = max(1, cdiv(reduction, block_k))
    splits = 1
    if allow_split and not interpreter_plan:
        wanted = cdiv(min_programs, max(tiles, 1))
        # Each slice keeps at least 4 reduction steps, so partial sums stay worth their bytes.
        splits = max(1, min(wanted, steps // 4))
    steps_per_split = cdiv(steps, splits)
    return cdiv(steps, steps_per_split), steps_per_split


def partial_buffer(shape, like: torch.Tensor) -> torch.Tensor:
    """Split-K partial sums, kept in the accumulator precision until sum_partials reduces them."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.empty(shape, device=like.device, dtype=dtype)


def elementwise_block(numel: int) -> int:
    cap = _INTERPRETER_ELEMENTWISE_BLOCK if _interpreter_plan() else _GPU_ELEMENTWISE_BLOCK
    return min(cap, next_power_of_2(max(numel, 1)))


def index_dtype(*tensors: torch.Tensor, extra: int = 0):
    """tl.int64 when some element offset (or `extra`, a row count) can pass 2**31 - 1, else tl.int32.

    The interpreter always gets tl.int64: it checks every int32 add and mul for overflow through
    int64 temporaries (several numpy passes per op), and skips that check for int64.
    """
    if _interpreter_plan():
        return tl.int64
    largest = extra
    for t in tensors:
        if t is not None and t.numel() > 0:
            span = t.storage_offset() + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
            largest = max(largest, span, t.numel())
    return tl.int64 if largest > INT32_LIMIT else tl.int32


_ACCUMULATOR = {torch.float64: tl.float64}


def accumulator_dtype(dtype: torch.dtype):
    """Sums run in float32, or float64 for float64 inputs (so gradcheck sees float64 arithmetic)."""
    return _ACCUMULATOR.get(dtype, tl.float32)


def dot_precision(dtype: torch.dtype) -> str:
    """The tl.dot input precision, following torch's own switch so both sides use one precision.

    float32 operands use TF32 only when torch.backends.cuda.matmul.allow_tf32 is on (off by default).
    The switch is read straight from torch._C: the attribute goes through a Python __getattr__ that
    costs ten times as much, and the launchers ask once per launch.
    """
    if dtype == torch.float32 and torch._C._get_cublas_allow_tf32():
        return "tf32"
    return "ieee"


# ------------------------------------------------------------------------------------------------
# Whole-network LeNet kernels (kernels/lenet.py)
# ------------------------------------------------------------------------------------------------

# GPU: one tile per program, as many programs as two blocks on every SM of an H100 take (at most
# 264), each tile a power of two of samples (batch 256: 256 programs of 1 sample; 4096: 256 of 16;
# 65,536: 256 of 256). Each GEMM runs in chunks small enough that a compiled kernel keeps every
# value in registers (no spills) within the 255 per thread, and its shared memory stays under half
# an SM's, so that two blocks of 4 warps are resident per SM (bench/results/kernels-sm90.md has the
# compiled figures, bench/rehearsal.py checks them).
_GPU_LENET_PROGRAMS = _GPU_MIN_PROGRAMS
_GPU_LENET_TILE = dict(FC_ROWS=16, BLOCK_R1=32, BLOCK_K1=16, BLOCK_R2=32, BLOCK_K2=16, BLOCK_KD=16, FC_BK=16,
                       FC_BN=64)
_GPU_LENET_WARPS = 4
_GPU_LENET_STAGES = 1
_GPU_REDUCE_BLOCK = 1024
# Interpreter: one program for the whole batch, each stage in as few, large tl ops as the element
# budget allows.
_INTERPRETER_FC_ROWS = 64


@dataclass(frozen=True)
class LeNetPlan:
    samples: int            # samples per tile, one tile per program
    programs: int
    tile: dict              # the kernels' tile constexprs
    num_warps: int
    num_stages: int
    reduce_block: int       # parameter elements per program of lenet_reduce_kernel


def lenet_plan(batch: int, in_channels: int, dtype: torch.dtype) -> LeNetPlan:
    """How the whole-network kernels split a batch of `dtype` images: samples per program, programs,
    chunk sizes."""
    if _interpreter_plan():
        samples = next_power_of_2(batch)
        # Each chunk a whole stage where the element budget allows: conv1's reduction in one step,
        # and as many rows as then fit. In float64 conv1's weight gradient sums a (16 channels,
        # rows, reduction) product instead of a tl.dot (lenet.py), which must fit the budget too.
        block_k1 = max(MIN_DOT_TILE, next_power_of_2(in_channels * 25))
        row_budget = _INTERPRETER_TILE_ELEMENTS // block_k1 // (16 if dtype == torch.float64 else 1)
        block_r1 = min(next_power_of_2(samples * 196), row_budget)
        tile = dict(FC_ROWS=max(MIN_DOT_TILE, min(samples, _INTERPRETER_FC_ROWS)), BLOCK_R1=block_r1,
                    BLOCK_K1=block_k1, BLOCK_R2=max(MIN_DOT_TILE, min(next_power_of_2(samples * 25), 4096)),
                    BLOCK_K2=256, BLOCK_KD=max(MIN_DOT_TILE, min(512, _INTERPRETER_TILE_ELEMENTS // block_r1)),
                    FC_BK=512, FC_BN=128)
        return LeNetPlan(samples, 1, dict(tile, SAMPLES=samples), num_warps=1, num_stages=1, reduce_block=1 << 16)
    samples = next_power_of_2(cdiv(batch, _GPU_LENET_PROGRAMS))
    return LeNetPlan(samples, cdiv(batch, samples), dict(_GPU_LENET_TILE, SAMPLES=samples),
                     num_warps=_GPU_LENET_WARPS, num_stages=_GPU_LENET_STAGES, reduce_block=_GPU_REDUCE_BLOCK)
