"""The full-ranking evaluation that :mod:`mrl_kernels.training.metrics` replaced, kept as
the baseline of ``python -m bench.scale --evaluation`` and of the tests that
show the one-pass evaluation gives the same metrics: each width on its own, a
``(users, N)`` score product per batch of users (as many as 1 GiB of scores and
masks allows), dense boolean masks of the excluded and held-out items, and
``torch.topk`` (whose order among equal scores is unspecified)."""
from __future__ import annotations

from typing import Sequence

import torch

from mrl_kernels.ops import CSR
from mrl_kernels.training.metrics import KS

__all__ = ["dense_evaluate", "dense_prefix_evaluate"]


@torch.no_grad()
def dense_evaluate(user_weight: torch.Tensor, item_weight: torch.Tensor, heldout: CSR, exclude: Sequence[CSR] = (),
                   users: torch.Tensor | None = None, ks: Sequence[int] = KS, batch_size: int = 1024,
                   memory: int = 1 << 30) -> dict[str, float]:
    """Recall@K and NDCG@K over ``users`` (default: those with held-out items)."""
    users = torch.nonzero(heldout.row_lengths() > 0).flatten() if users is None else users
    batch_size = max(1, min(batch_size, memory // (item_weight.shape[0] * 8)))  # float32 scores + 3 masks
    top = min(max(ks), item_weight.shape[0])
    discount = 1.0 / torch.log2(torch.arange(top, dtype=torch.float64) + 2.0)
    ideal = torch.cumsum(discount, 0)  # ideal[n - 1]: IDCG with n hits
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = user_weight[batch].float() @ item_weight.float().T
        blocked = torch.zeros(scores.shape, dtype=torch.bool)
        for seen in exclude:
            blocked |= seen.dense_rows(batch)
        scores[blocked] = -torch.inf
        ranked = scores.topk(top, dim=1).indices
        truth = heldout.dense_rows(batch)
        hits = (truth.gather(1, ranked) & ~blocked.gather(1, ranked)).double()
        n_true = truth.sum(1).double()
        for k in ks:
            k_hits = hits[:, :k]
            sums[f"recall@{k}"] += float((k_hits.sum(1) / n_true).sum())
            idcg = ideal[(n_true.clamp(max=min(k, top)) - 1).long()]
            sums[f"ndcg@{k}"] += float(((k_hits * discount[:k]).sum(1) / idcg).sum())
    return {name: total / max(len(users), 1) for name, total in sums.items()}


def dense_prefix_evaluate(user_weight: torch.Tensor, item_weight: torch.Tensor, dims: Sequence[int], heldout: CSR,
                          exclude: Sequence[CSR] = (), users: torch.Tensor | None = None,
                          batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """:func:`dense_evaluate` on the first n columns, for each n in ``dims``, one width after the other."""
    return {str(n): dense_evaluate(user_weight[:, :n], item_weight[:, :n], heldout, exclude, users,
                                   batch_size=batch_size) for n in dims}
