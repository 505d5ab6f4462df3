"""Triton kernels of the nested log-sum-exp over every item, and their
launchers (the ``"triton"`` backend's ``IMPLEMENTATIONS``).

A program scores a ``(BLOCK_B, BLOCK_N)`` tile of users x items at every width
in one sweep of its columns: the width-d_l scores are the running sum over the
column segments ``[d_{l-1}, d_l)``, by ``tl.dot`` over 16 columns at a time
where ``d_l >= 16`` (zeros past the segment) and by elementwise products
column by column below (``tl.dot`` needs 16). Logits are
the scores over the temperature less ``log_q`` (``LOG_Q``), ``-inf`` at each
row's excluded id (``EXCLUDE``).

- ``_lse_kernel``: grid (user blocks, item splits); an online log-sum-exp per
  row and width over the split's item tiles; the launcher combines the splits'
  partials (``torch.logsumexp``).
- ``_user_grad_kernel``: grid (user blocks, item splits); recomputes the tiles,
  weighs them by ``grad * exp(logit - lse) / t`` and accumulates
  ``sum_l weights_l @ items[:, :d_l]``; adds it into the users' gradient with
  atomics (one add per split).
- ``_item_grad_kernel``: grid (item tiles); the same over every user block,
  ``sum_l weights_l^T @ user[:, :d_l]``, stored once (each program owns its rows).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import acc_dtype, masked
from ..triton_common import column, launch, placeholder, strides

MAX_SPLITS = 128  # item splits of the forward and the users' gradient (programs: user blocks x splits)
# tl.dot's smallest dimension, and the columns of every score tl.dot: with 32- or 64-column chunks the
# forward spilled at widths >= 256 (the compile-only check, sm_90)
DOT_COLUMNS: tl.constexpr = tl.constexpr(16)
# float32 products on tensor cores at about float32 accuracy (three TF32 products; plain TF32 would
# round the scores to ~1e-3); float64 operands take the exact path whatever this says
PRECISION: tl.constexpr = tl.constexpr("tf32x3")


@triton.jit
def _segment_dots(user_ptr, item_ptr, rows, row_ok, items, item_ok, stride_ub, stride_ud, stride_in, stride_id,
                  START: tl.constexpr, STOP: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """``(BLOCK_B, BLOCK_N)`` inner products over the columns ``[START, STOP)``:
    by ``tl.dot`` over ``DOT_COLUMNS`` columns at a time (zeros past ``STOP``)
    with ``DOT``, else column by column."""
    out = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    if not DOT:
        for c in range(START, STOP):
            u = tl.load(user_ptr + rows * stride_ub + c * stride_ud, mask=row_ok, other=0.0).to(ACC)
            e = tl.load(item_ptr + items * stride_in + c * stride_id, mask=item_ok, other=0.0).to(ACC)
            out += u[:, None] * e[None, :]
    else:
        for c0 in range(START, STOP, DOT_COLUMNS):  # a loop, not unrolled: one chunk's operands live at a time
            cols = c0 + tl.arange(0, DOT_COLUMNS)
            col_ok = cols < STOP
            u = tl.load(user_ptr + rows[:, None] * stride_ub + cols[None, :] * stride_ud,
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(ACC)
            e = tl.load(item_ptr + items[None, :] * stride_in + cols[:, None] * stride_id,
                        mask=col_ok[:, None] & item_ok[None, :], other=0.0).to(ACC)
            out += tl.dot(u, e, input_precision=PRECISION, out_dtype=ACC)
    return out


@triton.jit
def _level_logits(running, level: tl.constexpr, user_ptr, item_ptr, rows, row_ok, items, item_ok, excluded, q,
                  inv_t, stride_ub, stride_ud, stride_in, stride_id, DIMS: tl.constexpr, DOTS: tl.constexpr,
                  ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tile's running scores with level ``level``'s column segment added, and
    the level's logits: the scores over the temperature, less the items' ``q``,
    ``-inf`` past the table and at each row's excluded id."""
    running += _segment_dots(user_ptr, item_ptr, rows, row_ok, items, item_ok, stride_ub, stride_ud, stride_in,
                             stride_id, 0 if level == 0 else DIMS[level - 1], DIMS[level], DOTS[level], ACC,
                             BLOCK_B, BLOCK_N)
    z = running * inv_t - q[None, :]
    return running, tl.where(item_ok[None, :] & (items[None, :] != excluded[:, None]), z, float("-inf"))


@triton.jit
def _row_inputs(exclude_ptr, lse_ptr, grad_ptr, rows, row_ok, lvl, L: tl.constexpr, ACC: tl.constexpr,
                EXCLUDE: tl.constexpr):
    """Each row's excluded id (-1: none) and, for the backward, its ``(BLOCK_B,
    BLOCK_L)`` saved ``lse`` and incoming gradient (the forward passes no pointers)."""
    excluded = tl.full(rows.shape, -1, tl.int64)
    if EXCLUDE:
        excluded = tl.load(exclude_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    lse = tl.zeros((rows.shape[0], lvl.shape[0]), ACC)
    grad = tl.zeros((rows.shape[0], lvl.shape[0]), ACC)
    if lse_ptr is not None:
        level_ok = row_ok[:, None] & (lvl[None, :] < L)
        lse = tl.load(lse_ptr + rows[:, None] * L + lvl[None, :], mask=level_ok, other=0.0).to(ACC)
        grad = tl.load(grad_ptr + rows[:, None] * L + lvl[None, :], mask=level_ok, other=0.0).to(ACC)
    return excluded, lse, grad


@triton.jit
def _item_inputs(q_ptr, n0, N, ACC: tl.constexpr, LOG_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """A tile's item ids from ``n0``, their validity and their ``log_q`` (0 without ``LOG_Q``)."""
    items = n0 + tl.arange(0, BLOCK_N)
    item_ok = items < N
    if LOG_Q:
        return items, item_ok, tl.load(q_ptr + items, mask=item_ok, other=0.0).to(ACC)
    return items, item_ok, tl.zeros((BLOCK_N,), ACC)


@triton.jit
def _lse_kernel(
    user_ptr, item_ptr, exclude_ptr, q_ptr, partial_ptr,
    B, N, per_split, inv_t,
    stride_ub, stride_ud, stride_in, stride_id,
    DIMS: tl.constexpr, DOTS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, EXCLUDE: tl.constexpr,
    LOG_Q: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """``partial[split, b, l]``: the log-sum-exp of row b's width-d_l logits over
    the split's items (running maximum and rescaled sum, as flash attention)."""
    ACC = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    split = tl.program_id(1).to(tl.int64)
    row_ok = rows < B
    lvl = tl.arange(0, BLOCK_L)
    excluded, _, _ = _row_inputs(exclude_ptr, None, None, rows, row_ok, lvl, L, ACC, EXCLUDE)
    top = tl.full((BLOCK_B, BLOCK_L), float("-inf"), ACC)
    total = tl.zeros((BLOCK_B, BLOCK_L), ACC)
    for n0 in range(split * per_split, tl.minimum(N, (split + 1) * per_split), BLOCK_N):
        items, item_ok, q = _item_inputs(q_ptr, n0, N, ACC, LOG_Q, BLOCK_N)
        running = tl.zeros((BLOCK_B, BLOCK_N), ACC)
        for level in tl.static_range(L):
            running, z = _level_logits(running, level, user_ptr, item_ptr, rows, row_ok, items, item_ok, excluded, q,
                                       inv_t, stride_ub, stride_ud, stride_in, stride_id, DIMS, DOTS, ACC, BLOCK_B,
                                       BLOCK_N)
            old = column(top, lvl, level)
            new = tl.maximum(old, tl.max(z, axis=1))
            shift = tl.where(new == float("-inf"), 0.0, new)  # no finite logit yet: every term is 0
            summed = column(total, lvl, level) * tl.exp(old - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
            top = tl.where(lvl[None, :] == level, new[:, None], top)
            total = tl.where(lvl[None, :] == level, summed[:, None], total)
    out = partial_ptr + (split * B + rows[:, None]) * L + lvl[None, :]
    tl.store(out, top + tl.log(total), mask=row_ok[:, None] & (lvl[None, :] < L))


@triton.jit
def _gradient_tile(acc, other, cols, user_ptr, item_ptr, rows, row_ok, items, item_ok, excluded, q, lse, grad, lvl,
                   inv_t, stride_ub, stride_ud, stride_in, stride_id, DIMS: tl.constexpr, DOTS: tl.constexpr,
                   L: tl.constexpr, ACC: tl.constexpr, USERS: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """``acc`` plus one tile's gradient in the columns ``cols``: with the
    softmax weights ``p_l = grad_l exp(z_l - lse_l) / t`` (0 at ``-inf`` logits),
    ``sum_l p_l @ other`` (``USERS``: ``other`` the items' columns) or
    ``sum_l p_l^T @ other`` (the users' columns), each over the columns ``< d_l``."""
    running = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for level in tl.static_range(L):
        running, z = _level_logits(running, level, user_ptr, item_ptr, rows, row_ok, items, item_ok, excluded, q, inv_t,
                                   stride_ub, stride_ud, stride_in, stride_id, DIMS, DOTS, ACC, BLOCK_B, BLOCK_N)
        p = tl.where(z == float("-inf"), 0.0, tl.exp(z - column(lse, lvl, level)[:, None])) * \
            (column(grad, lvl, level) * inv_t)[:, None]
        if USERS:
            part = tl.dot(p, other, input_precision=PRECISION, out_dtype=ACC)
        else:
            part = tl.dot(tl.trans(p), other, input_precision=PRECISION, out_dtype=ACC)
        acc += tl.where(cols[None, :] < DIMS[level], part, 0.0)
    return acc


@triton.jit
def _user_grad_kernel(
    grad_ptr, user_ptr, item_ptr, exclude_ptr, lse_ptr, q_ptr, grad_user_ptr,
    B, N, D, per_split, inv_t,
    stride_ub, stride_ud, stride_in, stride_id,
    DIMS: tl.constexpr, DOTS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, EXCLUDE: tl.constexpr,
    LOG_Q: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Columns ``BLOCK_C`` x program 2 of the users' gradient from one split's
    items, added into ``grad_user``."""
    ACC = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    split = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < B
    lvl = tl.arange(0, BLOCK_L)
    excluded, lse, grad = _row_inputs(exclude_ptr, lse_ptr, grad_ptr, rows, row_ok, lvl, L, ACC, EXCLUDE)
    acc = tl.zeros((BLOCK_B, BLOCK_C), ACC)
    for n0 in range(split * per_split, tl.minimum(N, (split + 1) * per_split), BLOCK_N):
        items, item_ok, q = _item_inputs(q_ptr, n0, N, ACC, LOG_Q, BLOCK_N)
        e = tl.load(item_ptr + items[:, None] * stride_in + cols[None, :] * stride_id,
                    mask=item_ok[:, None] & (cols[None, :] < D), other=0.0).to(ACC)
        acc = _gradient_tile(acc, e, cols, user_ptr, item_ptr, rows, row_ok, items, item_ok, excluded, q, lse, grad,
                             lvl, inv_t, stride_ub, stride_ud, stride_in, stride_id, DIMS, DOTS, L, ACC, True,
                             BLOCK_B, BLOCK_N)
    tl.atomic_add(grad_user_ptr + rows[:, None] * D + cols[None, :], acc, mask=row_ok[:, None] & (cols[None, :] < D))


@triton.jit
def _item_grad_kernel(
    grad_ptr, user_ptr, item_ptr, exclude_ptr, lse_ptr, q_ptr, grad_item_ptr,
    B, N, D, inv_t,
    stride_ub, stride_ud, stride_in, stride_id,
    DIMS: tl.constexpr, DOTS: tl.constexpr, L: tl.constexpr, FP64: tl.constexpr, EXCLUDE: tl.constexpr,
    LOG_Q: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Columns ``BLOCK_C`` x program 1 of one tile of items' gradient from every
    user, stored (each program owns its block)."""
    ACC = tl.float64 if FP64 else tl.float32
    items, item_ok, q = _item_inputs(q_ptr, tl.program_id(0).to(tl.int64) * BLOCK_N, N, ACC, LOG_Q, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    lvl = tl.arange(0, BLOCK_L)
    acc = tl.zeros((BLOCK_N, BLOCK_C), ACC)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        row_ok = rows < B
        excluded, lse, grad = _row_inputs(exclude_ptr, lse_ptr, grad_ptr, rows, row_ok, lvl, L, ACC, EXCLUDE)
        u = tl.load(user_ptr + rows[:, None] * stride_ub + cols[None, :] * stride_ud,
                    mask=row_ok[:, None] & (cols[None, :] < D), other=0.0).to(ACC)
        acc = _gradient_tile(acc, u, cols, user_ptr, item_ptr, rows, row_ok, items, item_ok, excluded, q, lse, grad,
                             lvl, inv_t, stride_ub, stride_ud, stride_in, stride_id, DIMS, DOTS, L, ACC, False,
                             BLOCK_B, BLOCK_N)
    tl.store(grad_item_ptr + items[:, None] * D + cols[None, :], acc, mask=item_ok[:, None] & (cols[None, :] < D))


# (users, items) of a tile, warps, and software-pipelining stages: without pipelining (num_stages=1)
# every kernel compiles for sm_90 without spills (the compile-only check); pipelined, all spilled
FORWARD = {"BLOCK_B": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 1}
BACKWARD = {"BLOCK_B": 16, "BLOCK_N": 16, "num_warps": 8, "num_stages": 1}
GRAD_COLUMNS = 64  # the widest column block of a gradient program


def _arguments(user, item_weight, exclude, dims, temperature, log_q, blocks: dict):
    """The user blocks, the item splits (items each) and the keyword arguments
    every kernel takes, for ``blocks`` (:data:`FORWARD` or :data:`BACKWARD`)."""
    n_items = item_weight.shape[0]
    tiles = max(1, triton.cdiv(n_items, blocks["BLOCK_N"]))
    splits = min(tiles, MAX_SPLITS)
    arguments = dict(
        user_ptr=user, item_ptr=item_weight,
        exclude_ptr=placeholder(user, 1, torch.int64) if exclude is None else exclude.contiguous(),
        q_ptr=placeholder(user, 1, acc_dtype(user.dtype)) if log_q is None else log_q.contiguous(),
        B=user.shape[0], N=n_items, inv_t=1.0 / temperature,
        **strides("u", user, "b", "d"), **strides("i", item_weight, "n", "d"),
        DIMS=tuple(dims), DOTS=tuple(d >= DOT_COLUMNS.value for d in dims), L=len(dims),
        FP64=user.dtype == torch.float64, EXCLUDE=exclude is not None, LOG_Q=log_q is not None,
        BLOCK_L=max(2, triton.next_power_of_2(len(dims))), **blocks)
    return triton.cdiv(user.shape[0], blocks["BLOCK_B"]), splits, triton.cdiv(tiles, splits) * blocks["BLOCK_N"], \
        arguments


def full_softmax_lse(user, item_weight, exclude, dims, temperature, log_q):
    """``lse (B, L)``, the accumulation dtype."""
    blocks, splits, per_split, arguments = _arguments(user, item_weight, exclude, dims, temperature, log_q, FORWARD)
    partial = user.new_empty((splits, user.shape[0], len(dims)), dtype=acc_dtype(user.dtype))
    launch(_lse_kernel, (blocks, splits), partial_ptr=partial, per_split=per_split, **arguments)
    return torch.logsumexp(partial, 0)


def full_softmax_lse_backward(grad, user, item_weight, exclude, lse, dims, temperature, log_q, output_mask):
    """``(d user, d item_weight)``, accumulated in the accumulation dtype (atomics
    for the users' across splits), not formed where ``output_mask`` masks them."""
    blocks, splits, per_split, arguments = _arguments(user, item_weight, exclude, dims, temperature, log_q, BACKWARD)
    acc = acc_dtype(user.dtype)
    grad_user = torch.zeros(user.shape if output_mask[0] else (0,), dtype=acc, device=user.device)
    grad_items = torch.empty(item_weight.shape if output_mask[1] else (0,), dtype=acc, device=user.device)
    chunk = min(GRAD_COLUMNS, max(DOT_COLUMNS.value, triton.next_power_of_2(user.shape[1])))
    columns = triton.cdiv(user.shape[1], chunk)
    shared = dict(grad_ptr=grad.contiguous(), lse_ptr=lse.contiguous(), D=user.shape[1], BLOCK_C=chunk, **arguments)
    if output_mask[0]:
        launch(_user_grad_kernel, (blocks, splits, columns), grad_user_ptr=grad_user, per_split=per_split, **shared)
    if output_mask[1]:
        launch(_item_grad_kernel, (max(1, triton.cdiv(item_weight.shape[0], BACKWARD["BLOCK_N"])), columns),
               grad_item_ptr=grad_items, **shared)
    return masked((grad_user.to(user.dtype), grad_items.to(item_weight.dtype)), output_mask)


IMPLEMENTATIONS = {
    "full_softmax_lse": full_softmax_lse,
    "full_softmax_lse_backward": full_softmax_lse_backward,
}
