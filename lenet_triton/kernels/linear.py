"""linear as one tiled matmul kernel: forward with fused bias+ReLU, and the backward's dX, dW and db.

The three passes are the same GEMM with different operands, so one kernel serves them:
    forward  y  = relu(x @ w^T + b)                 A = x,      B = w^T
    dX       dx = gate(dy) @ w                      A = dy,     B = w
    dW, db   dw = gate(dy)^T @ x,  db = rowsum      A = dy^T,   B = x
where gate(dy) zeroes the gradient where the fused ReLU's output was <= 0. Transposes are
stride swaps: nothing is copied.
"""

import triton
import triton.language as tl

from . import config
from .reduce import sum_partials


@triton.jit
def linear_kernel(
    a_ptr, gate_ptr, b_ptr, bias_ptr, c_ptr, rowsum_ptr,
    M, N, K,
    stride_am, stride_ak, stride_gm, stride_gk, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_c_split, STEPS_PER_SPLIT,
    GATE_RELU: tl.constexpr, HAS_BIAS: tl.constexpr, APPLY_RELU: tl.constexpr, ROWSUM: tl.constexpr,
    IDX: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[M, N] = epilogue(gate(A)[M, K] @ B[K, N]).

    gate_ptr    (with GATE_RELU) a tensor shaped like A, addressed by stride_gm/stride_gk; A is
                zeroed where it is <= 0 (torch's threshold_backward).
    bias_ptr    (with HAS_BIAS) N values added to every row; APPLY_RELU then clamps at 0.
    rowsum_ptr  (with ROWSUM) receives sum_k gate(A)[m, k], written by the first column tile.
    program_id(2) picks one of the split-K slices of STEPS_PER_SPLIT * BLOCK_K reduction steps;
    slice s writes to c_ptr + s * stride_c_split and rowsum_ptr + s * M.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2).to(IDX)
    rows = pid_m.to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)
    cols = pid_n.to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)
    row_ok = rows < M
    col_ok = cols < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    row_acc = tl.zeros((BLOCK_M,), dtype=ACC)
    k_begin = split * STEPS_PER_SPLIT * BLOCK_K
    k_end = tl.minimum(k_begin + STEPS_PER_SPLIT * BLOCK_K, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(IDX)
        k_ok = ks < k_end
        a_mask = row_ok[:, None] & k_ok[None, :]
        a_tile = tl.load(a_ptr + (rows * stride_am)[:, None] + (ks * stride_ak)[None, :], mask=a_mask, other=0.0)
        if GATE_RELU:
            gate = tl.load(gate_ptr + (rows * stride_gm)[:, None] + (ks * stride_gk)[None, :], mask=a_mask, other=0.0)
            a_tile = tl.where(gate <= 0, 0.0, a_tile)
        b_tile = tl.load(b_ptr + (ks * stride_bk)[:, None] + (cols * stride_bn)[None, :],
                         mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a_tile, b_tile, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        if ROWSUM:
            row_acc += tl.sum(a_tile.to(ACC), axis=1)

    # Epilogue while the accumulator is still wide: bias, then ReLU (NaN stays NaN, as in torch).
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    if APPLY_RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    c_offs = split * stride_c_split + (rows * stride_cm)[:, None] + (cols * stride_cn)[None, :]
    tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    if ROWSUM:
        if pid_n == 0:
            tl.store(rowsum_ptr + split * M + rows, row_acc.to(rowsum_ptr.dtype.element_ty), mask=row_ok)


def _launch(a, b, c, *, gate=None, bias=None, rowsum=None, apply_relu=False, allow_split=False):
    """c = epilogue(gate(a) @ b) for 2-D views a (M, K), b (K, N), c (M, N); see linear_kernel."""
    (m, k), n = a.shape, b.shape[1]
    bm, bn, bk = config.gemm_tile(m, n, k)
    # At least one column tile: with N = 0 columns it still writes the row sums (the bias gradient).
    tiles = (config.cdiv(m, bm), max(1, config.cdiv(n, bn)))
    splits, steps_per_split = config.split_plan(tiles[0] * tiles[1], k, bk, allow_split)
    c_out, rowsum_out = c, rowsum
    if splits > 1:
        c_out = config.partial_buffer((splits, m, n), c)
        rowsum_out = None if rowsum is None else config.partial_buffer((splits, m), c)
    stride_cm, stride_cn = c_out.stride()[-2:]
    linear_kernel[(tiles[0], tiles[1], splits)](
        a, a if gate is None else gate, b, a if bias is None else bias, c_out, c_out if rowsum is None else rowsum_out,
        m, n, k, *a.stride(), *(a.stride() if gate is None else gate.stride()), *b.stride(), stride_cm, stride_cn,
        m * n, steps_per_split,
        GATE_RELU=gate is not None, HAS_BIAS=bias is not None, APPLY_RELU=apply_relu, ROWSUM=rowsum is not None,
        IDX=config.index_dtype(a, b, c_out, gate), ACC=config.accumulator_dtype(a.dtype),
        DOT_PRECISION=config.dot_precision(a.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        **config.LAUNCH_OPTIONS["linear"],
    )
    if splits > 1:
        sum_partials(c_out, c)
        if rowsum is not None:
            sum_partials(rowsum_out, rowsum)


def linear_forward(x, weight, bias, y, apply_relu):
    """y = x @ weight^T + bias, ReLU'd if apply_relu. x (M, K), weight (N, K), y (M, N)."""
    _launch(x, weight.t(), y, bias=bias, apply_relu=apply_relu)


def linear_grad_input(grad_y, y, weight, dx, gate_relu):
    """dx = gate(grad_y) @ weight, gating by the forward output y when the forward fused a ReLU."""
    _launch(grad_y, weight, dx, gate=y if gate_relu else None)


def linear_grad_weight(grad_y, y, x, dw, db, gate_relu):
    """dw = gate(grad_y)^T @ x into a contiguous dw, and db = the column sums of gate(grad_y) if db is given."""
    _launch(grad_y.t(), x, dw, gate=y.t() if gate_relu else None, rowsum=db, allow_split=True)
