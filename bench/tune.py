"""Search a method's training settings on the validation split, then refit the best.

``python -m bench.tune --dataset tool --data-dir ../shared/datasets --method mrl-s --budget 3600``
runs Optuna's TPE sampler over the trainer's settings (lr, L2, batch size,
candidates per pool, pool layout, and the softmax temperature for ``mrl-s``)
within a time budget. Every trial trains with the validation split held out and
early stopping, and scores its best validation Recall@20; the test set is never
looked at during the search. The study lives in ``<out>/study.db`` (SQLite), so an
interrupted search continues where it stopped, and ``<out>/trials.csv`` records
every trial. Then the best setting is trained under the refit protocol
(selection on validation, a fresh model on train + validation for the selected
epochs) for each ``--seeds``, and ``<out>/best.json`` holds the setting, its test
metrics at every prefix width, and the training seconds.
"""
from __future__ import annotations

from . import require

require('python -m bench.tune', 'optuna', 'pandas')

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pandas as pd
import torch

from mrl_kernels import data
from mrl_kernels._io import atomic_write
from mrl_kernels.objectives import OBJECTIVES
from mrl_kernels.sampling import LAYOUTS
from mrl_kernels.trainer import CHECKPOINT, TrainConfig, train

SELECT_PATIENCE = 3  # evaluations without a better validation Recall@20 before a trial stops


def suggest(trial: optuna.Trial, method: str) -> dict:
    """A trial's settings: what every method takes, plus the temperature for
    ``mrl-s``. The ranges bracket what first probes on tool found: L2 from the
    paper's 1e-4 up (1e-2 lifts MRL-M by ~15%), lr around Adam's 1e-3, pools of
    8 to 64 hardest-of candidates for the BPR family, 16 to 256 for the softmax
    (every candidate counts there)."""
    settings = {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "l2": trial.suggest_float("l2", 1e-4, 1.0, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [1024, 2048, 4096]),
    }
    if method == "mrl-s":
        settings["candidates"] = trial.suggest_categorical("candidates", [16, 64, 256])
        settings["layout"] = trial.suggest_categorical("layout", list(LAYOUTS))
        settings["temperature"] = trial.suggest_float("temperature", 0.1, 4.0, log=True)
    elif method != "bpr":  # plain BPR draws one negative
        settings["candidates"] = trial.suggest_categorical("candidates", [8, 16, 32, 64])
        settings["layout"] = trial.suggest_categorical("layout", list(LAYOUTS))
    return settings


def _train(config: TrainConfig, dataset: data.Dataset) -> dict:
    out = Path(config.out)
    return train(config, log=lambda _: None, dataset=dataset, resume=(out / CHECKPOINT).is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tool")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="mf")
    parser.add_argument("--method", default="mrl-s", choices=tuple(OBJECTIVES))
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds of searching (trials in flight finish)")
    parser.add_argument("--trials", type=int, default=None, help="stop after this many trials in all")
    parser.add_argument("--max-epochs", type=int, default=200, help="epochs a trial may train at most")
    parser.add_argument("--seed", type=int, default=0, help="the data split's and the trials' seed")
    parser.add_argument("--seeds", default="0", help="seeds the best setting is refit with (comma-separated)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default runs/tune/<dataset>-<model>-<method>")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/tune/{args.dataset}-{args.model}-{args.method}")
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(dataset=args.dataset, model=args.model, method=args.method, seed=args.seed,
                       epochs=args.max_epochs, patience=SELECT_PATIENCE, progress=False, refit=False)
    dataset = data.load(args.dataset, args.data_dir, seed=args.seed)

    def objective(trial: optuna.Trial) -> float:
        config = replace(base, out=str(out / "trials" / f"{trial.number:04d}"), **suggest(trial, args.method))
        result = _train(config, dataset)
        trial.set_user_attr("best_epoch", result["best_epoch"])
        trial.set_user_attr("train_seconds", result["wall_seconds"])
        return result["valid"]["recall@20"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    started = time.perf_counter()
    while time.perf_counter() - started < args.budget and (args.trials is None or len(study.trials) < args.trials):
        study.optimize(objective, n_trials=1, catch=(ValueError,))
        last = study.trials[-1]
        print(f"trial {last.number}: validation recall@20 {last.value} with {last.params}", flush=True)
        table = study.trials_dataframe()
        atomic_write(out / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))

    best = study.best_trial
    print(f"best: trial {best.number}, validation recall@20 {best.value:.4f}, {best.params}", flush=True)
    runs = []
    for seed in map(int, args.seeds.split(",")):
        ds = dataset if seed == args.seed else data.load(args.dataset, args.data_dir, seed=seed)
        config = replace(base, **best.params, seed=seed, patience=TrainConfig.patience, epochs=TrainConfig.epochs,
                         refit=True, out=str(out / f"best-s{seed}"))
        result = _train(config, ds)
        runs.append({"seed": seed, "test": result["test"], "prefix": result["prefix"],
                     "best_epoch": result["best_epoch"], "train_seconds": result["wall_seconds"]})
        print(f"seed {seed}: test recall@20 {result['test']['recall@20']:.4f} (refit)", flush=True)
    summary = {"dataset": args.dataset, "model": args.model, "method": args.method, "trial": best.number,
               "valid_recall@20": best.value, "settings": best.params,
               "config": {**asdict(replace(base, **best.params)), "out": None}, "runs": runs,
               "trials": len(study.trials)}
    atomic_write(out / "best.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    frame = pd.DataFrame([{"seed": r["seed"], **r["test"]} for r in runs])
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
