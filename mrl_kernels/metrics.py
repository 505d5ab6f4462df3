"""Recall@K and NDCG@K by full ranking over all items.

For each user with held-out items, every item is scored (``user @ item.T``),
the items to exclude (training interactions, and for the test split the
validation ones too) are removed, and the top K are compared with the held-out
set; an excluded item is never a hit, also where a held-out item repeats a
training interaction and K exceeds the items left. Recall@K = hits / #held-out; NDCG@K = DCG / IDCG with binary gains,
``1 / log2(rank + 2)`` discounts and IDCG over ``min(K, #held-out)`` hits.
Both are averaged over the users with held-out items.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .data import CSR

__all__ = ["KS", "evaluate", "prefix_evaluate", "hierarchy_purity"]

KS = (10, 20, 50)


@torch.no_grad()
def evaluate(
    user_weight: torch.Tensor,
    item_weight: torch.Tensor,
    heldout: CSR,
    exclude: Iterable[CSR] = (),
    ks: Sequence[int] = KS,
    batch_size: int = 1024,
    memory: int = 1 << 30,
) -> dict[str, float]:
    """``{"recall@K": .., "ndcg@K": ..}`` for every K in ``ks``. Users are scored
    in batches of at most ``batch_size``, fewer where their ``(batch, N)`` scores
    and masks would take more than ``memory`` bytes (so 10^6 or 10^7 items fit)."""
    exclude = list(exclude)
    users = torch.nonzero(heldout.row_lengths() > 0).flatten()
    device = user_weight.device
    batch_size = max(1, min(batch_size, memory // (item_weight.shape[0] * 8)))  # float32 scores + 3 masks
    top = min(max(ks), item_weight.shape[0])
    discount = 1.0 / torch.log2(torch.arange(top, dtype=torch.float64) + 2.0)
    ideal = torch.cumsum(discount, 0)  # ideal[n - 1]: IDCG with n hits
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = user_weight[batch.to(device)].float() @ item_weight.float().T
        blocked = torch.zeros(scores.shape, dtype=torch.bool, device=device)
        for seen in exclude:
            blocked |= seen.dense_rows(batch, device)
        scores[blocked] = -torch.inf
        ranked = scores.topk(top, dim=1).indices
        truth = heldout.dense_rows(batch, device)
        # with fewer items left than K, excluded items fill the tail of the ranking: never hits
        hits = (truth.gather(1, ranked) & ~blocked.gather(1, ranked)).double().cpu()
        n_true = truth.sum(1).double().cpu()
        for k in ks:
            k_hits = hits[:, :k]
            sums[f"recall@{k}"] += float((k_hits.sum(1) / n_true).sum())
            idcg = ideal[(n_true.clamp(max=min(k, top)) - 1).long()]
            sums[f"ndcg@{k}"] += float(((k_hits * discount[:k]).sum(1) / idcg).sum())
    return {name: total / max(len(users), 1) for name, total in sums.items()}


def prefix_evaluate(
    user_weight: torch.Tensor,
    item_weight: torch.Tensor,
    dims: Sequence[int],
    heldout: CSR,
    exclude: Iterable[CSR] = (),
    ks: Sequence[int] = KS,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` using only the first n columns of every vector, for each
    n in ``dims`` (the paper's Figure 3): ``{"n": metrics}``."""
    exclude = list(exclude)
    return {str(n): evaluate(user_weight[:, :n], item_weight[:, :n], heldout, exclude, ks) for n in dims}


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
