"""One nested least-squares model against iALS retrained at each width.

``python -m bench.nested_als --data-dir ../shared/datasets`` runs ``mrl-train
--method mrl-als --tune 40`` (the built-in search on validation,
:mod:`mrl_kernels.training.search`, then the refit protocol: sweeps chosen on
validation, a fresh fit on train + validation) on ml100k, tool and phone for each
seed (seeds outer, so the first seed of every dataset comes first; the docs are
rewritten after every run), and times, side by side in the same process and
thread, implicit's iALS refit at width 64 and at each of the five widths with the
settings ``docs/baselines.json`` chose for that width and seed
(``python -m bench.baselines --datasets ml100k --seeds 0,1,2`` for ml100k). Writes
``docs/nested_als.json``, ``docs/nested_als.md`` and ``docs/figure3-nested.png``:
test Recall@20 at each width of the ONE nested model, of iALS retrained per width
(docs/baselines.json) and of tuned MRL-M's prefixes (the 3-seed means of
docs/reproduction.md), and the fit seconds.
"""
from __future__ import annotations

from . import require

require('python -m bench.nested_als', 'implicit', 'scipy', 'threadpoolctl', 'matplotlib')

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from mrl_kernels.training import data
from mrl_kernels.atomic import atomic_write_png, atomic_write_text
from mrl_kernels.training import TrainConfig

from .baselines import _matrix, fit
from .reproduce import MRL_M_PREFIXES, load_baselines, width_axes
from mrl_kernels.training.search import tune_and_train

WIDTHS = (4, 8, 16, 32, 64)
# tuned MF MRL-M's prefixes (the runs behind them are bench.reproduce's, not repeated here)
MRL_M_TUNED = MRL_M_PREFIXES["tuned"]
TRIALS = 40
# the search a row was made with; rows of another are run again (v2: a trial's best sweep evaluated
# on every validation user, not the 2,000 of its early stop; v3: trials compared by their weakest
# width's gain on the defaults, not by the mean over the widths of log Recall@20; v4: a trial stopped
# after 6 sweeps without a better one, not 3; v5: each fit's first 3 sweeps end by a rotation to the
# singular basis, training.als.Sweeps; v6: the designed trials after the defaults' with the narrow alpha
# 8x and lighter narrow widths in place of 4x and flat weights, search.DESIGN; v7: the trial chosen by
# its weakest width against the best trial's there, search.worst_shortfall, not against the defaults)
SEARCH = 7


def ials_seconds(ds: data.Dataset, baselines: pd.DataFrame, seed: int) -> dict:
    """implicit's iALS refit (train + validation, one thread) at each width with the
    setting chosen for it: seconds by width."""
    matrix = _matrix(data.CSR.union(ds.train, ds.valid), ds.n_users)
    seconds = {}
    for width in WIDTHS:
        chosen = baselines[(baselines.dataset == ds.name) & (baselines.model == "ials") & (baselines.width == width)
                           & (baselines.seed == seed)]
        *_, seconds[width] = fit("ials", matrix, width, seed, **chosen.iloc[0].params)
    return seconds


def commit() -> str | None:
    """The checkout's commit (``+changes`` where tracked files differ from it), None
    outside a git checkout: a row's code (the search's choice moves with the solver's
    float rounding, docs/tuning.md)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain",
                                                                        "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run(dataset: str, seed: int, data_dir, trials: int, root: Path, baselines: pd.DataFrame) -> dict:
    ds = data.load(dataset, data_dir, seed=seed)
    out = root / f"{dataset}-mrl-als-s{seed}"
    config = TrainConfig(dataset=dataset, data_dir=data_dir, method="mrl-als", seed=seed, out=str(out),
                         progress=False)
    result = tune_and_train(config, trials, log=lambda _: None)
    started = time.perf_counter()
    seconds = ials_seconds(ds, baselines, seed)
    return {"dataset": dataset, "seed": seed, "commit": commit(), "settings": result["tune"]["chosen"],
            "tune_seconds": result["tune"]["seconds"], "trials": trials,
            "search": SEARCH, "prefix": {w: result["prefix"][str(w)]["recall@20"] for w in WIDTHS},
            "fit_seconds": result["seconds_per_epoch"] * result["refit_epochs"], "sweeps": result["refit_epochs"],
            "ials_fit_seconds": seconds, "ials_timing_s": time.perf_counter() - started}


def figure(rows: pd.DataFrame, baselines: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(set(rows.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        ours = np.mean([list(p.values()) for p in rows[rows.dataset == dataset].prefix], axis=0)
        seeds = list(rows[rows.dataset == dataset].seed)
        ials = [baselines[(baselines.dataset == dataset) & (baselines.model == "ials") & (baselines.width == w)
                          & baselines.seed.isin(seeds)].test.map(lambda t: t["recall@20"]).mean() for w in WIDTHS]
        ax.plot(WIDTHS, ours, marker="o", label="mrl-als --tune (one model)")
        ax.plot(WIDTHS, ials, marker="s", label="iALS retrained per width")
        if dataset in MRL_M_TUNED:
            ax.plot(WIDTHS, MRL_M_TUNED[dataset], marker="^", label="mrl-m tuned (one model)")
        width_axes(ax, WIDTHS, f"{dataset}, mf")
    max(axes[0], key=lambda ax: len(ax.get_lines())).legend()  # the panel with every curve (MRL-M's: tool, phone)
    fig.tight_layout()
    atomic_write_png(path, fig, 120)


def _mean_std(values) -> str:
    values = np.asarray(list(values), dtype=float)
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def _rounded(settings: dict) -> dict:
    return {name: [float(f"{v:.3g}") for v in value] if isinstance(value, (list, tuple)) else value
            for name, value in settings.items()}


def markdown(rows: pd.DataFrame, baselines: pd.DataFrame) -> str:
    """Per dataset: each width's Recall@20 (mean ± std over the seeds), the nested
    model against iALS, and the fit seconds."""
    out = ["# One nested least-squares model against iALS retrained at each width", "",
           "Written by `python -m bench.nested_als` (see its docstring). Test Recall@20, refit protocol, mean ± "
           "std over the seeds (data splits). `mrl-als --tune N`: ONE model, its prefixes, its per-width settings "
           "chosen by the built-in search (N trials on validation, mrl_kernels.training.search); iALS: a model per "
           "width, each tuned on validation (docs/baselines.json); MRL-M tuned: one model's prefixes "
           "(docs/reproduction.md). Seconds: one thread, this machine (shared), measured side by side in the same "
           "process: the nested model's refit sweeps, iALS's refit at width 64 and the five per-width refits "
           "together, and the search's. Code: commit "
           + ", ".join(sorted(set(rows["commit"].fillna("unknown"))))
           + " (each row's in nested_als.json).", ""]
    for dataset, part in rows.groupby("dataset"):
        # iALS on the same seeds (data splits) as the nested model's rows
        theirs = baselines[(baselines.dataset == dataset) & (baselines.model == "ials")
                           & baselines.seed.isin(list(part.seed))]
        table = []
        for i, width in enumerate(WIDTHS):
            ours = [p[width] for p in part.prefix]
            ials = theirs[theirs.width == width].test.map(lambda t: t["recall@20"])
            row = {"width": width, "mrl-als --tune (one model)": _mean_std(ours), "iALS per width": _mean_std(ials),
                   "mrl-als / iALS": f"{np.mean(ours) / ials.mean():.3f}x"}
            if dataset in MRL_M_TUNED:
                row.update({"mrl-m tuned (one model)": f"{MRL_M_TUNED[dataset][i]:.4f}",
                            "mrl-als / mrl-m": f"{np.mean(ours) / MRL_M_TUNED[dataset][i] - 1:+.1%}"})
            table.append(row)
        fits = part.fit_seconds.mean()
        width64 = np.mean([s[64] for s in part.ials_fit_seconds])
        five = np.mean([sum(s.values()) for s in part.ials_fit_seconds])
        out += [f"**{dataset}** (seeds {', '.join(map(str, part.seed))}; {part.trials.iloc[0]} trials, "
                f"{part.tune_seconds.mean():.0f} s of search; {part.sweeps.mean():.1f} sweeps): fit {fits:.1f} s "
                f"against iALS {width64:.1f} s at width 64 ({fits / width64:.1f}x) and {five:.1f} s for the five "
                f"widths ({fits / five:.2f}x). Chosen settings (seed {part.seed.iloc[0]}): {_rounded(part.settings.iloc[0])}",
                "", pd.DataFrame(table).to_markdown(index=False), ""]
    return "\n".join(out)


def write(rows: list, baselines: pd.DataFrame, docs: Path) -> str:
    atomic_write_text(docs / "nested_als.json", json.dumps(rows, indent=2))
    frame = pd.DataFrame(rows)
    frame["prefix"] = frame.prefix.map(lambda p: {int(w): v for w, v in p.items()})
    frame["ials_fit_seconds"] = frame.ials_fit_seconds.map(lambda p: {int(w): v for w, v in p.items()})
    figure(frame, baselines, docs / "figure3-nested.png")
    text = markdown(frame, baselines) + "\n![Figure 3 with the nested model](figure3-nested.png)\n"
    atomic_write_text(docs / "nested_als.md", text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="ml100k,tool,phone")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tune", type=int, default=TRIALS, help="trials of the built-in search per run")
    parser.add_argument("--runs", default="runs/nested-als")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    docs = Path(args.docs)
    baselines = load_baselines(docs)
    # the rows of earlier runs with the same search are kept: an interrupted job continues
    kept = json.loads((docs / "nested_als.json").read_text()) if (docs / "nested_als.json").is_file() else []
    rows = [row for row in kept if row.get("trials") == args.tune and row.get("search") == SEARCH]
    done = {(row["dataset"], row["seed"]) for row in rows}
    with threadpool_limits(1, "blas"):
        for seed in map(int, args.seeds.split(",")):
            for dataset in args.datasets.split(","):
                if (dataset, seed) in done:
                    continue
                row = run(dataset, seed, args.data_dir, args.tune, Path(args.runs), baselines)
                rows.append(row)
                print(dataset, seed, {w: round(v, 4) for w, v in row["prefix"].items()},
                      f"fit {row['fit_seconds']:.1f} s; tuning {row['tune_seconds']:.0f} s; "
                      f"iALS {row['ials_fit_seconds']}", flush=True)
                write(rows, baselines, docs)
    print(write(rows, baselines, docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
