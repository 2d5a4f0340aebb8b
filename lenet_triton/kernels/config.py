"""Launch choices shared by every kernel: block sizes, index width, accumulator type, dot precision.

This file is the one place where block sizes are chosen, through two launch plans (below): Triton's
interpreter (CPU tensors) pays per program instance and per tl op, so its plan launches few, large
programs; the GPU plan uses tiles that fill the streaming multiprocessors and keep registers in check.
"""

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INT32_LIMIT = 2**31 - 1

# Triton's tl.dot needs every tile dimension to be at least 16 on a GPU.
MIN_DOT_TILE = 16

# Passed to triton's compiler by every launch, per kernel file. Given no register limit, ptxas holds a
# kernel's registers at an occupancy step and spills a few bytes to stay there. At its default
# register usage level (5), ptxas 13 (triton 3.9's, which runs it with --regAllocOptLevel=2)
# spilled 8 to 24 bytes in linear and pool kernels that wanted 72 to 168 registers, and at level 6
# or 7 ptxas 12 (triton 3.6's) did so in conv and pool kernels; these levels keep every per-op
# launch in registers on both (the pool kernels, since their tiles became planes by positions, at
# level 4: at 3 both spilled 8 to 24 bytes in the forward with 64-bit offsets, at 6 and 7 ptxas 12 in
# LeNet's layers). The whole-network kernels spilled 4 to 24 bytes at some plan at every
# level on one version or the other; with the limit set to 255 neither spills at any plan (they
# then take up to 255 registers: 2 blocks of 4 warps per SM). bench/rehearsal.py checks every
# launch the public API makes, on both versions.
_PTXAS_REGISTER_LEVEL = {"conv": 5, "linear": 3, "pool": 4, "reduce": 3}
LAUNCH_OPTIONS = {family: {"ptx_options": f"--register-usage-level {level}"}
                  for family, level in _PTXAS_REGISTER_LEVEL.items()}
LAUNCH_OPTIONS["lenet"] = {"maxnreg": 255}

# triton.jit picks interpreter or compiler when each kernel is defined, i.e. when this package is
# imported, so the choice is read once here and stays fixed for the process.
_INTERPRETING = bool(triton.knobs.runtime.interpret)


def interpreting() -> bool:
    """True when the kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETING


# Host-side integer helpers. triton.cdiv and triton.next_power_of_2 go through Triton's constexpr-
# function wrapper, which costs about a microsecond per call; the launchers call these ~100 times
# per LeNet training step, so plain int arithmetic is worth having.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def partial_buffer(shape, like: torch.Tensor) -> torch.Tensor:
    """Split-K partial sums, kept in the accumulator precision until sum_partials reduces them."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.empty(shape, device=like.device, dtype=dtype)


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
# Launch plans: the block sizes, grids and index width each launcher asks for
# ------------------------------------------------------------------------------------------------
#
# Two plans run the same kernel source and differ only in constexpr values and grids. The
# interpreter's launches few, large programs: it pays per program and per tl op far more than per
# element. The GPU's launches tiles that fill an H100's SMs with every value in registers
# (bench/rehearsal.py checks that on the compiler). The plan follows the mode; tests run the GPU plan
# through the interpreter too, with tiles shrunk through its own fields so that small shapes cross
# every tile, program and reduction-step boundary (using_plan).


@dataclass(frozen=True)
class LeNetPlan:
    """How the whole-network kernels split one batch."""
    samples: int            # samples per tile, one tile per program
    programs: int
    tile: dict              # the kernels' tile constexprs
    num_warps: int
    num_stages: int
    reduce_block: int       # parameter elements per program of lenet_reduce_kernel, at most
    loss_block: int         # per-program loss sums that lenet_reduce_kernel adds at a time


def _pow2_tile(extent: int, cap: int) -> int:
    return max(MIN_DOT_TILE, min(cap, next_power_of_2(max(extent, 1))))


def _pow2_sizes(extent: int, cap: int) -> list:
    """The tile sizes to consider for an extent: powers of two from MIN_DOT_TILE to the first one
    that covers it, at most `cap`."""
    sizes = [MIN_DOT_TILE]
    while sizes[-1] < extent and sizes[-1] * 2 <= cap:
        sizes.append(sizes[-1] * 2)
    return sizes


def _plane_tile(planes: int, positions: int, elements: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_Q): whole planes' positions where `elements` allow, then as many planes as fit."""
    block_q = min(elements, next_power_of_2(max(positions, 1)))
    return min(next_power_of_2(max(planes, 1)), max(1, elements // block_q)), block_q


def _index_dtype(tensors, extra: int):
    """tl.int64 when the largest element offset (or element count, or `extra`) that any of the tensors
    can reach passes 2**31 - 1, else tl.int32."""
    largest = extra
    for t in tensors:
        if t is not None and t.numel() > 0:
            span = t.storage_offset() + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
            largest = max(largest, span, t.numel())
    return tl.int64 if largest > INT32_LIMIT else tl.int32


# Plans are compared by identity (eq=False): hashing one is then free, and the launchers' cached
# choices below are keyed on the plan.
_plan_cache = functools.lru_cache(maxsize=4096)


@dataclass(frozen=True, eq=False)
class InterpreterPlan:
    """Tiles sized by what the interpreter pays: a fixed cost per tl op (a program runs a few dozen
    in its prologue and epilogue, and again as many per reduction step) and a cost per element of
    each tile it gathers. The element costs favour tiles that waste few padded rows and reduction
    columns; the op costs favour few programs and steps."""
    # Measured on the 2-core CPU (bench/NOTES.md): about 35 us per tl op, about 20 ns per gathered
    # element (the load's element loop, its pointer and mask arithmetic).
    op_seconds: float = 35e-6
    element_seconds: float = 20e-9
    program_ops: int = 25       # tl ops of a GEMM program outside its reduction loop
    step_ops: int = 30          # tl ops per reduction step
    tile_elements: int = 1 << 20    # Triton's largest tile
    max_cols: int = 256
    fc_rows: int = 64           # samples per chunk of the whole-network kernels' fc layers
    name = "interpreter"

    @_plan_cache
    def gemm_tile(self, rows: int, cols: int, reduction: int) -> tuple[int, int, int]:
        block_n = _pow2_tile(cols, self.max_cols)
        candidates = []
        for block_k in _pow2_sizes(reduction, self.tile_elements // block_n):
            for block_m in _pow2_sizes(rows, self.tile_elements // block_k):
                programs, steps = cdiv(rows, block_m) * cdiv(cols, block_n), max(1, cdiv(reduction, block_k))
                ops = programs * (self.program_ops + steps * self.step_ops)
                elements = programs * (steps * (block_m + block_n) * block_k + block_m * block_n)
                candidates.append((ops * self.op_seconds + elements * self.element_seconds, block_m, block_k))
        _, block_m, block_k = min(candidates)
        return block_m, block_n, block_k

    @_plan_cache
    def split(self, tiles: int, reduction: int, block_k: int, allow_split: bool) -> tuple[int, int]:
        return 1, max(1, cdiv(reduction, block_k))

    def elementwise_block(self, numel: int) -> int:
        return min(self.tile_elements, next_power_of_2(max(numel, 1)))

    def plane_tile(self, planes: int, positions: int) -> tuple[int, int]:
        return _plane_tile(planes, positions, self.tile_elements)

    def index_dtype(self, tensors, extra: int):
        # As on a GPU: int32 where the offsets fit. The kernels' integer arguments arrive as int32, so
        # int64 offsets would cost a cast per operation (and int32 arithmetic no overflow check, with
        # triton_mode's "no-overflow-checks").
        return _index_dtype(tensors, extra)

    @_plan_cache
    def lenet(self, batch: int, in_channels: int, dtype: torch.dtype) -> LeNetPlan:
        # One program for the whole batch. Each chunk a whole stage where the element budget allows:
        # conv1's reduction in one step, and as many rows as then fit. In float64 conv1's weight
        # gradient sums a (16 channels, rows, reduction) product instead of a tl.dot (lenet.py),
        # which must fit the budget too.
        samples = next_power_of_2(batch)
        block_k1 = max(MIN_DOT_TILE, next_power_of_2(in_channels * 25))
        row_budget = self.tile_elements // block_k1 // (16 if dtype == torch.float64 else 1)
        block_r1 = min(next_power_of_2(samples * 196), row_budget)
        tile = dict(SAMPLES=samples, FC_ROWS=max(MIN_DOT_TILE, min(samples, self.fc_rows)), BLOCK_R1=block_r1,
                    BLOCK_K1=block_k1, BLOCK_R2=max(MIN_DOT_TILE, min(next_power_of_2(samples * 25), 4096)),
                    BLOCK_K2=256, FC_BK=512, FC_BN=128)
        return LeNetPlan(samples, 1, tile, num_warps=1, num_stages=1, reduce_block=1 << 16, loss_block=1)


# The whole-network kernels' chunks on a GPU. Each GEMM runs in chunks small enough that a compiled
# kernel keeps every value in registers (no spills) within the 255 per thread, and its shared
# memory stays under half an SM's, so that two blocks of 4 warps are resident per SM
# (bench/results/kernels-sm90.md has the compiled figures, bench/rehearsal.py checks them).
_GPU_LENET_TILE = (("FC_ROWS", 16), ("BLOCK_R1", 32), ("BLOCK_K1", 16), ("BLOCK_R2", 32), ("BLOCK_K2", 16),
                   ("FC_BK", 16), ("FC_BN", 64))


@dataclass(frozen=True, eq=False)
class GpuPlan:
    """Tiles that fill an H100, and 32-bit offsets wherever they fit."""
    gemm_tile_caps: tuple = (64, 64, 32)    # (rows, cols, reduction) of the implicit-GEMM and matmul kernels
    elementwise_block_cap: int = 1024       # elements per program of the pool, ReLU-gate and split-K sum kernels
    # Split-K target: enough programs to keep every SM busy when the output tile grid is small (two
    # blocks on each of an H100's 132 SMs). The whole-network kernels take at most this many
    # programs, each tile a power of two of samples (batch 256: 256 programs of 1 sample; 4096: 256
    # of 16; 65,536: 256 of 256).
    min_programs: int = 264
    lenet_programs: int = 264
    lenet_tile: tuple = _GPU_LENET_TILE
    lenet_warps: int = 4
    lenet_stages: int = 1
    reduce_block: int = 1024                # parameter elements per program of lenet_reduce_kernel
    name = "gpu"

    @_plan_cache
    def gemm_tile(self, rows: int, cols: int, reduction: int) -> tuple[int, int, int]:
        return tuple(_pow2_tile(extent, cap) for extent, cap in zip((rows, cols, reduction), self.gemm_tile_caps))

    @_plan_cache
    def split(self, tiles: int, reduction: int, block_k: int, allow_split: bool) -> tuple[int, int]:
        steps = max(1, cdiv(reduction, block_k))
        splits = 1
        if allow_split:
            wanted = cdiv(self.min_programs, max(tiles, 1))
            # Each slice keeps at least 4 reduction steps, so partial sums stay worth their bytes.
            splits = max(1, min(wanted, steps // 4))
        steps_per_split = cdiv(steps, splits)
        return cdiv(steps, steps_per_split), steps_per_split

    def elementwise_block(self, numel: int) -> int:
        return min(self.elementwise_block_cap, next_power_of_2(max(numel, 1)))

    def plane_tile(self, planes: int, positions: int) -> tuple[int, int]:
        return _plane_tile(planes, positions, self.elementwise_block_cap)

    def index_dtype(self, tensors, extra: int):
        return _index_dtype(tensors, extra)

    @_plan_cache
    def lenet(self, batch: int, in_channels: int, dtype: torch.dtype) -> LeNetPlan:
        samples = next_power_of_2(cdiv(batch, self.lenet_programs))
        return LeNetPlan(samples, cdiv(batch, samples), dict(self.lenet_tile, SAMPLES=samples),
                         num_warps=self.lenet_warps, num_stages=self.lenet_stages, reduce_block=self.reduce_block,
                         loss_block=next_power_of_2(self.lenet_programs))


INTERPRETER_PLAN = InterpreterPlan()
GPU_PLAN = GpuPlan()
_plan = INTERPRETER_PLAN if _INTERPRETING else GPU_PLAN


def active_plan():
    """The plan the launchers follow now: INTERPRETER_PLAN under the interpreter, else GPU_PLAN."""
    return _plan


@contextlib.contextmanager
def using_plan(plan):
    """Inside the block the launchers follow `plan` (an InterpreterPlan or a GpuPlan). Tests use it to
    run the GPU plan through the interpreter; the kernels are the same either way."""
    global _plan
    if not isinstance(plan, (InterpreterPlan, GpuPlan)):
        raise TypeError(f"using_plan: plan must be an InterpreterPlan or a GpuPlan, got {type(plan).__name__}")
    saved, _plan = _plan, plan
    try:
        yield plan
    finally:
        _plan = saved


def gemm_tile(rows: int, cols: int, reduction: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for a GEMM of rows x cols reducing over `reduction`."""
    return _plan.gemm_tile(rows, cols, reduction)


def split_plan(tiles: int, reduction: int, block_k: int, allow_split: bool = True) -> tuple[int, int]:
    """(splits, steps_per_split): how many slices to cut a long reduction into, so that small
    outputs still fill a GPU, and how many BLOCK_K steps each slice takes. An empty reduction is
    one slice of one (masked) step, so the kernel still writes its output."""
    return _plan.split(tiles, reduction, block_k, allow_split)


def elementwise_block(numel: int) -> int:
    """Elements per program of the one-dimensional elementwise kernels (split-K sums)."""
    return _plan.elementwise_block(numel)


def plane_tile(planes: int, positions: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_Q) of the kernels that tile (N * C planes) x (positions in a plane): pooling
    and the ReLU gate."""
    return _plan.plane_tile(planes, positions)


def index_dtype(*tensors: torch.Tensor, extra: int = 0):
    """The integer type of every offset: tl.int64 when some element offset (or `extra`, a row count)
    can pass 2**31 - 1, else tl.int32, under either plan."""
    return _plan.index_dtype(tensors, extra)


def lenet_plan(batch: int, in_channels: int, dtype: torch.dtype) -> LeNetPlan:
    """How the whole-network kernels split a batch of `dtype` images: samples per program, programs,
    chunk sizes."""
    return _plan.lenet(batch, in_channels, dtype)
