"""The checkpoint format: everything a run needs to resume, in one file.

``checkpoint.pt`` is :data:`MAGIC`, the payload's SHA-256 (hex) and a newline,
then the payload: a ``torch.save`` of a dict with the settings that define the
run (``"config"``, :func:`settings`), the data's fingerprint (``"data"``,
:meth:`mrl_kernels.training.data.Dataset.fingerprint`), the fit's weights, optimizer and
generators (what :meth:`~mrl_kernels.training.fit.Fit.state` returns) and the
run's progress (``"state"``). A checkpoint resumes only a run with the same
settings on the same data; everything else is a ValueError naming what differs.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import atomic_write_bytes
from .config import TrainConfig

__all__ = ["CHECKPOINT", "MAGIC", "settings", "write", "read", "save", "load"]

CHECKPOINT = "checkpoint.pt"  # its name in the run folder
MAGIC = b"mrl-train checkpoint 1\n"


def settings(config: TrainConfig) -> dict:
    """The settings that define a run (what a resumed run must share): not
    those it does not read (:meth:`TrainConfig.unread`)."""
    kept = asdict(config)
    for key in ("progress", "out", "epochs", "patience", "device", "backend", "data_dir", "track_test",
                *config.unread()):
        kept.pop(key)
    kept["dims"] = list(kept["dims"])
    return kept


def write(path: Path, content: dict) -> None:
    """Write ``content`` to ``path`` in the checkpoint format, atomically."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read(path: Path, device: torch.device) -> dict:
    """The content saved by :func:`write`; ValueError naming what is wrong."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint")
    if not path.is_file():
        raise ValueError(f"--resume: there is no checkpoint to resume at {path}")
    blob = path.read_bytes()
    if not blob.startswith(MAGIC):
        what = "empty" if not blob else "not a checkpoint written by mrl-train"
        raise ValueError(f"{path} is {what}; remove it, or use another --out")
    digest, _, payload = blob[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is damaged (its checksum does not match); remove it, or use another --out")
    return torch.load(io.BytesIO(payload), map_location=device, weights_only=False)


def save(path: Path, config: TrainConfig, fingerprint: str, fit_state: dict, run_state: dict) -> None:
    """Checkpoint a run of ``config`` on the data of ``fingerprint``: its fit's
    state and its progress."""
    write(path, {"config": settings(config), "data": fingerprint, **fit_state, "state": run_state})


def load(path: Path, config: TrainConfig, fingerprint: str, dataset: str, device: torch.device) -> dict:
    """What :func:`save` wrote at ``path``, if it resumes a run of ``config`` on
    ``dataset`` with ``fingerprint``; else ValueError naming what differs."""
    saved = read(path, device)
    if not isinstance(saved, dict) or "config" not in saved or "data" not in saved:
        raise ValueError(f"{path} was not written by this version of mrl-train; use another --out")
    now, unread = settings(config), config.unread()  # earlier versions kept the unread ones too
    changed = sorted(k for k in (set(saved["config"]) | set(now)) - unread if saved["config"].get(k) != now.get(k))
    if changed:
        raise ValueError(f"{path} was written with other settings ("
                         + ", ".join(f"{k}: {saved['config'].get(k)!r} there, {now.get(k)!r} now" for k in changed)
                         + "); drop --resume or use another --out")
    if saved["data"] != fingerprint:
        raise ValueError(f"{path} was trained on other data than {dataset} as loaded now; "
                         "drop --resume or use another --out")
    return saved
