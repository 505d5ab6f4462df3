"""The softmax over every item as a training objective: MF and LightGCN trained
with ``--method mrl-s-all`` on tool and phone, against MRL-M and iALS per width.

``python -m bench.full_softmax_train --data-dir ../shared/datasets`` runs
``mrl-train --method mrl-s-all`` (the paper's recipe: Adam 1e-3, batch 2048, L2
1e-4, temperature 1; the refit protocol: epochs chosen on validation, a fresh
model on train + validation) for each dataset, model and seed, one thread,
keeping runs that already wrote their ``metrics.json`` (an interrupted job
continues) and the rows of ``docs/full_softmax.json`` with the same ``--epochs``
(a later invocation adds datasets, models or seeds), and writes
``docs/full_softmax.json`` and ``docs/full_softmax.md``: test Recall@20 at every width of
the one model, MRL-M's (MF: the prefixes of docs/reproduction.md, paper's
settings and tuned; LightGCN: its full width there), iALS retrained per width
(docs/baselines.json, the same seeds), and the training seconds.
"""
from __future__ import annotations

from . import require

require('python -m bench.full_softmax_train', 'matplotlib', 'tabulate')  # bench.reproduce's too

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_text
from mrl_kernels.training import TrainConfig, train
from mrl_kernels.training.checkpoint import CHECKPOINT

from .reproduce import MRL_M_PREFIXES, load_baselines

WIDTHS = (4, 8, 16, 32, 64)
# LightGCN MRL-M (paper's settings), full width only (docs/reproduction.md, 3 seeds, refit)
LIGHTGCN_MRL_M = {"phone": 0.1521, "tool": 0.0872}


def run(dataset: str, model: str, seed: int, data_dir, root: Path, epochs: int) -> dict:
    out = root / f"{dataset}-{model}-mrl-s-all-s{seed}"
    if (out / "metrics.json").is_file():
        result = json.loads((out / "metrics.json").read_text())
    else:
        result = train(TrainConfig(dataset=dataset, data_dir=data_dir, model=model, method="mrl-s-all", seed=seed,
                                   epochs=epochs, out=str(out), progress=False), log=lambda _: None,
                       resume=(out / CHECKPOINT).is_file())
    return {"dataset": dataset, "model": model, "seed": seed, "epochs": epochs,
            "wall_seconds": result["wall_seconds"],
            "best_epoch": result["best_epoch"],
            "prefix": {w: result["prefix"][str(w)]["recall@20"] for w in WIDTHS}}


def markdown(rows: pd.DataFrame, baselines: pd.DataFrame) -> str:
    out = ["# The softmax over every item as a training objective", "",
           "Written by `python -m bench.full_softmax_train` (see its docstring). Test Recall@20 of one model's "
           "prefixes, refit protocol; `mrl-s-all` with the paper's recipe (temperature 1, not tuned), at most `epochs` epochs of selection; MRL-M: "
           "docs/reproduction.md (3 seeds); iALS: a model per width, tuned on validation (docs/baselines.json), "
           "on the seeds of the `mrl-s-all` rows. One thread, this machine (shared).", ""]
    for (dataset, model), part in rows.groupby(["dataset", "model"]):
        ials = baselines[(baselines.dataset == dataset) & (baselines.model == "ials")
                         & baselines.seed.isin(list(part.seed))]
        table = []
        for i, width in enumerate(WIDTHS):
            ours = np.mean([p[width] for p in part.prefix])
            theirs = ials[ials.width == width].test.map(lambda t: t["recall@20"]).mean()
            row = {"width": width, "mrl-s-all": f"{ours:.4f}"}
            if model == "mf":
                for name, values in MRL_M_PREFIXES.items():
                    row[f"mrl-m ({name})"] = f"{values[dataset][i]:.4f}"
                row["mrl-s-all / mrl-m (tuned)"] = f"{ours / MRL_M_PREFIXES['tuned'][dataset][i]:.3f}x"
            elif width == WIDTHS[-1]:
                row["mrl-m (paper's settings)"] = f"{LIGHTGCN_MRL_M[dataset]:.4f}"
                row["mrl-s-all / mrl-m"] = f"{ours / LIGHTGCN_MRL_M[dataset]:.3f}x"
            row.update({"iALS per width": f"{theirs:.4f}", "mrl-s-all / iALS": f"{ours / theirs:.3f}x"})
            table.append(row)
        out += [f"**{dataset}, {model}** (seeds {', '.join(map(str, part.seed))}; {part.wall_seconds.mean():.0f} s "
                f"of training, selection and refit; {part.best_epoch.mean():.0f} of at most {part.epochs.iloc[0]} epochs chosen)",
                "",
                pd.DataFrame(table).fillna("").to_markdown(index=False), ""]
    return "\n".join(out)


def write(rows: list, baselines: pd.DataFrame, docs: Path) -> str:
    atomic_write_text(docs / "full_softmax.json", json.dumps(rows, indent=2))
    frame = pd.DataFrame(rows)
    frame["prefix"] = frame.prefix.map(lambda p: {int(w): v for w, v in p.items()})
    text = markdown(frame, baselines)
    atomic_write_text(docs / "full_softmax.md", text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="tool,phone")
    parser.add_argument("--models", default="mf,lightgcn")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                        help="the selection's most epochs (the trainer's default; fewer where time is short)")
    parser.add_argument("--runs", default="runs/full-softmax")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    docs = Path(args.docs)
    baselines = load_baselines(docs)
    kept = json.loads((docs / "full_softmax.json").read_text()) if (docs / "full_softmax.json").is_file() else []
    rows = [row for row in kept if row["epochs"] == args.epochs]
    done = {(row["dataset"], row["model"], row["seed"]) for row in rows}
    for seed in map(int, args.seeds.split(",")):
        for model in args.models.split(","):
            for dataset in args.datasets.split(","):
                if (dataset, model, seed) in done:
                    continue
                rows.append(run(dataset, model, seed, args.data_dir, Path(args.runs), args.epochs))
                print(dataset, model, seed, {w: round(v, 4) for w, v in rows[-1]["prefix"].items()},
                      f"{rows[-1]['wall_seconds']:.0f} s", flush=True)
                write(rows, baselines, docs)
    text = write(rows, baselines, docs)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
