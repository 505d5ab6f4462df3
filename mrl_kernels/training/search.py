"""The built-in search of ``mrl-train --method mrl-als --tune N`` (and
``bench.tune``'s for mrl-als): N trials of Optuna's TPE sampler (seeded by the
run's seed) on the validation split over the per-width settings, then the
refit protocol with the chosen ones.

A trial's settings: the confidence ``alpha_l`` and the L2 weight ``reg_l`` of
each width, geometric from the narrowest width's value to the widest's (the
per-width iALS optima move with the width, e.g. ml100k's alpha from 0.64 at width
4 to 40 at 64: two values per setting follow them with 4 dimensions of search
instead of 10), level weights ``w_l = ratio^(L-1-l)`` and the conjugate-gradient
steps. The first trial is ``config``'s own settings (the defaults, flat over
the widths), the next ones :data:`DESIGN`'s moves from them (the narrowest width's alpha
4x or 8x the widest's with the narrower widths weighing half a level, the
widest's 4x the narrowest's, the lighter narrow widths alone), then TPE's. A
trial fits by sweeps on the training split (the same :class:`~.als.Sweeps` as
every fit), evaluates after each sweep on a seeded
sample of validation users (:data:`TUNE_EVAL_USERS`) and keeps its best sweep by
:func:`score`, the mean over the widths of ``log Recall@20`` (early stopping
after ``patience`` sweeps without a better one); that sweep's factors are then
evaluated once on every validation user (the run's ``eval_users``). On tool,
2,000 of its 9,644 validation users put a standard error of about 6% on a
width's Recall@20, more than the top trials differed by.

The search is led by each trial's weakest width against the first trial
(:func:`worst_gain`): the smallest over the widths of ``log(Recall@20 / the
first trial's)``, the first trial being ``config``'s own settings (the defaults,
flat over the widths). It is fixed once the first trial ends, so the value TPE is
told never changes as the search goes. A score that rewards the widths' mean
instead (the geometric mean of Recall@20) chose, on tool, settings that gained 8%
at width 4 on validation for 4% at width 64, and lost 8-10% at widths 32 and 64 on
test against iALS, where the defaults were within 1%.

The trial chosen when the search ends is the one whose weakest width stands
closest to the best any trial reached at that width (:func:`worst_shortfall`):
each width's best over the trials stands in for a model tuned for that width
alone, what the nested model is measured against (iALS tuned per width). A gain
on the defaults weighs 1% at a width they serve badly as 1% at one they serve
well: on phone, seed 2 (the search at commit 1fd329b), they stood at 0.954 of the
best trial at width 4 and 0.982 at width 64 on validation, and the trial whose
weakest width gained most on them (0.12%) stood at 0.955 at width 4; the one
:func:`worst_shortfall` ranks first (the design's 8x trial, 0.981 of the best or
more at every width) scored 0.0984 at width 4 on test against that trial's 0.0945,
and the same or more at every other width but 64 (0.1580 against 0.1584; docs/tuning.md)."""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..ops import CSR
from .als import Sweeps, initial_tables
from .config import TrainConfig
from .data import Dataset, load
from .fit import check_stop
from .loop import train
from .metrics import prefix_evaluate, sample_users
from .outputs import write_metrics

__all__ = ["DESIGN", "suggest", "trial_settings", "score", "worst_gain", "worst_shortfall", "evaluate_trial", "tune",
           "tune_and_train", "TUNE_EVAL_USERS", "TUNE_HISTORY"]

TUNE_HISTORY = "tune.csv"  # the search history in the run folder

# validation users a trial is scored on (a seeded sample; all of them where fewer): on phone a
# full-ranking evaluation of every width over 2,000 users takes a tenth of one over all 25,000
TUNE_EVAL_USERS = 2000


# the trials after the defaults, as (alpha at the narrowest width, at the widest, both times the
# defaults', level ratio): the directions implicit's per-width optima move in from width 4 to 64 (alpha
# from 100-625 to 40 on phone and tool, from 0.64 to 40 on ml100k), the narrowest width's alpha 4x and
# 8x the widest's with the narrower widths weighing half as much a level, the widest's 4x the
# narrowest's, and the lighter narrow widths alone. Without them on phone, seed 0, 2 of the 40 trials
# drew a width-4 alpha over 150, neither chosen; with them, 22 of the 35 others did, and the chosen
# trial gained 4% at width 4 and 3% at 16 on validation over the one chosen before (0.4% lost at 64).
# The narrow alpha 8x (in place of 4x with flat level weights, which lost 7-18% at width 64 in each of
# docs/tuning.md's probes) beat the defaults at every width on validation by 2.6% and 2.9% on phone
# seeds 0 and 1, where 4x did by 0.6% and 2.0%; on seed 2 neither did by more than 0.01%
# (bench/results/nested-als-design-8x-2026-12-05.md)
DESIGN = ((4.0, 1.0, 0.5), (8.0, 1.0, 0.5), (1.0, 4.0, 1.0), (1.0, 1.0, 0.5))


def trial_settings(params: dict, levels: int) -> dict:
    """The trainer settings of a trial's parameters (:func:`suggest`'s names)."""
    def geometric(first: float, last: float) -> tuple[float, ...]:
        return tuple(first * (last / first) ** (level / max(levels - 1, 1)) for level in range(levels))
    return {"alpha": geometric(params["alpha_first"], params["alpha_last"]),
            "l2": geometric(params["reg_first"], params["reg_last"]),
            "level_weights": tuple(params["level_ratio"] ** (levels - 1 - level) for level in range(levels)),
            "cg_steps": params["cg_steps"]}


def suggest(trial, levels: int) -> dict:
    """A trial's settings. Ranges: implicit's iALS optima per width on phone, tool and
    ml100k (docs/baselines.json) span alpha 0.64-625 and regularization 0.1-1000."""
    params = {"alpha_first": trial.suggest_float("alpha_first", 0.3, 1000.0, log=True),
              "alpha_last": trial.suggest_float("alpha_last", 0.3, 1000.0, log=True),
              "reg_first": trial.suggest_float("reg_first", 0.01, 3000.0, log=True),
              "reg_last": trial.suggest_float("reg_last", 0.01, 3000.0, log=True),
              "level_ratio": trial.suggest_float("level_ratio", 0.25, 4.0, log=True),
              "cg_steps": trial.suggest_categorical("cg_steps", [3, 6])}
    return trial_settings(params, levels)


def score(recall_by_width: dict) -> float:
    """The mean over the widths of ``log Recall@20`` (-inf if any is 0)."""
    values = list(recall_by_width.values())
    return -math.inf if min(values) <= 0 else sum(math.log(v) for v in values) / len(values)


def _recall(user: torch.Tensor, item: torch.Tensor, config: TrainConfig, train: CSR, valid: CSR,
            users: torch.Tensor) -> dict:
    metrics = prefix_evaluate(user, item, config.dims, valid, [train], ks=(20,), users=users, between=check_stop)
    return {int(w): m["recall@20"] for w, m in metrics.items()}


def worst_gain(recall_by_width: dict, reference: dict) -> float:
    """The smallest over the widths of ``log(recall / reference)`` (-inf if a
    recall is 0): how much the weakest width gained on ``reference``."""
    gains = [math.log(recall_by_width[w] / reference[w]) if recall_by_width[w] > 0 else -math.inf
             for w in reference]
    return min(gains)


def worst_shortfall(history: pd.DataFrame, widths) -> pd.Series:
    """Each trial's (row's) smallest over ``widths`` of ``log(recall / the best
    recall of any trial at that width)``, from the ``valid_recall@20_<width>``
    columns: 0 for a trial that is best at every width, -inf for a recall of 0."""
    recall = history[[f"valid_recall@20_{w}" for w in widths]].fillna(0.0).to_numpy(dtype=float)  # NaN: diverged
    with np.errstate(divide="ignore"):
        return pd.Series(np.log(recall / recall.max(axis=0)).min(axis=1), index=history.index)


def evaluate_trial(config: TrainConfig, train: CSR, valid: CSR, users: torch.Tensor,
                   score_users: torch.Tensor | None = None) -> dict:
    """Fit ``config`` by sweeps on ``train`` from the seed, score every sweep on
    ``valid`` (its ``users``), stop after ``config.patience`` sweeps without a better
    score or at ``config.epochs``; the best sweep's factors scored again on
    ``score_users`` (where given): ``{"score", "sweeps", "recall@20": {width: value},
    "stop_score"}``, ``stop_score`` the best sweep's score on ``users``."""
    sweeps = Sweeps.of_config(config)
    user, item = initial_tables(train, config.dims[-1], config.seed)
    transposed, best, bad, factors = train.transpose(), {"score": -math.inf, "sweeps": 0, "recall@20": {}}, 0, None
    for sweep in range(1, config.epochs + 1):
        sweeps.sweep(user, item, train, transposed, sweep - 1)
        if not (bool(torch.isfinite(user).all()) and bool(torch.isfinite(item).all())):
            break
        recall = _recall(user, item, config, train, valid, users)
        if score(recall) > best["score"]:
            best, bad = {"score": score(recall), "sweeps": sweep, "recall@20": recall}, 0
            factors = (user.clone(), item.clone()) if score_users is not None else None
        else:
            bad += 1
            if bad >= config.patience:
                break
    best["stop_score"] = best["score"]
    if factors is not None:
        best["recall@20"] = _recall(*factors, config, train, valid, score_users)
        best["score"] = score(best["recall@20"])
    return best


def tune(config: TrainConfig, ds: Dataset, trials: int, log: Callable[[str], None] = tqdm.write
         ) -> tuple[TrainConfig, pd.DataFrame]:
    """``trials`` trials of a seeded TPE search (the first: ``config``'s own settings,
    flat over the widths, then :data:`DESIGN`'s) on ``ds``'s validation split, each scored by
    :func:`worst_gain` on the first: ``config`` with the settings of the trial
    :func:`worst_shortfall` ranks first and its sweeps (as ``epochs``, with no early
    stop before), and the search history (a row per trial, ``score`` the value TPE
    was told, ``shortfall`` the one the choice is made by, ``chosen`` True in the
    chosen trial's row)."""
    import optuna  # the tune extra

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    levels = len(config.dims)
    users = sample_users(ds.valid, min(config.eval_users or TUNE_EVAL_USERS, TUNE_EVAL_USERS), config.seed)
    every = sample_users(ds.valid, config.eval_users, config.seed)
    score_users = every if len(every) > len(users) else None  # else the stop's score is the final one
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    if not isinstance(config.alpha, tuple) and not isinstance(config.l2, tuple) and config.level_weights is None:
        # the defaults first (flat over the widths): the reference every trial is scored against; then the design
        defaults = {"alpha_first": config.alpha, "alpha_last": config.alpha, "reg_first": config.l2,
                    "reg_last": config.l2, "level_ratio": 1.0, "cg_steps": config.cg_steps}
        for first, last, ratio in ((1.0, 1.0, 1.0), *DESIGN):
            study.enqueue_trial({**defaults, "alpha_first": first * config.alpha, "alpha_last": last * config.alpha,
                                 "level_ratio": ratio})
    rows, chosen_by_trial, reference = [], {}, None
    with tqdm(total=trials, desc="tuning", unit="trial", disable=not config.progress, dynamic_ncols=True) as bar:
        for _ in range(trials):
            trial = study.ask()
            settings = chosen_by_trial[trial.number] = suggest(trial, levels)
            started = time.perf_counter()
            try:
                found = evaluate_trial(replace(config, **settings), ds.train, ds.valid, users, score_users)
            except ValueError as exc:  # settings the checks refuse: a failed trial, not the end of the search
                log(f"trial {trial.number} failed: {exc}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            if reference is None and math.isfinite(found["score"]):
                reference = found["recall@20"]
            gain = worst_gain(found["recall@20"], reference) if math.isfinite(found["score"]) else -math.inf
            study.tell(trial, gain if math.isfinite(gain) else -1e9)
            rows.append({"trial": trial.number, **trial.params, "score": gain, "mean_log_recall": found["score"],
                         "stop_score": found["stop_score"],
                         "sweeps": found["sweeps"],
                         **{f"valid_recall@20_{w}": v for w, v in found["recall@20"].items()},
                         "seconds": time.perf_counter() - started})
            bar.update(1)
            bar.set_postfix({"best": f"{study.best_value:.4f}"})
    if reference is None:
        raise ValueError("every tuning trial failed or diverged; see the messages above")
    history = pd.DataFrame(rows)
    history["shortfall"] = worst_shortfall(history, config.dims)
    history["chosen"] = history.index == history.shortfall.idxmax()
    best = history[history.chosen].iloc[0]
    # the run then sweeps as long as the best trial did (no early stop before): the trainer's early
    # stop (full-width Recall@20, patience 3) had ended tool's seed-0 run at 21 sweeps, the trial's best 37
    sweeps = int(best.sweeps)
    chosen = {**chosen_by_trial[int(best.trial)], "epochs": sweeps, "patience": sweeps}
    log(f"tuning: chosen trial {int(best.trial)} of {trials}, validation Recall@20 by width "
        + ", ".join(f"{w}: {best[f'valid_recall@20_{w}']:.4f}" for w in config.dims) + f"; settings {chosen}")
    return replace(config, **chosen), history


def tune_and_train(config: TrainConfig, trials: int, log: Callable[[str], None] = tqdm.write) -> dict:
    """``mrl-train --tune``: :func:`tune`, then the run (selection and refit) with
    the chosen settings; the search history goes into the run folder
    (:data:`TUNE_HISTORY`), the chosen settings, the trials and the tuning seconds
    into ``metrics.json``. Its content is returned."""
    config.check()
    if not config.method == "mrl-als":
        raise ValueError(f"--tune searches mrl-als's per-width settings; got --method {config.method}")
    ds = load(config.dataset, config.data_dir, seed=config.seed, synthetic_size=config.synthetic_size)
    started = time.perf_counter()
    chosen, history = tune(config, ds, trials, log)
    seconds = time.perf_counter() - started
    result = train(chosen, log=log, dataset=ds)
    out = Path(result["config"]["out"])
    atomic_write(out / TUNE_HISTORY, lambda tmp: history.to_csv(tmp, index=False))
    result["tune"] = {"trials": trials, "seconds": seconds, "score": "the smallest over the widths of log(validation "
                      "Recall@20 / the first trial's)", "choice": "the smallest over the widths of log(validation "
                      "Recall@20 / the best trial's at that width)", "chosen": {name: getattr(chosen, name) for name in
                                              ("alpha", "l2", "level_weights", "cg_steps", "epochs")},
                      "history": TUNE_HISTORY}
    write_metrics(out, result)
    log("test metrics of the refit model at every width:\n" + pd.DataFrame(result["prefix"]).T.rename_axis(
        "width").to_string(float_format=lambda v: f"{v:.4f}"))
    return result
