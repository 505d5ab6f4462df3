"""Adaptive retrieval, :func:`prefix_topk`: a narrow-prefix shortlist reranked
at full width. This folder holds its spec (``spec.py``), reference
(``reference.py``), Triton kernel (``triton.py``) and C++ kernel
(``prefix_topk_cpu.cpp``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import _checks as checks, registry
from .reference import ranked, ranking_order

__all__ = ["prefix_topk", "exclusion", "ranked", "ranking_order"]


def exclusion(exclude, batch: int, n_items: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(offsets (B + 1,), ids)`` int64 on ``device`` from ``exclude``: None, a
    :class:`~mrl_kernels.ops.CSR` with one row per query, or a sequence of B
    id collections (tensors, arrays or lists)."""
    if exclude is None:
        return torch.zeros(batch + 1, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64,
                                                                                      device=device)
    if hasattr(exclude, "indptr") and hasattr(exclude, "indices"):
        if exclude.n_rows != batch:
            raise ValueError(f"exclude has {exclude.n_rows} rows but query has {batch}")
        offsets, ids = checks.check_csr("exclude", exclude.indptr, exclude.indices, device)
    else:
        if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Sequence) or len(exclude) != batch:
            raise ValueError(f"exclude must be None, a CSR with one row per query, or a sequence of {batch} id "
                             f"collections; got {type(exclude).__name__}")
        rows = [checks.check_id_tensor(f"exclude[{row}]", ids).reshape(-1).to("cpu", torch.int64)
                for row, ids in enumerate(exclude)]
        offsets = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64).cumsum(0)
        ids = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    return offsets.to(device), checks.check_ids("exclude", ids.to(device), n_items, device)


def prefix_topk(query: Tensor, item_weight: Tensor, k: int, width: int, shortlist: int, exclude=None, *,
                narrow: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Top-k retrieval through a narrow shortlist (adaptive retrieval, as in the
    Matryoshka representation papers): the ``shortlist`` items with the largest
    ``width``-prefix inner product, reranked by the full inner product; the best
    ``k`` of those. With ``shortlist >= N`` it is exact search.

    Args:
        query: ``(B, D)`` query (user) vectors.
        item_weight: ``(N, D)`` item table.
        k: results per query.
        width: the prefix width of the shortlist pass (``1 <= width <= D``).
        shortlist: how many items the narrow pass keeps (``>= k``, or ``>= N``:
            exact search, for any k).
        exclude: items each query must not get (e.g. its training interactions),
            in neither pass: a :class:`~mrl_kernels.ops.CSR` with one row per
            query, or a sequence of B id collections.
        narrow: the items' first ``width`` columns, ``(N, width)``, to score the
            shortlist pass with instead of ``item_weight[:, :width]`` (e.g. a
            contiguous float16 / bfloat16 copy, see :class:`MatryoshkaIndex`).

    Returns:
        ``(scores, ids)``, each ``(B, k)``: full-width inner products (float32, or
        float64 for float64 inputs) in descending order, ties to the lower id, and
        int64 item ids; where fewer than k items are left, id -1 and score -inf.
    """
    batch, dim = checks.check_rows("query", query)
    checks.check_float("item_weight", item_weight, 2, like=("query", query))
    if item_weight.shape[1] != dim:
        raise ValueError(f"item_weight has width {item_weight.shape[1]} but query has width {dim}")
    k, shortlist = checks.check_int("k", k), checks.check_int("shortlist", shortlist)
    width = checks.check_int("width", width)
    if width > dim:
        raise ValueError(f"width must be at most the embedding width {dim}, got {width}")
    if shortlist < min(k, item_weight.shape[0]):
        raise ValueError(f"shortlist must be >= k ({k}) or hold every item ({item_weight.shape[0]}), "
                         f"got {shortlist}")
    if narrow is None:
        narrow = item_weight[:, :width]
    else:
        checks.check_matrix("narrow", narrow, 2)
        if narrow.dtype not in checks.FLOAT_DTYPES or narrow.device != query.device:
            raise ValueError(f"narrow must be a float tensor on {query.device}, got {narrow.dtype} on {narrow.device}")
        if tuple(narrow.shape) != (item_weight.shape[0], width):
            raise ValueError(f"narrow must have shape ({item_weight.shape[0]}, {width}) (N, width), "
                             f"got {tuple(narrow.shape)}")
    offsets, ids = exclusion(exclude, batch, item_weight.shape[0], query.device)
    search = registry.operator_for("prefix_topk", backend, query)
    return search(query, narrow, item_weight, k, shortlist, offsets, ids)
