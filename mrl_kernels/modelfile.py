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
    """The content of ``run_dir/model.pt``; ValueError naming the file if it is not one."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a finished mrl-train run?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not a model written by mrl-train ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model written by mrl-train")
    return state
