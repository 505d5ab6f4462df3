"""The model file a run of ``mrl-train`` keeps (``model.pt``): the reported
model's tables, the nested widths, the interactions seen (excluded from
recommendations) and the id maps. Training writes it; serving reads it."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .atomic import atomic_write_bytes
from .ops import CSR
from .ops._checks import check_csr, check_dims, check_ids

__all__ = ["MODEL_FILE", "FORMAT", "save_model", "read_model"]

MODEL_FILE = "model.pt"
FORMAT = "mrl-train model 1"


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


def read_model(run_dir: str | Path) -> dict:
    """The content of ``run_dir/model.pt``, checked (every key, the tables
    finite, the widths, the interactions seen, the id maps); ValueError naming
    the file if it is not one or is damaged."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a finished mrl-train run?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not a model written by mrl-train ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model written by mrl-train")
    try:
        _check(state)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is damaged: {exc}") from None
    return state


KEYS = ("user", "item", "dims", "seen_indptr", "seen_indices", "user_ids", "item_ids")  # what serving reads


def _check(state: dict) -> None:
    """What serving relies on: two finite float tables of one width, nested
    widths ending at it, a CSR of seen items with a row per user, an id map
    (or None) per table with one distinct id (as text) per row."""
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    for name in ("user", "item"):
        table = state[name]
        if not isinstance(table, Tensor) or table.dim() != 2 or not table.is_floating_point() or not len(table):
            what = f"shape {tuple(table.shape)} {table.dtype}" if isinstance(table, Tensor) else type(table).__name__
            raise ValueError(f"its {name} table must be a non-empty (N, D) float tensor, got {what}")
        finite = torch.isfinite(table).all(dim=1)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten()
            raise ValueError(f"its {name} table holds NaN or infinite values ({len(rows)} rows, e.g. row "
                             f"{int(rows[0])}); they cannot be ranked")
    (n_users, width), n_items = state["user"].shape, state["item"].shape[0]
    if state["item"].shape[1] != width:
        raise ValueError(f"its user table has width {width} but its item table {state['item'].shape[1]}")
    check_dims(state["dims"], width)
    indptr, indices = check_csr("seen", state["seen_indptr"], state["seen_indices"], torch.device("cpu"))
    if len(indptr) != n_users + 1:
        raise ValueError(f"seen.indptr must hold one offset per user and one more ({n_users + 1}), got {len(indptr)}")
    check_ids("seen.indices", indices, n_items, torch.device("cpu"), rows_of="the item table")
    for name, n in (("user_ids", n_users), ("item_ids", n_items)):
        ids = state[name]
        if ids is not None and (not isinstance(ids, list) or len(ids) != n or len(set(map(str, ids))) != n):
            what = f"{len(ids)} ids, {len(set(map(str, ids)))} distinct" if isinstance(ids, list) \
                else type(ids).__name__
            raise ValueError(f"its {name} must be None or a list of {n} distinct ids (one a table row), got {what}")
