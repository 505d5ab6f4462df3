"""The Triton kernels of :func:`nested_als_solve` and their launcher (the
``"triton"`` backend's ``IMPLEMENTATIONS``). A program solves one row; each
conjugate-gradient step is one ``(R, D) x (D, D)`` product with the Gram part
(a torch matmul, on tensor cores) and one kernel that adds the row's nested
observed part in one pass over D per item and updates ``x``, the residual and
the direction in place."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_common import config, launch
from .reference import CG_TOLERANCE, coordinate_weights

TOLERANCE: tl.constexpr = tl.constexpr(CG_TOLERANCE)


@triton.jit
def _observed_part(v, cols, other_ptr, indices_ptr, start, end, coefs_ptr, stride_on, stride_od, b_coef, a_coef,
                   D, DIMS: tl.constexpr, L: tl.constexpr, ACC: tl.constexpr):
    """``sum_{i in row} (b_coef - a_coef t_i) ⊙ y_i`` with ``t_i[j] = sum_{l : d_l > j} c_l
    <y_i[:d_l], v[:d_l]>`` (``c_l = w_l (alpha_l - 1)``): the residual's observed part, item by
    item (``b_coef = m_{w alpha}``, ``a_coef = 1``), or with ``b_coef = 0, a_coef = -1`` that of ``A v``."""
    out = tl.zeros_like(v)
    for e in range(start, end):
        item = tl.load(indices_ptr + e).to(tl.int64)
        y = tl.load(other_ptr + item * stride_on + cols * stride_od, mask=cols < D, other=0.0).to(ACC)
        q = y * v
        scale = tl.zeros_like(v)
        for level in tl.static_range(L):
            c = tl.load(coefs_ptr + level).to(ACC)
            score = tl.sum(tl.where(cols < DIMS[level], q, 0.0), axis=0)
            scale += tl.where(cols < DIMS[level], c * score, 0.0)
        out += (b_coef - a_coef * scale) * y
    return out


@triton.jit
def _cg_kernel(
    x_ptr, r_ptr, p_ptr, gp_ptr, rs_ptr, other_ptr, indptr_ptr, indices_ptr, coefs_ptr, target_ptr,
    D, stride_on, stride_od,
    START: tl.constexpr, DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One row's step. ``START``: the residual ``r = b - A x`` (``gp`` holding
    ``gram x``), ``p = r``; else one conjugate-gradient step along ``p`` (``gp``
    holding ``gram p``), unless the row has converged. ``x``, ``r``, ``p`` are
    contiguous (R, D), ``rs`` (R,) the squared residuals."""
    ACC = tl.float64 if FP64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    at = row * D + cols
    start, end = tl.load(indptr_ptr + row), tl.load(indptr_ptr + row + 1)
    if START:
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC)
        target = tl.load(target_ptr + cols, mask=ok, other=0.0).to(ACC)
        r = _observed_part(x, cols, other_ptr, indices_ptr, start, end, coefs_ptr, stride_on, stride_od,
                           target, 1.0, D, DIMS, L, ACC) - tl.load(gp_ptr + at, mask=ok, other=0.0).to(ACC)
        tl.store(r_ptr + at, r, mask=ok)
        tl.store(p_ptr + at, r, mask=ok)
        tl.store(rs_ptr + row, tl.sum(r * r, axis=0))
    else:
        rs = tl.load(rs_ptr + row).to(ACC)
        if (rs >= TOLERANCE) | (rs != rs):  # NaN goes on, to the output
            p = tl.load(p_ptr + at, mask=ok, other=0.0).to(ACC)
            ap = tl.load(gp_ptr + at, mask=ok, other=0.0).to(ACC) + _observed_part(
                p, cols, other_ptr, indices_ptr, start, end, coefs_ptr, stride_on, stride_od, 0.0, -1.0,
                D, DIMS, L, ACC)
            a = rs / tl.sum(p * ap, axis=0)
            x = tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC) + a * p
            r = tl.load(r_ptr + at, mask=ok, other=0.0).to(ACC) - a * ap
            rs_new = tl.sum(r * r, axis=0)
            tl.store(x_ptr + at, x, mask=ok)
            tl.store(r_ptr + at, r, mask=ok)
            tl.store(p_ptr + at, r + (rs_new / rs) * p, mask=ok)
            tl.store(rs_ptr + row, rs_new)


def nested_als_solve(factors, other, gram, indptr, indices, dims, weights, alphas, cg_steps):
    """The solved ``(R, D)`` vectors."""
    rows, width = factors.shape
    x = factors.contiguous().clone()
    r, p = torch.empty_like(x), torch.empty_like(x)
    rs = x.new_empty(rows)
    weights, alphas = weights.to(x.dtype), alphas.to(x.dtype)
    coefs, target = weights * (alphas - 1), coordinate_weights(dims, weights * alphas)
    cfg = config(width)
    meta = dict(other_ptr=other, indptr_ptr=indptr, indices_ptr=indices, coefs_ptr=coefs, target_ptr=target,
                D=width, stride_on=other.stride(0), stride_od=other.stride(1),
                DIMS=tuple(dims), L=len(dims), FP64=x.dtype == torch.float64,
                BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"])
    if rows == 0:
        return x
    launch(_cg_kernel, (rows,), x_ptr=x, r_ptr=r, p_ptr=p, gp_ptr=x @ gram, rs_ptr=rs, START=True, **meta)
    for _ in range(cg_steps):
        launch(_cg_kernel, (rows,), x_ptr=x, r_ptr=r, p_ptr=p, gp_ptr=p @ gram, rs_ptr=rs, START=False, **meta)
    x[indptr[1:] == indptr[:-1]] = 0  # no observed item: the solution is zero
    return x


IMPLEMENTATIONS = {"nested_als_solve": nested_als_solve}
