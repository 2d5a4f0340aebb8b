"""max_pool2d: forward with argmax indices, and backward that routes each gradient to its max.

Indices follow torch: the flat position ih * W + iw inside the (H, W) plane. Ties keep the first
maximum in scan order (kh outer, kw inner); a NaN wins over any number, and the last NaN in the
window wins over earlier ones, as in torch's kernels. Padding cells never win.

Each program takes a tile of BLOCK_P planes (n, c) by BLOCK_Q positions in a plane. Where a
window's taps fall depends on the position alone, so that index arithmetic runs once per position
and is broadcast over the planes.

Shared argument names: PLANES = N * C; C, H, W input size; OH, OW output size; KH, KW, SH, SW, PH,
PW, DH, DW kernel, stride, leading padding and dilation; stride_<t><dim> element strides of tensor
t; IDX the integer type of every offset.
"""

import triton
import triton.language as tl

from . import config


@triton.jit
def _tile(PLANES, POSITIONS, IDX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """The program's planes and positions, and which of them exist."""
    planes = tl.program_id(0).to(IDX) * BLOCK_P + tl.arange(0, BLOCK_P).to(IDX)
    qs = tl.program_id(1).to(IDX) * BLOCK_Q + tl.arange(0, BLOCK_Q).to(IDX)
    return planes, qs, planes < PLANES, qs < POSITIONS


@triton.jit
def _plane_offsets(planes, C, stride_n, stride_c):
    """Each plane's (n, c) offset in a tensor with those strides."""
    return (planes // C) * stride_n + (planes % C) * stride_c


@triton.jit
def max_pool2d_forward_kernel(
    x_ptr, y_ptr, idx_ptr,
    PLANES, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    IDX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """y = max over each output position's window, idx = where it was."""
    planes, qs, plane_ok, q_ok = _tile(PLANES, OH * OW, IDX, BLOCK_P, BLOCK_Q)
    oh = qs // OW
    ow = qs % OW
    x_planes = _plane_offsets(planes, C, stride_xn, stride_xc)[:, None]

    # Offsets stay integers of the IDX width (not 64-bit pointers) and the winner a position in the
    # plane, widened to torch's int64 only when stored: fewer registers on a GPU.
    best = tl.full((BLOCK_P, BLOCK_Q), float("-inf"), x_ptr.dtype.element_ty)
    best_at = tl.full((BLOCK_P, BLOCK_Q), -1, IDX)
    for kh in range(0, KH):
        ih = oh * SH - PH + kh * DH
        for kw in range(0, KW):
            iw = ow * SW - PW + kw * DW
            inside = (q_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[None, :]
            val = tl.load(x_ptr + (x_planes + (ih * stride_xh + iw * stride_xw)[None, :]),
                          mask=plane_ok[:, None] & inside, other=float("-inf"))
            take = inside & ((val > best) | (val != val) | (best_at < 0))
            best = tl.where(take, val, best)
            best_at = tl.where(take, (ih * W + iw)[None, :], best_at)

    y_offs = _plane_offsets(planes, C, stride_yn, stride_yc)[:, None] + (oh * stride_yh + ow * stride_yw)[None, :]
    mask = plane_ok[:, None] & q_ok[None, :]
    tl.store(y_ptr + y_offs, best, mask=mask)
    tl.store(idx_ptr + y_offs, best_at.to(tl.int64), mask=mask)


@triton.jit
def max_pool2d_backward_kernel(
    g_ptr, idx_ptr, dx_ptr,
    PLANES, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, WINDOWS_H, WINDOWS_W,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_in, stride_ic, stride_ih, stride_iw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    IDX: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """dx = for each input position, the sum of g over the windows whose max index is that position.

    Gathering instead of scattering with atomics keeps overlapping windows deterministic and works
    for every dtype. WINDOWS_H (WINDOWS_W) is the most windows that one input row (column) lies in:
    1 when windows do not overlap, as in LeNet's pools, so each position then reads one window.
    """
    planes, qs, plane_ok, q_ok = _tile(PLANES, H * W, IDX, BLOCK_P, BLOCK_Q)
    ih = qs // W
    iw = qs % W
    g_planes = _plane_offsets(planes, C, stride_gn, stride_gc)[:, None]
    idx_planes = _plane_offsets(planes, C, stride_in, stride_ic)[:, None]
    # The last window that starts at or before the position; earlier ones may reach it too.
    last_oh = (ih + PH) // SH
    last_ow = (iw + PW) // SW

    total = tl.zeros((BLOCK_P, BLOCK_Q), dtype=ACC)
    for j in range(0, WINDOWS_H):
        oh = last_oh - j
        # The position's tap in that window, if it is one: a whole multiple of the dilation, within KH.
        tap_h = ih + PH - oh * SH
        row_hit = q_ok & (oh >= 0) & (oh < OH) & (tap_h % DH == 0) & (tap_h < KH * DH)
        for i in range(0, WINDOWS_W):
            ow = last_ow - i
            tap_w = iw + PW - ow * SW
            hit = row_hit & (ow >= 0) & (ow < OW) & (tap_w % DW == 0) & (tap_w < KW * DW)
            mask = plane_ok[:, None] & hit[None, :]
            window = (oh * stride_ih + ow * stride_iw)[None, :]
            winner = tl.load(idx_ptr + (idx_planes + window), mask=mask, other=-1)
            grad = tl.load(g_ptr + (g_planes + (oh * stride_gh + ow * stride_gw)[None, :]),
                           mask=mask & (winner == qs[None, :]), other=0.0)
            total += grad.to(ACC)

    dx_offs = _plane_offsets(planes, C, stride_dn, stride_dc)[:, None] + (ih * stride_dh + iw * stride_dw)[None, :]
    tl.store(dx_ptr + dx_offs, total.to(dx_ptr.dtype.element_ty), mask=plane_ok[:, None] & q_ok[None, :])


def _grid(planes, positions):
    block_p, block_q = config.plane_tile(planes, positions)
    return (config.cdiv(planes, block_p), config.cdiv(positions, block_q)), dict(BLOCK_P=block_p, BLOCK_Q=block_q)


def max_pool2d_forward(x, y, indices, kernel_size, stride, padding, dilation):
    """Writes the pooled values into y and the argmax positions into indices (same strides as y)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    grid, blocks = _grid(n * c, oh * ow)
    max_pool2d_forward_kernel[grid](
        x, y, indices, n * c, c, h, w, oh, ow, *kernel_size, *stride, *padding, *dilation,
        *x.stride(), *y.stride(), IDX=config.index_dtype(x, y, extra=x.numel()), **blocks,
        **config.LAUNCH_OPTIONS["pool"],
    )


def max_pool2d_backward(grad_y, indices, dx, kernel_size, stride, padding, dilation):
    """Writes the input gradient into dx, given the output gradient and the forward's indices."""
    n, c, h, w = dx.shape
    oh, ow = grad_y.shape[2:]
    grid, blocks = _grid(n * c, h * w)
    # A window spans dilation * (kernel - 1) + 1 elements and the next one starts stride later.
    windows = [config.cdiv(d * (k - 1) + 1, s) for k, s, d in zip(kernel_size, stride, dilation)]
    max_pool2d_backward_kernel[grid](
        grad_y, indices, dx, n * c, c, h, w, oh, ow, *kernel_size, *stride, *padding, *dilation, *windows,
        *grad_y.stride(), *indices.stride(), *dx.stride(),
        IDX=config.index_dtype(grad_y, indices, dx, extra=dx.numel()),
        ACC=config.accumulator_dtype(dx.dtype), **blocks, **config.LAUNCH_OPTIONS["pool"],
    )
