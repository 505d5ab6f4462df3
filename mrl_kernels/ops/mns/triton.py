"""Triton kernels of MNS and the MRL loss, and their launchers (the ``"triton"``
backend's ``IMPLEMENTATIONS``).

One forward kernel serves the three operators:

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
writes the user and positive gradients and (``ROWS_GRAD``) adds each chosen
row's gradient into ``item_weight``'s gradient with atomics (repeated ids sum),
or writes the gradient of ``neg`` directly when ``GATHER=False``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import acc_dtype, masked
from ..triton_common import (column, launch, level_meta, level_scores, load_rows, no_strides, placeholder, row_block,
                             strides)


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
    rows, row_ok, cols, lvl, mask = row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)

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
            scores = level_scores(u * e, cols, lvl, DIMS, L)
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
        p = load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
        margin = best - level_scores(u * p, cols, lvl, DIMS, L)
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
    DIMS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, GATHER: tl.constexpr, ROWS_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    ACC = tl.float64 if FP64 else tl.float32
    rows, row_ok, cols, lvl, mask = row_block(B, D, BLOCK_B, BLOCK_D, BLOCK_L)
    u = load_rows(user_ptr, rows, cols, stride_ub, stride_ud, mask, ACC)
    p = load_rows(pos_ptr, rows, cols, stride_pb, stride_pd, mask, ACC)
    grad = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    coef = tl.load(coef_ptr + rows[:, None] * L + lvl[None, :], mask=row_ok[:, None] & (lvl[None, :] < L),
                   other=0.0).to(ACC)
    g2d = coef * grad[:, None]

    column_coef = tl.zeros((BLOCK_B, BLOCK_D), ACC)  # sum of g_l over the levels that hold column k
    grad_u = tl.zeros((BLOCK_B, BLOCK_D), ACC)
    for level in tl.static_range(L):
        g = column(g2d, lvl, level)
        width_ok = mask & (cols[None, :] < DIMS[level])
        g_cols = tl.where(width_ok, g[:, None], 0.0)
        column_coef += g_cols
        if GATHER:
            ids = tl.load(negatives_ptr + rows * L + level, mask=row_ok, other=0).to(tl.int64)
            row_off = ids[:, None] * stride_in + cols[None, :] * stride_id
            e = tl.load(item_ptr + row_off, mask=width_ok, other=0.0).to(ACC)
            if ROWS_GRAD:
                tl.atomic_add(grad_item_ptr + ids[:, None] * D + cols[None, :], g_cols * u, mask=width_ok)
        else:
            e = tl.load(neg_ptr + rows[:, None] * stride_nb + level * stride_nl + cols[None, :] * stride_nd,
                        mask=width_ok, other=0.0).to(ACC)
            if ROWS_GRAD:
                grad_neg = tl.where(width_ok, g_cols * u, 0.0)  # zero past d_l even where u is not finite
                tl.store(grad_neg_ptr + (rows[:, None] * L + level) * D + cols[None, :],
                         grad_neg.to(grad_neg_ptr.dtype.element_ty), mask=mask)
        grad_u += g_cols * e
    grad_u -= column_coef * p
    out = rows[:, None] * D + cols[None, :]
    tl.store(grad_user_ptr + out, grad_u.to(grad_user_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_pos_ptr + out, (-column_coef * u).to(grad_pos_ptr.dtype.element_ty), mask=mask)


def _forward(user, dims, *, pos, item_weight, candidates, neg, weights, gather: bool, compute_loss: bool):
    """Launch the forward kernel; ``(loss, negatives, coef)``, each empty where
    this launch does not compute it. ``item_weight`` and ``candidates`` are read
    when ``gather``, ``neg`` otherwise; ``pos`` and ``weights`` when ``compute_loss``."""
    grid, meta = level_meta(user, dims)
    batch, levels = user.shape[0], len(dims)
    negatives = user.new_empty((batch, levels) if gather else (0,), dtype=torch.int64)
    loss = user.new_empty((batch,) if compute_loss else (0,))
    coef = user.new_empty((batch, levels) if compute_loss else (0,), dtype=acc_dtype(user.dtype))
    per_level = not gather or candidates.dim() == 3
    if gather:
        candidate_strides = dict(stride_cb=candidates.stride(0), stride_cl=candidates.stride(1) if per_level else 0,
                                 stride_cm=candidates.stride(-1))
    else:
        candidate_strides = dict(stride_cb=0, stride_cl=0, stride_cm=0)
    launch(_mrl_forward_kernel, grid,
           user_ptr=user, pos_ptr=pos, item_ptr=item_weight, cand_ptr=candidates, neg_ptr=neg, weight_ptr=weights,
           negatives_ptr=negatives, loss_ptr=loss, coef_ptr=coef,
           B=batch, M=candidates.shape[-1] if gather else 1, D=user.shape[1],
           **strides("u", user, "b", "d"),
           **(strides("p", pos, "b", "d") if compute_loss else no_strides("p", "b", "d")),
           **(strides("i", item_weight, "n", "d") if gather else no_strides("i", "n", "d")), **candidate_strides,
           **(no_strides("n", "b", "l", "d") if gather else strides("n", neg, "b", "l", "d")),
           GATHER=gather, PER_LEVEL=per_level, COMPUTE_LOSS=compute_loss, **meta)
    return loss, negatives, coef


def mns_sample(user, item_weight, candidates, dims):
    """``negatives (B, L)``: the forward kernel without the loss."""
    return _forward(user, dims, pos=placeholder(user, 2), item_weight=item_weight, candidates=candidates,
                    neg=placeholder(user, 3), weights=placeholder(user, 1, torch.float32), gather=True,
                    compute_loss=False)[1]


def mrl_bpr_loss(user, pos, neg, dims, weights):
    """``(loss, coef)`` for the given negative vectors."""
    loss, _, coef = _forward(user, dims, pos=pos, item_weight=placeholder(user, 2),
                             candidates=placeholder(user, 2, torch.int64), neg=neg,
                             weights=weights.contiguous(), gather=False, compute_loss=True)
    return loss, coef


def mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
    """``(loss, negatives, coef)``: MNS and the loss in one pass."""
    return _forward(user, dims, pos=pos, item_weight=item_weight, candidates=candidates, neg=placeholder(user, 3),
                    weights=weights.contiguous(), gather=True, compute_loss=True)


def _backward(grad, user, pos, dims, *, item_weight, negatives, neg, coef, grad_rows, gather: bool):
    """Launch the backward kernel: ``(d user, d pos)``, and the rows' gradient
    added into ``grad_rows`` (the item table's, float32 for atomics, or neg's);
    an empty ``grad_rows`` is not written (``ROWS_GRAD=False``)."""
    grid, meta = level_meta(user, dims)
    grad_user, grad_pos = user.new_empty(user.shape), pos.new_empty(pos.shape)  # contiguous
    launch(_mrl_backward_kernel, grid,
           grad_ptr=grad.contiguous(), user_ptr=user, pos_ptr=pos, item_ptr=item_weight,
           # the kernel indexes grad (B,) and coef (B, L) densely
           negatives_ptr=negatives, neg_ptr=neg, coef_ptr=coef.contiguous(),
           grad_user_ptr=grad_user, grad_pos_ptr=grad_pos,
           grad_item_ptr=grad_rows if gather else placeholder(grad_rows),
           grad_neg_ptr=placeholder(grad_rows) if gather else grad_rows,
           B=user.shape[0], D=user.shape[1],
           **strides("u", user, "b", "d"), **strides("p", pos, "b", "d"),
           **(strides("i", item_weight, "n", "d") if gather else no_strides("i", "n", "d")),
           **(no_strides("n", "b", "l", "d") if gather else strides("n", neg, "b", "l", "d")),
           GATHER=gather, ROWS_GRAD=grad_rows.numel() > 0, **meta)
    return grad_user, grad_pos


def mrl_bpr_loss_backward(grad, user, pos, neg, coef, dims, output_mask):
    """``(d user, d pos, d neg)``."""
    grad_neg = user.new_empty(neg.shape if output_mask[2] else (0,))
    grad_user, grad_pos = _backward(grad, user, pos, dims, item_weight=placeholder(user, 2),
                                    negatives=placeholder(user, 1, torch.int64), neg=neg, coef=coef, grad_rows=grad_neg,
                                    gather=False)
    return masked((grad_user, grad_pos, grad_neg), output_mask)


def mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims, output_mask):
    """``(d user, d pos, d item_weight)``; the item gradient accumulates in float32
    (atomics for half tables), cast once at the end."""
    grad_items = torch.zeros(item_weight.shape if output_mask[2] else (0,), dtype=coef.dtype,
                             device=item_weight.device)
    grad_user, grad_pos = _backward(grad, user, pos, dims, item_weight=item_weight, negatives=negatives.contiguous(),
                                    neg=placeholder(user, 3), coef=coef, grad_rows=grad_items, gather=True)
    return masked((grad_user, grad_pos, grad_items.to(item_weight.dtype)), output_mask)


IMPLEMENTATIONS = {
    "mns_sample": mns_sample,
    "mrl_bpr_loss": mrl_bpr_loss,
    "mrl_bpr_loss_backward": mrl_bpr_loss_backward,
    "mns_bpr_loss": mns_bpr_loss,
    "mns_bpr_loss_backward": mns_bpr_loss_backward,
}
