"""Per-step cost against the catalogue size, dense and row-sparse training;
``--routes``: the two routes over row-sharded tables.

``python -m bench.scale`` writes ``bench/results/scale-<machine>-<date>.{md,json,png}``:
for N in ``SIZES`` items (10^7 where memory allows) and each path (``dense``:
the fused operator and fused Adam over dense tables; ``sparse``: ``--sparse``,
row-sparse lookups and lazy Adam), the median time of one MRL-M training step
(B 2048, 5 levels x 16 candidates, D 64, 30,000 users, one thread: the trainer's
own step), the process's peak memory, and the time to evaluate 1,000 users by
full ranking at full width (``mrl_kernels.training.metrics.evaluate``). Each (N, path) runs in its own
process, so its peak memory is its own; a process that runs out of memory is
reported as such.

``python -m bench.scale --evaluation`` writes
``bench/results/scale-eval-<machine>-1thread-<date>.{md,json}``: a run's final
evaluation (the test at every prefix width) at 10^6 items, per 1000 users, by the
evaluation :mod:`mrl_kernels.training.metrics` replaced (``bench/dense_eval.py``: a
``(users, N)`` product per width, dense masks, ``torch.topk``) and by the one-pass
one, side by side in one process; with ``--models`` (run folders of phone / tool)
both evaluations' metrics on those models, and how many top-50 rankings a
cumulative sum over the widths would change; then the wall time of ``mrl-train``
on a 20,000-user, 10^6-item table (sparse path, 2 epochs, ``--no-refit``,
``--eval-users 1000``).

``python -m bench.scale --routes``: the two routes over row-sharded tables
(:mod:`bench.scale_routes`).
"""
from __future__ import annotations

from . import require, result_name

require("python -m bench.scale", "matplotlib", "tabulate")

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_png, atomic_write_text
from mrl_kernels.training import data
from mrl_kernels.training.metrics import evaluate, prefix_evaluate
from mrl_kernels.training import Fit, TrainConfig, recipe

from .dense_eval import dense_prefix_evaluate
from .timing import median_ms

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
USERS, INTERACTIONS, BATCH = 30_000, 300_000, 2048


def one(n_items: int, sparse: bool, repeats: int) -> dict:
    """In this process (its peak memory is the measurement's): the median step
    time of the trainer's own :class:`~mrl_kernels.training.Fit` on ``n_items``
    items, the time to evaluate 1,000 users, and the peak memory."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, USERS, INTERACTIONS), rng.integers(0, n_items, INTERACTIONS)
    interactions = data.CSR.from_pairs(users, items, USERS, n_items)
    fit = Fit(TrainConfig(**recipe("mrl-m", paper=True) | {"batch_size": BATCH}, sparse=sparse), interactions, "cpu")
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


DIMS = [4, 8, 16, 32, 64]
EVAL_ITEMS, EVAL_USERS = 1_000_000, 1000
RUN_USERS, RUN_PER_USER = 20_000, 60  # the mrl-train run's table: every one of 10^6 items appears


def final_evaluation_cost() -> dict:
    """Seconds per 1000 users of the test at every width, at 10^6 items, one
    thread, by the replaced and by the one-pass evaluation (random tables,
    300,000 training interactions over 30,000 users, one validation and one test
    item per user), and how far apart their metrics are."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = EVAL_ITEMS
    train = data.CSR.from_pairs(rng.integers(0, USERS, INTERACTIONS), rng.integers(0, n, INTERACTIONS), USERS, n)
    valid, test = (data.CSR.from_pairs(np.arange(EVAL_USERS), rng.integers(0, n, EVAL_USERS), USERS, n)
                   for _ in range(2))
    g = torch.Generator().manual_seed(0)
    user, item = torch.randn(USERS, DIMS[-1], generator=g) * 0.1, torch.randn(n, DIMS[-1], generator=g) * 0.1
    times, results = {}, {}
    for name, run in (("replaced", dense_prefix_evaluate), ("one pass", prefix_evaluate)):
        started = time.perf_counter()
        results[name] = run(user, item, DIMS, test, [train, valid])
        times[name] = time.perf_counter() - started
    gap = max(abs(results["replaced"][w][m] - results["one pass"][w][m]) for w in results["replaced"]
              for m in results["replaced"][w])
    return {"items": n, "users": EVAL_USERS, "widths": DIMS,
            "replaced_s_per_1000_users": times["replaced"] * 1000 / EVAL_USERS,
            "one_pass_s_per_1000_users": times["one pass"] * 1000 / EVAL_USERS,
            "one_pass / replaced": times["one pass"] / times["replaced"], "largest metric difference": gap}


def same_metrics(run: Path, data_dir: str) -> dict:
    """On the trained model of ``run`` (a run folder): the replaced and the
    one-pass evaluation of its test split at every width and of its validation
    split at full width, and the (user, width) top-50 rankings of the test that a
    cumulative sum over the widths (``S_n = S_m + U[:, m:n] @ I[:, m:n].T``) changes."""
    torch.set_num_threads(1)
    model = torch.load(run / "model.pt", weights_only=False)
    ds = data.load(model["dataset"], data_dir)
    user, item = model["user"], model["item"]
    exclude = [ds.train, ds.valid]
    test = dense_prefix_evaluate(user, item, DIMS, ds.test, exclude) == prefix_evaluate(user, item, DIMS, ds.test,
                                                                                         exclude)
    valid = dense_prefix_evaluate(user, item, DIMS[-1:], ds.valid, [ds.train]) == \
        prefix_evaluate(user, item, DIMS[-1:], ds.valid, [ds.train])
    users = torch.nonzero(ds.test.row_lengths() > 0).flatten()
    changed = 0
    for start in range(0, len(users), 1024):
        batch = users[start:start + 1024]
        query, blocked = user[batch].float(), ds.train.dense_rows(batch) | ds.valid.dense_rows(batch)
        cumulative, done = None, 0
        for n in DIMS:
            part = query[:, done:n] @ item[:, done:n].float().T
            cumulative, done = part if cumulative is None else cumulative + part, n
            apart = (query[:, :n] @ item[:, :n].float().T).masked_fill(blocked, -torch.inf)
            changed += int((apart.topk(50, 1).indices != cumulative.masked_fill(blocked, -torch.inf)
                            .topk(50, 1).indices).any(1).sum())
    return {"dataset": ds.name, "model": f"{model['model']} {model['method']} ({run.name})",
            "test, every width: identical": test, "validation: identical": valid,
            "top-50 rankings a cumulative sum changes": f"{changed} of {len(users) * len(DIMS)}"}


def scale_run(folder: Path) -> dict:
    """Wall time of mrl-train (one thread) on a 20,000-user table of 10^6 items:
    sparse path, 2 epochs, --no-refit, --eval-users 1000."""
    rng = np.random.default_rng(0)
    items = np.concatenate([rng.permutation(EVAL_ITEMS), rng.integers(0, EVAL_ITEMS, RUN_USERS * RUN_PER_USER
                                                                         - EVAL_ITEMS)])
    table = folder / "table.csv"
    pd.DataFrame({"user": rng.integers(0, RUN_USERS, len(items)), "item": items}).to_csv(table, index=False)
    argv = ["--dataset", str(table), "--sparse", "--epochs", "2", "--no-refit", "--eval-users", "1000",
            "--out", str(folder / "run"), "--no-progress"]
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mrl_kernels", *argv], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"mrl-train failed: {run.stderr.strip().splitlines()[-1]}")
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    shown = {str(table): "table.csv", str(folder / "run"): "RUN"}
    return {"command": "mrl-train " + " ".join(shown.get(a, a) for a in argv),
            "users": RUN_USERS, "items": EVAL_ITEMS, "interactions": len(items),
            "wall_s (process)": wall, "wall_seconds (metrics.json)": metrics["wall_seconds"],
            "seconds_per_epoch": metrics["seconds_per_epoch"], "evaluated_users": metrics["config"]["evaluated_users"]}


def evaluation_main(args) -> int:
    """``--evaluation``: the three measurements, one markdown and one JSON file."""
    import tempfile

    cost = json.loads(subprocess.run([sys.executable, "-m", "bench.scale", "--evaluation-cost"], check=True,
                                     capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                      .stdout.strip().splitlines()[-1])
    print(cost, flush=True)
    same = [same_metrics(Path(run), args.data_dir) for run in args.models]
    with tempfile.TemporaryDirectory() as folder:
        run = scale_run(Path(folder))
    print(run, flush=True)
    out = Path(args.out)
    name = result_name(out, f"scale-eval-{platform.machine()}-1thread")
    text = (f"# A run's final evaluation at 10^6 items\n\n{platform.processor() or platform.machine()}, one torch "
            f"thread (OMP_NUM_THREADS=1); bench/scale.py --evaluation.\n\n"
            f"## The test at widths {DIMS}, per 1000 users\n\n"
            f"{EVAL_ITEMS} items, D {DIMS[-1]}, {USERS} users, {INTERACTIONS} random training interactions, one "
            f"validation and one test item for each of {EVAL_USERS} users, random tables; the replaced evaluation "
            f"(bench/dense_eval.py) and the one-pass one (mrl_kernels.training.metrics.prefix_evaluate) in one process.\n\n"
            + pd.DataFrame([cost]).drop(columns=["widths"]).to_markdown(index=False, floatfmt=".3g")
            + ("\n\n## The same metrics on trained models\n\n" + pd.DataFrame(same).to_markdown(index=False)
               if same else "")
            + f"\n\n## mrl-train on a {RUN_USERS}-user, {EVAL_ITEMS}-item table\n\n"
            + pd.DataFrame([run]).to_markdown(index=False, floatfmt=".1f") + "\n")
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps({"cost": cost, "same_metrics": same, "run": run}, indent=2))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", default=None,
                        help=f"catalogue sizes, comma-separated (default {SIZES}; --routes 10^6 and 10^7)")
    parser.add_argument("--worlds", default="1,2,4",
                        help="(--routes) the numbers of processes, comma-separated")
    parser.add_argument("--one", nargs=3, metavar=("N", "PATH", "REPEATS"),
                        help="measure one size and path (dense or sparse) in this process, print it as JSON")
    parser.add_argument("--evaluation", action="store_true",
                        help="the final evaluation's cost, its metrics against the replaced one, an mrl-train run")
    parser.add_argument("--evaluation-cost", action="store_true", help="(--evaluation) the cost, in this process")
    parser.add_argument("--models", nargs="*", default=[], help="(--evaluation) run folders whose models to compare")
    parser.add_argument("--data-dir", default=None, help="(--evaluation) where the models' datasets are")
    parser.add_argument("--routes", action="store_true",
                        help="the composed and sharded routes over torchrec row-wise tables (the torchrec extra)")
    args = parser.parse_args(argv)
    if args.evaluation_cost:
        print(json.dumps(final_evaluation_cost()))
        return 0
    if args.evaluation:
        return evaluation_main(args)
    if args.routes:
        from .scale_routes import ROUTE_SIZES, routes

        return routes(args.repeats, args.out, _ints(args.sizes) if args.sizes else ROUTE_SIZES, _ints(args.worlds))
    if args.one:
        n_items, path, repeats = args.one
        print(json.dumps(one(int(n_items), path == "sparse", int(repeats))))
        return 0
    rows = []
    for n in _ints(args.sizes) if args.sizes else SIZES:
        for path in ("dense", "sparse"):
            rows.append(measure(n, path, args.repeats))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    base = table[table.N == table.N.min()].set_index("path")["step_ms"]
    table["step vs smallest N"] = table.step_ms / table.path.map(base)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    name = result_name(out, f"scale-{platform.machine()}-1thread")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for path, part in table.dropna(subset=["step_ms"]).groupby("path"):
        ax.plot(part.N, part.step_ms, marker="o", label=path)
    ax.set(xscale="log", yscale="log", xlabel="items N", ylabel="ms per MRL-M step (B 2048, one thread)")
    ax.legend()
    fig.tight_layout()
    atomic_write_png(out / f"{name}.png", fig, 110)
    text = (f"# Step cost against the number of items\n\n{platform.processor() or platform.machine()}, one torch "
            f"thread; B {BATCH}, 5 levels x 16 candidates, D 64, {USERS} users, {INTERACTIONS} random "
            f"interactions; median of {args.repeats} steps; bench/scale.py.\n\n"
            + table.to_markdown(index=False, floatfmt=".2f") + f"\n\n![step time]({name}.png)\n")
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
