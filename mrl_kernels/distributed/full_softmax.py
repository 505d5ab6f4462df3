"""The Matryoshka softmax over every item of a row-sharded table
(vocabulary-parallel), :func:`mrl_full_softmax_loss`: what
:func:`mrl_kernels.mrl_softmax_loss` computes with ``candidates=None`` on the
whole table, without moving a row of it.

Rank r holds rows ``[offset_r, offset_r + N_r)``. It gathers the batch's user
vectors (``B x D``) and positive ids, and computes with
:func:`mrl_kernels.ops.full_softmax_lse` the nested log-sum-exp of every user
over its own rows, each user's positive left out where the rank holds it: a
``(B, L)`` partial. One all-gather of the partials (``W x B x L``) and a
log-sum-exp over ranks give each rank its rows' log-sum-exp over the whole
table (the per-width (max, sum) combination of vocabulary-parallel cross
entropy, in one collective); its backward is one reduce-scatter of the
partials' gradients, after which every rank recomputes its own rows' tiles.
The positive's logit comes from ``pos`` on the user's rank, as in the
one-process loss, so the positive counts once.

As :mod:`mrl_kernels.distributed.sharded`: the returned value is this rank's
rows' share (the ranks' losses sum to the one-process loss) and every rank must
call with the same local batch size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..ops import _checks as checks, full_softmax_lse
from ..ops.full_softmax import loss_from_lse
from .agreement import SHAPES, Agreement, check_offset
from .sharded import _gather, _group, _own_rows, _reduce

__all__ = ["mrl_full_softmax_loss"]


def mrl_full_softmax_loss(user: Tensor, pos: Tensor, shard: Tensor, dims: Sequence[int],
                          weights: Sequence[float] | Tensor | None = None, temperature: float = 1.0,
                          reduction: str = "mean", *, offset: int, pos_ids: Tensor, log_q: Tensor | None = None,
                          pos_log_q: Tensor | None = None, group=None, backend: str = "auto") -> Tensor:
    """The softmax over every item of a row-sharded table, for this rank's rows.

    Args:
        user, pos: ``(B_r, D)`` this rank's user and positive vectors.
        shard: ``(N_r, D)`` this rank's rows of the item table (its gradient
            covers every row: each is in every user's softmax).
        dims: the nested widths; ``weights`` and ``temperature`` as
            :func:`mrl_kernels.mrl_softmax_loss`.
        reduction: ``"mean"`` (this rank's rows summed over the global batch:
            the ranks' values sum to the one-process mean), ``"sum"`` or
            ``"none"`` (``(B_r,)``).
        offset: the global id of ``shard``'s first row.
        pos_ids: ``(B_r,)`` global ids of this rank's positives: the rank that
            holds one leaves it out of the user's softmax (``pos`` scores it).
        log_q: optional ``(N_r,)``, subtracted from the logits of this rank's
            rows; then ``pos_log_q`` ``(B_r,)``, the positives' own (the table's
            ``log_q[pos_ids]``, which the positive's rank may not hold), too.

    Per row ``sum_l w_l (logsumexp_{j in {pos} + items but pos_ids}(z_j) - z_pos)``
    with ``z_j = <u[:d_l], e_j[:d_l]> / t - log_q_j``: the one-process
    ``mrl_softmax_loss(user, pos, table, None, dims, ..., pos_ids=, log_q=)``.
    """
    group = _group(group)
    with Agreement(group, *SHAPES, "dtype", "weights", "temperature", "reduction", "log_q given") as agreed:
        dims, w, temperature, reduction = checks.check_softmax(user, pos, shard, dims, weights, temperature,
                                                               reduction, "shard")
        check_offset(offset)
        pos_ids = checks.check_row_ids("pos_ids", pos_ids, None, user)  # global ids: >= 0, no bound known here
        log_q = checks.check_correction("log_q", log_q, (shard.shape[0],), user, "one per row of this shard",
                                         each="row")
        pos_log_q = checks.check_correction("pos_log_q", pos_log_q, (user.shape[0],), user, "one per positive",
                                             each="row")
        if (log_q is None) != (pos_log_q is None):
            raise ValueError("log_q and pos_log_q go together: log_q corrects this shard's rows, pos_log_q "
                             "(the table's log_q[pos_ids]) the positives, which other ranks may hold")
        agreed.facts(len(dims), user.shape[1], dims, user.shape[0], user.dtype, w.tolist(), temperature, reduction,
                     log_q is not None)
    users = _gather(user, group)
    every_pos = _gather(pos_ids.long(), group)
    held = (every_pos >= offset) & (every_pos < offset + shard.shape[0])
    partial = full_softmax_lse(users, shard, dims, temperature, exclude=torch.where(held, every_pos - offset, -1),
                               log_q=log_q, backend=backend)
    partials = _gather(partial, group).view(dist.get_world_size(group), *partial.shape)
    lse = partials.logsumexp(0)[_own_rows(users.shape[0], group)]
    loss = loss_from_lse(lse, user, pos, dims, w, temperature, pos_log_q)
    return _reduce(loss, reduction, users.shape[0])
