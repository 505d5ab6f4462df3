"""Baselines a user would pick instead of MRL-M, tuned on the same validation split.

``python -m bench.baselines --data-dir ../shared/datasets`` fits the ``implicit``
library's ``AlternatingLeastSquares`` (iALS) and ``BayesianPersonalizedRanking``
on the training split of ``phone`` and ``tool``, retrained at each width in
(4, 8, 16, 32, 64). Each width's hyper-parameters are chosen by validation
Recall@20 over a grid that brackets the optimum: iALS's geometric grid is
widened past any edge where the best setting sits, until the best is interior
(or ``MAX_WIDENINGS``); then the chosen setting is refit on train + validation
(the refit protocol, as for MRL-M) and its test metrics computed exactly as for
MRL-M (full ranking, training and validation items excluded). Writes
``docs/baselines.json`` (every trial of the grid included; ``--seeds 0,1,2``
tunes and refits on each seed's split); ``bench.reproduce``
puts it in its report next to MRL-M's prefixes. implicit's BPR keeps a small
fixed grid: a lower bound for that model family.
"""
from __future__ import annotations

from . import require

require('python -m bench.baselines', 'implicit', 'scipy', 'threadpoolctl')

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from mrl_kernels.training import data
from mrl_kernels.atomic import atomic_write_text
from mrl_kernels.training.metrics import evaluate

WIDTHS = (4, 8, 16, 32, 64)
GRIDS = {
    "ials": {"regularization": (0.1, 1.0, 10.0, 100.0), "alpha": (4.0, 10.0, 40.0, 100.0), "iterations": (15,)},
    "implicit-bpr": {"learning_rate": (0.01, 0.05), "regularization": (0.001, 0.01), "iterations": (100,)},
}
WIDEN = {"ials": {"regularization": 10.0, "alpha": 2.5}}  # factor of one step past an edge
MAX_WIDENINGS = 4


def _matrix(csr: data.CSR, n_users: int) -> sp.csr_matrix:
    rows, cols = csr.pairs()
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, csr.n_cols))


def fit(kind: str, train: sp.csr_matrix, width: int, seed: int, **params):
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking

    if kind == "ials":
        model = AlternatingLeastSquares(factors=width, random_state=seed, num_threads=1, **params)
    else:  # implicit's BPR learns an item bias as one extra factor: width - 1 free factors + bias
        model = BayesianPersonalizedRanking(factors=max(width - 1, 1), random_state=seed, num_threads=1,
                                            **params)
    started = time.perf_counter()
    model.fit(train, show_progress=False)
    seconds = time.perf_counter() - started
    return torch.from_numpy(np.asarray(model.user_factors)), torch.from_numpy(np.asarray(model.item_factors)), seconds


def tune(ds: data.Dataset, kind: str, width: int, seed: int) -> dict:
    """The setting with the best validation Recall@20 (the grid widened until it is
    interior), refit on train + validation, with its test metrics and every trial."""
    train = _matrix(ds.train, ds.n_users)
    grid = {name: list(values) for name, values in GRIDS[kind].items()}
    trials = {}
    for _ in range(MAX_WIDENINGS + 1):
        for values in itertools.product(*grid.values()):
            if values not in trials:
                users, items, _ = fit(kind, train, width, seed, **dict(zip(grid, values)))
                trials[values] = evaluate(users, items, ds.valid, [ds.train])["recall@20"]
        best = dict(zip(grid, max(trials, key=trials.get)))
        edges = [(name, values) for name, values in grid.items() if name in WIDEN.get(kind, {})
                 and best[name] in (values[0], values[-1])]
        for name, values in edges:
            factor = WIDEN[kind][name]
            if best[name] == values[0]:
                values.insert(0, values[0] / factor)
            else:
                values.append(values[-1] * factor)
        if not edges:
            break
    users, items, seconds = fit(kind, _matrix(data.CSR.union(ds.train, ds.valid), ds.n_users), width, seed, **best)
    return {"params": best, "valid": {"recall@20": trials[tuple(best.values())]},
            "test": evaluate(users, items, ds.test, [ds.train, ds.valid]), "fit_seconds": seconds,
            "bracketed": not edges, "grid": [{**dict(zip(grid, v)), "valid recall@20": r} for v, r in trials.items()]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="docs/baselines.json")
    parser.add_argument("--datasets", default="phone,tool")
    parser.add_argument("--seeds", default="0", help="data splits (and model seeds) to tune and refit on")
    parser.add_argument("--models", default=",".join(GRIDS), help=f"any of {', '.join(GRIDS)}")
    args = parser.parse_args(argv)
    seeds, datasets, models = map(lambda v: v.split(","), (args.seeds, args.datasets, args.models))
    out = Path(args.out)
    # rows of other (dataset, model, seed) runs already in the file are kept (older rows are seed 0)
    kept = [row for row in (json.loads(out.read_text()) if out.is_file() else [])
            if not (str(row.get("seed", 0)) in seeds and row["dataset"] in datasets and row["model"] in models)]
    results = []
    with threadpool_limits(1, "blas"):  # implicit's advice; its own loops use its threads
        for seed in map(int, seeds):
            for name in datasets:
                ds = data.load(name, args.data_dir, seed=seed)
                for kind in models:
                    for width in WIDTHS:
                        best = tune(ds, kind, width, seed)
                        results.append({"dataset": name, "model": kind, "width": width, "seed": seed, **best})
                        print(name, kind, width, seed, best["params"],
                              "bracketed" if best["bracketed"] else "AT AN EDGE",
                              round(best["test"]["recall@20"], 4), flush=True)
                        atomic_write_text(out, json.dumps(kept + results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
