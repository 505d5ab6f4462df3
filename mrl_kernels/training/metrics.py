"""Recall@K and NDCG@K by full ranking over all items, every prefix width in one pass.

For each user with held-out items, every item is scored (``user @ item.T``,
float32), the items to exclude (training interactions, and for the test split
the validation ones too) are removed, and the top K are compared with the
held-out set; an excluded item is never a hit, also where a held-out item
repeats a training interaction and K exceeds the items left. Recall@K = hits /
#held-out; NDCG@K = DCG / IDCG with binary gains, ``1 / log2(rank + 2)``
discounts and IDCG over ``min(K, #held-out)`` hits. Both are averaged over the
users evaluated: those with held-out items, or a seeded sample of them
(:func:`sample_users`).

The ranking is exact, in the order of :func:`mrl_kernels.prefix_topk` and
``mrl-recommend``: descending score (NaN first), ties to the lower item id. The
scores are never held for all N items at once: users go in batches, items in
blocks of ``block`` (:data:`BLOCK`; each block keeps its best K + 1 by
``torch.topk``, which decides the ties exactly where the K-th and (K + 1)-th
scores differ, and sorts otherwise), and the excluded items are set to -inf in
each block from the sparse rows, so no ``(batch, N)`` mask exists. Each width's
block scores are the product ``user[:, :n] @ item[block, :n].T``, the same
numbers as ``user[:, :n] @ item[:, :n].T``: a cumulative sum over the widths
(``S_n = S_m + user[:, m:n] @ item[:, m:n].T``) would round most scores
differently and change some users' top-50 rankings of trained models
(bench/results/scale-eval-*). With one pass, each block is read once for every
width, so the widths' products cost little beyond the full one.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..ops import CSR
from ..ops.prefix_topk import ranking_order

__all__ = ["KS", "evaluate", "prefix_evaluate", "sample_users", "hierarchy_purity"]

KS = (10, 20, 50)
# items scored at a time: the block's (batch, block) scores are 32 MiB in float32 at batch 1024.
# Blocks of 2,048 took 1.7x and 1.6x as long as 8,192 for 2,000 of tool's and phone's validation
# users (10,217 and 10,429 items, every width, one thread): each later block's candidates are
# gathered and merged in many small steps; 16,384 and 32,768 gained nothing more.
BLOCK = 8192


def sample_users(heldout: CSR, n: int | None, seed: int) -> Tensor:
    """The users with held-out items, ascending; with ``n``, a seeded sample of
    ``n`` of them (all where fewer), the same for the same ``seed`` and data."""
    users = torch.nonzero(heldout.row_lengths() > 0).flatten()
    if n is None or n >= len(users):
        return users
    order = torch.randperm(len(users), generator=torch.Generator().manual_seed(seed))
    return users[order[:n]].sort().values


def evaluate(user_weight: Tensor, item_weight: Tensor, heldout: CSR, exclude: Iterable[CSR] = (),
             ks: Sequence[int] = KS, users: Tensor | None = None, batch_size: int = 1024, block: int = BLOCK,
             between: Callable[[], None] | None = None) -> dict[str, float]:
    """``{"recall@K": .., "ndcg@K": ..}`` for every K in ``ks``, at full width
    (:func:`prefix_evaluate` with one width)."""
    width = item_weight.shape[1]
    return prefix_evaluate(user_weight, item_weight, [width], heldout, exclude, ks, users, batch_size, block,
                           between)[str(width)]


@torch.no_grad()
def prefix_evaluate(user_weight: Tensor, item_weight: Tensor, dims: Sequence[int], heldout: CSR,
                    exclude: Iterable[CSR] = (), ks: Sequence[int] = KS, users: Tensor | None = None,
                    batch_size: int = 1024, block: int = BLOCK,
                    between: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """The metrics of :func:`evaluate` using only the first n columns of every
    vector, for each n in ``dims`` (the paper's Figure 3), all from one pass over
    the users and items: ``{"n": metrics}``.

    ``users``: the users to average over (default: every user with held-out
    items; :func:`sample_users`); each must have held-out items. Users are
    ranked ``batch_size`` at a time (the metrics are summed batch by batch, so
    the same batches give the same figures), items ``block`` at a time;
    ``between`` is called after each batch of users (e.g. to stop there)."""
    exclude = list(exclude)
    dims = [int(n) for n in dims]
    if not dims or any(n < 1 or n > item_weight.shape[1] for n in dims):
        raise ValueError(f"dims must be widths in [1, {item_weight.shape[1]}], got {dims}")
    users = sample_users(heldout, None, 0) if users is None else torch.as_tensor(users, dtype=torch.int64)
    if bool((heldout.row_lengths()[users] == 0).any()):
        raise ValueError("users must all have held-out items")
    device = user_weight.device
    n_items = item_weight.shape[0]
    items = item_weight.float()
    top = min(max(ks), n_items)
    discount = 1.0 / torch.log2(torch.arange(top, dtype=torch.float64) + 2.0)
    ideal = torch.cumsum(discount, 0)  # ideal[n - 1]: IDCG with n hits
    sums = {n: {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")} for n in dims}
    block = max(block, top)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        query = user_weight[batch.to(device)].float()
        rows, cols = _entries(exclude, batch, device)
        order = torch.argsort(cols, stable=True)
        rows, cols = rows[order], cols[order]
        starts = torch.arange(0, n_items, block, device=device)
        bounds = torch.searchsorted(cols, torch.cat([starts, starts.new_tensor([n_items])])).tolist()
        ranked = {n: _Ranked(len(batch), top) for n in dims}
        scores = None
        for b, j0 in enumerate(range(0, n_items, block)):
            piece = items[j0:j0 + block]
            if scores is None or scores.shape[1] != piece.shape[0]:
                scores = query.new_empty((len(batch), piece.shape[0]))
            r, c = rows[bounds[b]:bounds[b + 1]], cols[bounds[b]:bounds[b + 1]] - j0
            for n in dims:
                torch.mm(query[:, :n], piece[:, :n].T, out=scores)
                scores[r, c] = -torch.inf
                ranked[n].add(scores, j0)
        truth = _keys(*_entries([heldout], batch, device), n_items)
        excluded = _keys(rows, cols, n_items).unique()
        n_true = heldout.row_lengths()[batch].double()
        local = torch.arange(len(batch), device=device)[:, None] * n_items
        for n in dims:
            ids = ranked[n].ids() + local
            # with fewer items left than K, excluded items fill the tail of the ranking: never hits
            hits = (torch.isin(ids, truth) & ~torch.isin(ids, excluded)).double().cpu()
            for k in ks:
                k_hits = hits[:, :k]
                sums[n][f"recall@{k}"] += float((k_hits.sum(1) / n_true).sum())
                idcg = ideal[(n_true.clamp(max=min(k, top)) - 1).long()]
                sums[n][f"ndcg@{k}"] += float(((k_hits * discount[:k]).sum(1) / idcg).sum())
        if between is not None:
            between()
    return {str(n): {name: total / max(len(users), 1) for name, total in sums[n].items()} for n in dims}


class _Ranked:
    """The best ``count`` items of each of ``rows`` users so far, over blocks of
    scores given in ascending item order (:meth:`add`), in the ranking's order:
    descending score (NaN first), ties to the lower id.

    The first block's best come from ``torch.topk`` (:func:`_top`). A later
    block can only add items scoring above the current ``count``-th score (an
    equal score loses the tie to the lower id already kept): its groups of
    ``GROUP`` items whose maximum is above it are gathered, and the kept items
    and these candidates are sorted together once the candidates outnumber them."""

    GROUP = 64

    def __init__(self, rows: int, count: int):
        self.rows, self.count = rows, count
        self.values = self.index = self.threshold = None
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (row, value, id) of the candidates
        self.n_pending = 0

    def add(self, scores: Tensor, first_id: int) -> None:
        """Take in ``scores`` (rows x block) of the items from ``first_id`` on."""
        if self.values is None:
            values, ids = _top(scores, None, self.count)
            order = ranking_order(values, ids)
            self.values, self.index = values.gather(1, order), ids.gather(1, order) + first_id
            self.threshold = self.values[:, -1:]
            return
        width = scores.shape[1] // self.GROUP * self.GROUP
        groups = scores[:, :width].view(self.rows, -1, self.GROUP)
        # above the threshold, or NaN (which ranks first)
        row, group = torch.nonzero(~(groups.amax(2) <= self.threshold), as_tuple=True)
        values = groups[row, group]
        ids = (group * self.GROUP + first_id)[:, None] + torch.arange(self.GROUP, device=scores.device)
        row = row[:, None].expand_as(values)
        if width < scores.shape[1]:  # the block's last items, fewer than a group
            tail = scores[:, width:]
            values = torch.cat([values.flatten(), tail.flatten()])
            ids = torch.cat([ids.flatten(), torch.arange(width, scores.shape[1], device=scores.device)
                             .add(first_id).repeat(self.rows)])
            row = torch.cat([row.flatten(), torch.arange(self.rows, device=scores.device)
                             .repeat_interleave(scores.shape[1] - width)])
        row, values, ids = row.flatten(), values.flatten(), ids.flatten()
        keep = ~(values <= self.threshold[row, 0])
        self.pending.append((row[keep], values[keep], ids[keep]))
        self.n_pending += int(keep.sum())
        if self.n_pending > self.values.numel():
            self._merge()

    def _merge(self) -> None:
        """Sort the kept items and the candidates together: each row's best ``count``."""
        rows = torch.arange(self.rows, device=self.values.device).repeat_interleave(self.count)
        row, values, ids = (torch.cat([kept.flatten(), *parts]) for kept, *parts in
                            zip((rows, self.values, self.index), *self.pending))
        order = torch.sort(ids).indices
        order = order[torch.sort(values[order], descending=True, stable=True).indices]
        order = order[torch.sort(row[order], stable=True).indices]  # by row, each in the ranking's order
        counts = torch.bincount(row, minlength=self.rows)
        take = order[(torch.cumsum(counts, 0) - counts)[:, None] + torch.arange(self.count, device=row.device)]
        self.values, self.index = values[take], ids[take]
        self.threshold = self.values[:, -1:]
        self.pending, self.n_pending = [], 0

    def ids(self) -> Tensor:
        """``(rows, count)`` item ids in the ranking's order."""
        if self.pending:
            self._merge()
        return self.index


def _entries(parts: Sequence[CSR], rows: Tensor, device) -> tuple[Tensor, Tensor]:
    """``(position in rows, column)`` of every entry of ``rows`` in each of ``parts``, on ``device``."""
    found_rows, found_cols = [], []
    for part in parts:
        lengths = part.row_lengths()[rows]
        starts = torch.repeat_interleave(part.indptr[rows] - torch.cumsum(lengths, 0) + lengths, lengths)
        found_rows.append(torch.repeat_interleave(torch.arange(len(rows)), lengths))
        found_cols.append(part.indices[starts + torch.arange(int(lengths.sum()))])
    if not found_rows:
        return (torch.zeros(0, dtype=torch.int64, device=device),) * 2
    return torch.cat(found_rows).to(device), torch.cat(found_cols).to(device)


def _keys(rows: Tensor, cols: Tensor, n_cols: int) -> Tensor:
    return rows * n_cols + cols


def _top(values: Tensor, ids: Tensor | None, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` first entries of each row of ``values`` in the ranking's
    order (:func:`_order`), in no particular order: ``(values, ids)``, the ids
    their columns where ``ids`` is None."""
    if values.shape[1] > count:
        kept, where = values.topk(count + 1, dim=1)
        last, after = kept[:, count - 1], kept[:, count]
        where = where[:, :count]
        # where the K-th and (K + 1)-th scores are equal, topk's choice among them is not the lower id
        tied = torch.nonzero((last == after) | (last.isnan() & after.isnan())).flatten()
        if len(tied):
            where[tied] = ranking_order(values[tied], None if ids is None else ids[tied])[:, :count]
        values = values.gather(1, where)
    else:
        where = torch.arange(values.shape[1], device=values.device).expand_as(values)
    return values, where.clone() if ids is None else ids.gather(1, where)


@torch.no_grad()
def hierarchy_purity(item_weight: torch.Tensor, item_tree, width: int, k: int = 10) -> list[float]:
    """How well the first ``width`` columns of the item vectors recover a known
    category tree: for each tree level, the fraction of every item's ``k``
    nearest items (cosine similarity on the prefix) in the item's own category.
    Chance is about 1 / (number of categories at that level)."""
    tree = torch.as_tensor(item_tree)
    x = torch.nn.functional.normalize(item_weight[:, :width].float().cpu(), dim=1)
    sims = x @ x.T
    sims.fill_diagonal_(-torch.inf)
    neighbours = sims.topk(k, dim=1).indices
    return [float((tree[neighbours, level] == tree[:, level, None]).float().mean()) for level in range(tree.shape[1])]
