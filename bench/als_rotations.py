"""How many of a nested ALS fit's first sweeps should end by a rotation to the
singular basis (``mrl-train --rotations``, :class:`mrl_kernels.training.als.Sweeps`).

``python -m bench.als_rotations --data-dir ../shared/datasets --dataset tool --rotations 0,1,2,3,5``
fits ``mrl-als``'s defaults (alpha 40, L2 100, equal level weights, 3
conjugate-gradient steps) on the training split of ``--seed``'s split for
``--sweeps`` sweeps, once for each rotation count, from the same initialisation,
and prints validation Recall@20 at every width (every validation user) and the
mean over the widths of its log (the search's trial score,
:func:`mrl_kernels.training.search.score`) after every ``--every`` sweeps, and
writes the table to ``--out`` (``als-rotations-<dataset>-s<seed>-<date>.txt``,
the command and the machine in it). The validation split only: the test set is
not read.
"""
from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_text
from mrl_kernels.training import TrainConfig, data
from mrl_kernels.training.als import Sweeps, initial_tables
from mrl_kernels.training.metrics import prefix_evaluate, sample_users
from mrl_kernels.training.search import score

from . import result_name


def curve(config: TrainConfig, ds: data.Dataset, sweeps: int, every: int) -> list[dict]:
    """Validation Recall@20 by width after every ``every`` sweeps of ``config``'s fit."""
    fit = Sweeps.of_config(config)
    users, items = initial_tables(ds.train, config.dims[-1], config.seed)
    transposed, evaluated, rows = ds.train.transpose(), sample_users(ds.valid, None, config.seed), []
    for done in range(sweeps):
        fit.sweep(users, items, ds.train, transposed, done)
        if (done + 1) % every == 0:
            metrics = prefix_evaluate(users, items, config.dims, ds.valid, [ds.train], ks=(20,), users=evaluated)
            recall = {int(w): m["recall@20"] for w, m in metrics.items()}
            rows.append({"rotations": config.rotations, "sweeps": done + 1, "score": score(recall),
                         **{f"recall@20_{w}": v for w, v in recall.items()}})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="tool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rotations", default="0,1,2,3,5")
    parser.add_argument("--sweeps", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.out) / (result_name(args.out, f"als-rotations-{args.dataset}-s{args.seed}") + ".txt")
    ds = data.load(args.dataset, args.data_dir, seed=args.seed)
    config = TrainConfig(dataset=args.dataset, method="mrl-als", seed=args.seed)
    rows = []
    for rotations in (int(r) for r in args.rotations.split(",")):
        rows += curve(replace(config, rotations=rotations), ds, args.sweeps, args.every)
        print(pd.DataFrame(rows[-(args.sweeps // args.every):]).to_string(index=False, float_format="%.4f"),
              flush=True)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# python -m bench.als_rotations {command}\n# {platform.machine()}, one thread, torch {torch.__version__}\n"
            f"{args.dataset}, seed {args.seed}, validation Recall@20 (every user):\n"
            + pd.DataFrame(rows).to_string(index=False, float_format="%.4f") + "\n")
    atomic_write_text(path, text)
    print(f"\n{text}wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
