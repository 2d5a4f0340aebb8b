"""max_pool2d: forward with argmax indices, and backward that routes each gradient to its max.

Indices follow torch: the flat position ih * W + iw inside the (H, W) plane. Ties keep the first
maximum in scan order (kh outer, kw inner); a NaN wins over any number, and the last NaN in the
window wins over earlier ones, as in torch's kernels. Padding cells never win.

Shared argument names: N, C, H, W input size; OH, OW output size; KH, KW, SH, SW, PH, PW, DH, DW
kernel, stride, leading padding and dilation; stride_<t><dim> element strides of tensor t;
IDX the integer type of every offset.
"""

import triton
import triton.language as tl

from . import config


@triton.jit
def max_pool2d_forward_kernel(
    x_ptr, y_ptr, idx_ptr,
    N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    IDX: tl.constexpr, BLOCK: tl.constexpr,
):
    """One output element per lane: y = max over the window, idx = where it was."""
    offs = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK).to(IDX)
    ok = offs < N * C * OH * OW
    n = offs // (C * OH * OW)
    c = (offs // (OH * OW)) % C
    oh = (offs // OW) % OH
    ow = offs % OW
    x_plane = x_ptr + n * stride_xn + c * stride_xc

    best = tl.full((BLOCK,), float("-inf"), x_ptr.dtype.element_ty)
    best_idx = tl.full((BLOCK,), -1, tl.int64)
    for kh in range(0, KH):
        ih = oh * SH - PH + kh * DH
        for kw in range(0, KW):
            iw = ow * SW - PW + kw * DW
            inside = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            val = tl.load(x_plane + ih * stride_xh + iw * stride_xw, mask=inside, other=float("-inf"))
            take = inside & ((val > best) | (val != val) | (best_idx < 0))
            best = tl.where(take, val, best)
            best_idx = tl.where(take, (ih * W + iw).to(tl.int64), best_idx)

    y_offs = n * stride_yn + c * stride_yc + oh * stride_yh + ow * stride_yw
    tl.store(y_ptr + y_offs, best, mask=ok)
    tl.store(idx_ptr + y_offs, best_idx, mask=ok)


@triton.jit
def max_pool2d_backward_kernel(
    g_ptr, idx_ptr, dx_ptr,
    N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_in, stride_ic, stride_ih, stride_iw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    IDX: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """One input element per lane: dx = sum of g over the windows whose max index is this element.

    Gathering instead of scattering with atomics keeps overlapping windows deterministic and works
    for every dtype.
    """
    offs = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK).to(IDX)
    ok = offs < N * C * H * W
    n = offs // (C * H * W)
    c = (offs // (H * W)) % C
    ih = (offs // W) % H
    iw = offs % W
    here = (ih * W + iw).to(tl.int64)
    g_plane = g_ptr + n * stride_gn + c * stride_gc
    idx_plane = idx_ptr + n * stride_in + c * stride_ic

    total = tl.zeros((BLOCK,), dtype=ACC)
    for kh in range(0, KH):
        # The output row whose window reaches ih through tap kh, if any.
        oh_scaled = ih + PH - kh * DH
        oh = oh_scaled // SH
        row_hit = ok & (oh_scaled >= 0) & (oh_scaled % SH == 0) & (oh < OH)
        for kw in range(0, KW):
            ow_scaled = iw + PW - kw * DW
            ow = ow_scaled // SW
            hit = row_hit & (ow_scaled >= 0) & (ow_scaled % SW == 0) & (ow < OW)
            winner = tl.load(idx_plane + oh * stride_ih + ow * stride_iw, mask=hit, other=-1)
            grad = tl.load(g_plane + oh * stride_gh + ow * stride_gw, mask=hit & (winner == here), other=0.0)
            total += grad.to(ACC)

    tl.store(dx_ptr + n * stride_dn + c * stride_dc + ih * stride_dh + iw * stride_dw,
             total.to(dx_ptr.dtype.element_ty), mask=ok)


def max_pool2d_forward(x, y, indices, kernel_size, stride, padding, dilation):
    """Writes the pooled values into y and the argmax positions into indices (same strides as y)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    block = config.elementwise_block(y.numel())
    max_pool2d_forward_kernel[(config.cdiv(y.numel(), block),)](
        x, y, indices, n, c, h, w, oh, ow, *kernel_size, *stride, *padding, *dilation,
        *x.stride(), *y.stride(), IDX=config.index_dtype(x, y, extra=x.numel()), BLOCK=block,
        **config.LAUNCH_OPTIONS["pool"],
    )


def max_pool2d_backward(grad_y, indices, dx, kernel_size, stride, padding, dilation):
    """Writes the input gradient into dx, given the output gradient and the forward's indices."""
    n, c, h, w = dx.shape
    oh, ow = grad_y.shape[2:]
    block = config.elementwise_block(dx.numel())
    max_pool2d_backward_kernel[(config.cdiv(dx.numel(), block),)](
        grad_y, indices, dx, n, c, h, w, oh, ow, *kernel_size, *stride, *padding, *dilation,
        *grad_y.stride(), *indices.stride(), *dx.stride(),
        IDX=config.index_dtype(grad_y, indices, dx, extra=dx.numel()),
        ACC=config.accumulator_dtype(dx.dtype), BLOCK=block, **config.LAUNCH_OPTIONS["pool"],
    )
