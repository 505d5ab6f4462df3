"""What each operator must move and compute, so that every timing also reads as a
fraction of the machine's limits.

Notation: B batch rows, D width, ``dims = (d_1 < ... < d_L = D)``, M candidates
per pool, P pools (L for the per-level layout, 1 for a shared pool), e the
element size, N items. ``S`` is the number of columns read per candidate slot:
``sum(dims)`` per-level (level l reads d_l columns of its M rows), ``D`` shared
(one row read once serves every level).

Bytes count each input read once and each output written once; gathered rows
count in full (random rows are not reused from cache at these sizes).
"""
from __future__ import annotations

from typing import Sequence


def columns_read(dims: Sequence[int], layout: str) -> int:
    return sum(dims) if layout == "per-level" else dims[-1]


def mns_sample(B, M, dims, layout, e) -> tuple[int, int]:
    """(bytes, FLOPs): ids, candidate rows, user rows in; negatives out."""
    L, D, S = len(dims), dims[-1], columns_read(dims, layout)
    pools = L if layout == "per-level" else 1
    return B * pools * M * 8 + B * M * S * e + B * D * e + B * L * 8, 2 * B * M * S


def mns_bpr_loss_forward(B, M, dims, layout, e) -> tuple[int, int]:
    """(bytes, FLOPs): :func:`mns_sample` plus the positive rows, the loss and coef out."""
    L, D = len(dims), dims[-1]
    moved, flops = mns_sample(B, M, dims, layout, e)
    return moved + B * D * e + B * (4 + L * 4), flops + 2 * B * D + 10 * B * L


def mns_bpr_loss_backward(B, N, dims, e) -> tuple[int, int]:
    """(bytes, FLOPs): user, positive, chosen rows, coef/negatives/grad in; user and
    positive gradients out; the chosen rows' gradients added into the float32 item
    gradient (read + write), whose zero fill (and cast from float32 when e != 4)
    touches all N rows."""
    L, D, S = len(dims), dims[-1], sum(dims)
    cast = 0 if e == 4 else 4 + e
    moved = 4 * B * D * e + B * (L * 12 + 4) + B * S * e + 2 * B * S * 4 + N * D * (4 + cast)
    return moved, 6 * B * S


def mns_bpr_loss(B, M, N, dims, layout, e) -> tuple[int, int]:
    """(bytes, FLOPs) of forward + backward."""
    fb, ff = mns_bpr_loss_forward(B, M, dims, layout, e)
    bb, bf = mns_bpr_loss_backward(B, N, dims, e)
    return fb + bb, ff + bf


def mrl_bpr_loss(B, dims, e) -> tuple[int, int]:
    """(bytes, FLOPs) of forward + backward for given negative vectors (B, L, D)."""
    L, D, S = len(dims), dims[-1], sum(dims)
    forward = 2 * B * D * e + B * S * e + B * (4 + L * 4)
    backward = 2 * B * D * e + B * S * e + B * (L * 4 + 4) + 2 * B * D * e + B * L * D * e
    return forward + backward, 2 * B * S + 2 * B * D + 6 * B * S


def mrl_softmax_loss(B, M, N, dims, layout, e) -> tuple[int, int]:
    """(bytes, FLOPs) of forward + backward of the sampled softmax: the forward is
    :func:`mns_sample`'s traffic plus the positive rows, the loss and lse out; the
    backward reads the candidate rows again (scores recomputed), adds every
    candidate row's gradient into the float32 item gradient (read + write) and
    zero-fills (and casts, when e != 4) the N-row table."""
    L, D, S = len(dims), dims[-1], columns_read(dims, layout)
    pools = L if layout == "per-level" else 1
    forward, flops = mns_sample(B, M, dims, layout, e)
    forward += B * D * e + B * (4 + L * 4)
    cast = 0 if e == 4 else 4 + e
    backward = B * pools * M * 8 + B * M * S * e + 4 * B * D * e + B * (L * 4 + 4) + 2 * B * M * S * 4 \
        + N * D * (4 + cast)
    return forward + backward, flops + 2 * B * D + 2 * B * M * L + 6 * B * M * S
