"""One nested least-squares model against iALS retrained at each width.

``python -m bench.nested_als --data-dir ../shared/datasets`` trains ``mrl-train
--method mrl-als`` (refit protocol: sweeps chosen on validation, a fresh fit on
train + validation) on phone and tool for each seed, with each dataset's tuned
settings (``--tuned``: the ``best.json`` of ``python -m bench.tune --method mrl-als``,
``runs/tune/<dataset>-mf-mrl-als/best.json``; without one, ``mrl-train``'s
defaults), and times, side by side in the same process and thread, implicit's iALS
refit at width 64 and at each of the five widths with the settings
``docs/baselines.json`` chose for that width and seed. Writes
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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from mrl_kernels.training import data
from mrl_kernels.atomic import atomic_write
from mrl_kernels.training import CHECKPOINT, TrainConfig, train

from .baselines import _matrix, fit
from .reproduce import width_axes
from .tune import settings_of

WIDTHS = (4, 8, 16, 32, 64)
# tuned MF MRL-M's prefixes, test Recall@20, refit protocol, mean of 3 seeds (docs/reproduction.md,
# "At each width"): the runs behind them are bench.reproduce's, not repeated here
MRL_M_TUNED = {"phone": (0.0809, 0.1010, 0.1171, 0.1341, 0.1456), "tool": (0.0403, 0.0515, 0.0631, 0.0750, 0.0828)}


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


def run(dataset: str, seed: int, data_dir, settings: dict, root: Path, baselines: pd.DataFrame) -> dict:
    ds = data.load(dataset, data_dir, seed=seed)
    out = root / f"{dataset}-mrl-als-s{seed}"
    config = TrainConfig(dataset=dataset, method="mrl-als", seed=seed, out=str(out), progress=False,
                         **settings_of(settings))
    result = train(config, log=lambda _: None, dataset=ds, resume=(out / CHECKPOINT).is_file())
    started = time.perf_counter()
    seconds = ials_seconds(ds, baselines, seed)
    return {"dataset": dataset, "seed": seed, "settings": settings,
            "prefix": {w: result["prefix"][str(w)]["recall@20"] for w in WIDTHS},
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
        ials = [baselines[(baselines.dataset == dataset) & (baselines.model == "ials") & (baselines.width == w)]
                .test.map(lambda t: t["recall@20"]).mean() for w in WIDTHS]
        ax.plot(WIDTHS, ours, marker="o", label="mrl-als (one model)")
        ax.plot(WIDTHS, ials, marker="s", label="iALS retrained per width")
        ax.plot(WIDTHS, MRL_M_TUNED[dataset], marker="^", label="mrl-m tuned (one model)")
        width_axes(ax, WIDTHS, f"{dataset}, mf")
    axes[0][0].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _mean_std(values) -> str:
    values = np.asarray(list(values), dtype=float)
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def markdown(rows: pd.DataFrame, baselines: pd.DataFrame) -> str:
    """Per dataset: each width's Recall@20 (mean ± std over the seeds), the nested
    model against iALS, and the fit seconds."""
    out = ["# One nested least-squares model against iALS retrained at each width", "",
           "Written by `python -m bench.nested_als` (see its docstring). Test Recall@20, refit protocol, mean ± "
           "std over the seeds (data splits). `mrl-als`: ONE model, its prefixes; iALS: a model per width, each "
           "tuned on validation (docs/baselines.json); MRL-M tuned: one model's prefixes (docs/reproduction.md). "
           "Fit seconds: one thread, this machine, measured side by side in the same process: the nested model's "
           "refit sweeps, iALS's refit at width 64 and the five per-width refits together.", ""]
    for dataset, part in rows.groupby("dataset"):
        theirs = baselines[(baselines.dataset == dataset) & (baselines.model == "ials")]
        table = []
        for i, width in enumerate(WIDTHS):
            ours = [p[width] for p in part.prefix]
            ials = theirs[theirs.width == width].test.map(lambda t: t["recall@20"])
            table.append({"width": width, "mrl-als (one model)": _mean_std(ours), "iALS per width": _mean_std(ials),
                          "mrl-als / iALS": f"{np.mean(ours) / ials.mean() - 1:+.1%}",
                          "mrl-m tuned (one model)": f"{MRL_M_TUNED[dataset][i]:.4f}",
                          "mrl-als / mrl-m": f"{np.mean(ours) / MRL_M_TUNED[dataset][i] - 1:+.1%}"})
        fits = part.fit_seconds.mean()
        width64 = np.mean([s[64] for s in part.ials_fit_seconds])
        five = np.mean([sum(s.values()) for s in part.ials_fit_seconds])
        out += [f"**{dataset}** ({len(part)} seeds; settings {part.settings.iloc[0] or 'mrl-train defaults'}; "
                f"{part.sweeps.mean():.1f} sweeps): fit {fits:.1f} s against iALS {width64:.1f} s at width 64 "
                f"({fits / width64:.1f}x) and {five:.1f} s for the five widths ({fits / five:.2f}x)", "",
                pd.DataFrame(table).to_markdown(index=False), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="phone,tool")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tuned", default="runs/tune/{dataset}-mf-mrl-als/best.json",
                        help="each dataset's bench.tune result ({dataset} is filled in); mrl-train's defaults "
                             "where there is none")
    parser.add_argument("--runs", default="runs/nested-als")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    baselines = pd.DataFrame(json.loads((Path(args.docs) / "baselines.json").read_text()))
    baselines = baselines.assign(seed=baselines.get("seed", 0)).fillna({"seed": 0})
    rows = []
    with threadpool_limits(1, "blas"):
        for dataset in args.datasets.split(","):
            tuned = Path(args.tuned.format(dataset=dataset))
            settings = json.loads(tuned.read_text())["settings"] if tuned.is_file() else {}
            for seed in map(int, args.seeds.split(",")):
                row = run(dataset, seed, args.data_dir, settings, Path(args.runs), baselines)
                rows.append(row)
                print(dataset, seed, {w: round(v, 4) for w, v in row["prefix"].items()},
                      f"fit {row['fit_seconds']:.1f} s; iALS {row['ials_fit_seconds']}", flush=True)
    docs = Path(args.docs)
    atomic_write(docs / "nested_als.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    frame = pd.DataFrame(rows)
    figure(frame, baselines, docs / "figure3-nested.png")
    text = markdown(frame, baselines) + "\n![Figure 3 with the nested model](figure3-nested.png)\n"
    atomic_write(docs / "nested_als.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
