"""Triton kernels of the Matryoshka sampled softmax, and their launchers (the
``"triton"`` backend's ``IMPLEMENTATIONS``).

The forward reads the candidates as the MNS kernel does (each row gathered by
id, once) and keeps an online log-sum-exp per level in place of the running
maximum; the backward recomputes the scores from the saved ``lse``. ``PER_LEVEL``
selects the ``(B, L, M)`` pool layout, ``COSINE`` cosine scores, ``LOG_Q`` /
``POS_LOG_Q`` the logQ corrections (subtracted from the logits).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import acc_dtype, masked
from ..triton_common import (COSINE_EPS, column, launch, level_meta, level_scores, load_rows, placeholder,
                             row_block, segment_columns, strides)


@triton.jit
def _pool_row(item_ptr, cand_ptr, q_ptr, rows, row_ok, cols, mask, level, m, width,
              stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC: tl.constexpr, LOG_Q: tl.constexpr):
    """Candidate m of each row's pool ``level`` (0 for a shared pool): its ids,
    its row's first ``width`` columns (zeros elsewhere and at padding, id < 0),
    the mask of the columns read, and its logQ correction (0 without
    ``LOG_Q``; laid out as the candidates)."""
    at = rows * stride_cb + level * stride_cl + m * stride_cm
    ids = tl.load(cand_ptr + at, mask=row_ok, other=-1).to(tl.int64)
    read = mask & (ids >= 0)[:, None] & (cols[None, :] < width)
    e = tl.load(item_ptr + ids[:, None] * stride_in + cols[None, :] * stride_id, mask=read, other=0.0).to(ACC)
    return ids, e, read, _correction(q_ptr, at, row_ok, ACC, LOG_Q)


@triton.jit
def _correction(q_ptr, at, row_ok, ACC: tl.constexpr, ON: tl.constexpr):
    """``q_ptr[at]`` ``(BLOCK_B,)`` (a logQ correction), or 0 without ``ON``."""
    if ON:
        return tl.load(q_ptr + at, mask=row_ok, other=0.0).to(ACC)
    return tl.zeros(at.shape, ACC)


@triton.jit
def _norms(x, cols, lvl, DIMS: tl.constexpr, L: tl.constexpr, COSINE: tl.constexpr):
    """The clamped prefix norms ``(BLOCK_B, BLOCK_L)`` of rows ``x`` (cosine), or ones."""
    if COSINE:
        return tl.maximum(tl.sqrt(level_scores(x * x, cols, lvl, DIMS, L)), COSINE_EPS)
    return tl.full((x.shape[0], lvl.shape[0]), 1.0, x.dtype)


@triton.jit
def _scaled(dots, u_norms, norms, inv_t, COSINE: tl.constexpr):
    """Scores over the temperature: inner products, or cosines."""
    if COSINE:
        return dots / (u_norms * norms) * inv_t
    return dots * inv_t


@triton.jit
def _softmax_forward_kernel(
    user_ptr, pos_ptr, item_ptr, cand_ptr, weight_ptr, q_ptr, pos_q_ptr, loss_ptr, lse_ptr,
    B, M, D, inv_t,
    stride_ub, stride_ud, stride_pb, stride_pd, stride_in, stride_id, stride_cb, stride_cl, stride_cm,
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, PER_LEVEL: tl.constexpr, COSINE: tl.constexpr,
    LOG_Q: tl.constexpr, POS_LOG_Q: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Online log-sum-exp per level (running maximum and rescaled sum, as in
    flash attention), started from the positive's score; every candidate row is
    gathered once."""
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)
    p = load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
    u_norms = _norms(u, cols, lvl, DIMS, L, COSINE)
    pos_scores = _scaled(level_scores(u * p, cols, lvl, DIMS, L), u_norms, _norms(p, cols, lvl, DIMS, L, COSINE),
                         inv_t, COSINE)
    pos_scores -= _correction(pos_q_ptr, rows, row_ok, ACC, POS_LOG_Q)[:, None]  # the positive's logits
    top = pos_scores
    total = tl.full((BLOCK_B, BLOCK_L), 1.0, ACC)
    for m in range(M):
        if PER_LEVEL:
            x = tl.full((BLOCK_B, BLOCK_L), float("-inf"), ACC)
            for level in tl.static_range(L):
                ids, e, _, q = _pool_row(item_ptr, cand_ptr, q_ptr, rows, row_ok, cols, mask, level, m, DIMS[level],
                                         stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC, LOG_Q)
                s = tl.sum(u * e, axis=1)
                if COSINE:
                    s = s / (column(u_norms, lvl, level) * tl.maximum(tl.sqrt(tl.sum(e * e, axis=1)), COSINE_EPS))
                s = tl.where(ids >= 0, s * inv_t - q, float("-inf"))
                x = tl.where(lvl[None, :] == level, s[:, None], x)
        else:
            ids, e, _, q = _pool_row(item_ptr, cand_ptr, q_ptr, rows, row_ok, cols, mask, 0, m, D,
                                     stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC, LOG_Q)
            x = _scaled(level_scores(u * e, cols, lvl, DIMS, L), u_norms, _norms(e, cols, lvl, DIMS, L, COSINE),
                        inv_t, COSINE)
            x = tl.where((ids >= 0)[:, None], x - q[:, None], float("-inf"))
        new_top = tl.maximum(top, x)
        total = total * tl.exp(top - new_top) + tl.exp(x - new_top)  # NaN propagates
        top = new_top
    lse = top + tl.log(total)
    out_ok = row_ok[:, None] & (lvl[None, :] < L)
    w = tl.load(weight_ptr + lvl, mask=lvl < L, other=0.0).to(ACC)
    loss = tl.sum(tl.where(lvl[None, :] < L, w[None, :] * (lse - pos_scores), 0.0), axis=1)
    tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_ok)
    tl.store(lse_ptr + rows[:, None] * L + lvl[None, :], lse, mask=out_ok)


@triton.jit
def _pool_gradients(coef, x, u_norms, norms, u, row, cols, lvl, inv_t,
                    DIMS: tl.constexpr, L: tl.constexpr, COSINE: tl.constexpr):
    """``(d user, d row)`` tiles from the per-level gradients ``coef`` (BLOCK_B,
    BLOCK_L) of the scaled scores ``x`` of ``row`` (a shared-pool candidate or the
    positive): inner products ``coef u`` and ``coef row`` over each level's
    columns; cosines ``s = x t`` add ``-coef s / nu^2 u`` and ``-coef s / ne^2 row``
    and divide the cross terms by ``nu ne``."""
    if COSINE:
        cosines = x / inv_t
        cross = segment_columns(coef / (u_norms * norms), cols, lvl, DIMS, L)
        return (cross * row - segment_columns(coef * cosines / (u_norms * u_norms), cols, lvl, DIMS, L) * u,
                cross * u - segment_columns(coef * cosines / (norms * norms), cols, lvl, DIMS, L) * row)
    cross = segment_columns(coef, cols, lvl, DIMS, L)
    return cross * row, cross * u


@triton.jit
def _level_gradients(c, s, un, en, u, row, inv_t, COSINE: tl.constexpr):
    """:func:`_pool_gradients` for one level's row (``c``, ``s``, norms: (BLOCK_B,));
    the caller masks the columns past the level's width."""
    if COSINE:
        cosines = s / inv_t
        cross = (c / (un * en))[:, None]
        return (cross * row - (c * cosines / (un * un))[:, None] * u,
                cross * u - (c * cosines / (en * en))[:, None] * row)
    return c[:, None] * row, c[:, None] * u


@triton.jit
def _softmax_backward_kernel(
    grad_ptr, user_ptr, pos_ptr, item_ptr, cand_ptr, lse_ptr, weight_ptr, q_ptr, pos_q_ptr,
    grad_user_ptr, grad_pos_ptr, grad_item_ptr,
    B, M, D, inv_t,
    stride_ub, stride_ud, stride_pb, stride_pd, stride_in, stride_id, stride_cb, stride_cl, stride_cm,
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, PER_LEVEL: tl.constexpr, COSINE: tl.constexpr,
    LOG_Q: tl.constexpr, POS_LOG_Q: tl.constexpr, ROWS_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Recomputes every candidate's scores, weighs them by the softmax
    ``exp(s - lse)``, accumulates the user gradient and (``ROWS_GRAD``) adds each
    candidate row's gradient into the item gradient with atomics (repeated ids sum)."""
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)
    p = load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
    level_ok = row_ok[:, None] & (lvl[None, :] < L)
    lse = tl.load(lse_ptr + rows[:, None] * L + lvl[None, :], mask=level_ok, other=0.0).to(ACC)
    grad = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    w = tl.load(weight_ptr + lvl, mask=lvl < L, other=0.0).to(ACC)
    g2d = tl.where(level_ok, grad[:, None] * w[None, :] * inv_t, 0.0)  # (BLOCK_B, BLOCK_L)
    u_norms = _norms(u, cols, lvl, DIMS, L, COSINE)

    p_norms = _norms(p, cols, lvl, DIMS, L, COSINE)
    x = _scaled(level_scores(u * p, cols, lvl, DIMS, L), u_norms, p_norms, inv_t, COSINE)
    pos_q = _correction(pos_q_ptr, rows, row_ok, ACC, POS_LOG_Q)[:, None]
    grad_u, grad_p = _pool_gradients(g2d * (tl.exp(x - pos_q - lse) - 1.0), x, u_norms, p_norms, u, p, cols, lvl,
                                     inv_t, DIMS, L, COSINE)
    grad_u, grad_p = tl.where(mask, grad_u, 0.0), tl.where(mask, grad_p, 0.0)
    for m in range(M):
        if PER_LEVEL:
            for level in tl.static_range(L):
                ids, e, read, q = _pool_row(item_ptr, cand_ptr, q_ptr, rows, row_ok, cols, mask, level, m,
                                            DIMS[level], stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC,
                                            LOG_Q)
                un = column(u_norms, lvl, level)
                en = un  # unused for inner products
                if COSINE:
                    en = tl.maximum(tl.sqrt(tl.sum(e * e, axis=1)), COSINE_EPS)
                s = _scaled(tl.sum(u * e, axis=1), un, en, inv_t, COSINE)
                c = column(g2d, lvl, level) * tl.exp(s - q - column(lse, lvl, level))
                user_grad, row_grad = _level_gradients(c, s, un, en, u, e, inv_t, COSINE)
                grad_u += tl.where(read, user_grad, 0.0)
                if ROWS_GRAD:
                    tl.atomic_add(grad_item_ptr + ids[:, None] * D + cols[None, :], row_grad, mask=read)
        else:
            ids, e, read, q = _pool_row(item_ptr, cand_ptr, q_ptr, rows, row_ok, cols, mask, 0, m, D,
                                        stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC, LOG_Q)
            e_norms = _norms(e, cols, lvl, DIMS, L, COSINE)
            x = _scaled(level_scores(u * e, cols, lvl, DIMS, L), u_norms, e_norms, inv_t, COSINE)
            user_grad, row_grad = _pool_gradients(g2d * tl.exp(x - q[:, None] - lse), x, u_norms, e_norms, u, e,
                                                  cols, lvl, inv_t, DIMS, L, COSINE)
            grad_u += tl.where(read, user_grad, 0.0)
            if ROWS_GRAD:
                tl.atomic_add(grad_item_ptr + ids[:, None] * D + cols[None, :], row_grad, mask=read)
    out = rows[:, None] * D + cols[None, :]
    tl.store(grad_user_ptr + out, grad_u.to(grad_user_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_pos_ptr + out, grad_p.to(grad_pos_ptr.dtype.element_ty), mask=mask)


def _shared_arguments(user, pos, item_weight, candidates, dims, weights, temperature, cosine, log_q, pos_log_q):
    """The grid and the keyword arguments both softmax kernels take alike."""
    grid, meta = level_meta(user, dims)
    per_level = candidates.dim() == 3
    acc = acc_dtype(user.dtype)
    if log_q is not None and log_q.stride() != candidates.stride():  # the kernels read both at one offset
        candidates, log_q = candidates.contiguous(), log_q.contiguous()
    pos_log_q = None if pos_log_q is None else pos_log_q.contiguous()
    arguments = dict(
        user_ptr=user, pos_ptr=pos, item_ptr=item_weight, cand_ptr=candidates, weight_ptr=weights.contiguous(),
        q_ptr=placeholder(user, 1, acc) if log_q is None else log_q,
        pos_q_ptr=placeholder(user, 1, acc) if pos_log_q is None else pos_log_q,
        B=user.shape[0], M=candidates.shape[-1], D=user.shape[1], inv_t=1.0 / temperature,
        **strides("u", user, "b", "d"), **strides("p", pos, "b", "d"), **strides("i", item_weight, "n", "d"),
        stride_cb=candidates.stride(0), stride_cl=candidates.stride(1) if per_level else 0,
        stride_cm=candidates.stride(-1),
        PER_LEVEL=per_level, COSINE=bool(cosine), LOG_Q=log_q is not None, POS_LOG_Q=pos_log_q is not None, **meta)
    return grid, arguments


def mrl_softmax_loss(user, pos, item_weight, candidates, dims, weights, temperature, cosine, log_q, pos_log_q):
    """``(loss (B,), lse (B, L))``."""
    grid, arguments = _shared_arguments(user, pos, item_weight, candidates, dims, weights, temperature, cosine,
                                        log_q, pos_log_q)
    loss = user.new_empty((user.shape[0],))
    lse = user.new_empty((user.shape[0], len(dims)), dtype=acc_dtype(user.dtype))
    launch(_softmax_forward_kernel, grid, loss_ptr=loss, lse_ptr=lse, **arguments)
    return loss, lse


def mrl_softmax_loss_backward(grad, user, pos, item_weight, candidates, lse, dims, weights, temperature, cosine,
                              log_q, pos_log_q, output_mask):
    """``(d user, d pos, d item_weight)``; the item gradient accumulates in
    float32 (atomics for half tables), cast once at the end, and is not formed
    where ``output_mask`` masks it."""
    grid, arguments = _shared_arguments(user, pos, item_weight, candidates, dims, weights, temperature, cosine,
                                        log_q, pos_log_q)
    grad_user, grad_pos = user.new_empty(user.shape), pos.new_empty(pos.shape)  # contiguous
    grad_items = torch.zeros(item_weight.shape if output_mask[2] else (0,), dtype=lse.dtype, device=item_weight.device)
    launch(_softmax_backward_kernel, grid, grad_ptr=grad.contiguous(), lse_ptr=lse.contiguous(),
           grad_user_ptr=grad_user, grad_pos_ptr=grad_pos, grad_item_ptr=grad_items, ROWS_GRAD=bool(output_mask[2]),
           **arguments)
    return masked((grad_user, grad_pos, grad_items.to(item_weight.dtype)), output_mask)


IMPLEMENTATIONS = {
    "mrl_softmax_loss": mrl_softmax_loss,
    "mrl_softmax_loss_backward": mrl_softmax_loss_backward,
}
