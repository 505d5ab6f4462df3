"""The run folder and what is written in it besides the checkpoint and the model:
``history.csv`` (one row per evaluation), ``curves.png`` (with matplotlib, the
``plot`` extra) and ``metrics.json``, each written atomically.

Without ``--out`` a run gets a new folder ``runs/<time>-<dataset>-<method>``, and
``runs/latest`` points at it. A lock keeps a second run out of a folder in use;
a folder that holds a run is only continued (``--resume``), never overwritten.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Iterator

import filelock
import pandas as pd

from ..atomic import atomic_write, atomic_write_png, atomic_write_text, remove_stale_temporaries
from ..modelfile import MODEL_FILE
from .checkpoint import CHECKPOINT

__all__ = ["RUNS", "METRICS", "HISTORY", "CURVES", "OUTPUTS", "WRITES", "run_folder", "claimed", "check_new",
           "write_history", "write_metrics"]

RUNS = Path("runs")  # where runs go without --out
METRICS, HISTORY, CURVES = "metrics.json", "history.csv", "curves.png"
OUTPUTS = (METRICS, HISTORY, CHECKPOINT, MODEL_FILE)  # a folder holding any of these holds a run
WRITES = (*OUTPUTS, CURVES)  # every file a run writes: a new run starts only in a folder holding none
LOCK = ".lock"  # held while a run writes to its folder (filelock's, empty)


def run_folder(out: str | None, label: str, resume: bool, root: Path = RUNS) -> Path:
    """``out``, or without it a new folder ``<root>/<time>-<label>`` that
    ``<root>/latest`` then points at (``<root>/latest`` itself with ``resume``)."""
    if out is not None:
        return Path(out)
    latest = root / "latest"
    if resume:
        return latest
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"{stamp}-{label}"
    for n in range(1, 1000):
        if not folder.exists():
            break
        folder = root / f"{stamp}-{label}-{n}"
    folder.mkdir(parents=True)
    link = root / f".latest.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(folder.name)
    os.replace(link, latest)
    return folder


@contextlib.contextmanager
def claimed(out: Path) -> Iterator[Path]:
    """``out`` (made if missing) held for this process while the block runs,
    cleared of the temporaries a killed run left; RuntimeError when another run
    holds it, ValueError when ``out`` is a file or a link to nothing."""
    if out.is_symlink() and not out.exists():
        raise ValueError(f"{out} is a link to {os.readlink(out)}, which does not exist (the run was moved or "
                         "deleted); --out names the run folder to use")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a run folder; --out names a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    if path.is_symlink() or (path.exists() and (not path.is_file() or path.stat().st_size > 0)):
        # the lock opens its file truncated, and a run's own lock file stays empty: this one is the user's
        raise ValueError(f"{path} is not a run's lock file (a run's is empty) and taking the lock would empty it; "
                         "move it or choose another --out")
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RuntimeError(f"another mrl-train run is writing to {out}; wait for it to end, or use another "
                           "--out") from None
    try:
        remove_stale_temporaries(out)
        yield out
    finally:
        lock.release()


def check_new(out: Path) -> None:
    """ValueError when ``out`` already holds a run (a new run never overwrites
    one), or any other file a run writes (a file of the user's, then)."""
    held = [name for name in OUTPUTS if (out / name).exists()]
    if held:
        raise ValueError(f"{out} already holds a run ({', '.join(held)}); --resume continues it, "
                         "or choose another --out")
    theirs = [name for name in WRITES if (out / name).exists()]
    if theirs:
        raise ValueError(f"{out} holds {', '.join(theirs)}, which a run writes, but no run; move it or choose "
                         "another --out")


def write_history(out: Path, history: list[dict]) -> None:
    """``history.csv`` (a row per evaluation) and, with matplotlib, ``curves.png``."""
    table = pd.DataFrame(history)
    atomic_write(out / HISTORY, lambda tmp: table.to_csv(tmp, index=False))
    _plot(table, out / CURVES)


def write_metrics(out: Path, result: dict) -> None:
    """``metrics.json``: ``result`` as indented JSON."""
    atomic_write_text(out / METRICS, json.dumps(result, indent=2))


def _plot(history: pd.DataFrame, path: Path) -> None:
    """Training loss and validation Recall@20 / NDCG@20 against epochs, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(history.epoch, history.loss, marker="o")
    left.set(xlabel="epoch", ylabel="training loss")
    for name in ("recall@20", "ndcg@20"):
        right.plot(history.epoch, history[name], marker="o", label=f"validation {name}")
    right.set(xlabel="epoch")
    right.legend()
    fig.tight_layout()
    atomic_write_png(path, fig, 100)
    plt.close(fig)
