"""The nested estimator's fit against implicit's one width-64 fit: same settings,
same process, one thread each.

``python -m bench.als_fit_time --data-dir ../shared/datasets`` fits
``mrl_kernels.MatryoshkaALS`` (factors 64, widths 4, 8, 16, 32, 64, 15
iterations, no training loss) and implicit's ``AlternatingLeastSquares`` (factors
64, 15 iterations) on each dataset's training split, alternately ``--repeats``
times, under ``threadpool_limits(1)`` and one torch thread, and prints the best
seconds of each and their ratio, under a line naming the CPU (the ratio moves with
it: bench/results).
"""
from __future__ import annotations

from . import cpu_name, require

require('python -m bench.als_fit_time', 'implicit', 'scipy', 'threadpoolctl')

import argparse
import time

import torch
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from mrl_kernels import MatryoshkaALS
from mrl_kernels.training import data

from .baselines import _matrix

SETTINGS = dict(factors=64, regularization=100.0, alpha=40.0, iterations=15, num_threads=1, random_state=0)
DIMS = (4, 8, 16, 32, 64)


def seconds(model, matrix) -> float:
    started = time.perf_counter()
    model.fit(matrix, show_progress=False)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="phone,tool")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# {cpu_name()}, one thread each, torch {torch.__version__}", flush=True)
    with threadpool_limits(1):
        for name in args.datasets.split(","):
            ds = data.load(name, args.data_dir, seed=0)
            matrix = _matrix(ds.train, ds.n_users)
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(seconds(MatryoshkaALS(**SETTINGS, dims=DIMS), matrix))
                theirs.append(seconds(AlternatingLeastSquares(**SETTINGS), matrix))
            print(f"{name}: MatryoshkaALS {min(ours):.2f} s, implicit {min(theirs):.2f} s (best of {args.repeats}), "
                  f"ratio {min(ours) / min(theirs):.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
