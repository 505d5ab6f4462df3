"""Vocabulary-parallel MNS and sampled softmax over an item table sharded by
row ranges (rank r holds rows ``[offset_r, offset_r + N_r)``, as torchrec's
row-wise sharding or any ``torch.distributed`` layout does), without moving
candidate rows.

Every rank draws its share of each candidate pool from its own rows
(``candidates``: global ids, all in its range, for every row of the batch) and
scores them against the batch's user vectors, all-gathered (``B x D``, B the
global batch: the ranks' rows in rank order). The pool of a row is the
concatenation of the ranks' shares in rank order, so these functions give
exactly what the one-process operators give on that pool:

- :func:`mns_sample` keeps per level each rank's best (score, id) and picks
  the best over ranks (ties to the lowest rank, that is to the lowest position
  in the pool, as :func:`mrl_kernels.mns_sample` does) from one all-gather of
  ``W x B x L`` pairs. A :class:`Choice` says which winners a rank owns.
- :func:`mrl_bpr_loss` takes each winner's score from those pairs and the
  users' vectors :func:`mns_sample` gathered, so its forward exchanges
  nothing; its backward gathers the scores' gradients (``B x L``), the owner
  of each winner alone receives the gradient of its row, and one
  reduce-scatter (``B x D``) sums the users' gradients to their ranks.
- :func:`batch_rows` reads rows of a row-sharded table (e.g. the batch's
  users) on every rank without a lookup: each rank fills the rows it holds,
  one all-reduce. A trainer over sharded tables can then choose the negatives
  before its one lookup with gradient (users, positives and the winners it
  owns together: :class:`mrl_kernels.distributed.torchrec_sharded.ShardedMRL`).
- :func:`mns_bpr_loss` composes the two for a table the rank holds as a tensor.
- :func:`mrl_softmax_loss` combines per-level log-sum-exp partials across
  ranks (a max and a sum all-reduce of ``B x L``, as vocabulary-parallel cross
  entropy does), with an optional logQ correction.

Bytes exchanged per step: the users' ``B x D`` both ways and a few ``B x L``
scores and ids, against ``B x L x M x D`` for gathering the candidates' rows.
Losses follow the one-process operators with one convention: the returned
value is this rank's rows' share, so that the ranks' losses **sum** to the
one-process loss (``reduction="mean"``: this rank's rows summed over the
global batch B) and the gradients every rank gets equal the one-process
gradients of that loss. Every rank must call with the same local batch size
and dims; a call checks them before its collectives (:mod:`.agreement`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol  # differentiable collectives (torch's own)
import torch.nn.functional as F
from torch import Tensor

from ..ops import _checks as checks, mns_sample as _mns_sample
from ..ops.common import acc_dtype, pools, prefix_scores
from ..ops.softmax import check_log_q
from .agreement import SHAPES, Agreement, check_offset, check_pools, check_row_ids, local_ids

__all__ = ["Choice", "gather_rows", "batch_rows", "mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss"]

Lookup = Callable[[Tensor], Tensor]
# the *_single names from torch 2.13 (the older ones are deprecated there)
_ALL_GATHER = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
_ALL_GATHER_INTO = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER_INTO = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("the sharded operators need an initialised torch.distributed process group")
    return dist.group.WORLD if group is None else group


def _waited(t: Tensor) -> Tensor:
    """A functional collective's result as a plain tensor (eager mode wraps it in
    a subclass that waits on first use, at a dispatch cost on every later op)."""
    return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t


def gather_rows(x: Tensor, group=None) -> Tensor:
    """``x`` of every rank concatenated in rank order (``(W * B_r, ...)``, the
    same shape and dtype on every rank), differentiable: the backward sums each
    rank's gradient back to its rows."""
    group = _group(group)
    with Agreement(group, "shape", "dtype") as agreed:
        agreed.facts(tuple(x.shape), x.dtype)
    return _gather(x, group)


def _gather(x: Tensor, group) -> Tensor:
    return _waited(_ALL_GATHER(x.contiguous(), 0, group))


def batch_rows(shard: Tensor, ids: Tensor, *, offset: int, group=None) -> Tensor:
    """``table[ids]`` of a row-sharded table on every rank, without gradient:
    ``ids`` ``(n,)`` global ids, the same on every rank (e.g. the whole batch's
    users); each rank fills the rows it holds (``[offset, offset + N_r)``) and
    one all-reduce sums the ``(n, D)`` rows (every other rank adds zeros)."""
    group = _group(group)
    with Agreement(group, "number of ids", "width", "dtype") as agreed:
        checks.check_float("shard", shard, 2)
        check_row_ids(ids, shard.device)
        check_offset(offset)
        agreed.facts(ids.shape[0], shard.shape[1], shard.dtype)
    with torch.no_grad():
        here = ((ids >= offset) & (ids < offset + shard.shape[0])).nonzero()[:, 0]  # the positions this rank holds
        held = _rows(shard.detach(), ids[here].long() - offset)
        rows = shard.new_zeros(ids.shape[0], shard.shape[1] + 1)  # and a last column: how many ranks hold the row
        rows.index_copy_(0, here, torch.cat([held, held.new_ones(held.shape[0], 1)], 1))
        dist.all_reduce(rows, group=group)
        held = rows[:, -1]
        if bool((held != 1).any()):
            bad = int(ids[held != 1][0])
            raise ValueError(f"ids must be rows of the table, each held by one rank: id {bad} is held by "
                             f"{int(held[held != 1][0])}")
    return rows[:, :-1]


class _WinnerScores(torch.autograd.Function):
    """The winners' scores of this rank's rows (``(B_r, L)``, the values
    :func:`mns_sample` chose by: no exchange) as a function of the scores of
    the winners this rank owns (``owned_scores`` ``(B, L)``, zeros elsewhere):
    the backward gathers every rank's gradient and keeps the owned entries."""

    @staticmethod
    def forward(ctx, owned_scores, scores, owned, group):
        ctx.save_for_backward(owned)
        ctx.group = group
        return scores[_own_rows(scores.shape[0], group)].clone()

    @staticmethod
    def backward(ctx, grad):
        (owned,) = ctx.saved_tensors
        return _all_gather(grad, ctx.group).masked_fill(~owned, 0.0), None, None, None


class _Gathered(torch.autograd.Function):
    """``users`` (the batch's ``(B, D)`` vectors, every rank's rows in rank
    order, already gathered) as a function of this rank's rows ``user``: the
    forward moves nothing, the backward sums the gradient over ranks and keeps
    this rank's rows (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, user, users, group):
        ctx.group = group
        return users.clone()

    @staticmethod
    def backward(ctx, grad):
        mine = grad.new_empty(grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:])
        _REDUCE_SCATTER_INTO(mine, grad.contiguous(), group=ctx.group)
        return mine, None, None


def _all_reduce_sum(x: Tensor, group) -> Tensor:
    """The sum over ranks, differentiable (its backward sums the gradients)."""
    return _waited(funcol.all_reduce(x, "sum", group))


def _rows(table: Tensor, ids: Tensor) -> Tensor:
    """``table[ids]`` (differentiable) by ``index_select``: on the CPU about 16x faster than
    advanced indexing for scattered rows of a large table (10^4 rows of 5 x 10^5, measured)."""
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])


@dataclass
class Choice:
    """What :func:`mns_sample` chose: ``negatives`` ``(B, L)`` global ids for
    every row of the batch, ``owned`` ``(B, L)`` whether this rank holds the
    row of each, ``users`` the ``(B, D)`` user vectors it scored (every
    rank's) and ``scores`` ``(B, L)`` the winners' scores (no gradient:
    :func:`mrl_bpr_loss` gives them theirs)."""

    negatives: Tensor
    owned: Tensor
    users: Tensor
    scores: Tensor

    @property
    def owned_ids(self) -> Tensor:
        """The global ids of the winners this rank holds, in row-major ``(b, l)``
        order: the rows :func:`mrl_bpr_loss` takes as ``neg_rows``."""
        return self.negatives[self.owned]


def mns_sample(user: Tensor, shard: Tensor, candidates: Tensor, dims: Sequence[int], *, offset: int,
               gathered: bool = False, group=None, backend: str = "auto") -> Choice:
    """Matryoshka negative sampling over a row-sharded table.

    Args:
        user: ``(B_r, D)`` this rank's user vectors (all-gathered to ``(B, D)``);
            with ``gathered=True`` the whole batch's ``(B, D)`` already, every
            rank's rows in rank order and the same on every rank (e.g. from
            :func:`batch_rows`).
        shard: ``(N_r, D)`` this rank's rows of the item table (read, no gradient).
        candidates: ``(B, m)`` or ``(B, L, m)`` global ids in
            ``[offset, offset + N_r)``: this rank's share of every row's pool.
        dims: the nested widths.
        offset: the global id of ``shard``'s first row.

    Returns the :class:`Choice`; its ``negatives`` equal
    :func:`mrl_kernels.mns_sample` on the gathered users, the whole table and
    the ranks' candidates concatenated along the last dimension in rank order.
    No gradient flows from it: :func:`mrl_bpr_loss` takes the users' vectors
    with theirs.
    """
    group = _group(group)
    with Agreement(group, *SHAPES, "dtype", "gathered", "candidates' dimensions") as agreed:
        checks.check_rows("user", user)
        dims = checks.check_dims(dims, user.shape[1])
        checks.check_float("shard", shard, 2, like=("user", user))
        local = local_ids(candidates, shard, offset)
        check_pools(candidates, user.shape[0] * (1 if gathered else dist.get_world_size(group)), len(dims))
        agreed.facts(len(dims), user.shape[1], dims, user.shape[0], user.dtype, gathered, candidates.dim())
    with torch.no_grad():
        users = user.detach() if gathered else _all_gather(user.detach(), group)
        picks = _mns_sample(users, shard.detach(), local, dims, layout="shared" if local.dim() == 2 else None,
                            backend=backend)  # (B, L) rows of shard
        rows = _rows(shard.detach(), picks)
        scores = torch.stack([prefix_scores(users, rows[:, level], d) for level, d in enumerate(dims)], 1)
        # float64 holds every float32 score and every id below 2^53 exactly
        mine = torch.stack([scores.double(), (picks + offset).double()])  # (2, B, L)
        everyone = _all_gather(mine[None], group)  # (W, 2, B, L)
        winner, best, negatives = torch.zeros_like(picks), everyone[0, 0], everyone[0, 1]
        for rank in range(1, everyone.shape[0]):  # a strictly better score wins: ties to the lowest rank
            score = everyone[rank, 0]
            better = (score > best) | (score.isnan() & ~best.isnan())  # NaN first, as argmax
            winner = winner.masked_fill(better, rank)
            best, negatives = torch.where(better, score, best), torch.where(better, everyone[rank, 1], negatives)
    return Choice(negatives=negatives.long(), owned=winner == dist.get_rank(group), users=users,
                  scores=best.to(scores.dtype))


def _all_gather(x: Tensor, group) -> Tensor:
    """Every rank's ``x`` (the same shape on each) concatenated along dim 0, no gradient."""
    out = x.new_empty(x.shape[0] * dist.get_world_size(group), *x.shape[1:])
    _ALL_GATHER_INTO(out, x.contiguous(), group=group)
    return out


def mrl_bpr_loss(user: Tensor, pos: Tensor, neg_rows: Tensor, choice: Choice, dims: Sequence[int],
                 weights: Sequence[float] | Tensor | None = None, reduction: str = "mean", *, group=None) -> Tensor:
    """The MRL loss of :func:`mrl_kernels.mrl_bpr_loss` for this rank's rows,
    the negatives' scores those :func:`mns_sample` chose by, their gradients
    computed on their owners.

    Args:
        user, pos: ``(B_r, D)`` this rank's user and positive vectors (``user``
            equal to this rank's rows of ``choice.users``, e.g. the vectors
            given to :func:`mns_sample`; its gradient sums every rank's use).
        neg_rows: ``(K, D)`` the rows of ``choice.owned_ids`` (looked up with
            gradient, e.g. ``shard[choice.owned_ids - offset]`` or through a
            sharded embedding's local lookup): only the owner gets their
            gradient; rows whose scores are not the chosen ones are refused.
        choice: from :func:`mns_sample`.
        reduction: ``"mean"`` (this rank's rows summed over the global batch:
            the ranks' values sum to the one-process mean), ``"sum"`` or ``"none"``
            (``(B_r,)``).
    """
    group = _group(group)
    with Agreement(group, *SHAPES, "weights", "reduction") as agreed:
        checks.check_pos(pos, user)
        dims = checks.check_dims(dims, user.shape[1])
        checks.check_float("neg_rows", neg_rows, 2, like=("user", user))
        if neg_rows.shape != (int(choice.owned.sum()), user.shape[1]):
            raise ValueError(f"neg_rows must have the shape ({int(choice.owned.sum())}, {user.shape[1]}) "
                             f"(the rows of choice.owned_ids), got {tuple(neg_rows.shape)}")
        w = checks.check_weights(weights, len(dims), user.device)
        reduction = checks.check_reduction(reduction)
        mine = choice.users[_own_rows(choice.users.shape[0], group)]
        if user.shape != mine.shape or not bool(((user.detach() == mine) | (user.isnan() & mine.isnan())).all()):
            raise ValueError("user must equal this rank's rows of choice.users (the vectors mns_sample scored)")
        users = _Gathered.apply(user, choice.users, group)
        # the owned winners level by level (neg_rows come row-major): one gather of each side, then a slice a level
        owned = choice.owned.T  # (L, B): level-major
        position = choice.owned.flatten().cumsum(0).view_as(choice.owned).T - 1  # each owned entry's neg_rows row
        rows = owned.nonzero()[:, 1]
        counts = owned.sum(1).tolist()
        pairs = zip(_rows(users, rows).split(counts), _rows(neg_rows, position[owned]).split(counts), dims)
        scores = torch.cat([prefix_scores(u, e, d) for u, e, d in pairs])
        if not torch.allclose(scores.detach(), choice.scores.T[owned], rtol=1e-4, atol=1e-5, equal_nan=True):
            raise ValueError("neg_rows must be the rows of choice.owned_ids: their scores differ from the ones "
                             "mns_sample chose them by")
        agreed.facts(len(dims), user.shape[1], dims, user.shape[0], w.tolist(), reduction)
    owned_scores = torch.zeros(owned.shape, dtype=acc_dtype(user.dtype), device=user.device)
    owned_scores = owned_scores.masked_scatter(owned, scores).T
    neg_scores = _WinnerScores.apply(owned_scores, choice.scores, choice.owned, group)
    margins = neg_scores - torch.stack([prefix_scores(user, pos, d) for d in dims], 1)
    loss = (w.to(margins.dtype) * F.softplus(margins)).sum(1).to(user.dtype)
    return _reduce(loss, reduction, users.shape[0])


def _reduce(loss: Tensor, reduction: str, batch: int) -> Tensor:
    if reduction == "mean":
        return loss.sum() / batch
    return loss.sum() if reduction == "sum" else loss


def mns_bpr_loss(user: Tensor, pos: Tensor, shard: Tensor, candidates: Tensor, dims: Sequence[int],
                 weights: Sequence[float] | Tensor | None = None, reduction: str = "mean", *, offset: int,
                 group=None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """:func:`mns_sample` then :func:`mrl_bpr_loss` on a shard held as a tensor
    (its gradient lands in the chosen rows only): ``(loss, negatives)``, the
    negatives ``(B, L)`` global ids for the whole batch."""
    choice = mns_sample(user, shard, candidates, dims, offset=offset, group=group, backend=backend)
    neg_rows = _rows(shard, choice.owned_ids - offset)
    return mrl_bpr_loss(user, pos, neg_rows, choice, dims, weights, reduction, group=group), choice.negatives


def mrl_softmax_loss(user: Tensor, pos: Tensor, shard: Tensor, candidates: Tensor, dims: Sequence[int],
                     weights: Sequence[float] | Tensor | None = None, temperature: float = 1.0,
                     reduction: str = "mean", *, offset: int, log_q: Tensor | None = None,
                     pos_log_q: Tensor | None = None, pos_ids: Tensor | None = None, lookup: Lookup | None = None,
                     group=None) -> Tensor:
    """The Matryoshka sampled softmax of :func:`mrl_kernels.mrl_softmax_loss`
    over a row-sharded table, for this rank's rows (inner-product scores).

    Args:
        user, pos: ``(B_r, D)`` this rank's user and positive vectors.
        shard: ``(N_r, D)`` this rank's rows; the candidates' rows are read from
            it with gradient (or through ``lookup``).
        candidates: ``(B, m)`` or ``(B, L, m)`` global ids of this rank's rows
            for every row of the batch; ids < 0 are padding.
        log_q: optional, the shape of ``candidates``: the log of each
            candidate's sampling probability, subtracted from its logit (logQ
            correction; :mod:`mrl_kernels.ops.candidates` returns it with its draws).
        pos_log_q: optional ``(B_r,)``, subtracted from the positive's logit.
        pos_ids: optional ``(B_r,)`` ids of this rank's positives: candidates
            equal to their row's positive are masked.
        lookup: optional ``ids -> rows``: the rows of the given global ids (all
            this rank's, each once), with gradient (e.g. a sharded embedding's).

    Per row ``sum_l w_l * (logsumexp_{j in {pos} + pool_l}(z_j) - z_pos)`` with
    ``z_j = <u[:d_l], e_j[:d_l]> / t - log_q_j``. ``reduction`` as in
    :func:`mrl_bpr_loss`.
    """
    group = _group(group)
    with Agreement(group, *SHAPES, "dtype", "candidates' dimensions", "weights", "temperature", "reduction",
                   "pos_ids given", "log_q given", "pos_log_q given") as agreed:
        dims, w, temperature, reduction = checks.check_softmax(user, pos, shard, dims, weights, temperature,
                                                               reduction, "shard")
        local = local_ids(candidates, shard, offset, padding=True)
        check_pools(candidates, user.shape[0] * dist.get_world_size(group), len(dims))
        if pos_ids is not None and (not isinstance(pos_ids, Tensor) or pos_ids.dtype.is_floating_point
                                    or pos_ids.shape != (user.shape[0],)):
            raise ValueError(f"pos_ids must be an integer tensor of shape ({user.shape[0]},) (this rank's positives)")
        check_log_q(log_q, pos_log_q, candidates, user)
        agreed.facts(len(dims), user.shape[1], dims, user.shape[0], user.dtype, candidates.dim(), w.tolist(),
                     temperature, reduction, pos_ids is not None, log_q is not None, pos_log_q is not None)
    users = _gather(user, group)
    if pos_ids is not None:
        every_pos = _gather(pos_ids, group).view(-1, *[1] * (candidates.dim() - 1))
        local = local.masked_fill(candidates == every_pos, -1)
    valid = local >= 0
    if lookup is None:
        rows = _rows(shard, local.clamp(min=0))
    else:
        ids, inverse = torch.unique(local[valid], return_inverse=True)
        rows = shard.new_zeros(*local.shape, shard.shape[1])
        rows = rows.index_put((valid,), lookup(ids + offset)[inverse]) if ids.numel() else rows
    acc = acc_dtype(user.dtype)
    cand_logits, pos_logits = [], []
    for level, (d, pool_rows, pool_valid) in enumerate(zip(dims, _level_rows(rows, len(dims)),
                                                          pools(valid, len(dims)))):
        z = prefix_scores(users[:, None, :], pool_rows, d) / temperature
        if log_q is not None:
            z = z - pools(log_q, len(dims))[level].to(acc)
        # a share that is all padding gets -inf after the log-sum-exp (whose gradient there would be NaN)
        some = pool_valid.any(1, keepdim=True)
        cand_logits.append((z.masked_fill(~pool_valid, -torch.inf).masked_fill(~some, 0.0), some[:, 0]))
        zp = prefix_scores(user, pos, d) / temperature
        pos_logits.append(zp if pos_log_q is None else zp - pos_log_q.to(acc))
    pos_logits = torch.stack(pos_logits, 1)  # (B_r, L)
    # this rank's log-sum-exp over its share of each pool, (B, L)
    partial = torch.stack([z.logsumexp(1).masked_fill(~some, -torch.inf) for z, some in cand_logits], 1)
    own = _own_rows(partial.shape[0], group)
    with torch.no_grad():  # the largest logit of every row and level, the positive's included
        top = partial.detach().clone()
        top[own] = torch.maximum(top[own], pos_logits.detach())
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    positive = torch.zeros_like(partial)
    positive[own] = torch.exp(pos_logits - top[own])
    shifted = torch.exp(partial - top) + positive
    lse = top[own] + torch.log(_all_reduce_sum(shifted, group)[own])
    loss = (w.to(acc) * (lse - pos_logits)).sum(1).to(user.dtype)
    return _reduce(loss, reduction, users.shape[0])


def _own_rows(batch: int, group) -> slice:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


def _level_rows(rows: Tensor, num_levels: int) -> list[Tensor]:
    """The ``(B, m, D)`` candidate rows of each level (shared pool or per-level)."""
    return [rows] * num_levels if rows.dim() == 3 else [rows[:, level] for level in range(num_levels)]
