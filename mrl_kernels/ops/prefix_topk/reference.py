"""Plain PyTorch reference of :func:`prefix_topk`: the specification the
Triton and C++ kernels are tested against (the Triton backend also uses its
exclusion, shortlist and rerank after its own score pass). ``IMPLEMENTATIONS``
is what the ``"torch"`` backend registers."""
from __future__ import annotations

import torch

from ..common import acc_dtype

__all__ = ["excluded_mask", "ranking_order", "ranked", "shortlist_rerank", "prefix_topk"]


def excluded_mask(offsets: torch.Tensor, ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """Boolean ``(B, n_items)``: row b excludes ``ids[offsets[b]:offsets[b + 1]]``."""
    rows = torch.repeat_interleave(torch.arange(offsets.shape[0] - 1, device=ids.device),
                                   offsets[1:] - offsets[:-1])
    mask = torch.zeros((offsets.shape[0] - 1, n_items), dtype=torch.bool, device=ids.device)
    mask[rows, ids] = True
    return mask


def ranking_order(values: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The positions of each row's entries in the ranking's order, the one order
    of every ranking in the package (retrieval, evaluation, serving):
    descending value (NaN first), ties to the lower id (``ids`` None: the
    column positions are the ids)."""
    if ids is None:
        return torch.sort(values, dim=1, descending=True, stable=True).indices
    by_id = ids.argsort(dim=1)
    return by_id.gather(1, torch.sort(values.gather(1, by_id), dim=1, descending=True, stable=True).indices)


def ranked(scores: torch.Tensor, ids: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` best of ``scores`` per row with their ``ids``, in the
    ranking's order (:func:`ranking_order`; ``ids`` ascending along each row)."""
    order = ranking_order(scores)[:, :count]
    return scores.gather(1, order), ids.gather(1, order)


def shortlist_rerank(query: torch.Tensor, item_weight: torch.Tensor, first: torch.Tensor, blocked: torch.Tensor, k: int,
                     shortlist: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The second half of :func:`prefix_topk`, given the shortlist pass's
    ``(B, N)`` scores ``first`` and the ``(B, N)`` exclusion mask ``blocked``."""
    batch, n_items = first.shape
    first = first.masked_fill(blocked, -torch.inf)
    all_ids = torch.arange(n_items, device=query.device).expand(batch, -1)
    _, short = ranked(first, all_ids, min(shortlist, n_items))
    short = short.sort(dim=1).values  # ascending ids: ties of the rerank go to the lower id
    full = (query[:, None, :].to(first.dtype) * item_weight[short].to(first.dtype)).sum(-1)
    full = full.masked_fill(blocked.gather(1, short), -torch.inf)
    scores, ids = ranked(full, short, min(k, short.shape[1]))
    ids = torch.where(torch.isneginf(scores) & blocked.gather(1, ids), -1, ids)
    if k > ids.shape[1]:  # fewer items than k
        pad = k - ids.shape[1]
        scores = torch.cat([scores, scores.new_full((batch, pad), -torch.inf)], dim=1)
        ids = torch.cat([ids, ids.new_full((batch, pad), -1)], dim=1)
    return scores, ids


@torch.no_grad()
def prefix_topk(query: torch.Tensor, narrow: torch.Tensor, item_weight: torch.Tensor, k: int, shortlist: int,
                exclude_offsets: torch.Tensor, exclude_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive retrieval: the ``shortlist`` items with the largest prefix inner
    product ``<query[:, :w], narrow>`` (``w = narrow.shape[1]``; ``narrow`` holds the
    items' first w columns, possibly in a narrower dtype), reranked by the full
    inner product with ``item_weight``; the top ``k`` of them. Row b's items
    ``exclude_ids[exclude_offsets[b]:exclude_offsets[b + 1]]`` take part in
    neither pass. Ties go to the lower item id. Where fewer than k items are left,
    the remaining slots hold id -1 and score -inf. Returns ``(scores, ids)``:
    ``(B, k)`` in the accumulation dtype and int64."""
    acc = acc_dtype(query.dtype)
    first = query[:, :narrow.shape[1]].to(acc) @ narrow.to(acc).T
    blocked = excluded_mask(exclude_offsets, exclude_ids, narrow.shape[0])
    return shortlist_rerank(query, item_weight, first, blocked, k, shortlist)


IMPLEMENTATIONS = {"prefix_topk": prefix_topk}
