"""Search a method's training settings on the validation split, then refit the best.

``python -m bench.tune --dataset tool --data-dir ../shared/datasets --method mrl-s --budget 3600``
runs Optuna's TPE sampler over the trainer's settings (lr, L2, batch size,
candidates per pool, pool layout, and the softmax temperature and scores for ``mrl-s``)
within a time budget, in ``--workers`` processes sharing one study. Every trial
trains with the validation split held out and early stopping, and scores its best
validation Recall@20 (at full width, or with ``--select mean-width`` the mean over
the nested widths of the selected model's log validation Recall@20); the test set
is never looked at during the search. The study lives in ``<out>/study.db``
(SQLite), so an interrupted search continues where it stopped, and
``<out>/trials.csv`` records every trial; the method's current defaults are the
first trial.

``--method mrl-als`` runs ``mrl-train --tune``'s own search instead
(:func:`mrl_kernels.training.search.tune`: ``--trials`` trials, 40 unless given,
of per-width alpha and L2, level weights and conjugate-gradient steps, the first
trial the defaults, the search led by a trial's weakest width's gain on them, the
choice by its weakest width against the best trial's there), in one
process and without a budget or a study file (a trial takes seconds to a minute);
``<out>/trials.csv`` is its history.

Then the best setting is trained under the refit protocol (selection on
validation, a fresh model on train + validation for the selected epochs) for each
``--seeds`` (in parallel), and ``<out>/best.json`` holds the setting, its test
metrics at every prefix width, and the training seconds.
"""
from __future__ import annotations

from . import require

require('python -m bench.tune', 'optuna', 'pandas')

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import optuna
import pandas as pd
import torch

from mrl_kernels import load_run
from mrl_kernels.training import data
from mrl_kernels.atomic import atomic_write, atomic_write_text
from mrl_kernels.training.metrics import prefix_evaluate
from mrl_kernels.ops import LAYOUTS
from mrl_kernels.training import CHECKPOINT, TrainConfig, recipe, train
from mrl_kernels.training import search as nested_search
from mrl_kernels.training.methods import METHODS

SELECT_PATIENCE = 3  # evaluations without a better validation Recall@20 before a trial stops
DEFAULT_BUDGET = 3600.0  # seconds of searching
TRIALS = 40  # mrl-als's trials (docs/nested_als.md's --tune 40)


def suggest(trial: optuna.Trial, method: str) -> dict:
    """A trial's settings: of those the method reads (``Method.takes``), lr, L2
    and batch size, the candidates and layout where it draws pools, the
    temperature and scores for ``mrl-s``. The ranges bracket what first probes on tool found: L2 from the
    paper's 1e-4 up to 0.1 (1e-2 lifts MRL-M by ~15%; above ~0.05 MRL-M collapses), lr around Adam's 1e-3, pools of
    8 to 64 hardest-of candidates for the BPR family, 16 to 256 for the softmax
    (every candidate counts there)."""
    settings = {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "l2": trial.suggest_float("l2", 1e-4, 0.1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [1024, 2048, 4096]),
    }
    takes = METHODS[method].takes  # plain BPR draws one negative, DNS one pool, least squares none
    if "candidates" in takes:
        sizes = [16, 64, 256] if method == "mrl-s" else [8, 16, 32, 64]
        settings["candidates"] = trial.suggest_categorical("candidates", sizes)
    if "layout" in takes:
        settings["layout"] = trial.suggest_categorical("layout", list(LAYOUTS))
    if "temperature" in takes:
        settings["temperature"] = trial.suggest_float("temperature", 0.05, 4.0, log=True)
        settings["cosine"] = trial.suggest_categorical("cosine", [False, True])
    return settings


DIMS = TrainConfig.dims


def score(result: dict, dataset: data.Dataset, select: str) -> tuple[float, dict]:
    """A finished trial's value: its validation Recall@20 at full width, or the mean
    over the widths of the selected model's (``select="mean-width"``); and the
    validation Recall@20 at every width (full width alone unless computed)."""
    if select == "full":
        return result["valid"]["recall@20"], {str(DIMS[-1]): result["valid"]["recall@20"]}
    run = load_run(result["config"]["out"])
    prefix = prefix_evaluate(run.users, run.index.items, list(run.dims), dataset.valid, [dataset.train])
    widths = {width: metrics["recall@20"] for width, metrics in prefix.items()}
    return nested_search.score(widths), widths


def _train(config: TrainConfig, dataset: data.Dataset) -> dict:
    out = Path(config.out)
    return train(config, log=lambda _: None, dataset=dataset, resume=(out / CHECKPOINT).is_file())


def _base(args) -> TrainConfig:
    """A trial's fixed settings: the method's defaults, early stopping, no refit."""
    return TrainConfig(dataset=args.dataset, model=args.model, method=args.method, seed=args.seed,
                       epochs=args.max_epochs, patience=SELECT_PATIENCE, progress=False, refit=False)


def _study(out: Path, sampler_seed: int | None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True,
                               direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))


def search(args, out: Path, worker: int) -> None:
    """One search worker: trials until the budget or the trial count is spent.
    Workers share the study (its SQLite file); each samples with its own seed."""
    torch.set_num_threads(args.threads)
    base, dataset = _base(args), data.load(args.dataset, args.data_dir, seed=args.seed)

    def objective(trial: optuna.Trial) -> float:
        config = replace(base, out=str(out / "trials" / f"{trial.number:04d}"), **suggest(trial, args.method))
        result = _train(config, dataset)
        value, widths = score(result, dataset, args.select)
        trial.set_user_attr("best_epoch", result["best_epoch"])
        trial.set_user_attr("train_seconds", result["wall_seconds"])
        trial.set_user_attr("valid_recall@20_by_width", widths)
        print(f"trial {trial.number}: {args.select} validation recall@20 {value:.4f}, full width "
              f"{result['valid']['recall@20']:.4f} (epoch {result['best_epoch']}) with {trial.params}", flush=True)
        return value

    # each worker its own sampling seed; workers added with --search-only draw theirs at random
    study = _study(out, None if args.search_only else args.seed * 1000 + worker)
    started = time.perf_counter()
    while time.perf_counter() - started < args.budget and (args.trials is None or len(study.trials) < args.trials):
        study.optimize(objective, n_trials=1, catch=(ValueError,))
        table = study.trials_dataframe()
        atomic_write(out / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))


def refit(args, out: Path, chosen: TrainConfig, seed: int) -> dict:
    """The refit protocol with ``chosen``'s settings and ``seed``: its test metrics at every width."""
    torch.set_num_threads(args.threads)
    config = replace(chosen, seed=seed, refit=True, out=str(out / f"best-s{seed}"))
    result = _train(config, data.load(args.dataset, args.data_dir, seed=seed))
    return {"seed": seed, "test": result["test"], "prefix": result["prefix"], "best_epoch": result["best_epoch"],
            "train_seconds": result["wall_seconds"],
            "fit_seconds": result["seconds_per_epoch"] * result["refit_epochs"]}


def solved(args, out: Path) -> tuple[TrainConfig, dict]:
    """``mrl-als``: ``mrl-train --tune``'s search on ``--seed``'s split; the chosen
    configuration (its sweeps as ``epochs``) and the best trial's summary.
    ``<out>/trials.csv`` holds the search history."""
    torch.set_num_threads(args.threads)
    config = replace(_base(args), refit=True)
    chosen, history = nested_search.tune(config, data.load(args.dataset, args.data_dir, seed=args.seed),
                                         args.trials or TRIALS, log=print)
    atomic_write(out / "trials.csv", lambda tmp: history.to_csv(tmp, index=False))
    best = history[history.chosen].iloc[0]
    return chosen, {"trial": int(best.trial), "select": "weakest width against the best trial's there",
                    "valid_score": best.shortfall,
                    "valid_recall@20_by_width": {str(w): best[f"valid_recall@20_{w}"] for w in chosen.dims},
                    "settings": {name: getattr(chosen, name) for name in
                                 ("alpha", "l2", "level_weights", "cg_steps", "epochs")}, "trials": len(history)}


def searched(args, out: Path, pool: ProcessPoolExecutor) -> tuple[TrainConfig, dict] | None:
    """Every other method: the shared study's search in ``--workers`` processes; the
    best setting's configuration for the refit and its summary (None with ``--search-only``)."""
    study = _study(out, args.seed)  # created once, before the workers open it
    if not study.trials:  # the method's current defaults come first: the search can only improve on them
        fixed = optuna.trial.FixedTrial(recipe(args.method))
        suggest(fixed, args.method)
        study.enqueue_trial(fixed.params)
    list(pool.map(search, [args] * args.workers, [out] * args.workers, range(args.workers)))
    if args.search_only:
        return None
    study = _study(out, args.seed)
    best = study.best_trial
    print(f"best: trial {best.number}, validation recall@20 {best.value:.4f}, {best.params}", flush=True)
    chosen = replace(_base(args), **best.params, patience=TrainConfig.patience, epochs=TrainConfig.epochs,
                     refit=True)
    return chosen, {"trial": best.number, "select": args.select, "valid_recall@20": best.value,
                    "valid_recall@20_by_width": best.user_attrs.get("valid_recall@20_by_width"),
                    "settings": best.params, "trials": len(study.trials)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tool")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="mf")
    parser.add_argument("--method", default="mrl-s", choices=tuple(METHODS))
    parser.add_argument("--select", choices=("full", "mean-width"), default="full",
                        help="what a trial scores: full-width validation Recall@20, or its mean over the widths "
                             "(not for mrl-als, whose search compares the widths itself)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of searching, trials in flight finish (default 3600; not for mrl-als)")
    parser.add_argument("--trials", type=int, default=None,
                        help=f"stop after this many trials in all (mrl-als: default {TRIALS})")
    parser.add_argument("--max-epochs", type=int, default=200, help="epochs a trial may train at most")
    parser.add_argument("--seed", type=int, default=0, help="the data split's and the trials' seed")
    parser.add_argument("--seeds", default="0", help="seeds the best setting is refit with (comma-separated)")
    parser.add_argument("--workers", type=int, default=1, help="processes searching (mrl-als: one) and refitting")
    parser.add_argument("--search-only", action="store_true",
                        help="add search workers to a study (e.g. from another machine) without refitting "
                             "(not for mrl-als)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default=None, help="default runs/tune/<dataset>-<model>-<method>")
    args = parser.parse_args(argv)
    if METHODS[args.method].solved:
        given = [flag for flag, value in (("--select", args.select != "full"), ("--budget", args.budget is not None),
                                          ("--search-only", args.search_only)) if value]
        if given:
            parser.error(f"{', '.join(given)}: not for --method {args.method}, whose search is mrl-train --tune's "
                         "(a count of trials, --trials, compared by their weakest width)")
    args.budget = DEFAULT_BUDGET if args.budget is None else args.budget
    out = Path(args.out or f"runs/tune/{args.dataset}-{args.model}-{args.method}")
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers) as pool:
        found = solved(args, out) if METHODS[args.method].solved else searched(args, out, pool)
        if found is None:
            return 0
        chosen, best = found
        seeds = [int(s) for s in args.seeds.split(",")]
        runs = list(pool.map(refit, [args] * len(seeds), [out] * len(seeds), [chosen] * len(seeds), seeds))
    summary = {"dataset": args.dataset, "model": args.model, "method": args.method, **best,
               "config": {**asdict(chosen), "out": None}, "runs": runs}
    atomic_write_text(out / "best.json", json.dumps(summary, indent=2))
    print(pd.DataFrame([{"seed": r["seed"], **r["test"]} for r in runs]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
