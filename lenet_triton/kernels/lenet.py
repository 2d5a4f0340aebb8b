"""Whole-network LeNet kernels: the forward in one launch, the backward in two, a training step in two.

LeNet here is the tutorial's: conv1 (C_IN->6, 5x5) + ReLU + 2x2 max-pool, conv2 (6->16, 5x5) + ReLU
+ 2x2 max-pool, fc1 400->120 + ReLU, fc2 120->84 + ReLU, fc3 84->NUM_CLASSES, on 32x32 images.

Each program owns one tile of SAMPLES consecutive samples and walks it layer by layer, one stage per
layer. Between stages the activations go through global memory (on a GPU mostly through L2): a
program reads back only what it wrote itself, so a `tl.debug_barrier()` between stages is all the
ordering it needs, and no program waits for another.

- Conv and pool are fused: a pooled output is the max over its 2x2 window of four convolutions,
  computed as four implicit GEMMs (one per window offset q), so the conv output never exists.
  The winning offset (0..3, the first maximum, NaN winning as in torch) is kept as an int8 for
  the backward.
- The backward never computes the images' gradient. Each program writes its tile's weight
  gradients to its own row of a partial buffer, then `lenet_reduce_kernel` adds the rows in a
  fixed order: the result repeats exactly, run to run, with no atomics. The same kernel can apply
  an SGD or Adam update as it goes, which is what makes a training step two launches.
- Every GEMM runs in chunks (BLOCK_*, FC_* below) that config.lenet_plan sizes so that a compiled
  kernel keeps every value in registers with two blocks resident per SM; the interpreter's plan
  makes each chunk a whole stage instead.
- Each stage is a function call (noinline) that finds its tile from the program id and the kernel's
  own arguments, so nothing computed lives across a call and each stage's registers are its own.
  Inlined, the compiler kept index tensors that several stages compute alike in registers across
  the whole kernel: the training kernel reached 255 registers and spilled, while its largest stage
  alone needs about 110 to 190. A stage addresses its tile from scalar 64-bit base pointers with
  32-bit offsets inside the tile, so a 2-D tile of offsets costs one register per element, not two.

Per-sample rows (offsets in elements), one row per sample of the batch:
    activations (model dtype): pool1 (6, 14, 14) | flat = pool2 (16, 5, 5) | h1 (120) | h2 (84)
    window winners (int8):     pool1's (6, 14, 14) | pool2's (16, 5, 5)
    gradient scratch (ACC):    dconv2 (16, 10, 10) | dpool1 (6, 14, 14) | dflat (400) | dh1 (120) | dh2 (84)
                               | dlogits (NC)
Parameters are passed as a tuple (conv1.weight, conv1.bias, conv2.weight, ..., fc3.bias), all
contiguous; param_offsets gives each one's place in a partial row.

Shared arguments:
    batch             samples in the batch; program p's tile is samples [p * SAMPLES, (p + 1) * SAMPLES).
    C_IN, NC          input channels and classes.
    SAMPLES           samples per tile (per program).
    FC_ROWS           rows (samples) per chunk of the fc GEMMs and the loss, at least 16.
    BLOCK_R1/R2       rows (sample x pooled position) per conv1 / conv2 GEMM chunk.
    BLOCK_K1          reduction chunk of conv1 and its weight gradient ((c, kh, kw): C_IN*25).
    BLOCK_K2          reduction chunk of conv2 and its weight gradient ((i, kh, kw): 150).
    FC_BK, FC_BN      reduction and output chunks of the fc GEMMs.
    TOTAL             elements of a partial row (every parameter's gradient).
    GRAD_STRIDE       elements per sample of the gradient scratch (GRAD_SCRATCH_FIXED + NC).
    ACC               accumulator type; DOT_PRECISION the tl.dot input precision.
"""

import torch
import triton
import triton.language as tl

from . import config

# Per-sample layouts (see the module docstring).
POOL1_AT = tl.constexpr(0)
FLAT_AT = tl.constexpr(1176)
H1_AT = tl.constexpr(1576)
H2_AT = tl.constexpr(1696)
ACT_STRIDE = tl.constexpr(1780)
WIN1_AT = tl.constexpr(0)
WIN2_AT = tl.constexpr(1176)
WIN_STRIDE = tl.constexpr(1576)
DCONV2_AT = tl.constexpr(0)
DPOOL1_AT = tl.constexpr(1600)
DFLAT_AT = tl.constexpr(2776)
DH1_AT = tl.constexpr(3176)
DH2_AT = tl.constexpr(3296)
DLOGITS_AT = tl.constexpr(3380)

# Every module-level value a kernel reads must be a constexpr: the compiler refuses plain globals.
NUM_PARAMS = tl.constexpr(10)
# Columns of the optimizer's hyperparameter table, one row per parameter (float64).
SGD_FIELDS = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
ADAM_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay")
HYPER_FIELDS = tl.constexpr(len(SGD_FIELDS))  # == len(ADAM_FIELDS)


# ---------------------------------------------------------------------------------------------
# Stages: each is one layer (forward or backward) of the running program's tile
# ---------------------------------------------------------------------------------------------

@triton.jit
def _relu(v):
    # torch's relu: NaN stays NaN.
    return tl.where(v <= 0, 0.0, v)


@triton.jit
def _pool_update(v, best, best_q, q):
    # torch's max-pool rule: a strictly larger value or a NaN takes the window.
    better = (v > best) | (v != v)
    return tl.where(better, v, best), tl.where(better, q, best_q)


@triton.jit
def _tile(batch, SAMPLES: tl.constexpr):
    """(first sample as int64, samples in the tile) of the running program."""
    first = tl.program_id(0) * SAMPLES
    return first.to(tl.int64), tl.minimum(SAMPLES, batch - first)


@triton.jit(noinline=True)
def _conv1_pool_forward(x_ptr, w_ptr, b_ptr, act_ptr, win_ptr, batch,
                        C_IN: tl.constexpr, SAMPLES: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr,
                        ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """pool1 = maxpool(relu(conv1(x))): rows are (sample, pooled position in 14x14), columns the 6
    channels (padded to 16), the reduction (c, kh, kw)."""
    first, n_valid = _tile(batch, SAMPLES)
    x_tile = x_ptr + first * (C_IN * 1024)
    act_tile, win_tile = act_ptr + first * ACT_STRIDE, win_ptr + first * WIN_STRIDE
    cols = tl.arange(0, 16)
    col_ok = cols < 6
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    for r0 in range(0, SAMPLES * 196, BLOCK_R1):
        rows = r0 + tl.arange(0, BLOCK_R1)
        s, p = rows // 196, rows % 196
        row_ok = (rows < SAMPLES * 196) & (s < n_valid)
        # The image pixel under tap (0, 0) of window offset 0; offset q moves it by (q // 2, q % 2).
        corner = s * (C_IN * 1024) + (p // 14) * 64 + (p % 14) * 2
        best = tl.full((BLOCK_R1, 16), float("-inf"), ACC)
        best_q = tl.zeros((BLOCK_R1, 16), tl.int32)
        for q in tl.static_range(4):
            acc = tl.zeros((BLOCK_R1, 16), ACC)
            for k0 in range(0, C_IN * 25, BLOCK_K1):
                ks = k0 + tl.arange(0, BLOCK_K1)
                k_ok = ks < C_IN * 25
                tap = (ks // 25) * 1024 + ((ks % 25) // 5) * 32 + ks % 5
                patch = tl.load(x_tile + (corner + (q // 2) * 32 + q % 2)[:, None] + tap[None, :],
                                mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_ptr + cols[None, :] * (C_IN * 25) + ks[:, None], mask=k_ok[:, None] & col_ok[None, :],
                            other=0.0)
                acc = tl.dot(patch, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
            best, best_q = _pool_update(_relu(acc + bias[None, :]), best, best_q, q)
        mask = row_ok[:, None] & col_ok[None, :]
        tl.store(act_tile + (s * ACT_STRIDE + POOL1_AT + p)[:, None] + cols[None, :] * 196,
                 best.to(act_tile.dtype.element_ty), mask=mask)
        tl.store(win_tile + (s * WIN_STRIDE + WIN1_AT + p)[:, None] + cols[None, :] * 196, best_q.to(tl.int8),
                 mask=mask)


@triton.jit(noinline=True)
def _conv2_pool_forward(w_ptr, b_ptr, act_ptr, win_ptr, batch,
                        SAMPLES: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_K2: tl.constexpr,
                        ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """flat = maxpool(relu(conv2(pool1))) in torch.flatten's order (channel, y, x): rows are
    (sample, pooled position in 5x5), columns the 16 channels, the reduction (i, kh, kw) = 150."""
    first, n_valid = _tile(batch, SAMPLES)
    act_tile, win_tile = act_ptr + first * ACT_STRIDE, win_ptr + first * WIN_STRIDE
    cols = tl.arange(0, 16)
    bias = tl.load(b_ptr + cols).to(ACC)
    for r0 in range(0, SAMPLES * 25, BLOCK_R2):
        rows = r0 + tl.arange(0, BLOCK_R2)
        s, p = rows // 25, rows % 25
        row_ok = (rows < SAMPLES * 25) & (s < n_valid)
        corner = s * ACT_STRIDE + POOL1_AT + (p // 5) * 28 + (p % 5) * 2
        best = tl.full((BLOCK_R2, 16), float("-inf"), ACC)
        best_q = tl.zeros((BLOCK_R2, 16), tl.int32)
        for q in tl.static_range(4):
            acc = tl.zeros((BLOCK_R2, 16), ACC)
            for k0 in range(0, 150, BLOCK_K2):
                ks = k0 + tl.arange(0, BLOCK_K2)
                k_ok = ks < 150
                tap = (ks // 25) * 196 + ((ks % 25) // 5) * 14 + ks % 5
                patch = tl.load(act_tile + (corner + (q // 2) * 14 + q % 2)[:, None] + tap[None, :],
                                mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_ptr + cols[None, :] * 150 + ks[:, None], mask=k_ok[:, None], other=0.0)
                acc = tl.dot(patch, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
            best, best_q = _pool_update(_relu(acc + bias[None, :]), best, best_q, q)
        tl.store(act_tile + (s * ACT_STRIDE + FLAT_AT + p)[:, None] + cols[None, :] * 25,
                 best.to(act_tile.dtype.element_ty), mask=row_ok[:, None])
        tl.store(win_tile + (s * WIN_STRIDE + WIN2_AT + p)[:, None] + cols[None, :] * 25, best_q.to(tl.int8),
                 mask=row_ok[:, None])


@triton.jit(noinline=True)
def _fc_forward(in_ptr, w_ptr, b_ptr, out_ptr, batch,
                IN_STRIDE: tl.constexpr, IN_AT: tl.constexpr, OUT_STRIDE: tl.constexpr, OUT_AT: tl.constexpr,
                K: tl.constexpr, N: tl.constexpr, RELU: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                FC_BK: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """out[row, OUT_AT:OUT_AT + N] = act(in[row, IN_AT:IN_AT + K] @ W^T + b) for the tile's rows (row
    strides IN_STRIDE and OUT_STRIDE), W (N, K) row-major."""
    first, n_valid = _tile(batch, SAMPLES)
    in_tile, out_tile = in_ptr + first * IN_STRIDE + IN_AT, out_ptr + first * OUT_STRIDE + OUT_AT
    for r0 in range(0, SAMPLES, FC_ROWS):
        rows = r0 + tl.arange(0, FC_ROWS)
        row_ok = rows < n_valid
        for n0 in range(0, N, FC_BN):
            cols = n0 + tl.arange(0, FC_BN)
            col_ok = cols < N
            acc = tl.zeros((FC_ROWS, FC_BN), ACC)
            for k0 in range(0, K, FC_BK):
                ks = k0 + tl.arange(0, FC_BK)
                k_ok = ks < K
                a = tl.load(in_tile + rows[:, None] * IN_STRIDE + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0)
                w = tl.load(w_ptr + cols[None, :] * K + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
            if RELU:
                acc = _relu(acc)
            tl.store(out_tile + rows[:, None] * OUT_STRIDE + cols[None, :], acc.to(out_tile.dtype.element_ty),
                     mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(noinline=True)
def _cross_entropy(grad_ptr, labels_ptr, batch, inv_batch, GRAD_STRIDE: tl.constexpr, NC: tl.constexpr,
                   SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr):
    """Overwrites the tile's logits (the gradient scratch's dlogits) with d(mean cross-entropy)/d(logits)
    = (softmax - onehot) / batch and returns the tile's summed loss. A label outside [0, NC) makes
    that sample's loss NaN."""
    first, n_valid = _tile(batch, SAMPLES)
    logits_tile, labels_tile = grad_ptr + first * GRAD_STRIDE + DLOGITS_AT, labels_ptr + first
    total = tl.zeros((), ACC)
    for r0 in range(0, SAMPLES, FC_ROWS):
        rows = r0 + tl.arange(0, FC_ROWS)
        row_ok = rows < n_valid
        labels = tl.load(labels_tile + rows, mask=row_ok, other=0)
        # Online log-sum-exp over chunks of classes, so any number of classes fits.
        row_max = tl.full((FC_ROWS,), float("-inf"), ACC)
        row_sum = tl.zeros((FC_ROWS,), ACC)
        label_logit = tl.zeros((FC_ROWS,), ACC)
        for n0 in range(0, NC, FC_BN):
            cols = n0 + tl.arange(0, FC_BN)
            mask = row_ok[:, None] & (cols < NC)[None, :]
            x = tl.load(logits_tile + rows[:, None] * GRAD_STRIDE + cols[None, :], mask=mask,
                        other=float("-inf")).to(ACC)
            # Rows past the batch see zeros, not -inf - -inf (NaN, masked out anyway, but noisy).
            x = tl.where(row_ok[:, None], x, 0.0)
            new_max = tl.maximum(row_max, tl.max(x, axis=1))
            row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
            row_max = new_max
            label_logit += tl.sum(tl.where(cols[None, :] == labels[:, None], x, 0.0), axis=1)
        label_ok = (labels >= 0) & (labels < NC)
        loss = tl.where(label_ok, row_max + tl.log(row_sum) - label_logit, float("nan"))
        for n0 in range(0, NC, FC_BN):
            cols = n0 + tl.arange(0, FC_BN)
            mask = row_ok[:, None] & (cols < NC)[None, :]
            at = rows[:, None] * GRAD_STRIDE + cols[None, :]
            x = tl.load(logits_tile + at, mask=mask, other=0.0).to(ACC)
            grad = tl.exp(x - row_max[:, None]) / row_sum[:, None] - tl.where(cols[None, :] == labels[:, None],
                                                                                1.0, 0.0)
            grad = tl.where(label_ok[:, None], grad, float("nan")) * inv_batch
            tl.store(logits_tile + at, grad.to(logits_tile.dtype.element_ty), mask=mask)
        total += tl.sum(tl.where(row_ok, loss, 0.0), axis=0)
    return total


@triton.jit(noinline=True)
def _fc_backward(dout_ptr, in_ptr, w_ptr, din_ptr, partial_ptr, batch,
                 DOUT_STRIDE: tl.constexpr, DOUT_AT: tl.constexpr, IN_STRIDE: tl.constexpr, IN_AT: tl.constexpr,
                 DIN_STRIDE: tl.constexpr, DIN_AT: tl.constexpr, W_AT: tl.constexpr, B_AT: tl.constexpr,
                 TOTAL: tl.constexpr, K: tl.constexpr, N: tl.constexpr, INPUT_GRAD: tl.constexpr,
                 SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr,
                 ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """For y = in @ W^T + b with dout = dL/dy (already through y's ReLU): writes the tile's dout^T @ in
    and column sums of dout to the program's partial row (at W_AT and B_AT), and with INPUT_GRAD
    writes din = (dout @ W) * (in > 0), the gradient through the ReLU that produced `in`. The GEMMs
    take their operands in the model's dtype (tensor cores for half types); the sums stay in ACC."""
    first, n_valid = _tile(batch, SAMPLES)
    dout_tile, in_tile = dout_ptr + first * DOUT_STRIDE + DOUT_AT, in_ptr + first * IN_STRIDE + IN_AT
    partial_row = partial_ptr + tl.program_id(0).to(tl.int64) * TOTAL
    for n0 in range(0, N, FC_BN):
        outs = n0 + tl.arange(0, FC_BN)
        out_ok = outs < N
        bias_grad = tl.zeros((FC_BN,), ACC)
        for r0 in range(0, SAMPLES, FC_ROWS):
            rows = r0 + tl.arange(0, FC_ROWS)
            dout_t = tl.load(dout_tile + rows[None, :] * DOUT_STRIDE + outs[:, None],
                             mask=out_ok[:, None] & (rows < n_valid)[None, :], other=0.0)
            bias_grad += tl.sum(dout_t.to(ACC), axis=1)
        tl.store(partial_row + B_AT + outs, bias_grad, mask=out_ok)
        for k0 in range(0, K, FC_BK):
            ks = k0 + tl.arange(0, FC_BK)
            k_ok = ks < K
            dw = tl.zeros((FC_BN, FC_BK), ACC)
            for r0 in range(0, SAMPLES, FC_ROWS):
                rows = r0 + tl.arange(0, FC_ROWS)
                row_ok = rows < n_valid
                dout_t = tl.load(dout_tile + rows[None, :] * DOUT_STRIDE + outs[:, None],
                                 mask=out_ok[:, None] & row_ok[None, :], other=0.0)
                a = tl.load(in_tile + rows[:, None] * IN_STRIDE + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                            other=0.0)
                dw = tl.dot(dout_t.to(a.dtype), a, dw, input_precision=DOT_PRECISION, out_dtype=ACC)
            tl.store(partial_row + W_AT + outs[:, None] * K + ks[None, :], dw, mask=out_ok[:, None] & k_ok[None, :])
    if INPUT_GRAD:
        din_tile = din_ptr + first * DIN_STRIDE + DIN_AT
        for r0 in range(0, SAMPLES, FC_ROWS):
            rows = r0 + tl.arange(0, FC_ROWS)
            row_ok = rows < n_valid
            for k0 in range(0, K, FC_BK):
                ks = k0 + tl.arange(0, FC_BK)
                k_ok = ks < K
                acc = tl.zeros((FC_ROWS, FC_BK), ACC)
                for n0 in range(0, N, FC_BN):
                    outs = n0 + tl.arange(0, FC_BN)
                    out_ok = outs < N
                    dout = tl.load(dout_tile + rows[:, None] * DOUT_STRIDE + outs[None, :],
                                   mask=row_ok[:, None] & out_ok[None, :], other=0.0)
                    w = tl.load(w_ptr + outs[:, None] * K + ks[None, :], mask=out_ok[:, None] & k_ok[None, :],
                                other=0.0)
                    acc = tl.dot(dout.to(w.dtype), w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
                mask = row_ok[:, None] & k_ok[None, :]
                a = tl.load(in_tile + rows[:, None] * IN_STRIDE + ks[None, :], mask=mask, other=0.0)
                # torch's threshold_backward: blocked where the ReLU's output is <= 0 (NaN passes).
                tl.store(din_tile + rows[:, None] * DIN_STRIDE + ks[None, :], tl.where(a <= 0, 0.0, acc), mask=mask)


@triton.jit(noinline=True)
def _conv2_backward(act_ptr, win_ptr, grad_ptr, partial_ptr, batch, W_AT: tl.constexpr, B_AT: tl.constexpr,
                    TOTAL: tl.constexpr, GRAD_STRIDE: tl.constexpr, SAMPLES: tl.constexpr, BLOCK_R2: tl.constexpr,
                    BLOCK_K2: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """From dflat (already through pool2's ReLU): writes the dense dconv2, zero except at each
    window's winner (rows (sample, pooled position in 5x5), columns the 16 channels), then conv2's
    weight gradient from it (rows (sample, output position in 10x10)) and its bias gradient, to
    the program's partial row."""
    first, n_valid = _tile(batch, SAMPLES)
    act_tile, win_tile = act_ptr + first * ACT_STRIDE, win_ptr + first * WIN_STRIDE
    grad_tile = grad_ptr + first * GRAD_STRIDE
    partial_row = partial_ptr + tl.program_id(0).to(tl.int64) * TOTAL
    cols = tl.arange(0, 16)
    bias_grad = tl.zeros((16,), ACC)
    for r0 in range(0, SAMPLES * 25, BLOCK_R2):
        rows = r0 + tl.arange(0, BLOCK_R2)
        s, p = rows // 25, rows % 25
        row_ok = (rows < SAMPLES * 25) & (s < n_valid)
        g = tl.load(grad_tile + (s * GRAD_STRIDE + DFLAT_AT + p)[:, None] + cols[None, :] * 25,
                    mask=row_ok[:, None], other=0.0)
        winner = tl.load(win_tile + (s * WIN_STRIDE + WIN2_AT + p)[:, None] + cols[None, :] * 25,
                         mask=row_ok[:, None], other=0)
        bias_grad += tl.sum(g, axis=0)
        corner = s * GRAD_STRIDE + DCONV2_AT + (p // 5) * 20 + (p % 5) * 2
        for q in tl.static_range(4):
            tl.store(grad_tile + (corner + (q // 2) * 10 + q % 2)[:, None] + cols[None, :] * 100,
                     tl.where(winner == q, g, 0.0), mask=row_ok[:, None])
    tl.store(partial_row + B_AT + cols, bias_grad)
    tl.debug_barrier()
    # dW2 (16, 150) = dconv2^T @ patches, over conv2's 10x10 output positions.
    for k0 in range(0, 150, BLOCK_K2):
        ks = k0 + tl.arange(0, BLOCK_K2)
        k_ok = ks < 150
        tap = (ks // 25) * 196 + ((ks % 25) // 5) * 14 + ks % 5
        acc = tl.zeros((16, BLOCK_K2), ACC)
        for r0 in range(0, SAMPLES * 100, BLOCK_R2):
            rows = r0 + tl.arange(0, BLOCK_R2)
            s, p = rows // 100, rows % 100
            row_ok = (rows < SAMPLES * 100) & (s < n_valid)
            # dconv2 as (channel, row): the GEMM's left operand, loaded transposed.
            g_t = tl.load(grad_tile + cols[:, None] * 100 + (s * GRAD_STRIDE + DCONV2_AT + p)[None, :],
                          mask=row_ok[None, :], other=0.0)
            patch = tl.load(act_tile + (s * ACT_STRIDE + POOL1_AT + (p // 10) * 14 + p % 10)[:, None] + tap[None, :],
                            mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(g_t.to(patch.dtype), patch, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        tl.store(partial_row + W_AT + cols[:, None] * 150 + ks[None, :], acc, mask=k_ok[None, :])


@triton.jit(noinline=True)
def _conv1_backward(x_ptr, w2_ptr, act_ptr, win_ptr, grad_ptr, partial_ptr, batch, W_AT: tl.constexpr,
                    B_AT: tl.constexpr, TOTAL: tl.constexpr, GRAD_STRIDE: tl.constexpr, C_IN: tl.constexpr,
                    SAMPLES: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr,
                    ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dpool1 = conv2's input gradient from the dense dconv2 (rows (sample, position in 14x14),
    columns the 6 channels, reduction over (kh, kw) taps of the 16 conv2 channels each), through
    pool1's ReLU, into the scratch; then conv1's weight gradient, chunk by chunk of its reduction,
    and its bias gradient, into the program's partial row."""
    first, n_valid = _tile(batch, SAMPLES)
    x_tile, grad_tile = x_ptr + first * (C_IN * 1024), grad_ptr + first * GRAD_STRIDE
    act_tile, win_tile = act_ptr + first * ACT_STRIDE, win_ptr + first * WIN_STRIDE
    partial_row = partial_ptr + tl.program_id(0).to(tl.int64) * TOTAL
    cols = tl.arange(0, 16)
    col_ok = cols < 6
    bias_grad = tl.zeros((16,), ACC)
    for r0 in range(0, SAMPLES * 196, BLOCK_R1):
        rows = r0 + tl.arange(0, BLOCK_R1)
        s, p = rows // 196, rows % 196
        y, x = p // 14, p % 14
        row_ok = (rows < SAMPLES * 196) & (s < n_valid)
        dconv_at = s * GRAD_STRIDE + DCONV2_AT + y * 10 + x
        outs = tl.arange(0, 16)  # conv2's output channels
        dpool1 = tl.zeros((BLOCK_R1, 16), ACC)
        # One tap of conv2's kernel per step, all 16 of its channels at once: whether the tap reaches
        # a dconv2 position depends on the row alone, so the masks and offsets stay row vectors.
        for tap in range(0, 25):
            kh, kw = tap // 5, tap % 5
            inside = row_ok & (y >= kh) & (y < kh + 10) & (x >= kw) & (x < kw + 10)
            dconv = tl.load(grad_tile + (dconv_at - (kh * 10 + kw))[:, None] + outs[None, :] * 100,
                            mask=inside[:, None], other=0.0)
            w = tl.load(w2_ptr + outs[:, None] * 150 + cols[None, :] * 25 + tap, mask=col_ok[None, :], other=0.0)
            dpool1 = tl.dot(dconv.to(w.dtype), w, dpool1, input_precision=DOT_PRECISION, out_dtype=ACC)
        mask = row_ok[:, None] & col_ok[None, :]
        pool1 = tl.load(act_tile + (s * ACT_STRIDE + POOL1_AT + p)[:, None] + cols[None, :] * 196, mask=mask,
                        other=0.0)
        g = tl.where(pool1 <= 0, 0.0, dpool1)
        bias_grad += tl.sum(g, axis=0)
        tl.store(grad_tile + (s * GRAD_STRIDE + DPOOL1_AT + p)[:, None] + cols[None, :] * 196, g, mask=mask)
    tl.store(partial_row + B_AT + cols, bias_grad, mask=col_ok)
    tl.debug_barrier()
    # dW1 (6, C_IN*25) = sum over windows q of G_q^T @ patch_q, G_q the gradient where q won.
    for k0 in range(0, C_IN * 25, BLOCK_K1):
        ks = k0 + tl.arange(0, BLOCK_K1)
        k_ok = ks < C_IN * 25
        tap = (ks // 25) * 1024 + ((ks % 25) // 5) * 32 + ks % 5
        acc = tl.zeros((16, BLOCK_K1), ACC)
        for r0 in range(0, SAMPLES * 196, BLOCK_R1):
            rows = r0 + tl.arange(0, BLOCK_R1)
            s, p = rows // 196, rows % 196
            row_ok = (rows < SAMPLES * 196) & (s < n_valid)
            # The gradient and winners as (channel, row): the GEMM's left operand, loaded transposed.
            mask_t = col_ok[:, None] & row_ok[None, :]
            g_t = tl.load(grad_tile + cols[:, None] * 196 + (s * GRAD_STRIDE + DPOOL1_AT + p)[None, :], mask=mask_t,
                          other=0.0)
            winner_t = tl.load(win_tile + cols[:, None] * 196 + (s * WIN_STRIDE + WIN1_AT + p)[None, :], mask=mask_t,
                               other=0)
            corner = s * (C_IN * 1024) + (p // 14) * 64 + (p % 14) * 2
            for q in tl.static_range(4):
                patch = tl.load(x_tile + (corner + (q // 2) * 32 + q % 2)[:, None] + tap[None, :],
                                mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                grad_q_t = tl.where(winner_t == q, g_t, 0.0).to(patch.dtype)
                if ACC == tl.float64:
                    # triton 3.6 cannot compile a float64 tl.dot whose operand an int8 mask selects
                    # (it asks for a wider MMA operand than float64 has): the same sum on the FMA units.
                    acc += tl.sum(grad_q_t[:, :, None] * patch[None, :, :], axis=1)
                else:
                    acc = tl.dot(grad_q_t, patch, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        tl.store(partial_row + W_AT + cols[:, None] * (C_IN * 25) + ks[None, :], acc,
                 mask=col_ok[:, None] & k_ok[None, :])


@triton.jit
def _forward_stages(x_ptr, parameters, logits_ptr, act_ptr, win_ptr, batch,
                    LOGITS_STRIDE: tl.constexpr, LOGITS_AT: tl.constexpr, C_IN: tl.constexpr, NC: tl.constexpr,
                    SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr,
                    BLOCK_R2: tl.constexpr, BLOCK_K2: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr,
                    ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Every layer of the program's tile; the logits go to logits_ptr (row stride LOGITS_STRIDE, from
    column LOGITS_AT)."""
    _conv1_pool_forward(x_ptr, parameters[0], parameters[1], act_ptr, win_ptr, batch, C_IN, SAMPLES, BLOCK_R1,
                        BLOCK_K1, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _conv2_pool_forward(parameters[2], parameters[3], act_ptr, win_ptr, batch, SAMPLES, BLOCK_R2, BLOCK_K2, ACC,
                        DOT_PRECISION)
    tl.debug_barrier()
    _fc_forward(act_ptr, parameters[4], parameters[5], act_ptr, batch, ACT_STRIDE, FLAT_AT, ACT_STRIDE, H1_AT,
                400, 120, True, SAMPLES, FC_ROWS, FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_forward(act_ptr, parameters[6], parameters[7], act_ptr, batch, ACT_STRIDE, H1_AT, ACT_STRIDE, H2_AT,
                120, 84, True, SAMPLES, FC_ROWS, FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_forward(act_ptr, parameters[8], parameters[9], logits_ptr, batch, ACT_STRIDE, H2_AT, LOGITS_STRIDE, LOGITS_AT,
                84, NC, False, SAMPLES, FC_ROWS, FC_BK, FC_BN, ACC, DOT_PRECISION)


@triton.jit
def _backward_stages(x_ptr, parameters, dout_ptr, act_ptr, win_ptr, grad_ptr, partial_ptr, batch,
                     DOUT_STRIDE: tl.constexpr, DOUT_AT: tl.constexpr, offsets: tl.constexpr,
                     TOTAL: tl.constexpr, GRAD_STRIDE: tl.constexpr, C_IN: tl.constexpr, NC: tl.constexpr,
                     SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr,
                     BLOCK_R2: tl.constexpr, BLOCK_K2: tl.constexpr, FC_BK: tl.constexpr,
                     FC_BN: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Every parameter gradient of the program's tile, into its partial row, from the logits' gradient
    at dout_ptr (row stride DOUT_STRIDE, from column DOUT_AT)."""
    _fc_backward(dout_ptr, act_ptr, parameters[8], grad_ptr, partial_ptr, batch, DOUT_STRIDE, DOUT_AT,
                 ACT_STRIDE, H2_AT, GRAD_STRIDE, DH2_AT, offsets[8], offsets[9], TOTAL, 84, NC, True, SAMPLES, FC_ROWS,
                 FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_backward(grad_ptr, act_ptr, parameters[6], grad_ptr, partial_ptr, batch, GRAD_STRIDE, DH2_AT, ACT_STRIDE,
                 H1_AT, GRAD_STRIDE, DH1_AT, offsets[6], offsets[7], TOTAL, 120, 84, True, SAMPLES, FC_ROWS, FC_BK,
                 FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_backward(grad_ptr, act_ptr, parameters[4], grad_ptr, partial_ptr, batch, GRAD_STRIDE, DH1_AT, ACT_STRIDE,
                 FLAT_AT, GRAD_STRIDE, DFLAT_AT, offsets[4], offsets[5], TOTAL, 400, 120, True, SAMPLES, FC_ROWS,
                 FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _conv2_backward(act_ptr, win_ptr, grad_ptr, partial_ptr, batch, offsets[2], offsets[3], TOTAL, GRAD_STRIDE,
                    SAMPLES, BLOCK_R2, BLOCK_K2, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _conv1_backward(x_ptr, parameters[2], act_ptr, win_ptr, grad_ptr, partial_ptr, batch, offsets[0], offsets[1],
                    TOTAL, GRAD_STRIDE, C_IN, SAMPLES, BLOCK_R1, BLOCK_K1, ACC, DOT_PRECISION)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def lenet_forward_kernel(x_ptr, parameters, logits_ptr, act_ptr, win_ptr, batch,
                         C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                         BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_R2: tl.constexpr,
                         BLOCK_K2: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    """Logits (batch, NC) of images x (batch, C_IN, 32, 32). The activations and window winners stay in
    act/win (batch rows) for the backward."""
    _forward_stages(x_ptr, parameters, logits_ptr, act_ptr, win_ptr, batch, NC, 0, C_IN, NC, SAMPLES, FC_ROWS,
                    BLOCK_R1, BLOCK_K1, BLOCK_R2, BLOCK_K2, FC_BK, FC_BN, ACC, DOT_PRECISION)


@triton.jit
def lenet_backward_kernel(x_ptr, parameters, dlogits_ptr, act_ptr, win_ptr, grad_ptr, partial_ptr, batch,
                          offsets: tl.constexpr, TOTAL: tl.constexpr, GRAD_STRIDE: tl.constexpr,
                          C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                          BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_R2: tl.constexpr,
                          BLOCK_K2: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr,
                          ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Per-program partial parameter gradients (one row of TOTAL per program) from dlogits (batch, NC)
    and the forward's act/win; grad is a gradient scratch of batch rows."""
    _backward_stages(x_ptr, parameters, dlogits_ptr, act_ptr, win_ptr, grad_ptr, partial_ptr, batch, NC, 0, offsets,
                     TOTAL, GRAD_STRIDE, C_IN, NC, SAMPLES, FC_ROWS, BLOCK_R1, BLOCK_K1, BLOCK_R2, BLOCK_K2,
                     FC_BK, FC_BN, ACC, DOT_PRECISION)


@triton.jit
def lenet_train_kernel(x_ptr, labels_ptr, parameters, steps, act_ptr, win_ptr, grad_ptr, partial_ptr, loss_partial_ptr,
                       batch, inv_batch, offsets: tl.constexpr, TOTAL: tl.constexpr, GRAD_STRIDE: tl.constexpr,
                       INCREMENT_STEPS: tl.constexpr, C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr,
                       FC_ROWS: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_K1: tl.constexpr,
                       BLOCK_R2: tl.constexpr, BLOCK_K2: tl.constexpr, FC_BK: tl.constexpr,
                       FC_BN: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Forward, mean cross-entropy and backward of the program's tile, every intermediate in act/win/grad
    (batch rows): a partial gradient row and a partial loss sum per program. With INCREMENT_STEPS,
    program 0 adds 1 to every Adam step count (the update, a later launch, reads them)."""
    pid = tl.program_id(0)
    if INCREMENT_STEPS:
        if pid == 0:
            for i in tl.static_range(NUM_PARAMS):
                tl.store(steps[i], tl.load(steps[i]) + 1)
    _forward_stages(x_ptr, parameters, grad_ptr, act_ptr, win_ptr, batch, GRAD_STRIDE, DLOGITS_AT, C_IN, NC, SAMPLES,
                    FC_ROWS, BLOCK_R1, BLOCK_K1, BLOCK_R2, BLOCK_K2, FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    loss = _cross_entropy(grad_ptr, labels_ptr, batch, inv_batch, GRAD_STRIDE, NC, SAMPLES, FC_ROWS, FC_BN, ACC)
    tl.store(loss_partial_ptr + pid, loss)
    tl.debug_barrier()
    _backward_stages(x_ptr, parameters, grad_ptr, act_ptr, win_ptr, grad_ptr, partial_ptr, batch, GRAD_STRIDE,
                     DLOGITS_AT, offsets, TOTAL, GRAD_STRIDE, C_IN, NC, SAMPLES, FC_ROWS, BLOCK_R1, BLOCK_K1, BLOCK_R2,
                     BLOCK_K2, FC_BK, FC_BN, ACC, DOT_PRECISION)


@triton.jit
def lenet_reduce_kernel(partial_ptr, programs, loss_partial_ptr, loss_ptr, inv_batch, grads, parameters, state1, state2,
                        steps, hyper_ptr, sizes: tl.constexpr, offsets: tl.constexpr, TOTAL: tl.constexpr,
                        ROW: tl.constexpr, LOSS_STRIDE: tl.constexpr, UPDATE: tl.constexpr, MOMENTUM: tl.constexpr,
                        HAS_LOSS: tl.constexpr, INCREMENT_STEPS: tl.constexpr, ACC: tl.constexpr,
                        BLOCKS: tl.constexpr, LOSS_BLOCK: tl.constexpr):
    """Sums the partial rows (`programs` of them, ROW elements apart), in order, into each parameter's
    gradient: program (b, i) owns elements [b * BLOCKS[i], (b + 1) * BLOCKS[i]) of parameter i.
    UPDATE "none" stores the gradient in grads[i]; "sgd" and "adam" apply torch.optim's update to
    parameters[i] in place instead, with state1/state2 = momentum_buffer / (exp_avg, exp_avg_sq) and
    steps the Adam step counts, and the hyperparameters in row i of hyper (see SGD_FIELDS,
    ADAM_FIELDS). MOMENTUM[i] is 0 for no momentum buffer, 1 to update it, 2 to start it (torch's
    first step copies the gradient). HAS_LOSS: program (0, 0) also writes the mean loss from the
    loss sums (LOSS_STRIDE elements apart). INCREMENT_STEPS (with UPDATE "none", ahead of a later
    update): program (0, 0) adds 1 to every Adam step count."""
    block, seg = tl.program_id(0), tl.program_id(1)
    if INCREMENT_STEPS:
        if (block == 0) & (seg == 0):
            for i in tl.static_range(NUM_PARAMS):
                tl.store(steps[i], tl.load(steps[i]) + 1)
    for i in tl.static_range(NUM_PARAMS):
        if seg == i:
            BLOCK: tl.constexpr = BLOCKS[i]
            offs = block * BLOCK + tl.arange(0, BLOCK)
            mask = offs < sizes[i]
            grad = tl.zeros((BLOCK,), ACC)
            for p in range(0, programs):
                grad += tl.load(partial_ptr + p * ROW + offsets[i] + offs, mask=mask, other=0.0)
            if UPDATE == "none":
                tl.store(grads[i] + offs, grad.to(grads[i].dtype.element_ty), mask=mask)
            else:
                hyper = hyper_ptr + i * HYPER_FIELDS
                param = tl.load(parameters[i] + offs, mask=mask, other=0.0).to(ACC)
                lr = tl.load(hyper + 0)
                grad += tl.load(hyper + 4).to(ACC) * param
                if UPDATE == "sgd":
                    if MOMENTUM[i] != 0:
                        momentum = tl.load(hyper + 1).to(ACC)
                        if MOMENTUM[i] == 2:
                            buf = grad
                        else:
                            buf = tl.load(state1[i] + offs, mask=mask, other=0.0).to(ACC) * momentum \
                                + (1 - tl.load(hyper + 2)).to(ACC) * grad
                        tl.store(state1[i] + offs, buf.to(state1[i].dtype.element_ty), mask=mask)
                        grad = tl.where(tl.load(hyper + 3) != 0, grad + momentum * buf, buf)
                    param -= lr.to(ACC) * grad
                else:
                    beta1, beta2 = tl.load(hyper + 1), tl.load(hyper + 2)
                    exp_avg = tl.load(state1[i] + offs, mask=mask, other=0.0).to(ACC)
                    exp_avg_sq = tl.load(state2[i] + offs, mask=mask, other=0.0).to(ACC)
                    exp_avg += (1 - beta1).to(ACC) * (grad - exp_avg)
                    exp_avg_sq = exp_avg_sq * beta2.to(ACC) + (1 - beta2).to(ACC) * grad * grad
                    step = tl.load(steps[i]).to(tl.float64)
                    # Python's beta ** step in float64, as torch computes the bias corrections.
                    correction1 = 1 - tl.exp(step * tl.log(beta1))
                    correction2 = 1 - tl.exp(step * tl.log(beta2))
                    denom = tl.sqrt(exp_avg_sq) / tl.sqrt(correction2).to(ACC) + tl.load(hyper + 3).to(ACC)
                    param -= (lr / correction1).to(ACC) * (exp_avg / denom)
                    tl.store(state1[i] + offs, exp_avg.to(state1[i].dtype.element_ty), mask=mask)
                    tl.store(state2[i] + offs, exp_avg_sq.to(state2[i].dtype.element_ty), mask=mask)
                tl.store(parameters[i] + offs, param.to(parameters[i].dtype.element_ty), mask=mask)
    if HAS_LOSS:
        if (block == 0) & (seg == 0):
            total = tl.zeros((LOSS_BLOCK,), ACC)
            for p0 in range(0, programs, LOSS_BLOCK):
                at = p0 + tl.arange(0, LOSS_BLOCK)
                total += tl.load(loss_partial_ptr + at * LOSS_STRIDE, mask=at < programs, other=0.0)
            tl.store(loss_ptr, (tl.sum(total, axis=0) * inv_batch).to(loss_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

GRAD_SCRATCH_FIXED = DLOGITS_AT.value  # dconv2 + dpool1 + dflat + dh1 + dh2; dlogits follow
# The plan's tile constexprs that each kernel declares: a keyword that a kernel does not declare
# is an error at a real launch (the interpreter ignores it).
TILE = ("SAMPLES", "FC_ROWS", "BLOCK_R1", "BLOCK_K1", "BLOCK_R2", "BLOCK_K2", "FC_BK", "FC_BN")


def param_sizes(in_channels: int, num_classes: int) -> tuple:
    """Elements of (conv1.weight, conv1.bias, conv2.weight, ..., fc3.bias)."""
    return (6 * in_channels * 25, 6, 16 * 6 * 25, 16, 120 * 400, 120, 84 * 120, 84, num_classes * 84, num_classes)


def param_offsets(sizes) -> tuple:
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at)
        at += size
    return tuple(offsets)


def _shape(x, logits_or_classes):
    batch, in_channels = x.shape[:2]
    num_classes = logits_or_classes if isinstance(logits_or_classes, int) else logits_or_classes.shape[1]
    return batch, in_channels, num_classes


def _tile_args(plan, names, in_channels, num_classes, dtype):
    return dict(C_IN=in_channels, NC=num_classes, ACC=config.accumulator_dtype(dtype),
                DOT_PRECISION=config.dot_precision(dtype), num_warps=plan.num_warps, num_stages=plan.num_stages,
                **config.LAUNCH_OPTIONS["lenet"], **{name: plan.tile[name] for name in names})


def activation_buffers(batch, like):
    """(act, win): what the forward keeps for the backward, batch rows of each."""
    return (torch.empty((batch, ACT_STRIDE.value), dtype=like.dtype, device=like.device),
            torch.empty((batch, WIN_STRIDE.value), dtype=torch.int8, device=like.device))


def forward(x, parameters, logits, act, win):
    """logits = LeNet(x) for contiguous x (batch >= 1) and parameters; fills act and win (activation_buffers)."""
    batch, in_channels, num_classes = _shape(x, logits)
    plan = config.lenet_plan(batch, in_channels, x.dtype)
    lenet_forward_kernel[(plan.programs,)](
        x, tuple(parameters), logits, act, win, batch, **_tile_args(plan, TILE, in_channels, num_classes,
                                                                       x.dtype))


def _reduce(partial, programs, grads, parameters, state1, state2, steps, hyper, sizes, update, momentum, loss_partial,
            loss, inv_batch, plan, row=None, loss_stride=1, increment_steps=False):
    # Each parameter in blocks of the plan's size, or of its own size rounded up to a power of two
    # when it is smaller: no program loads a block that is mostly past its parameter's end.
    blocks = tuple(min(plan.reduce_block, config.next_power_of_2(size)) for size in sizes)
    lenet_reduce_kernel[(config.cdiv(max(sizes), plan.reduce_block), NUM_PARAMS.value)](
        partial, programs, loss_partial, loss, inv_batch, tuple(grads), tuple(parameters), tuple(state1), tuple(state2),
        tuple(steps), hyper, sizes=sizes, offsets=param_offsets(sizes), TOTAL=sum(sizes), ROW=row or sum(sizes),
        LOSS_STRIDE=loss_stride, UPDATE=update, MOMENTUM=momentum, HAS_LOSS=loss is not None,
        INCREMENT_STEPS=increment_steps, ACC=config.accumulator_dtype(partial.dtype), BLOCKS=blocks,
        LOSS_BLOCK=plan.loss_block, **config.LAUNCH_OPTIONS["lenet"])


def backward(dlogits, x, parameters, act, win, grads):
    """Every parameter's gradient into grads (contiguous, parameters' shapes) from dlogits (batch, NC)."""
    batch, in_channels, num_classes = _shape(x, dlogits)
    plan = config.lenet_plan(batch, in_channels, x.dtype)
    sizes = param_sizes(in_channels, num_classes)
    acc = config.partial_buffer
    partial = acc((plan.programs, sum(sizes)), x)
    grad_scratch = acc((plan.programs * plan.samples, GRAD_SCRATCH_FIXED + num_classes), x)
    lenet_backward_kernel[(plan.programs,)](
        x, tuple(parameters), dlogits, act, win, grad_scratch, partial, batch, offsets=param_offsets(sizes),
        TOTAL=sum(sizes), GRAD_STRIDE=grad_scratch.shape[1],
        **_tile_args(plan, TILE, in_channels, num_classes, x.dtype))
    parameters = tuple(parameters)
    _reduce(partial, plan.programs, grads, parameters, parameters, parameters, parameters, partial, sizes, "none",
            (0,) * NUM_PARAMS.value, partial, None, 1.0, plan)


class TrainBuffers:
    """Everything one training step writes besides the parameters and optimizer state, for one batch
    size: allocated once, so that later steps allocate nothing (and a CUDA graph can replay them)."""

    def __init__(self, batch, in_channels, num_classes, like):
        self.plan = config.lenet_plan(batch, in_channels, like.dtype)
        self.batch, self.in_channels, self.num_classes = batch, in_channels, num_classes
        self.sizes = param_sizes(in_channels, num_classes)
        rows = self.plan.programs * self.plan.samples  # every sample's, and the last tile's padding
        self.act = torch.empty((rows, ACT_STRIDE.value), dtype=like.dtype, device=like.device)
        self.win = torch.empty((rows, WIN_STRIDE.value), dtype=torch.int8, device=like.device)
        self.grad = config.partial_buffer((rows, GRAD_SCRATCH_FIXED + num_classes), like)
        self.partial = config.partial_buffer((self.plan.programs, sum(self.sizes)), like)
        self.loss_partial = config.partial_buffer((self.plan.programs,), like)
        self.loss = torch.empty((), dtype=like.dtype, device=like.device)


def _train_partials(x, labels, parameters, buffers, steps, inv_batch, increment_steps):
    plan = buffers.plan
    lenet_train_kernel[(plan.programs,)](
        x, labels, tuple(parameters), tuple(steps), buffers.act, buffers.win, buffers.grad, buffers.partial,
        buffers.loss_partial, buffers.batch, inv_batch, offsets=param_offsets(buffers.sizes),
        TOTAL=sum(buffers.sizes), INCREMENT_STEPS=increment_steps, GRAD_STRIDE=buffers.grad.shape[1],
        **_tile_args(plan, TILE, buffers.in_channels, buffers.num_classes, x.dtype))


def train_step(x, labels, parameters, buffers, update, state1, state2, steps, hyper, momentum):
    """One step of mean cross-entropy training: forward, loss, backward and the optimizer update
    (update "sgd" or "adam", see lenet_reduce_kernel) in two launches; the loss lands in buffers.loss."""
    plan, batch = buffers.plan, buffers.batch
    parameters = tuple(parameters)
    _train_partials(x, labels, parameters, buffers, steps, 1.0 / batch, increment_steps=update == "adam")
    _reduce(buffers.partial, plan.programs, parameters, parameters, state1, state2, steps, hyper, buffers.sizes, update,
            momentum, buffers.loss_partial, buffers.loss, 1.0 / batch, plan)


def _sizes_and_reduce_plan(parameters):
    """LeNet's parameter sizes, and a plan for lenet_reduce_kernel alone: its blocks do not depend on
    the batch, so every rank reduces the same way whatever its share of the batch."""
    conv1_weight = parameters[0]
    sizes = param_sizes(conv1_weight.shape[1], parameters[-1].numel())
    return sizes, config.lenet_plan(1, conv1_weight.shape[1], conv1_weight.dtype)


def rank_row(x, labels, parameters, buffers, row, steps, global_batch, increment_steps):
    """A rank's part of a distributed step, in one or two launches: its samples' gradient of the
    global batch's mean loss (scaled by 1 / global_batch) into row[:TOTAL] and their loss into
    row[TOTAL]. buffers is None for a rank with no samples (row then holds zeros). With
    increment_steps, every Adam step count goes up by 1, once per step on every rank."""
    parameters = tuple(parameters)
    sizes, plan = _sizes_and_reduce_plan(parameters)
    if buffers is not None:
        _train_partials(x, labels, parameters, buffers, steps, 1.0 / global_batch, increment_steps=False)
    grads = _row_views(row, parameters, sizes)
    programs, partial, loss_partial = ((buffers.plan.programs, buffers.partial, buffers.loss_partial)
                                       if buffers is not None else (0, row, row))
    _reduce(partial, programs, grads, parameters, parameters, parameters, steps, row, sizes, "none",
            (0,) * NUM_PARAMS.value, loss_partial, row[-1], 1.0 / global_batch, plan, increment_steps=increment_steps)


def apply_rows(rows, parameters, state1, state2, steps, hyper, update, momentum, loss):
    """The update from every rank's row (rows: (ranks, TOTAL + 1), summed in rank order, so that each
    rank computes the same bits), and the global mean loss into loss."""
    parameters = tuple(parameters)
    sizes, plan = _sizes_and_reduce_plan(parameters)
    total = sum(sizes)
    _reduce(rows, rows.shape[0], parameters, parameters, state1, state2, steps, hyper, sizes, update, momentum,
            rows.view(-1)[total:], loss, 1.0, plan, row=total + 1, loss_stride=total + 1)


def _row_views(row, parameters, sizes):
    """Views of a flat gradient row shaped like each parameter."""
    return tuple(row[at:at + size].view(p.shape) for at, size, p in zip(param_offsets(sizes), sizes, parameters))
