"""Per-step cost against the catalogue size, dense and row-sparse training.

``python -m bench.scale`` writes ``bench/results/scale-<machine>-<date>.{md,json,png}``:
for N in ``SIZES`` items (10^7 where memory allows) and each path (``dense``:
the fused operator and fused Adam over dense tables; ``sparse``: ``--sparse``,
row-sparse lookups and lazy Adam), the median time of one MRL-M training step
(B 2048, 5 levels x 16 candidates, D 64, 30,000 users, one thread: the trainer's
own step), the process's peak memory, and the time to evaluate 1,000 users by
full ranking (memory-bounded user batches). Each (N, path) runs in its own
process, so its peak memory is its own; a process that runs out of memory is
reported as such.
"""
from __future__ import annotations

from . import require

require("python -m bench.scale", "matplotlib", "tabulate")

import argparse
import datetime as dt
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mrl_kernels import data
from mrl_kernels.metrics import evaluate
from mrl_kernels.trainer import PAPER_RECIPE, Fit, TrainConfig

from .timing import median_ms

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
USERS, INTERACTIONS, BATCH = 30_000, 300_000, 2048


def one(n_items: int, sparse: bool, repeats: int) -> dict:
    """In this process (its peak memory is the measurement's): the median step
    time of the trainer's own :class:`~mrl_kernels.trainer.Fit` on ``n_items``
    items, the time to evaluate 1,000 users, and the peak memory."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, USERS, INTERACTIONS), rng.integers(0, n_items, INTERACTIONS)
    interactions = data.CSR.from_pairs(users, items, USERS, n_items)
    fit = Fit(TrainConfig(**{**PAPER_RECIPE, "batch_size": BATCH}, sparse=sparse), interactions, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    step_ms = median_ms(lambda: fit.step(torch.randint(0, interactions.nnz, (BATCH,), generator=g)), "cpu", repeats)
    heldout = data.CSR.from_pairs(np.arange(1000), rng.integers(0, n_items, 1000), USERS, n_items)
    started = time.perf_counter()
    evaluate(*fit.model.tables(), heldout, [interactions])
    eval_s = time.perf_counter() - started
    return {"step_ms": step_ms, "eval_1000_users_s": eval_s,
            "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(n_items: int, path: str, repeats: int) -> dict:
    """:func:`one` in a process of its own."""
    run = subprocess.run([sys.executable, "-m", "bench.scale", "--one", str(n_items), path, str(repeats)],
                         capture_output=True, text=True)
    row = {"N": n_items, "path": path}
    if run.returncode != 0:
        killed = run.returncode < 0 or "MemoryError" in run.stderr or "DefaultCPUAllocator" in run.stderr
        return {**row, "note": "out of memory" if killed else run.stderr.strip().splitlines()[-1]}
    return {**row, **json.loads(run.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--one", nargs=3, metavar=("N", "PATH", "REPEATS"),
                        help="measure one size and path (dense or sparse) in this process, print it as JSON")
    args = parser.parse_args(argv)
    if args.one:
        n_items, path, repeats = args.one
        print(json.dumps(one(int(n_items), path == "sparse", int(repeats))))
        return 0
    rows = []
    for n in map(int, args.sizes.split(",")):
        for path in ("dense", "sparse"):
            rows.append(measure(n, path, args.repeats))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    base = table[table.N == table.N.min()].set_index("path")["step_ms"]
    table["step vs smallest N"] = table.step_ms / table.path.map(base)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = f"scale-{platform.machine()}-1thread-{dt.date.today().isoformat()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for path, part in table.dropna(subset=["step_ms"]).groupby("path"):
        ax.plot(part.N, part.step_ms, marker="o", label=path)
    ax.set(xscale="log", yscale="log", xlabel="items N", ylabel="ms per MRL-M step (B 2048, one thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    text = (f"# Step cost against the number of items\n\n{platform.processor() or platform.machine()}, one torch "
            f"thread; B {BATCH}, 5 levels x 16 candidates, D 64, {USERS} users, {INTERACTIONS} random "
            f"interactions; median of {args.repeats} steps; bench/scale.py.\n\n"
            + table.to_markdown(index=False, floatfmt=".2f") + f"\n\n![step time]({name}.png)\n")
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
