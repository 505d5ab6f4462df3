"""Fused Triton kernels for MNS, the MRL loss and the Matryoshka sampled
softmax, and their launchers.

One forward kernel and one backward kernel serve all three operators:

- ``GATHER=True``: negatives are candidate ids; each candidate's row of
  ``item_weight`` is gathered by id inside the kernel (no ``(B, M, D)`` tensor is
  ever formed), prefix scores are accumulated level by level, and each level keeps
  its running maximum and first argmax. ``PER_LEVEL`` selects the ``(B, L, M)``
  pool layout, where level l reads only the first ``d_l`` columns of its rows.
  ``COMPUTE_LOSS=False`` is :func:`mns_sample`.
- ``GATHER=False``: the negatives are given vectors ``neg (B, L, D)``
  (:func:`mrl_bpr_loss`), one "candidate" per level.

The loss uses the running maxima already in registers:
``loss_b = sum_l w_l softplus(best_l - pos_l)``; the forward also writes
``coef = w_l * sigmoid(best_l - pos_l)``, all the backward needs. The backward
writes the user and positive gradients and adds each chosen row's gradient into
``item_weight``'s gradient with atomics (repeated ids sum), or writes the
gradient of ``neg`` directly when ``GATHER=False``.

The sampled softmax (``_softmax_forward_kernel`` / ``_softmax_backward_kernel``)
reads the candidates the same way and keeps an online log-sum-exp per level in
place of the running maximum; its backward recomputes the scores from the saved
``lse``.

Scores accumulate in float32 (float64 for float64 inputs: ``FP64``); offsets are int64;
every tensor is addressed through its strides, so non-contiguous inputs work.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...reference import acc_dtype, excluded_mask, shortlist_rerank
from . import interpreting

COSINE_EPS: tl.constexpr = tl.constexpr(1e-12)  # prefix norms are clamped here (reference.COSINE_EPS)


@triton.jit
def _level_scores(prod, cols, lvl, DIMS: tl.constexpr, L: tl.constexpr):
    """``out[b, l] = sum_{k < DIMS[l]} prod[b, k]``: cumulative segment sums."""
    running = tl.sum(tl.where(cols[None, :] < DIMS[0], prod, 0.0), axis=1)
    out = tl.where(lvl[None, :] == 0, running[:, None], 0.0)
    for level in tl.static_range(1, L):
        segment = (cols[None, :] >= DIMS[level - 1]) & (cols[None, :] < DIMS[level])
        running += tl.sum(tl.where(segment, prod, 0.0), axis=1)
        out = tl.where(lvl[None, :] == level, running[:, None], out)
    return out


@triton.jit
def _row_block(B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's batch rows (int64), their validity, column and level
    indices, and the (row, column) mask."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    cols = tl.arange(0, BLOCK_D)
    return rows, row_ok, cols, tl.arange(0, BLOCK_L), row_ok[:, None] & (cols[None, :] < D)


@triton.jit
def _load_rows(ptr, rows, cols, stride_b, stride_d, mask, ACC: tl.constexpr):
    """A (BLOCK_B, BLOCK_D) tile of a (B, D) tensor, in the accumulation dtype."""
    return tl.load(ptr + rows[:, None] * stride_b + cols[None, :] * stride_d, mask=mask, other=0.0).to(ACC)


@triton.jit
def _column(x2d, lvl, level: tl.constexpr):
    """Column ``level`` of a ``(BLOCK_B, BLOCK_L)`` tensor."""
    return tl.sum(tl.where(lvl[None, :] == level, x2d, 0.0), axis=1)


@triton.jit
def _mrl_forward_kernel(
    user_ptr, pos_ptr, item_ptr, cand_ptr, neg_ptr, weight_ptr,
    negatives_ptr, loss_ptr, coef_ptr,
    B, M, D,
    stride_ub, stride_ud, stride_pb, stride_pd, stride_in, stride_id,
    stride_cb, stride_cl, stride_cm, stride_nb, stride_nl, stride_nd,
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr,
    GATHER: tl.constexpr, PER_LEVEL: tl.constexpr, COMPUTE_LOSS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = _row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = _load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)

    best = tl.full((BLOCK_B, BLOCK_L), float("-inf"), ACC)
    best_id = tl.zeros((BLOCK_B, BLOCK_L), tl.int64)
    for m in range(M):
        if PER_LEVEL:
            scores = tl.zeros((BLOCK_B, BLOCK_L), ACC)
            ids2d = tl.zeros((BLOCK_B, BLOCK_L), tl.int64)
            for level in tl.static_range(L):
                width_ok = mask & (cols[None, :] < DIMS[level])
                if GATHER:
                    ids = tl.load(cand_ptr + rows * stride_cb + level * stride_cl + m * stride_cm,
                                  mask=row_ok, other=0).to(tl.int64)
                    ptrs = item_ptr + ids[:, None] * stride_in + cols[None, :] * stride_id
                    ids2d = tl.where(lvl[None, :] == level, ids[:, None], ids2d)
                else:
                    ptrs = neg_ptr + rows[:, None] * stride_nb + level * stride_nl + cols[None, :] * stride_nd
                e = tl.load(ptrs, mask=width_ok, other=0.0).to(ACC)
                s = tl.sum(u * e, axis=1)
                scores = tl.where(lvl[None, :] == level, s[:, None], scores)
        else:
            ids = tl.load(cand_ptr + rows * stride_cb + m * stride_cm, mask=row_ok, other=0).to(tl.int64)
            e = tl.load(item_ptr + ids[:, None] * stride_in + cols[None, :] * stride_id, mask=mask,
                        other=0.0).to(ACC)
            scores = _level_scores(u * e, cols, lvl, DIMS, L)
            ids2d = tl.broadcast_to(ids[:, None], (BLOCK_B, BLOCK_L))
        # torch.argmax's order: the first candidate to start, then a strictly larger
        # score (ties keep the earlier candidate), NaN above every number (the first NaN wins)
        better = (scores > best) | ((scores != scores) & (best == best)) | (m == 0)
        best = tl.where(better, scores, best)
        if GATHER:
            best_id = tl.where(better, ids2d, best_id)

    out_ok = row_ok[:, None] & (lvl[None, :] < L)
    out2d = rows[:, None] * L + lvl[None, :]
    if GATHER:
        tl.store(negatives_ptr + out2d, best_id, mask=out_ok)
    if COMPUTE_LOSS:
        p = _load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
        margin = best - _level_scores(u * p, cols, lvl, DIMS, L)
        w = tl.load(weight_ptr + lvl, mask=lvl < L, other=0.0).to(ACC)
        # softplus(x) = max(x, 0) + log(1 + exp(-|x|)); sigmoid from the same exp
        z = tl.exp(-tl.abs(margin))
        softplus = tl.maximum(margin, 0.0) + tl.log(1.0 + z)
        sigmoid = tl.where(margin >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
        loss = tl.sum(tl.where(lvl[None, :] < L, w[None, :] * softplus, 0.0), axis=1)
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=row_ok)
        tl.store(coef_ptr + out2d, w[None, :] * sigmoid, mask=out_ok)


@triton.jit
def _mrl_backward_kernel(
    grad_ptr, user_ptr, pos_ptr, item_ptr, negatives_ptr, neg_ptr, coef_ptr,
    grad_user_ptr, grad_pos_ptr, grad_item_ptr, grad_neg_ptr,
    B, D,
    stride_ub, stride_ud, stride_pb, stride_pd, stride_in, stride_id, stride_nb, stride_nl, stride_nd,
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, GATHER: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = _row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = _load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)
    p = _load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
    grad = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    coef = tl.load(coef_ptr + rows[:, None] * L + lvl[None, :], mask=row_ok[:, None] & (lvl[None, :] < L),
                   other=0.0).to(ACC)
    g2d = coef * grad[:, None]

    column_coef = tl.zeros((BLOCK_B, BLOCK_D), ACC)  # sum of g_l over the levels that hold column k
    grad_u = tl.zeros((BLOCK_B, BLOCK_D), ACC)
    for level in tl.static_range(L):
        g = _column(g2d, lvl, level)
        width_ok = mask & (cols[None, :] < DIMS[level])
        g_cols = tl.where(width_ok, g[:, None], 0.0)
        column_coef += g_cols
        if GATHER:
            ids = tl.load(negatives_ptr + rows * L + level, mask=row_ok, other=0).to(tl.int64)
            row_off = ids[:, None] * stride_in + cols[None, :] * stride_id
            e = tl.load(item_ptr + row_off, mask=width_ok, other=0.0).to(ACC)
            tl.atomic_add(grad_item_ptr + ids[:, None] * D + cols[None, :], g_cols * u, mask=width_ok)
        else:
            e = tl.load(neg_ptr + rows[:, None] * stride_nb + level * stride_nl + cols[None, :] * stride_nd,
                        mask=width_ok, other=0.0).to(ACC)
            grad_neg = tl.where(width_ok, g_cols * u, 0.0)  # zero past d_l even where u is not finite
            tl.store(grad_neg_ptr + (rows[:, None] * L + level) * D + cols[None, :],
                     grad_neg.to(grad_neg_ptr.dtype.element_ty), mask=mask)
        grad_u += g_cols * e
    grad_u -= column_coef * p
    out = rows[:, None] * D + cols[None, :]
    tl.store(grad_user_ptr + out, grad_u.to(grad_user_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_pos_ptr + out, (-column_coef * u).to(grad_pos_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _segment_columns(c2d, cols, lvl, DIMS: tl.constexpr, L: tl.constexpr):
    """``out[b, k] = sum of c2d[b, l] over the levels l with k < DIMS[l]``: each
    column's coefficient from per-level ones."""
    out = tl.where(cols[None, :] < DIMS[0], _column(c2d, lvl, 0)[:, None], 0.0)
    for level in tl.static_range(1, L):
        out += tl.where(cols[None, :] < DIMS[level], _column(c2d, lvl, level)[:, None], 0.0)
    return out


@triton.jit
def _pool_row(item_ptr, cand_ptr, rows, row_ok, cols, mask, level, m, width,
              stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC: tl.constexpr):
    """Candidate m of each row's pool ``level`` (0 for a shared pool): its ids,
    its row's first ``width`` columns (zeros elsewhere and at padding, id < 0),
    and the mask of the columns read."""
    ids = tl.load(cand_ptr + rows * stride_cb + level * stride_cl + m * stride_cm, mask=row_ok, other=-1).to(tl.int64)
    read = mask & (ids >= 0)[:, None] & (cols[None, :] < width)
    e = tl.load(item_ptr + ids[:, None] * stride_in + cols[None, :] * stride_id, mask=read, other=0.0).to(ACC)
    return ids, e, read


@triton.jit
def _norms(x, cols, lvl, DIMS: tl.constexpr, L: tl.constexpr, COSINE: tl.constexpr):
    """The clamped prefix norms ``(BLOCK_B, BLOCK_L)`` of rows ``x`` (cosine), or ones."""
    if COSINE:
        return tl.maximum(tl.sqrt(_level_scores(x * x, cols, lvl, DIMS, L)), COSINE_EPS)
    return tl.full((x.shape[0], lvl.shape[0]), 1.0, x.dtype)


@triton.jit
def _scaled(dots, u_norms, norms, inv_t, COSINE: tl.constexpr):
    """Scores over the temperature: inner products, or cosines."""
    if COSINE:
        return dots / (u_norms * norms) * inv_t
    return dots * inv_t


@triton.jit
def _softmax_forward_kernel(
    user_ptr, pos_ptr, item_ptr, cand_ptr, weight_ptr, loss_ptr, lse_ptr,
    B, M, D, inv_t,
    stride_ub, stride_ud, stride_pb, stride_pd, stride_in, stride_id, stride_cb, stride_cl, stride_cm,
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, PER_LEVEL: tl.constexpr, COSINE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Online log-sum-exp per level (running maximum and rescaled sum, as in
    flash attention), started from the positive's score; every candidate row is
    gathered once."""
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = _row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = _load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)
    p = _load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
    u_norms = _norms(u, cols, lvl, DIMS, L, COSINE)
    pos_scores = _scaled(_level_scores(u * p, cols, lvl, DIMS, L), u_norms, _norms(p, cols, lvl, DIMS, L, COSINE),
                         inv_t, COSINE)
    top = pos_scores
    total = tl.full((BLOCK_B, BLOCK_L), 1.0, ACC)
    for m in range(M):
        if PER_LEVEL:
            x = tl.full((BLOCK_B, BLOCK_L), float("-inf"), ACC)
            for level in tl.static_range(L):
                ids, e, _ = _pool_row(item_ptr, cand_ptr, rows, row_ok, cols, mask, level, m, DIMS[level],
                                      stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC)
                s = tl.sum(u * e, axis=1)
                if COSINE:
                    s = s / (_column(u_norms, lvl, level) * tl.maximum(tl.sqrt(tl.sum(e * e, axis=1)), COSINE_EPS))
                s = tl.where(ids >= 0, s * inv_t, float("-inf"))
                x = tl.where(lvl[None, :] == level, s[:, None], x)
        else:
            ids, e, _ = _pool_row(item_ptr, cand_ptr, rows, row_ok, cols, mask, 0, m, D,
                                  stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC)
            x = _scaled(_level_scores(u * e, cols, lvl, DIMS, L), u_norms, _norms(e, cols, lvl, DIMS, L, COSINE),
                        inv_t, COSINE)
            x = tl.where((ids >= 0)[:, None], x, float("-inf"))
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
        cross = _segment_columns(coef / (u_norms * norms), cols, lvl, DIMS, L)
        return (cross * row - _segment_columns(coef * cosines / (u_norms * u_norms), cols, lvl, DIMS, L) * u,
                cross * u - _segment_columns(coef * cosines / (norms * norms), cols, lvl, DIMS, L) * row)
    cross = _segment_columns(coef, cols, lvl, DIMS, L)
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
    grad_ptr, user_ptr, pos_ptr, item_ptr, cand_ptr, lse_ptr, weight_ptr,
    grad_user_ptr, grad_pos_ptr, grad_item_ptr,
    B, M, D, inv_t,
    stride_ub, stride_ud, stride_pb, stride_pd, stride_in, stride_id, stride_cb, stride_cl, stride_cm,
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, PER_LEVEL: tl.constexpr, COSINE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Recomputes every candidate's scores, weighs them by the softmax
    ``exp(s - lse)``, accumulates the user gradient and adds each candidate row's
    gradient into the item gradient with atomics (repeated ids sum)."""
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = _row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = _load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)
    p = _load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
    level_ok = row_ok[:, None] & (lvl[None, :] < L)
    lse = tl.load(lse_ptr + rows[:, None] * L + lvl[None, :], mask=level_ok, other=0.0).to(ACC)
    grad = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    w = tl.load(weight_ptr + lvl, mask=lvl < L, other=0.0).to(ACC)
    g2d = tl.where(level_ok, grad[:, None] * w[None, :] * inv_t, 0.0)  # (BLOCK_B, BLOCK_L)
    u_norms = _norms(u, cols, lvl, DIMS, L, COSINE)

    p_norms = _norms(p, cols, lvl, DIMS, L, COSINE)
    x = _scaled(_level_scores(u * p, cols, lvl, DIMS, L), u_norms, p_norms, inv_t, COSINE)
    grad_u, grad_p = _pool_gradients(g2d * (tl.exp(x - lse) - 1.0), x, u_norms, p_norms, u, p, cols, lvl, inv_t,
                                     DIMS, L, COSINE)
    grad_u, grad_p = tl.where(mask, grad_u, 0.0), tl.where(mask, grad_p, 0.0)
    for m in range(M):
        if PER_LEVEL:
            for level in tl.static_range(L):
                ids, e, read = _pool_row(item_ptr, cand_ptr, rows, row_ok, cols, mask, level, m, DIMS[level],
                                         stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC)
                un = _column(u_norms, lvl, level)
                en = un  # unused for inner products
                if COSINE:
                    en = tl.maximum(tl.sqrt(tl.sum(e * e, axis=1)), COSINE_EPS)
                s = _scaled(tl.sum(u * e, axis=1), un, en, inv_t, COSINE)
                c = _column(g2d, lvl, level) * tl.exp(s - _column(lse, lvl, level))
                user_grad, row_grad = _level_gradients(c, s, un, en, u, e, inv_t, COSINE)
                grad_u += tl.where(read, user_grad, 0.0)
                tl.atomic_add(grad_item_ptr + ids[:, None] * D + cols[None, :], row_grad, mask=read)
        else:
            ids, e, read = _pool_row(item_ptr, cand_ptr, rows, row_ok, cols, mask, 0, m, D,
                                     stride_in, stride_id, stride_cb, stride_cl, stride_cm, ACC)
            e_norms = _norms(e, cols, lvl, DIMS, L, COSINE)
            x = _scaled(_level_scores(u * e, cols, lvl, DIMS, L), u_norms, e_norms, inv_t, COSINE)
            user_grad, row_grad = _pool_gradients(g2d * tl.exp(x - lse), x, u_norms, e_norms, u, e, cols, lvl, inv_t,
                                                  DIMS, L, COSINE)
            grad_u += tl.where(read, user_grad, 0.0)
            tl.atomic_add(grad_item_ptr + ids[:, None] * D + cols[None, :], row_grad, mask=read)
    out = rows[:, None] * D + cols[None, :]
    tl.store(grad_user_ptr + out, grad_u.to(grad_user_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_pos_ptr + out, grad_p.to(grad_pos_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prefix_score_kernel(
    q_ptr, narrow_ptr, out_ptr,
    B, N, W,
    stride_qb, stride_qd, stride_nn, stride_nd,
    FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``out[b, j] = <q[b, :W], narrow[j, :W]>`` for a (BLOCK_B, BLOCK_N) tile,
    one column at a time (widths 4 and 8 are too narrow for ``tl.dot``)."""
    ACC = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    items = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, item_ok = rows < B, items < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for c in range(W):
        q = tl.load(q_ptr + rows * stride_qb + c * stride_qd, mask=row_ok, other=0.0).to(ACC)
        e = tl.load(narrow_ptr + items * stride_nn + c * stride_nd, mask=item_ok, other=0.0).to(ACC)
        acc += q[:, None] * e[None, :]
    tl.store(out_ptr + rows[:, None] * N + items[None, :], acc, mask=row_ok[:, None] & item_ok[None, :])


# ---------------------------------------------------------------- launchers
def _launch(kernel):
    """``wrap_triton(kernel)`` so torch.compile sees the launch; the kernel itself
    under ``TRITON_INTERPRET=1``, where ``wrap_triton`` refuses."""
    return kernel if interpreting() else torch.library.wrap_triton(kernel)


# (BLOCK_B, BLOCK_D) tiles of 512 elements over 4 warps, 4 elements a thread:
# on an H200 at B = 65536 this ran the D = 64 per-level case 2.1x faster than
# 1024-element tiles on 4 warps (8 a thread), and both measured cases within 2%
# of the best of six (tile, warps) pairs
# (bench/results/triton-NVIDIA_H200-2026-11-26-v2.md); 8 warps spilled on sm_80.
TILE, WARPS = 512, 4


def config(width: int, tile: int = TILE, warps: int = WARPS) -> dict:
    """Block sizes for width ``width``: ``(BLOCK_B, BLOCK_D)`` tiles of ``tile``
    elements (``python -m mrl_kernels.backends.triton.aot`` checks that nothing
    spills). Benchmark sweeps patch this function with other ``tile``/``warps``."""
    block_d = max(16, triton.next_power_of_2(width))
    block_b = max(1, min(32, tile // block_d))
    return {"BLOCK_B": block_b, "BLOCK_D": block_d, "num_warps": warps}


def configs() -> list[dict]:
    """Every configuration :func:`config` can return (for the compile-only check)."""
    seen = {}
    for width in (2 ** k for k in range(0, 11)):
        cfg = config(width)
        seen[(cfg["BLOCK_B"], cfg["BLOCK_D"])] = cfg
    return list(seen.values())


def _common(user, dims):
    batch, width = user.shape
    cfg = config(width)
    meta = dict(DIMS=tuple(dims), L=len(dims), FP64=user.dtype == torch.float64,
                BLOCK_L=max(2, triton.next_power_of_2(len(dims))), **cfg)
    return batch, width, (triton.cdiv(batch, cfg["BLOCK_B"]),), meta


def forward(user, pos, item_weight, candidates, neg, dims, weights, compute_loss: bool):
    """Launch the forward kernel. Exactly one of ``candidates`` (ids, gathered from
    ``item_weight``) and ``neg`` (given vectors) is not None. Returns
    ``(loss, negatives, coef)``; absent outputs are empty tensors."""
    batch, width, grid, meta = _common(user, dims)
    gather = candidates is not None
    levels = len(dims)
    negatives = user.new_empty((batch, levels) if gather else (0,), dtype=torch.int64)
    loss = user.new_empty((batch,) if compute_loss else (0,))
    coef = user.new_empty((batch, levels) if compute_loss else (0,), dtype=acc_dtype(user.dtype))
    if gather:
        per_level = candidates.dim() == 3
        cand_strides = (candidates.stride(0), candidates.stride(1) if per_level else 0, candidates.stride(-1))
        num = candidates.shape[-1]
        neg_strides = (0, 0, 0)
        table, table_strides = item_weight, item_weight.stride()
    else:
        per_level, cand_strides, num = True, (0, 0, 0), 1
        neg_strides = neg.stride()
        table, table_strides = neg, (0, 0)
    pos_arg = pos if compute_loss else user
    weights = weights.contiguous() if compute_loss else coef
    _launch(_mrl_forward_kernel)[grid](
        user, pos_arg, table, candidates if gather else negatives, table, weights,
        negatives, loss, coef,
        batch, num, width,
        *user.stride(), *pos_arg.stride(), *table_strides, *cand_strides, *neg_strides,
        GATHER=gather, PER_LEVEL=per_level, COMPUTE_LOSS=compute_loss, **meta,
    )
    return loss, negatives, coef


def backward(grad, user, pos, item_weight, negatives, neg, coef, dims):
    """Launch the backward kernel: ``(d user, d pos, d item_weight or d neg)``."""
    batch, width, grid, meta = _common(user, dims)
    gather = negatives is not None
    # the kernel indexes these as dense (B,) and (B, L)
    grad, coef = grad.contiguous(), coef.contiguous()
    negatives = negatives.contiguous() if gather else None
    grad_user, grad_pos = user.new_empty(user.shape), pos.new_empty(pos.shape)  # contiguous
    if gather:
        # float32 atomics for half tables, cast once at the end
        grad_table = torch.zeros(item_weight.shape, dtype=coef.dtype, device=item_weight.device)
        grad_neg, table, neg_arg, table_strides, neg_strides = grad_table, item_weight, item_weight, \
            item_weight.stride(), (0, 0, 0)
    else:
        grad_neg = user.new_empty(neg.shape)
        grad_table, table, neg_arg, table_strides, neg_strides = grad_neg, neg, neg, (0, 0), neg.stride()
    _launch(_mrl_backward_kernel)[grid](
        grad, user, pos, table, negatives if gather else coef, neg_arg, coef,
        grad_user, grad_pos, grad_table, grad_neg,
        batch, width,
        *user.stride(), *pos.stride(), *table_strides, *neg_strides,
        GATHER=gather, **meta,
    )
    if gather:
        return grad_user, grad_pos, grad_table.to(item_weight.dtype)
    return grad_user, grad_pos, grad_neg


def _softmax_args(user, pos, item_weight, candidates, dims, weights, temperature, cosine):
    """The arguments the two softmax kernels share, after their outputs/gradients."""
    batch, width, grid, meta = _common(user, dims)
    per_level = candidates.dim() == 3
    cand_strides = (candidates.stride(0), candidates.stride(1) if per_level else 0, candidates.stride(-1))
    args = (batch, candidates.shape[-1], width, 1.0 / temperature,
            *user.stride(), *pos.stride(), *item_weight.stride(), *cand_strides)
    return grid, args, dict(PER_LEVEL=per_level, COSINE=bool(cosine), **meta)


def softmax_forward(user, pos, item_weight, candidates, dims, weights, temperature, cosine):
    """Launch the softmax forward kernel: ``(loss (B,), lse (B, L))``."""
    grid, args, meta = _softmax_args(user, pos, item_weight, candidates, dims, weights, temperature, cosine)
    loss = user.new_empty((user.shape[0],))
    lse = user.new_empty((user.shape[0], len(dims)), dtype=acc_dtype(user.dtype))
    _launch(_softmax_forward_kernel)[grid](user, pos, item_weight, candidates, weights.contiguous(), loss, lse,
                                           *args, **meta)
    return loss, lse


def softmax_backward(grad, user, pos, item_weight, candidates, lse, dims, weights, temperature, cosine):
    """Launch the softmax backward kernel: ``(d user, d pos, d item_weight)``."""
    grid, args, meta = _softmax_args(user, pos, item_weight, candidates, dims, weights, temperature, cosine)
    grad_user, grad_pos = user.new_empty(user.shape), pos.new_empty(pos.shape)  # contiguous
    # float32 atomics for half tables, cast once at the end
    grad_table = torch.zeros(item_weight.shape, dtype=lse.dtype, device=item_weight.device)
    _launch(_softmax_backward_kernel)[grid](grad.contiguous(), user, pos, item_weight, candidates,
                                            lse.contiguous(), weights.contiguous(), grad_user, grad_pos, grad_table,
                                            *args, **meta)
    return grad_user, grad_pos, grad_table.to(item_weight.dtype)

TOPK_BLOCK_B, TOPK_BLOCK_N = 16, 64  # a 1024-element score tile per program


def prefix_topk(query, narrow, item_weight, k, shortlist, exclude_offsets, exclude_ids):
    """The shortlist pass's (B, N) scores by :func:`_prefix_score_kernel`, then the
    reference's exclusion, shortlist and rerank (torch operations)."""
    batch, n_items = query.shape[0], narrow.shape[0]
    first = torch.empty((batch, n_items), dtype=acc_dtype(query.dtype), device=query.device)
    grid = (triton.cdiv(batch, TOPK_BLOCK_B), triton.cdiv(n_items, TOPK_BLOCK_N))
    _launch(_prefix_score_kernel)[grid](
        query, narrow, first, batch, n_items, narrow.shape[1], *query.stride(), *narrow.stride(),
        FP64=query.dtype == torch.float64, BLOCK_B=TOPK_BLOCK_B, BLOCK_N=TOPK_BLOCK_N,
    )
    blocked = excluded_mask(exclude_offsets, exclude_ids, n_items)
    return shortlist_rerank(query, item_weight, first, blocked, k, shortlist)
