"""Whole-network LeNet kernels: the forward in one launch, the backward in two, a training step in two.

LeNet here is the tutorial's: conv1 (C_IN->6, 5x5) + ReLU + 2x2 max-pool, conv2 (6->16, 5x5) + ReLU
+ 2x2 max-pool, fc1 400->120 + ReLU, fc2 120->84 + ReLU, fc3 84->NUM_CLASSES, on 32x32 images.

Each program owns a contiguous run of samples and walks them in tiles of SAMPLES samples, layer by
layer. Between layers the activations go through global memory (on a GPU they stay in L2): a
program reads back only what it wrote itself, so a `tl.debug_barrier()` between stages is all the
ordering it needs, and no program waits for another.

- Conv and pool are fused: a pooled output is the max over its 2x2 window of four convolutions,
  computed as four implicit GEMMs (one per window offset q), so the conv output never exists.
  The winning offset (0..3, the first maximum, NaN winning as in torch) is kept as an int8 for
  the backward.
- The backward never computes the images' gradient. Weight gradients are summed per program into
  a partial buffer (one row per program), then `lenet_reduce_kernel` adds the rows in a fixed
  order: the result repeats exactly, run to run, with no atomics. The same kernel can apply an
  SGD or Adam update as it goes, which is what makes a training step two launches.

Per-sample layouts (offsets in elements), shared by the three kernels:
    activations (model dtype): pool1 (6, 14, 14) | flat = pool2 (16, 5, 5) | h1 (120) | h2 (84)
    window winners (int8):     pool1's (6, 14, 14) | pool2's (16, 5, 5)
    gradient scratch (ACC):    dconv2 (16, 10, 10) | dflat (400) | dh1 (120) | dh2 (84) | dlogits (NC)
Parameters are passed as a tuple (conv1.weight, conv1.bias, conv2.weight, ..., fc3.bias), all
contiguous; PARAM_OFFSETS gives each one's place in a partial row.

Shared constexpr arguments:
    C_IN, NC          input channels and classes.
    SAMPLES           samples per tile; FC_ROWS = max(16, SAMPLES) rows for the fc GEMMs.
    BLOCK_R1/R2       rows (sample x pooled position) per conv1 / conv2 GEMM chunk.
    K1                conv1's reduction C_IN*25, padded to a power of two (one chunk).
    BLOCK_K2          reduction chunk of conv2 and its weight gradient ((i, kh, kw): 150).
    BLOCK_KD          reduction chunk of conv2's input gradient ((o, kh, kw): 400).
    FC_BK, FC_BN      reduction and output chunks of the fc GEMMs.
    GRAD_STRIDE       elements per sample of the gradient scratch (2204 + NC).
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
DFLAT_AT = tl.constexpr(1600)
DH1_AT = tl.constexpr(2000)
DH2_AT = tl.constexpr(2120)
DLOGITS_AT = tl.constexpr(2204)

NUM_PARAMS = 10
# Columns of the optimizer's hyperparameter table, one row per parameter (float64).
SGD_FIELDS = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
ADAM_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay")
HYPER_FIELDS = len(SGD_FIELDS)  # == len(ADAM_FIELDS)


# ---------------------------------------------------------------------------------------------
# Stages (each runs on one tile of samples inside a program)
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
def _conv1_pool_forward(x_ptr, w_ptr, b_ptr, act_ptr, win_ptr, sample0, act_row0, n_valid,
                        C_IN: tl.constexpr, SAMPLES: tl.constexpr, BLOCK_R1: tl.constexpr, K1: tl.constexpr,
                        ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """pool1 = maxpool(relu(conv1(x))): rows are (sample, pooled position in 14x14), columns the 6
    channels (padded to 16), the reduction (c, kh, kw)."""
    ks = tl.arange(0, K1)
    k_ok = ks < C_IN * 25
    c, kh, kw = ks // 25, (ks % 25) // 5, ks % 5
    cols = tl.arange(0, 16)
    col_ok = cols < 6
    w = tl.load(w_ptr + cols[None, :] * (C_IN * 25) + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    for r0 in range(0, SAMPLES * 196, BLOCK_R1):
        rows = r0 + tl.arange(0, BLOCK_R1)
        s, p = rows // 196, rows % 196
        ph, pw = p // 14, p % 14
        row_ok = (rows < SAMPLES * 196) & (s < n_valid)
        image = (sample0 + s).to(tl.int64) * (C_IN * 1024)
        best = tl.full((BLOCK_R1, 16), float("-inf"), ACC)
        best_q = tl.zeros((BLOCK_R1, 16), tl.int32)
        for q in tl.static_range(4):
            oy, ox = 2 * ph + q // 2, 2 * pw + q % 2
            offs = image[:, None] + c[None, :] * 1024 + (oy[:, None] + kh[None, :]) * 32 + ox[:, None] + kw[None, :]
            patch = tl.load(x_ptr + offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            v = _relu(tl.dot(patch, w, input_precision=DOT_PRECISION, out_dtype=ACC) + bias[None, :])
            best, best_q = _pool_update(v, best, best_q, q)
        at = (act_row0 + s).to(tl.int64)[:, None]
        mask = row_ok[:, None] & col_ok[None, :]
        tl.store(act_ptr + at * ACT_STRIDE + POOL1_AT + cols[None, :] * 196 + p[:, None],
                 best.to(act_ptr.dtype.element_ty), mask=mask)
        tl.store(win_ptr + at * WIN_STRIDE + WIN1_AT + cols[None, :] * 196 + p[:, None], best_q.to(tl.int8),
                 mask=mask)


@triton.jit
def _conv2_pool_forward(w_ptr, b_ptr, act_ptr, win_ptr, act_row0, n_valid,
                        SAMPLES: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_K2: tl.constexpr,
                        ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """flat = maxpool(relu(conv2(pool1))) in torch.flatten's order (channel, y, x): rows are
    (sample, pooled position in 5x5), columns the 16 channels, the reduction (i, kh, kw) = 150."""
    cols = tl.arange(0, 16)
    bias = tl.load(b_ptr + cols).to(ACC)
    for r0 in range(0, SAMPLES * 25, BLOCK_R2):
        rows = r0 + tl.arange(0, BLOCK_R2)
        s, p = rows // 25, rows % 25
        ph, pw = p // 5, p % 5
        row_ok = (rows < SAMPLES * 25) & (s < n_valid)
        at = (act_row0 + s).to(tl.int64)
        best = tl.full((BLOCK_R2, 16), float("-inf"), ACC)
        best_q = tl.zeros((BLOCK_R2, 16), tl.int32)
        for q in tl.static_range(4):
            oy, ox = 2 * ph + q // 2, 2 * pw + q % 2
            acc = tl.zeros((BLOCK_R2, 16), ACC)
            for k0 in range(0, 150, BLOCK_K2):
                ks = k0 + tl.arange(0, BLOCK_K2)
                k_ok = ks < 150
                i, kh, kw = ks // 25, (ks % 25) // 5, ks % 5
                offs = (at * ACT_STRIDE + POOL1_AT)[:, None] + i[None, :] * 196 \
                    + (oy[:, None] + kh[None, :]) * 14 + ox[:, None] + kw[None, :]
                patch = tl.load(act_ptr + offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_ptr + cols[None, :] * 150 + ks[:, None], mask=k_ok[:, None], other=0.0)
                acc = tl.dot(patch, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
            best, best_q = _pool_update(_relu(acc + bias[None, :]), best, best_q, q)
        tl.store(act_ptr + (at * ACT_STRIDE + FLAT_AT)[:, None] + cols[None, :] * 25 + p[:, None],
                 best.to(act_ptr.dtype.element_ty), mask=row_ok[:, None])
        tl.store(win_ptr + (at * WIN_STRIDE + WIN2_AT)[:, None] + cols[None, :] * 25 + p[:, None],
                 best_q.to(tl.int8), mask=row_ok[:, None])


@triton.jit
def _fc_forward(in_ptr, in_row0, in_stride, in_at, w_ptr, b_ptr, out_ptr, out_row0, out_stride, out_at, n_valid,
                K: tl.constexpr, N: tl.constexpr, RELU: tl.constexpr, FC_ROWS: tl.constexpr,
                FC_BK: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """out[rows, :N] = act(in[rows, :K] @ W^T + b) for one tile's rows, W (N, K) row-major."""
    rows = tl.arange(0, FC_ROWS)
    row_ok = rows < n_valid
    in_rows = (in_row0 + rows).to(tl.int64) * in_stride + in_at
    out_rows = (out_row0 + rows).to(tl.int64) * out_stride + out_at
    for n0 in range(0, N, FC_BN):
        cols = n0 + tl.arange(0, FC_BN)
        col_ok = cols < N
        acc = tl.zeros((FC_ROWS, FC_BN), ACC)
        for k0 in range(0, K, FC_BK):
            ks = k0 + tl.arange(0, FC_BK)
            k_ok = ks < K
            a = tl.load(in_ptr + in_rows[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + cols[None, :] * K + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
        if RELU:
            acc = _relu(acc)
        tl.store(out_ptr + out_rows[:, None] + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _cross_entropy(logits_ptr, row0, stride, at, labels_ptr, sample0, n_valid, inv_batch,
                   NC: tl.constexpr, FC_ROWS: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr):
    """Overwrites the tile's logits with d(mean cross-entropy)/d(logits) = (softmax - onehot) / batch
    and returns the tile's summed loss. A label outside [0, NC) makes that sample's loss NaN."""
    rows = tl.arange(0, FC_ROWS)
    row_ok = rows < n_valid
    labels = tl.load(labels_ptr + sample0 + rows, mask=row_ok, other=0)
    at_rows = (row0 + rows).to(tl.int64) * stride + at
    # Online log-sum-exp over chunks of classes, so any number of classes fits.
    row_max = tl.full((FC_ROWS,), float("-inf"), ACC)
    row_sum = tl.zeros((FC_ROWS,), ACC)
    label_logit = tl.zeros((FC_ROWS,), ACC)
    for n0 in range(0, NC, FC_BN):
        cols = n0 + tl.arange(0, FC_BN)
        mask = row_ok[:, None] & (cols < NC)[None, :]
        x = tl.load(logits_ptr + at_rows[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(ACC)
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
        x = tl.load(logits_ptr + at_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
        grad = tl.exp(x - row_max[:, None]) / row_sum[:, None] - tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
        grad = tl.where(label_ok[:, None], grad, float("nan")) * inv_batch
        tl.store(logits_ptr + at_rows[:, None] + cols[None, :], grad.to(logits_ptr.dtype.element_ty), mask=mask)
    return tl.sum(tl.where(row_ok, loss, 0.0), axis=0)


@triton.jit
def _accumulate(partial_ptr, offs, value, mask, tile):
    # A program's partial row: its first tile stores, later tiles add (the row is the program's own).
    before = tl.load(partial_ptr + offs, mask=mask & (tile > 0), other=0.0)
    tl.store(partial_ptr + offs, before + value, mask=mask)


@triton.jit
def _fc_backward(dout_ptr, dout_row0, dout_stride, dout_at, in_ptr, in_row0, in_stride, in_at, w_ptr,
                 din_ptr, din_row0, din_stride, din_at, partial_ptr, w_at, b_at, n_valid, tile,
                 K: tl.constexpr, N: tl.constexpr, INPUT_GRAD: tl.constexpr, ACC: tl.constexpr,
                 FC_ROWS: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """For y = in @ W^T + b with dout = dL/dy (already through y's ReLU): adds dout^T @ in and the
    column sums of dout to the partial row, and with INPUT_GRAD writes din = (dout @ W) * (in > 0),
    the gradient through the ReLU that produced `in`."""
    rows = tl.arange(0, FC_ROWS)
    row_ok = rows < n_valid
    dout_rows = (dout_row0 + rows).to(tl.int64) * dout_stride + dout_at
    in_rows = (in_row0 + rows).to(tl.int64) * in_stride + in_at
    for n0 in range(0, N, FC_BN):
        outs = n0 + tl.arange(0, FC_BN)
        out_ok = outs < N
        dout_t = tl.load(dout_ptr + dout_rows[None, :] + outs[:, None], mask=out_ok[:, None] & row_ok[None, :],
                         other=0.0).to(ACC)
        _accumulate(partial_ptr, b_at + outs, tl.sum(dout_t, axis=1), out_ok, tile)
        for k0 in range(0, K, FC_BK):
            ks = k0 + tl.arange(0, FC_BK)
            k_ok = ks < K
            a = tl.load(in_ptr + in_rows[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0).to(ACC)
            dw = tl.dot(dout_t, a, input_precision=DOT_PRECISION, out_dtype=ACC)
            _accumulate(partial_ptr, w_at + outs[:, None] * K + ks[None, :], dw, out_ok[:, None] & k_ok[None, :],
                        tile)
    if INPUT_GRAD:
        din_rows = (din_row0 + rows).to(tl.int64) * din_stride + din_at
        for k0 in range(0, K, FC_BK):
            ks = k0 + tl.arange(0, FC_BK)
            k_ok = ks < K
            acc = tl.zeros((FC_ROWS, FC_BK), ACC)
            for n0 in range(0, N, FC_BN):
                outs = n0 + tl.arange(0, FC_BN)
                out_ok = outs < N
                dout = tl.load(dout_ptr + dout_rows[:, None] + outs[None, :], mask=row_ok[:, None] & out_ok[None, :],
                               other=0.0).to(ACC)
                w = tl.load(w_ptr + outs[:, None] * K + ks[None, :], mask=out_ok[:, None] & k_ok[None, :],
                            other=0.0).to(ACC)
                acc = tl.dot(dout, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
            mask = row_ok[:, None] & k_ok[None, :]
            a = tl.load(in_ptr + in_rows[:, None] + ks[None, :], mask=mask, other=0.0)
            # torch's threshold_backward: blocked where the ReLU's output is <= 0 (NaN passes).
            tl.store(din_ptr + din_rows[:, None] + ks[None, :], tl.where(a <= 0, 0.0, acc), mask=mask)


@triton.jit
def _conv2_backward(w2_ptr, act_ptr, win_ptr, grad_ptr, act_row0, grad_row0, partial_ptr, w_at, b_at, n_valid,
                    tile, SAMPLES: tl.constexpr, BLOCK_R2: tl.constexpr,
                    BLOCK_K2: tl.constexpr, GRAD_STRIDE: tl.constexpr, ACC: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """From dflat (already through pool2's ReLU): writes the dense dconv2, zero except at each
    window's winner, and adds conv2's weight and bias gradients to the partial row. Rows are
    (sample, pooled position in 5x5), columns the 16 channels."""
    cols = tl.arange(0, 16)
    bias_grad = tl.zeros((16,), ACC)
    for r0 in range(0, SAMPLES * 25, BLOCK_R2):
        rows = r0 + tl.arange(0, BLOCK_R2)
        s, p = rows // 25, rows % 25
        ph, pw = p // 5, p % 5
        row_ok = (rows < SAMPLES * 25) & (s < n_valid)
        grad_at = (grad_row0 + s).to(tl.int64) * GRAD_STRIDE
        g = tl.load(grad_ptr + (grad_at + DFLAT_AT)[:, None] + cols[None, :] * 25 + p[:, None],
                    mask=row_ok[:, None], other=0.0)
        winner = tl.load(win_ptr + ((act_row0 + s).to(tl.int64) * WIN_STRIDE + WIN2_AT)[:, None] + cols[None, :] * 25
                         + p[:, None], mask=row_ok[:, None], other=0)
        bias_grad += tl.sum(g, axis=0)
        for q in tl.static_range(4):
            oy, ox = 2 * ph + q // 2, 2 * pw + q % 2
            tl.store(grad_ptr + (grad_at + DCONV2_AT + oy * 10 + ox)[:, None] + cols[None, :] * 100,
                     tl.where(winner == q, g, 0.0), mask=row_ok[:, None])
    _accumulate(partial_ptr, b_at + cols, bias_grad, cols < 16, tile)
    # dW2 (16, 150) = sum over windows q of G_q^T @ patch_q, G_q the gradient where q won.
    for k0 in range(0, 150, BLOCK_K2):
        ks = k0 + tl.arange(0, BLOCK_K2)
        k_ok = ks < 150
        i, kh, kw = ks // 25, (ks % 25) // 5, ks % 5
        acc = tl.zeros((16, BLOCK_K2), ACC)
        for r0 in range(0, SAMPLES * 25, BLOCK_R2):
            rows = r0 + tl.arange(0, BLOCK_R2)
            s, p = rows // 25, rows % 25
            ph, pw = p // 5, p % 5
            row_ok = (rows < SAMPLES * 25) & (s < n_valid)
            act_at = (act_row0 + s).to(tl.int64)
            g = tl.load(grad_ptr + ((grad_row0 + s).to(tl.int64) * GRAD_STRIDE + DFLAT_AT)[:, None]
                        + cols[None, :] * 25 + p[:, None], mask=row_ok[:, None], other=0.0)
            winner = tl.load(win_ptr + (act_at * WIN_STRIDE + WIN2_AT)[:, None] + cols[None, :] * 25 + p[:, None],
                             mask=row_ok[:, None], other=0)
            for q in tl.static_range(4):
                oy, ox = 2 * ph + q // 2, 2 * pw + q % 2
                patch = tl.load(act_ptr + (act_at * ACT_STRIDE + POOL1_AT)[:, None] + i[None, :] * 196
                                + (oy[:, None] + kh[None, :]) * 14 + ox[:, None] + kw[None, :],
                                mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
                grad_q = tl.where(winner == q, g, 0.0).to(ACC)
                acc = tl.dot(tl.trans(grad_q), patch, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        _accumulate(partial_ptr, w_at + cols[:, None] * 150 + ks[None, :], acc, k_ok[None, :], tile)


@triton.jit
def _conv1_backward(x_ptr, w2_ptr, act_ptr, win_ptr, grad_ptr, sample0, act_row0, grad_row0, partial_ptr,
                    w_at, b_at, n_valid, tile, C_IN: tl.constexpr, SAMPLES: tl.constexpr, BLOCK_R1: tl.constexpr,
                    K1: tl.constexpr, BLOCK_KD: tl.constexpr, GRAD_STRIDE: tl.constexpr, ACC: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """dpool1 = conv2's input gradient from the dense dconv2 (rows (sample, position in 14x14),
    columns the 6 channels, reduction (o, kh, kw) = 400), through pool1's ReLU; then conv1's
    weight and bias gradients, window offset by window offset, into the partial row."""
    cols = tl.arange(0, 16)
    col_ok = cols < 6
    ks1 = tl.arange(0, K1)
    k1_ok = ks1 < C_IN * 25
    c, kh1, kw1 = ks1 // 25, (ks1 % 25) // 5, ks1 % 5
    weight_grad = tl.zeros((16, K1), ACC)
    bias_grad = tl.zeros((16,), ACC)
    for r0 in range(0, SAMPLES * 196, BLOCK_R1):
        rows = r0 + tl.arange(0, BLOCK_R1)
        s, p = rows // 196, rows % 196
        y, x = p // 14, p % 14
        row_ok = (rows < SAMPLES * 196) & (s < n_valid)
        grad_at = (grad_row0 + s).to(tl.int64) * GRAD_STRIDE + DCONV2_AT
        dpool1 = tl.zeros((BLOCK_R1, 16), ACC)
        for k0 in range(0, 400, BLOCK_KD):
            ks = k0 + tl.arange(0, BLOCK_KD)
            k_ok = ks < 400
            o, kh, kw = ks // 25, (ks % 25) // 5, ks % 5
            cy, cx = y[:, None] - kh[None, :], x[:, None] - kw[None, :]
            inside = row_ok[:, None] & k_ok[None, :] & (cy >= 0) & (cy < 10) & (cx >= 0) & (cx < 10)
            dconv = tl.load(grad_ptr + grad_at[:, None] + o[None, :] * 100 + cy * 10 + cx, mask=inside, other=0.0)
            w = tl.load(w2_ptr + (o * 150 + kh * 5 + kw)[:, None] + cols[None, :] * 25,
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(ACC)
            dpool1 = tl.dot(dconv.to(ACC), w, dpool1, input_precision=DOT_PRECISION, out_dtype=ACC)
        act_at = (act_row0 + s).to(tl.int64)
        mask = row_ok[:, None] & col_ok[None, :]
        pool1 = tl.load(act_ptr + (act_at * ACT_STRIDE + POOL1_AT)[:, None] + cols[None, :] * 196 + p[:, None],
                        mask=mask, other=0.0)
        g = tl.where(pool1 <= 0, 0.0, dpool1)
        bias_grad += tl.sum(g, axis=0)
        winner = tl.load(win_ptr + (act_at * WIN_STRIDE + WIN1_AT)[:, None] + cols[None, :] * 196 + p[:, None],
                         mask=mask, other=0)
        image = (sample0 + s).to(tl.int64) * (C_IN * 1024)
        for q in tl.static_range(4):
            oy, ox = 2 * y + q // 2, 2 * x + q % 2
            patch = tl.load(x_ptr + image[:, None] + c[None, :] * 1024 + (oy[:, None] + kh1[None, :]) * 32
                            + ox[:, None] + kw1[None, :], mask=row_ok[:, None] & k1_ok[None, :], other=0.0).to(ACC)
            grad_q = tl.where(winner == q, g, 0.0).to(ACC)
            weight_grad = tl.dot(tl.trans(grad_q), patch, weight_grad, input_precision=DOT_PRECISION, out_dtype=ACC)
    _accumulate(partial_ptr, w_at + cols[:, None] * (C_IN * 25) + ks1[None, :], weight_grad,
                col_ok[:, None] & k1_ok[None, :], tile)
    _accumulate(partial_ptr, b_at + cols, bias_grad, col_ok, tile)


@triton.jit
def _forward_tile(x_ptr, params, out_ptr, out_row0, out_stride, out_at, act_ptr, win_ptr, sample0, act_row0,
                  n_valid, C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                  BLOCK_R1: tl.constexpr, BLOCK_R2: tl.constexpr, K1: tl.constexpr, BLOCK_K2: tl.constexpr,
                  FC_BK: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Every layer for one tile; the logits go to out (row stride out_stride, from column out_at)."""
    _conv1_pool_forward(x_ptr, params[0], params[1], act_ptr, win_ptr, sample0, act_row0, n_valid, C_IN, SAMPLES,
                        BLOCK_R1, K1, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _conv2_pool_forward(params[2], params[3], act_ptr, win_ptr, act_row0, n_valid, SAMPLES, BLOCK_R2, BLOCK_K2,
                        ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_forward(act_ptr, act_row0, ACT_STRIDE, FLAT_AT, params[4], params[5], act_ptr, act_row0, ACT_STRIDE, H1_AT,
                n_valid, 400, 120, True, FC_ROWS, FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_forward(act_ptr, act_row0, ACT_STRIDE, H1_AT, params[6], params[7], act_ptr, act_row0, ACT_STRIDE, H2_AT,
                n_valid, 120, 84, True, FC_ROWS, FC_BK, FC_BN, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _fc_forward(act_ptr, act_row0, ACT_STRIDE, H2_AT, params[8], params[9], out_ptr, out_row0, out_stride, out_at,
                n_valid, 84, NC, False, FC_ROWS, FC_BK, FC_BN, ACC, DOT_PRECISION)


@triton.jit
def _backward_tile(x_ptr, params, dlogits_ptr, dlogits_row0, dlogits_stride, dlogits_at, act_ptr, win_ptr, grad_ptr,
                   partial_ptr, offsets, sample0, act_row0, grad_row0, n_valid, tile,
                   C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                   BLOCK_R1: tl.constexpr, BLOCK_R2: tl.constexpr, K1: tl.constexpr, BLOCK_K2: tl.constexpr,
                   BLOCK_KD: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr, GRAD_STRIDE: tl.constexpr,
                   ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Every parameter gradient of one tile, added to the program's partial row."""
    _fc_backward(dlogits_ptr, dlogits_row0, dlogits_stride, dlogits_at, act_ptr, act_row0, ACT_STRIDE, H2_AT,
                 params[8], grad_ptr, grad_row0, GRAD_STRIDE, DH2_AT, partial_ptr, offsets[8], offsets[9], n_valid,
                 tile, 84, NC, True, ACC, FC_ROWS, FC_BK, FC_BN, DOT_PRECISION)
    tl.debug_barrier()
    _fc_backward(grad_ptr, grad_row0, GRAD_STRIDE, DH2_AT, act_ptr, act_row0, ACT_STRIDE, H1_AT, params[6],
                 grad_ptr, grad_row0, GRAD_STRIDE, DH1_AT, partial_ptr, offsets[6], offsets[7], n_valid, tile,
                 120, 84, True, ACC, FC_ROWS, FC_BK, FC_BN, DOT_PRECISION)
    tl.debug_barrier()
    _fc_backward(grad_ptr, grad_row0, GRAD_STRIDE, DH1_AT, act_ptr, act_row0, ACT_STRIDE, FLAT_AT, params[4],
                 grad_ptr, grad_row0, GRAD_STRIDE, DFLAT_AT, partial_ptr, offsets[4], offsets[5], n_valid, tile,
                 400, 120, True, ACC, FC_ROWS, FC_BK, FC_BN, DOT_PRECISION)
    tl.debug_barrier()
    _conv2_backward(params[2], act_ptr, win_ptr, grad_ptr, act_row0, grad_row0, partial_ptr, offsets[2], offsets[3],
                    n_valid, tile, SAMPLES, BLOCK_R2, BLOCK_K2, GRAD_STRIDE, ACC, DOT_PRECISION)
    tl.debug_barrier()
    _conv1_backward(x_ptr, params[2], act_ptr, win_ptr, grad_ptr, sample0, act_row0, grad_row0, partial_ptr,
                    offsets[0], offsets[1], n_valid, tile, C_IN, SAMPLES, BLOCK_R1, K1, BLOCK_KD, GRAD_STRIDE, ACC,
                    DOT_PRECISION)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def lenet_forward_kernel(x_ptr, params, logits_ptr, act_ptr, win_ptr, batch,
                         C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                         BLOCK_R1: tl.constexpr, BLOCK_R2: tl.constexpr, K1: tl.constexpr, BLOCK_K2: tl.constexpr,
                         FC_BK: tl.constexpr, FC_BN: tl.constexpr, ACC: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    """Logits (batch, NC) of images x (batch, C_IN, 32, 32); one tile of SAMPLES per program. The
    activations and window winners stay in act/win (batch rows) for the backward."""
    sample0 = tl.program_id(0) * SAMPLES
    _forward_tile(x_ptr, params, logits_ptr, sample0, NC, 0, act_ptr, win_ptr, sample0, sample0,
                  tl.minimum(SAMPLES, batch - sample0), C_IN, NC, SAMPLES, FC_ROWS, BLOCK_R1, BLOCK_R2, K1, BLOCK_K2,
                  FC_BK, FC_BN, ACC, DOT_PRECISION)


@triton.jit
def lenet_backward_kernel(x_ptr, params, dlogits_ptr, act_ptr, win_ptr, grad_ptr, partial_ptr, batch,
                          TILES_PER_PROGRAM, offsets: tl.constexpr, TOTAL: tl.constexpr,
                          C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr, FC_ROWS: tl.constexpr,
                          BLOCK_R1: tl.constexpr, BLOCK_R2: tl.constexpr, K1: tl.constexpr, BLOCK_K2: tl.constexpr,
                          BLOCK_KD: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr,
                          GRAD_STRIDE: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Per-program partial parameter gradients (one row of TOTAL per program) from dlogits (batch, NC)
    and the forward's act/win; grad is this program's scratch of SAMPLES rows."""
    pid = tl.program_id(0)
    partial_row = partial_ptr + pid.to(tl.int64) * TOTAL
    for t in range(0, TILES_PER_PROGRAM):
        sample0 = (pid * TILES_PER_PROGRAM + t) * SAMPLES
        _backward_tile(x_ptr, params, dlogits_ptr, sample0, NC, 0, act_ptr, win_ptr, grad_ptr, partial_row,
                       offsets, sample0, sample0, pid * SAMPLES, tl.minimum(SAMPLES, batch - sample0), t, C_IN, NC,
                       SAMPLES, FC_ROWS, BLOCK_R1, BLOCK_R2, K1, BLOCK_K2, BLOCK_KD, FC_BK, FC_BN, GRAD_STRIDE, ACC,
                       DOT_PRECISION)
        tl.debug_barrier()


@triton.jit
def lenet_train_kernel(x_ptr, labels_ptr, params, steps, act_ptr, win_ptr, grad_ptr, partial_ptr, loss_partial_ptr,
                       batch, inv_batch, TILES_PER_PROGRAM, offsets: tl.constexpr, TOTAL: tl.constexpr,
                       INCREMENT_STEPS: tl.constexpr, C_IN: tl.constexpr, NC: tl.constexpr, SAMPLES: tl.constexpr,
                       FC_ROWS: tl.constexpr, BLOCK_R1: tl.constexpr, BLOCK_R2: tl.constexpr, K1: tl.constexpr,
                       BLOCK_K2: tl.constexpr, BLOCK_KD: tl.constexpr, FC_BK: tl.constexpr, FC_BN: tl.constexpr,
                       GRAD_STRIDE: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Forward, mean cross-entropy and backward of each tile, every intermediate in this program's
    scratch rows of act/win/grad: partial gradient rows and a partial loss sum per program. With
    INCREMENT_STEPS, program 0 adds 1 to every Adam step count (the update reads them next launch)."""
    pid = tl.program_id(0)
    partial_row = partial_ptr + pid.to(tl.int64) * TOTAL
    row0 = pid * SAMPLES
    loss = tl.zeros((), ACC)
    for t in range(0, TILES_PER_PROGRAM):
        sample0 = (pid * TILES_PER_PROGRAM + t) * SAMPLES
        n_valid = tl.minimum(SAMPLES, batch - sample0)
        _forward_tile(x_ptr, params, grad_ptr, row0, GRAD_STRIDE, DLOGITS_AT, act_ptr, win_ptr, sample0, row0,
                      n_valid, C_IN, NC, SAMPLES, FC_ROWS, BLOCK_R1, BLOCK_R2, K1, BLOCK_K2, FC_BK, FC_BN,
                      ACC, DOT_PRECISION)
        tl.debug_barrier()
        loss += _cross_entropy(grad_ptr, row0, GRAD_STRIDE, DLOGITS_AT, labels_ptr, sample0, n_valid, inv_batch, NC,
                               FC_ROWS, FC_BN, ACC)
        tl.debug_barrier()
        _backward_tile(x_ptr, params, grad_ptr, row0, GRAD_STRIDE, DLOGITS_AT, act_ptr, win_ptr, grad_ptr,
                       partial_row, offsets, sample0, row0, row0, n_valid, t, C_IN, NC, SAMPLES, FC_ROWS, BLOCK_R1,
                       BLOCK_R2, K1, BLOCK_K2, BLOCK_KD, FC_BK, FC_BN, GRAD_STRIDE, ACC, DOT_PRECISION)
        tl.debug_barrier()
    tl.store(loss_partial_ptr + pid, loss)
    if INCREMENT_STEPS:
        if pid == 0:
            for i in tl.static_range(NUM_PARAMS):
                tl.store(steps[i], tl.load(steps[i]) + 1)


@triton.jit
def lenet_reduce_kernel(partial_ptr, programs, loss_partial_ptr, loss_ptr, inv_batch, grads, params, state1, state2,
                        steps, hyper_ptr, sizes: tl.constexpr, offsets: tl.constexpr, TOTAL: tl.constexpr,
                        UPDATE: tl.constexpr, MOMENTUM: tl.constexpr, HAS_LOSS: tl.constexpr, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    """Sums the partial rows, in program order, into each parameter's gradient: program (b, i) owns
    elements [b * BLOCK, (b + 1) * BLOCK) of parameter i. UPDATE "none" stores the gradient in
    grads[i]; "sgd" and "adam" apply torch.optim's update to params[i] in place instead, with
    state1/state2 = momentum_buffer / (exp_avg, exp_avg_sq) and steps the Adam step counts, and
    the hyperparameters in row i of hyper (see SGD_FIELDS, ADAM_FIELDS). MOMENTUM[i] is 0 for no
    momentum buffer, 1 to update it, 2 to start it (torch's first step copies the gradient).
    HAS_LOSS: program (0, 0) also writes the mean loss from the per-program loss sums."""
    block, seg = tl.program_id(0), tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    for i in tl.static_range(NUM_PARAMS):
        if seg == i:
            mask = offs < sizes[i]
            grad = tl.zeros((BLOCK,), ACC)
            for p in range(0, programs):
                grad += tl.load(partial_ptr + p * TOTAL + offsets[i] + offs, mask=mask, other=0.0)
            if UPDATE == "none":
                tl.store(grads[i] + offs, grad.to(grads[i].dtype.element_ty), mask=mask)
            else:
                hyper = hyper_ptr + i * HYPER_FIELDS
                param = tl.load(params[i] + offs, mask=mask, other=0.0).to(ACC)
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
                tl.store(params[i] + offs, param.to(params[i].dtype.element_ty), mask=mask)
    if HAS_LOSS:
        if (block == 0) & (seg == 0):
            total = tl.zeros((BLOCK,), ACC)
            for p0 in range(0, programs, BLOCK):
                total += tl.load(loss_partial_ptr + p0 + tl.arange(0, BLOCK), mask=p0 + tl.arange(0, BLOCK) < programs,
                                 other=0.0)
            tl.store(loss_ptr, (tl.sum(total, axis=0) * inv_batch).to(loss_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

GRAD_SCRATCH_FIXED = DLOGITS_AT.value  # dconv2 + dflat + dh1 + dh2; dlogits follow


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


def _tile_args(plan, in_channels, num_classes, dtype):
    return dict(C_IN=in_channels, NC=num_classes, ACC=config.accumulator_dtype(dtype),
                DOT_PRECISION=config.dot_precision(dtype), num_warps=plan.num_warps, **plan.tile)


def activation_buffers(batch, like):
    """(act, win): what the forward keeps for the backward, batch rows of each."""
    return (torch.empty((batch, ACT_STRIDE.value), dtype=like.dtype, device=like.device),
            torch.empty((batch, WIN_STRIDE.value), dtype=torch.int8, device=like.device))


def forward(x, params, logits, act, win):
    """logits = LeNet(x) for contiguous x (batch >= 1) and params; fills act and win (activation_buffers)."""
    batch, in_channels, num_classes = _shape(x, logits)
    plan = config.lenet_plan(batch, in_channels)
    lenet_forward_kernel[(config.cdiv(batch, plan.samples),)](
        x, tuple(params), logits, act, win, batch, **_tile_args(plan, in_channels, num_classes, x.dtype))


def _reduce(partial, programs, grads, params, state1, state2, steps, hyper, sizes, update, momentum, loss_partial,
            loss, inv_batch, plan):
    block = plan.reduce_block
    lenet_reduce_kernel[(config.cdiv(max(sizes), block), NUM_PARAMS)](
        partial, programs, loss_partial, loss, inv_batch, tuple(grads), tuple(params), tuple(state1), tuple(state2),
        tuple(steps), hyper, sizes=sizes, offsets=param_offsets(sizes), TOTAL=sum(sizes), UPDATE=update,
        MOMENTUM=momentum, HAS_LOSS=loss is not None, ACC=config.accumulator_dtype(partial.dtype), BLOCK=block)


def backward(dlogits, x, params, act, win, grads):
    """Every parameter's gradient into grads (contiguous, params' shapes) from dlogits (batch, NC)."""
    batch, in_channels, num_classes = _shape(x, dlogits)
    plan = config.lenet_plan(batch, in_channels)
    sizes = param_sizes(in_channels, num_classes)
    acc = config.partial_buffer
    partial = acc((plan.programs, sum(sizes)), x)
    grad_scratch = acc((plan.programs * plan.samples, GRAD_SCRATCH_FIXED + num_classes), x)
    lenet_backward_kernel[(plan.programs,)](
        x, tuple(params), dlogits, act, win, grad_scratch, partial, batch, plan.tiles_per_program,
        offsets=param_offsets(sizes), TOTAL=sum(sizes), GRAD_STRIDE=grad_scratch.shape[1],
        **_tile_args(plan, in_channels, num_classes, x.dtype))
    params = tuple(params)
    _reduce(partial, plan.programs, grads, params, params, params, params, partial, sizes, "none",
            (0,) * NUM_PARAMS, partial, None, 1.0, plan)


class TrainBuffers:
    """Everything one training step writes besides the parameters and optimizer state, for one batch
    size: allocated once, so that later steps allocate nothing (and a CUDA graph can replay them)."""

    def __init__(self, batch, in_channels, num_classes, like):
        self.plan = config.lenet_plan(batch, in_channels)
        self.batch, self.in_channels, self.num_classes = batch, in_channels, num_classes
        self.sizes = param_sizes(in_channels, num_classes)
        rows = self.plan.programs * self.plan.samples
        self.act = torch.empty((rows, ACT_STRIDE.value), dtype=like.dtype, device=like.device)
        self.win = torch.empty((rows, WIN_STRIDE.value), dtype=torch.int8, device=like.device)
        self.grad = config.partial_buffer((rows, GRAD_SCRATCH_FIXED + num_classes), like)
        self.partial = config.partial_buffer((self.plan.programs, sum(self.sizes)), like)
        self.loss_partial = config.partial_buffer((self.plan.programs,), like)
        self.loss = torch.empty((), dtype=like.dtype, device=like.device)


def train_step(x, labels, params, buffers, update, state1, state2, steps, hyper, momentum):
    """One step of mean cross-entropy training: forward, loss, backward and the optimizer update
    (update "sgd" or "adam", see lenet_reduce_kernel) in two launches; the loss lands in buffers.loss."""
    plan, batch = buffers.plan, buffers.batch
    params = tuple(params)
    lenet_train_kernel[(plan.programs,)](
        x, labels, params, tuple(steps), buffers.act, buffers.win, buffers.grad, buffers.partial,
        buffers.loss_partial, batch, 1.0 / batch, plan.tiles_per_program, offsets=param_offsets(buffers.sizes),
        TOTAL=sum(buffers.sizes), INCREMENT_STEPS=update == "adam", GRAD_STRIDE=buffers.grad.shape[1],
        **_tile_args(plan, buffers.in_channels, buffers.num_classes, x.dtype))
    _reduce(buffers.partial, plan.programs, params, params, state1, state2, steps, hyper, buffers.sizes, update,
            momentum, buffers.loss_partial, buffers.loss, 1.0 / batch, plan)
