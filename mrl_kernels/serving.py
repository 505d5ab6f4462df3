"""Serving at a narrow width: a Matryoshka index over an item table, and
recommendations from a trained run.

One model serves every prefix width: :class:`MatryoshkaIndex` keeps contiguous
copies of the narrow prefixes (a width-8 pass reads N x 8 values, not N x 64),
optionally in float16 / bfloat16, and searches with :func:`mrl_kernels.prefix_topk`
(shortlist at the narrow width, rerank at full width). :func:`load_run` reads the
model a run of ``mrl-train`` keeps (``model.pt``: the reported model's tables,
the id maps and the interactions seen) and recommends with original ids.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from .atomic import atomic_write_bytes
from .data import CSR
from .ops import prefix_topk

__all__ = ["MatryoshkaIndex", "Run", "load_run", "MODEL_FILE", "save_model"]

MODEL_FILE = "model.pt"
FORMAT = "mrl-train model 1"


class MatryoshkaIndex:
    """An item table searchable at any of ``widths`` (each <= D).

    ``shortlist_dtype`` stores the narrow copies in that dtype (e.g.
    ``torch.bfloat16``: half the bytes the shortlist pass reads); the rerank
    always uses the full table in its own dtype."""

    def __init__(self, item_weight: Tensor, widths: Iterable[int], shortlist_dtype: torch.dtype | None = None):
        if not isinstance(item_weight, Tensor) or item_weight.dim() != 2 or not item_weight.is_floating_point():
            what = f"shape {tuple(item_weight.shape)} {item_weight.dtype}" if isinstance(item_weight, Tensor) \
                else type(item_weight).__name__
            raise ValueError(f"item_weight must be an (N, D) float table, got {what}")
        self.items = item_weight.detach().contiguous()
        dim = self.items.shape[1]
        self.widths = sorted({int(w) for w in widths})
        if not self.widths or self.widths[0] < 1 or self.widths[-1] > dim:
            raise ValueError(f"widths must lie in [1, {dim}] (the table's width), got {list(widths)}")
        self.shortlist_dtype = shortlist_dtype or self.items.dtype
        self.narrow = {w: self.items[:, :w].to(self.shortlist_dtype).contiguous() for w in self.widths if w < dim}

    @property
    def dim(self) -> int:
        return self.items.shape[1]

    def search(self, query: Tensor, k: int, width: int | None = None, shortlist: int | None = None,
               exclude=None, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """``(scores, ids)`` of the top ``k`` items by full-width inner product
        among the ``shortlist`` best at ``width`` (``width=None`` or the full
        width: exact search; ``shortlist`` defaults to ``max(200, k)``).
        ``exclude`` as for :func:`mrl_kernels.prefix_topk`."""
        width = self.dim if width is None else int(width)
        if width == self.dim:
            return prefix_topk(query, self.items, k, width, self.items.shape[0], exclude, backend=backend)
        if width not in self.narrow:
            raise ValueError(f"width must be one of the index's widths {self.widths}, got {width}")
        shortlist = max(200, k) if shortlist is None else shortlist
        return prefix_topk(query, self.items, k, width, shortlist, exclude, narrow=self.narrow[width],
                           backend=backend)

    def state(self) -> dict:
        return {"items": self.items, "widths": self.widths, "shortlist_dtype": str(self.shortlist_dtype)}

    def save(self, path: str | Path) -> None:
        """Write the index atomically (the narrow copies are rebuilt on load)."""
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "MatryoshkaIndex":
        """The index :meth:`save` wrote; ValueError naming the file if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: empty, truncated, garbage
            raise ValueError(f"{path} is not an index written by MatryoshkaIndex.save "
                             f"({type(exc).__name__})") from None
        dtype = getattr(torch, str(state.get("shortlist_dtype", "")).replace("torch.", ""), None) \
            if isinstance(state, dict) else None
        if not isinstance(dtype, torch.dtype) or not isinstance(state.get("items"), Tensor) \
                or not isinstance(state.get("widths"), list):
            keys = f" with keys {', '.join(map(str, state))}" if isinstance(state, dict) else ""
            raise ValueError(f"{path} is not an index written by MatryoshkaIndex.save (it holds a "
                             f"{type(state).__name__}{keys})")
        return cls(state["items"], state["widths"], dtype)


def save_model(path: Path, user_table: Tensor, item_table: Tensor, dims: Sequence[int], seen: CSR,
               user_ids=None, item_ids=None, **info) -> None:
    """Write what serving needs from a run: the tables, the nested widths, the
    interactions seen (excluded from recommendations) and the id maps."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "user": user_table.detach().cpu(), "item": item_table.detach().cpu(),
                "dims": list(dims), "seen_indptr": seen.indptr, "seen_indices": seen.indices,
                "user_ids": None if user_ids is None else [_plain(x) for x in user_ids],
                "item_ids": None if item_ids is None else [_plain(x) for x in item_ids], **info}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _plain(value):
    """numpy scalars as Python ints / floats / strs (what weights-only loading reads)."""
    return value.item() if hasattr(value, "item") else value


class Run:
    """A trained run, ready to recommend: :func:`load_run` makes one."""

    def __init__(self, state: dict, shortlist_dtype: torch.dtype | None = None):
        self.users = state["user"]
        self.dims = state["dims"]
        self.index = MatryoshkaIndex(state["item"], self.dims, shortlist_dtype)
        self.seen = CSR(state["seen_indptr"], state["seen_indices"], state["item"].shape[0])
        n_users, n_items = self.users.shape[0], state["item"].shape[0]
        self.user_ids = state["user_ids"] if state["user_ids"] is not None else list(range(n_users))
        self.item_ids = state["item_ids"] if state["item_ids"] is not None else list(range(n_items))
        self._row = {str(u): row for row, u in enumerate(self.user_ids)}

    def rows(self, users: Iterable) -> list[int]:
        """The table rows of original user ids (or their text); ValueError naming unknown ones."""
        users = list(users)
        unknown = [u for u in users if str(u) not in self._row]
        if unknown:
            raise ValueError(f"unknown user ids {unknown[:10]}" + (f" and {len(unknown) - 10} more"
                                                                    if len(unknown) > 10 else "")
                             + f"; the run knows {len(self._row)} users, e.g. {self.user_ids[:3]}")
        return [self._row[str(u)] for u in users]

    def recommend(self, users: Iterable, k: int = 20, width: int | None = None, shortlist: int | None = None,
                  backend: str = "auto") -> pd.DataFrame:
        """The top ``k`` items of each user (original ids), their seen items
        excluded: one row per (user, rank) with the item and its full-width score.
        ``width``: serve through a shortlist at that prefix width (default: exact)."""
        users = list(users)
        rows = torch.tensor(self.rows(users), dtype=torch.int64)
        exclude = [self.seen.indices[self.seen.indptr[r]:self.seen.indptr[r + 1]] for r in rows.tolist()]
        scores, ids = self.index.search(self.users[rows], k, width, shortlist, exclude, backend=backend)
        out = []
        for user, user_scores, user_ids in zip(users, scores.tolist(), ids.tolist()):
            out += [{"user": user, "rank": rank + 1, "item": self.item_ids[i], "score": s}
                    for rank, (s, i) in enumerate(zip(user_scores, user_ids)) if i >= 0]
        return pd.DataFrame(out, columns=["user", "rank", "item", "score"])


def load_run(run_dir: str | Path, shortlist_dtype: torch.dtype | None = None) -> Run:
    """The model a run of ``mrl-train`` reported (``run_dir/model.pt``)."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a finished mrl-train run?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not a model written by mrl-train ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model written by mrl-train")
    return Run(state, shortlist_dtype)
