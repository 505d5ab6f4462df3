"""An item table searchable at any nested width: :class:`MatryoshkaIndex`
keeps contiguous copies of the narrow prefixes (a width-8 pass reads N x 8
values, not N x 64), optionally in float16 / bfloat16, and searches with
:func:`mrl_kernels.prefix_topk` (shortlist at the narrow width, rerank at full
width): exact narrow scores, a pass over every item."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from ..atomic import atomic_save
from ..ops import prefix_topk

__all__ = ["MatryoshkaIndex"]


class MatryoshkaIndex:
    """An item table searchable at any of ``widths`` (each <= D).

    ``shortlist_dtype`` stores the narrow copies in that dtype (e.g.
    ``torch.bfloat16``: half the bytes the shortlist pass reads); the rerank
    always uses the full table in its own dtype. ``backend`` runs its
    searches (:func:`mrl_kernels.prefix_topk`'s)."""

    def __init__(self, item_weight: Tensor, widths: Iterable[int], shortlist_dtype: torch.dtype | None = None, *,
                 backend: str = "auto"):
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
        self.backend = backend
        self.narrow = {w: self.items[:, :w].to(self.shortlist_dtype).contiguous() for w in self.widths if w < dim}

    @property
    def dim(self) -> int:
        return self.items.shape[1]

    def search(self, query: Tensor, k: int, *, shortlist: int | None = None, exclude=None,
               width: int | None = None) -> tuple[Tensor, Tensor]:
        """``(scores, ids)`` of the top ``k`` items by full-width inner product
        among the ``shortlist`` best at ``width`` (``width=None`` or the full
        width: exact search; ``shortlist`` defaults to ``max(200, k)``), FAISS's
        ``search`` as every index of the package has it. ``exclude`` as for
        :func:`mrl_kernels.prefix_topk`."""
        width = self.dim if width is None else int(width)
        if width == self.dim:
            return prefix_topk(query, self.items, k, width, self.items.shape[0], exclude, backend=self.backend)
        if width not in self.narrow:
            raise ValueError(f"width must be one of the index's widths {self.widths}, got {width}")
        shortlist = max(200, k) if shortlist is None else shortlist
        return prefix_topk(query, self.items, k, width, shortlist, exclude, narrow=self.narrow[width],
                           backend=self.backend)

    def state(self) -> dict:
        return {"items": self.items, "widths": self.widths, "shortlist_dtype": str(self.shortlist_dtype)}

    def save(self, path: str | Path, force: bool = False) -> None:
        """Write the index atomically (the narrow copies are rebuilt on load); an
        existing file is replaced only with ``force`` (FileExistsError otherwise,
        also when another writer creates ``path`` first), as :meth:`NestedIndex.save`."""
        atomic_save(path, self.state(), force=force)

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
