"""Recommendations from a trained run: :func:`load_run` reads the model file
(:mod:`mrl_kernels.modelfile`) and returns a :class:`LoadedRun`, which
recommends with the original ids through any index."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from ..modelfile import read_model
from ..ops import CSR
from ..ops._checks import check_int
from .exact import MatryoshkaIndex
from .nested import NestedIndex, fingerprint

__all__ = ["LoadedRun", "load_run"]


class LoadedRun:
    """A trained run, ready to recommend: :func:`load_run` makes one."""

    def __init__(self, state: dict, shortlist_dtype: torch.dtype | None = None, backend: str = "auto"):
        self.users = state["user"]
        self.dims = state["dims"]
        self.index = MatryoshkaIndex(state["item"], self.dims, shortlist_dtype, backend=backend)
        self.seen = CSR(state["seen_indptr"], state["seen_indices"], state["item"].shape[0])
        n_users, n_items = self.users.shape[0], state["item"].shape[0]
        self.user_ids = state["user_ids"] if state["user_ids"] is not None else list(range(n_users))
        self.item_ids = state["item_ids"] if state["item_ids"] is not None else list(range(n_items))
        self._row = {str(u): row for row, u in enumerate(self.user_ids)}
        self._source = None  # the item table's fingerprint, once a NestedIndex asks

    def rows(self, users: Iterable) -> list[int]:
        """The table rows of original user ids (or their text); ValueError naming unknown ones."""
        users = list(users)
        unknown = [u for u in users if str(u) not in self._row]
        if unknown:
            raise ValueError(f"unknown user ids {unknown[:10]}" + (f" and {len(unknown) - 10} more"
                                                                    if len(unknown) > 10 else "")
                             + f"; the run knows {len(self._row)} users, e.g. {self.user_ids[:3]}")
        return [self._row[str(u)] for u in users]

    def check_index(self, index: NestedIndex) -> None:
        """ValueError unless ``index`` was built from this run's item table."""
        if not isinstance(index, NestedIndex):
            raise ValueError(f"index must be a NestedIndex, got {type(index).__name__}")
        if self._source is None:
            self._source = fingerprint(self.index.items)
        if index.source != self._source:
            raise ValueError(f"the index was built from another item table than this run's ({index.index.ntotal} "
                             f"x {index.dim} against {self.index.items.shape[0]} x {self.index.dim}, or other values)")

    def recommend(self, users: Iterable, k: int = 20, width: int | None = None, shortlist: int | None = None,
                  index: NestedIndex | None = None) -> pd.DataFrame:
        """The top ``k`` items of each user (original ids), their seen items
        excluded: one row per (user, rank) with the item and its full-width score
        (``k`` beyond the items left: every item left).
        ``width``: serve through a shortlist at that prefix width (default: exact).
        ``index``: serve through that :class:`NestedIndex` over this run's item
        table instead (``width``, if given, must be its width)."""
        users = list(users)
        k = min(check_int("k", k), len(self.item_ids))  # the padding beyond the items is never returned
        if index is None:
            index = self.index
        else:
            self.check_index(index)
        rows = torch.tensor(self.rows(users), dtype=torch.int64)
        exclude = [self.seen.indices[self.seen.indptr[r]:self.seen.indptr[r + 1]] for r in rows.tolist()]
        scores, ids = index.search(self.users[rows], k, shortlist=shortlist, exclude=exclude, width=width)
        out = []
        for user, user_scores, user_ids in zip(users, scores.tolist(), ids.tolist()):
            out += [{"user": user, "rank": rank + 1, "item": self.item_ids[i], "score": s}
                    for rank, (s, i) in enumerate(zip(user_scores, user_ids)) if i >= 0]
        return pd.DataFrame(out, columns=["user", "rank", "item", "score"])


def load_run(run_dir: str | Path, shortlist_dtype: torch.dtype | None = None, backend: str = "auto") -> LoadedRun:
    """The model a run of ``mrl-train`` reported (``run_dir/model.pt``), served
    exactly by a :class:`MatryoshkaIndex` (``shortlist_dtype``, ``backend``)."""
    return LoadedRun(read_model(run_dir), shortlist_dtype, backend)
