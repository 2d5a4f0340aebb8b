"""conv2d as implicit GEMM: forward (+bias, +ReLU), grad-input, grad-weight with fused grad-bias, and
the fused ReLU's gradient gate.

Every tensor is addressed through its own strides, so non-contiguous and channels_last tensors
are read in place. Padding is given as (top, left); the bottom/right padding only shows up in the
output size, which the caller chooses, so asymmetric padding ('same' with even kernels) works.

Shared argument names:
    N, H, W            input batch and spatial size; OH, OW the output's.
    C_IN_G, C_OUT_G    input and output channels per group; program_id(2) picks the group.
    KH, KW             kernel size.
    SH, SW / PH, PW / DH, DW   stride, leading padding and dilation.
    stride_<t><dim>    element strides of tensor t (x input, w weight, y output, g gradient).
    IDX                tl.int32 or tl.int64: the integer type of every offset (see config.index_dtype).
    ACC                accumulator type, also passed to tl.dot as out_dtype (triton 3.6 asserts on a
                       float64 accumulator without it); DOT_PRECISION the tl.dot input precision.
"""

import torch
import triton
import triton.language as tl

from . import config
from .reduce import sum_partials

# A coordinate that fails every bounds test; masks rows and taps past the end for free.
OUTSIDE = tl.constexpr(-(1 << 29))


@triton.jit
def _relu_gate(grad, out):
    # torch's threshold_backward: the gradient passes unless the output is <= 0 (NaN passes).
    return tl.where(out <= 0, 0.0, grad)


@triton.jit
def conv2d_forward_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, H, W, OH, OW, C_IN_G, C_OUT_G, KH, KW,
    SH, SW, PH, PW, DH, DW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw,
    HAS_BIAS: tl.constexpr, APPLY_RELU: tl.constexpr,
    IDX: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, g*C_OUT_G + o, oh, ow] = act(sum_{i,kh,kw} x[n, g*C_IN_G + i, ih, iw] * w[.., i, kh, kw] + b).

    GEMM view: rows are (n, oh, ow), columns are output channels, the reduction runs over
    (i, kh, kw) with ih = oh*SH - PH + kh*DH.
    """
    group = tl.program_id(2).to(IDX)
    rows = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)
    cols = tl.program_id(1).to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)
    M = N * OH * OW
    K = C_IN_G * KH * KW
    row_ok = rows < M
    col_ok = cols < C_OUT_G

    # Row index -> (n, oh, ow) -> top-left input corner of the receptive field.
    n = rows // (OH * OW)
    oh = (rows // OW) % OH
    ow = rows % OW
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    # Rows past the end test as if their corner were far outside, so the bounds test masks them.
    ih0_test = tl.where(row_ok, ih0, OUTSIDE)
    # The offset of x[n, i, ih, iw] splits into a row part and a reduction part, so the 2-D
    # pointer tile costs one broadcast add.
    x_rows = x_ptr + n * stride_xn + group * C_IN_G * stride_xc + ih0 * stride_xh + iw0 * stride_xw
    out_channel = group * C_OUT_G + cols

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(IDX)
        k_ok = ks < K
        # Reduction index -> (input channel, kh, kw); past-the-end taps test as far outside.
        i = ks // (KH * KW)
        kh = (ks // KW) % KH
        kw = ks % KW
        ih = ih0_test[:, None] + tl.where(k_ok, kh * DH, OUTSIDE)[None, :]
        iw = iw0[:, None] + (kw * DW)[None, :]
        x_mask = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tile = tl.load(x_rows[:, None] + (i * stride_xc + kh * DH * stride_xh + kw * DW * stride_xw)[None, :],
                         mask=x_mask, other=0.0)
        w_offs = (out_channel * stride_wo)[None, :] + (i * stride_wi + kh * stride_wh + kw * stride_ww)[:, None]
        w_tile = tl.load(w_ptr + w_offs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(x_tile, w_tile, acc, input_precision=DOT_PRECISION, out_dtype=ACC)

    # Epilogue while the accumulator is still wide: bias, then ReLU (NaN stays NaN, as in torch).
    if HAS_BIAS:
        acc += tl.load(b_ptr + out_channel, mask=col_ok, other=0.0).to(ACC)[None, :]
    if APPLY_RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    y_offs = (n * stride_yn + oh * stride_yh + ow * stride_yw)[:, None] + (out_channel * stride_yc)[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def relu_grad_kernel(
    g_ptr, y_ptr, out_ptr,
    PLANES, C, W, POSITIONS,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_on, stride_oc, stride_oh, stride_ow,
    IDX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """out = g gated by a fused ReLU's output y, over tiles of BLOCK_P planes (n, c) by BLOCK_Q
    positions (h, w) in a plane, whose offsets are computed apart and broadcast."""
    planes = tl.program_id(0).to(IDX) * BLOCK_P + tl.arange(0, BLOCK_P).to(IDX)
    qs = tl.program_id(1).to(IDX) * BLOCK_Q + tl.arange(0, BLOCK_Q).to(IDX)
    mask = (planes < PLANES)[:, None] & (qs < POSITIONS)[None, :]
    n, c, h, w = planes // C, planes % C, qs // W, qs % W
    g = tl.load(g_ptr + (n * stride_gn + c * stride_gc)[:, None] + (h * stride_gh + w * stride_gw)[None, :], mask=mask)
    y = tl.load(y_ptr + (n * stride_yn + c * stride_yc)[:, None] + (h * stride_yh + w * stride_yw)[None, :], mask=mask)
    tl.store(out_ptr + (n * stride_on + c * stride_oc)[:, None] + (h * stride_oh + w * stride_ow)[None, :],
             _relu_gate(g, y), mask=mask)


@triton.jit
def conv2d_grad_input_kernel(
    g_ptr, w_ptr, dx_ptr,
    N, H, W, OH, OW, C_IN_G, C_OUT_G, KH, KW,
    SH, SW, PH, PW, DH, DW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_dn, stride_dc, stride_dh, stride_dw,
    UNIT_STRIDE: tl.constexpr,
    IDX: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[n, g*C_IN_G + i, ih, iw] = sum_{o,kh,kw} g[n, g*C_OUT_G + o, oh, ow] * w[.., i, kh, kw].

    GEMM view: rows are input positions (n, ih, iw), columns are input channels, the reduction
    runs over (o, kh, kw). Only (kh, kw) with ih + PH - kh*DH a non-negative multiple of SH
    (and the same for w) reach an output position; the rest are masked. A fused ReLU's gate is
    applied to g beforehand (relu_grad_kernel): each g element is read once per tap here.
    """
    group = tl.program_id(2).to(IDX)
    rows = tl.program_id(0).to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)
    cols = tl.program_id(1).to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)
    M = N * H * W
    K = C_OUT_G * KH * KW
    row_ok = rows < M
    col_ok = cols < C_IN_G

    n = rows // (H * W)
    ih = (rows // W) % H
    iw = rows % W
    in_channel = group * C_IN_G + cols
    # Tap (kh, kw) carries input (ih, iw) to output (oh, ow) = ((ih + PH - kh*DH) / SH, ...) when
    # that divides exactly. Rows past the end test as if far outside.
    oh_base = tl.where(row_ok, ih + PH, OUTSIDE)
    ow_base = iw + PW
    # With unit stride the offsets split into a row part and a reduction part (one broadcast add
    # per pointer tile): g[n, o, oh, ow] sits at g_rows[m] + g_cols[k].
    g_rows = g_ptr + n * stride_gn + (ih + PH) * stride_gh + ow_base * stride_gw

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(IDX)
        k_ok = ks < K
        o = group * C_OUT_G + ks // (KH * KW)
        kh = (ks // KW) % KH
        kw = ks % KW
        oh_scaled = oh_base[:, None] - tl.where(k_ok, kh * DH, -OUTSIDE)[None, :]
        ow_scaled = ow_base[:, None] - (kw * DW)[None, :]
        if UNIT_STRIDE:
            hit = (oh_scaled >= 0) & (oh_scaled < OH) & (ow_scaled >= 0) & (ow_scaled < OW)
            g_tile = tl.load(g_rows[:, None] + (o * stride_gc - kh * DH * stride_gh - kw * DW * stride_gw)[None, :],
                             mask=hit, other=0.0)
        else:
            oh = oh_scaled // SH
            ow = ow_scaled // SW
            hit = (oh_scaled >= 0) & (ow_scaled >= 0) & (oh_scaled % SH == 0) & (ow_scaled % SW == 0)
            hit = hit & (oh < OH) & (ow < OW)
            g_tile = tl.load(g_ptr + (n * stride_gn)[:, None] + (o * stride_gc)[None, :] + oh * stride_gh
                             + ow * stride_gw, mask=hit, other=0.0)
        w_offs = (o * stride_wo + kh * stride_wh + kw * stride_ww)[:, None] + (cols * stride_wi)[None, :]
        w_tile = tl.load(w_ptr + w_offs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(g_tile, w_tile, acc, input_precision=DOT_PRECISION, out_dtype=ACC)

    dx_offs = (n * stride_dn + ih * stride_dh + iw * stride_dw)[:, None] + (in_channel * stride_dc)[None, :]
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def conv2d_grad_weight_kernel(
    g_ptr, y_ptr, x_ptr, dw_ptr, db_ptr,
    N, H, W, OH, OW, C_IN_G, C_OUT_G, KH, KW,
    SH, SW, PH, PW, DH, DW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dw_split, stride_db_split, STEPS_PER_SPLIT,
    GATE_RELU: tl.constexpr, HAS_BIAS: tl.constexpr,
    IDX: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[g*C_OUT_G + o, i, kh, kw] = sum_{n,oh,ow} g[n, g*C_OUT_G + o, oh, ow] * x[n, g*C_IN_G + i, ih, iw].

    GEMM view: rows are output channels, columns are (i, kh, kw), the reduction runs over
    (n, oh, ow). program_id(1) picks one of SPLITS slices of that reduction; each slice writes its
    own partial (dw_ptr + split * stride_dw_split, contiguous (C_OUT, C_IN_G*KH*KW) layout), and a
    second kernel sums the slices when SPLITS > 1. With HAS_BIAS, the first column tile also sums
    the gradient rows into db (the bias gradient), reusing the tiles it already loaded.
    """
    tiles_n = tl.cdiv(C_IN_G * KH * KW, BLOCK_N)
    pid_m = tl.program_id(0) // tiles_n
    pid_n = tl.program_id(0) % tiles_n
    split = tl.program_id(1).to(IDX)
    group = tl.program_id(2).to(IDX)
    rows = pid_m.to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)
    cols = pid_n.to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)
    K_COLS = C_IN_G * KH * KW
    R = N * OH * OW
    row_ok = rows < C_OUT_G
    col_ok = cols < K_COLS
    out_channel = group * C_OUT_G + rows

    # Column index -> (input channel, kh, kw).
    i = group * C_IN_G + cols // (KH * KW)
    kh = (cols // KW) % KH
    kw = cols % KW

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC)
    r_begin = split * STEPS_PER_SPLIT * BLOCK_K
    r_end = tl.minimum(r_begin + STEPS_PER_SPLIT * BLOCK_K, R)
    for r0 in range(r_begin, r_end, BLOCK_K):
        rs = r0 + tl.arange(0, BLOCK_K).to(IDX)
        r_ok = rs < r_end
        n = rs // (OH * OW)
        oh = (rs // OW) % OH
        ow = rs % OW
        g_mask = row_ok[:, None] & r_ok[None, :]
        g_tile = tl.load(g_ptr + (out_channel * stride_gc)[:, None] + (n * stride_gn + oh * stride_gh + ow * stride_gw)[None, :],
                         mask=g_mask, other=0.0)
        if GATE_RELU:
            y_tile = tl.load(y_ptr + (out_channel * stride_yc)[:, None]
                             + (n * stride_yn + oh * stride_yh + ow * stride_yw)[None, :], mask=g_mask, other=0.0)
            g_tile = _relu_gate(g_tile, y_tile)
        ih = (oh * SH - PH)[:, None] + (kh * DH)[None, :]
        iw = (ow * SW - PW)[:, None] + (kw * DW)[None, :]
        x_mask = r_ok[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tile = tl.load(x_ptr + (n * stride_xn)[:, None] + (i * stride_xc)[None, :] + ih * stride_xh + iw * stride_xw,
                         mask=x_mask, other=0.0)
        acc = tl.dot(g_tile, x_tile, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            bias_acc += tl.sum(g_tile.to(ACC), axis=1)

    dw_offs = split * stride_dw_split + (out_channel * K_COLS)[:, None] + cols[None, :]
    tl.store(dw_ptr + dw_offs, acc.to(dw_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    if HAS_BIAS:
        if pid_n == 0:
            tl.store(db_ptr + split * stride_db_split + out_channel, bias_acc.to(db_ptr.dtype.element_ty), mask=row_ok)


def _geometry(x, weight, y, stride, pads, dilation, groups):
    n, _, h, w = x.shape
    _, _, oh, ow = y.shape
    c_out, c_in_g, kh, kw = weight.shape
    return (n, h, w, oh, ow, c_in_g, c_out // groups, kh, kw,
            stride[0], stride[1], pads[0], pads[1], dilation[0], dilation[1])


def _dtypes(*tensors, extra=0):
    dtype = tensors[0].dtype
    return dict(IDX=config.index_dtype(*tensors, extra=extra), ACC=config.accumulator_dtype(dtype),
                DOT_PRECISION=config.dot_precision(dtype))


def conv2d_forward(x, weight, bias, y, stride, pads, dilation, groups, apply_relu):
    """Writes conv2d(x, weight, bias) (ReLU'd if apply_relu) into y, whose shape fixes the output size."""
    geometry = _geometry(x, weight, y, stride, pads, dilation, groups)
    rows, cols, red = y.shape[0] * y.shape[2] * y.shape[3], geometry[6], geometry[5] * geometry[7] * geometry[8]
    bm, bn, bk = config.gemm_tile(rows, cols, red)
    grid = (config.cdiv(rows, bm), config.cdiv(cols, bn), groups)
    conv2d_forward_kernel[grid](
        x, weight, bias if bias is not None else weight, y, *geometry,
        *x.stride(), *weight.stride(), *y.stride(),
        HAS_BIAS=bias is not None, APPLY_RELU=apply_relu, **_dtypes(x, weight, y, extra=rows),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **config.LAUNCH_OPTIONS["conv"],
    )


def _relu_grad(grad_y, y):
    """grad_y gated by y, the output of a fused ReLU, in a new tensor laid out as y."""
    out = torch.empty_like(y)
    n, c, h, w = out.shape
    block_p, block_q = config.plane_tile(n * c, h * w)
    relu_grad_kernel[(config.cdiv(n * c, block_p), config.cdiv(h * w, block_q))](
        grad_y, y, out, n * c, c, w, h * w, *grad_y.stride(), *y.stride(), *out.stride(),
        IDX=config.index_dtype(grad_y, y, out), BLOCK_P=block_p, BLOCK_Q=block_q, **config.LAUNCH_OPTIONS["conv"],
    )
    return out


def conv2d_grad_input(grad_y, y, weight, dx, stride, pads, dilation, groups, gate_relu):
    """Writes the gradient of conv2d with respect to its input into dx (shape of the input).

    y is the forward output, read only when gate_relu (the forward fused a ReLU): the gate then runs
    first, in a launch of its own, since the input gradient reads each output gradient once per tap.
    """
    if gate_relu:
        grad_y = _relu_grad(grad_y, y)
    geometry = _geometry(dx, weight, grad_y, stride, pads, dilation, groups)
    rows, cols, red = dx.shape[0] * dx.shape[2] * dx.shape[3], geometry[5], geometry[6] * geometry[7] * geometry[8]
    bm, bn, bk = config.gemm_tile(rows, cols, red)
    grid = (config.cdiv(rows, bm), config.cdiv(cols, bn), groups)
    conv2d_grad_input_kernel[grid](
        grad_y, weight, dx, *geometry,
        *grad_y.stride(), *weight.stride(), *dx.stride(),
        UNIT_STRIDE=tuple(stride) == (1, 1), **_dtypes(grad_y, weight, dx, extra=rows),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **config.LAUNCH_OPTIONS["conv"],
    )


def conv2d_grad_weight(grad_y, y, x, dw, db, stride, pads, dilation, groups, gate_relu):
    """Writes the weight gradient into dw (contiguous, weight's shape) and, if db is given, the bias gradient."""
    y = y if gate_relu else grad_y
    geometry = _geometry(x, dw, grad_y, stride, pads, dilation, groups)
    c_out = dw.shape[0]
    rows, cols = geometry[6], geometry[5] * geometry[7] * geometry[8]
    red = grad_y.shape[0] * grad_y.shape[2] * grad_y.shape[3]
    bm, bn, bk = config.gemm_tile(rows, cols, red)
    tiles = config.cdiv(rows, bm) * config.cdiv(cols, bn)
    splits, steps_per_split = config.split_plan(tiles * groups, red, bk)
    dw_out = dw if splits == 1 else config.partial_buffer((splits, *dw.shape), dw)
    db_out = db if splits == 1 or db is None else config.partial_buffer((splits, c_out), dw)
    conv2d_grad_weight_kernel[(tiles, splits, groups)](
        grad_y, y, x, dw_out, db_out if db is not None else dw_out, *geometry,
        *grad_y.stride(), *y.stride(), *x.stride(),
        dw.numel(), c_out, steps_per_split,
        GATE_RELU=gate_relu, HAS_BIAS=db is not None, **_dtypes(grad_y, y, x, extra=red),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **config.LAUNCH_OPTIONS["conv"],
    )
    if splits > 1:
        sum_partials(dw_out, dw)
        if db is not None:
            sum_partials(db_out, db)
