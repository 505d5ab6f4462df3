"""Reproduce the paper's Tables 2-3 and Figure 3 under the refit protocol.

``python -m bench.reproduce --data-dir ../shared/datasets`` trains the methods
(default all five) on each backbone (MF, LightGCN) and dataset (phone, tool)
for three seeds with the paper's settings (runs that already have a
``metrics.json`` are skipped and interrupted ones resumed, so a reproduction
continues where it stopped), then writes ``docs/reproduction.md`` and
``docs/figure3.png`` (the refit models' prefixes, one panel per backbone and
dataset).

Three protocols, never selecting on the test set unless said:

- **refit** (the trainer's default): the epoch chosen on validation, then a
  fresh model trained on train + validation for that many epochs; its test metrics;
- **validation-selected** (``--no-refit``): the selected model's test metrics,
  trained without the validation part;
- **authors' protocol** (MF MRL-M only, to show the trainer is faithful): all of
  ``train.txt`` trained on, test evaluated every 5 epochs for ``AUTHORS_EPOCHS``
  epochs, the best test value of each metric (what the paper's tables report;
  optimistic by construction).
"""
from __future__ import annotations

from . import require

require('python -m bench.reproduce', 'matplotlib', 'tabulate')

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from mrl_kernels.atomic import atomic_write_png
from mrl_kernels.training.methods import METHODS

GRADIENT_METHODS = [name for name, method in METHODS.items() if not method.solved]

DATASETS = ("phone", "tool")
MODELS = ("mf", "lightgcn")
SEEDS = (0, 1, 2)
# MF MRL-M's prefixes at widths 4..64, test Recall@20, refit protocol, mean of 3 seeds (this report's "At
# each width"), for the reports that set other models beside them
MRL_M_PREFIXES = {"paper's settings": {"phone": (0.0705, 0.0878, 0.1013, 0.1146, 0.1283),
                                       "tool": (0.0353, 0.0451, 0.0546, 0.0625, 0.0724)},
                  "tuned": {"phone": (0.0809, 0.1010, 0.1171, 0.1341, 0.1456),
                            "tool": (0.0403, 0.0515, 0.0631, 0.0750, 0.0828)}}


def load_baselines(docs: Path) -> pd.DataFrame:
    """``docs/baselines.json`` (bench.baselines' per-width models) as a table, seed 0 where a row has none."""
    baselines = pd.DataFrame(json.loads((docs / "baselines.json").read_text()))
    return baselines.assign(seed=baselines.get("seed", 0)).fillna({"seed": 0})
AUTHORS_EPOCHS = 100  # the authors' runs peak by epoch 25-40 on these data
PAPER = {  # Tables 2 and 3 of the paper: (Recall@20, NDCG@20)
    ("phone", "mf", "bpr"): (0.1057, 0.0566), ("phone", "mf", "mrl-m"): (0.1286, 0.0710),
    ("tool", "mf", "bpr"): (0.0553, 0.0299), ("tool", "mf", "mrl-m"): (0.0734, 0.0404),
    ("phone", "lightgcn", "mrl-m"): (0.1502, 0.0827),
}
METRICS = ("recall@20", "ndcg@20")
SUFFIX = {"refit": "", "authors": "-authors", "tuned": "-tuned"}  # run folder name endings


def run_one(job: tuple) -> str:
    dataset, model, method, seed, protocol, data_dir, root = job
    import torch

    from mrl_kernels.training import data
    from mrl_kernels.training import CHECKPOINT, TrainConfig, recipe, train

    torch.set_num_threads(1)  # one run per core
    out = Path(root) / (f"{dataset}-{model}-{method}-s{seed}" + SUFFIX[protocol])
    if (out / "metrics.json").is_file():
        return f"{out.name}: done before"
    if protocol == "authors":  # all of train.txt, no validation part, no early stop
        ds = data.load(dataset, data_dir, seed=seed, valid_fraction=0.0)
        config = TrainConfig(dataset=dataset, model=model, method=method, seed=seed, out=str(out), progress=False,
                             track_test=True, refit=False, epochs=AUTHORS_EPOCHS,
                             **{**recipe(method, paper=True), "patience": AUTHORS_EPOCHS})
    else:  # the paper's settings, or (tuned) the method's defaults
        ds = data.load(dataset, data_dir, seed=seed)
        settings = recipe(method, paper=True) if protocol == "refit" else {}
        config = TrainConfig(dataset=dataset, model=model, method=method, seed=seed, out=str(out), progress=False,
                             track_test=True, **settings)
    result = train(config, log=lambda _: None, dataset=ds, resume=(out / CHECKPOINT).is_file())
    return f"{out.name}: test recall@20 {result['test']['recall@20']:.4f} (epoch {result['best_epoch']})"


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(root.glob("*/metrics.json")):
        result = json.loads(path.read_text())
        history = pd.read_csv(path.parent / "history.csv")
        protocol = next((p for p, end in SUFFIX.items() if end and path.parent.name.endswith(end)), "refit")
        authors = protocol == "authors"
        method = result["method"] + (" (tuned)" if protocol == "tuned" else "")
        row = {"dataset": result["dataset"], "model": result["model"], "method": method,
               "seed": result["config"]["seed"], "protocol": protocol,
               "best_epoch": result["best_epoch"], "seconds_per_epoch": result["seconds_per_epoch"],
               "train_seconds": result["wall_seconds"]}
        for metric in METRICS:
            if authors:
                row[f"authors' protocol {metric}"] = history[f"test_{metric}"].max()
            else:
                row[f"refit {metric}"] = result["test"][metric]
                row[f"validation-selected {metric}"] = result["test_before_refit"][metric]
        for width, metrics in result["prefix"].items():
            row[f"prefix {width}"] = metrics["recall@20"]
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(frame: pd.DataFrame, keys, columns) -> pd.DataFrame:
    grouped = frame.groupby(list(keys))[list(columns)]
    mean, std = grouped.mean(), grouped.std().fillna(0)
    return mean.combine(std, lambda m, s: m.map("{:.4f}".format) + " ± " + s.map("{:.4f}".format))


def report(frame: pd.DataFrame, docs: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["dataset", "model", "method"]
    runs = frame[frame.protocol != "authors"]  # the refit protocol, with the paper's settings or tuned ones
    columns = [f"{p} {m}" for p in ("refit", "validation-selected") for m in METRICS]
    table = _mean_std(runs, keys, columns)
    authors = frame[frame.protocol == "authors"]
    if len(authors):
        table = table.join(_mean_std(authors, keys, [f"authors' protocol {m}" for m in METRICS]))
    table = table.reset_index().fillna("")
    table["paper recall@20 / ndcg@20"] = ["{:.4f} / {:.4f}".format(*PAPER[k]) if k in PAPER else ""
                                          for k in zip(table.dataset, table.model, table.method)]
    table["seeds"] = runs.groupby(keys).seed.count().values
    table["train s"] = runs.groupby(keys)["train_seconds"].mean().values.round(0)
    order = {m: i for i, m in enumerate(GRADIENT_METHODS)}
    rank = lambda method: order[method.split()[0]] + ("(tuned)" in method) / 2  # noqa: E731 - tuned after its method
    table = table.sort_values(keys, key=lambda c: c.map(rank) if c.name == "method" else c)

    widths = sorted({int(c.split()[1]) for c in frame.columns if c.startswith("prefix ")})
    panels = sorted(runs.groupby(["model", "dataset"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels):
        sub = runs[(runs.model == model) & (runs.dataset == dataset)].groupby("method")[
            [f"prefix {w}" for w in widths]].mean()
        for method in sorted(sub.index, key=rank):
            ax.plot(widths, sub.loc[method].values, marker="o", label=method)
        width_axes(ax, widths, f"{dataset}, {model}")
    axes[0][0].legend()
    fig.tight_layout()
    docs.mkdir(parents=True, exist_ok=True)
    atomic_write_png(docs / "figure3.png", fig, 120)

    text = ["## Results (mean ± std over seeds)", "", table.to_markdown(index=False), "",
            "## Figure 3: test Recall@20 of the refit models against the evaluation prefix width", "",
            "![Figure 3](figure3.png)", ""]
    baselines = docs / "baselines.json"
    if baselines.is_file():
        text += widths_table(runs[runs.model == "mf"], pd.DataFrame(json.loads(baselines.read_text())), widths)
    return "\n".join(text)


def width_axes(ax, widths, title: str) -> None:
    """A Figure 3 panel's axes: the prefix widths on a log2 scale, test Recall@20."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_title(title)
    ax.set_xlabel("evaluation prefix width")
    ax.set_ylabel("test Recall@20 (refit)")


def widths_table(frame: pd.DataFrame, baselines: pd.DataFrame, widths) -> list[str]:
    """Test Recall@20 at each embedding width: MF MRL-M's prefixes with the paper's
    settings and the tuned recipes' (one model each, mean ± std over seeds) next to
    iALS and implicit's BPR retrained at that width, with training seconds."""
    out = ["## At each width: one Matryoshka model's prefixes against baselines retrained at that width", "",
           "Test Recall@20, refit protocol for all. The Matryoshka models are trained once at width 64 and "
           "evaluated on prefixes (MRL-M with the paper's settings, and each tuned recipe of `mrl-train`'s "
           "defaults); the baselines are tuned on validation Recall@20 at every width (the grid in "
           "docs/baselines.json), then refit on train + validation. Mean ± std over the seeds run (data "
           "splits). Training seconds: the Matryoshka runs' wall time (selection + refit, C++ backend, one "
           "thread); the baselines' refit of the chosen setting (one thread).", ""]
    if "seed" not in baselines:
        baselines = baselines.assign(seed=0)
    baselines = baselines.assign(seed=baselines.seed.fillna(0))
    for dataset in sorted(set(frame.dataset) & set(baselines.dataset)):
        ours = frame[(frame.dataset == dataset) & frame.method.str.startswith("mrl-")
                     & ((frame.method == "mrl-m") | frame.method.str.endswith("(tuned)"))]
        theirs = baselines[baselines.dataset == dataset]
        rows, seconds = [], []
        for width in widths:
            row = {"width": str(width)}
            for method, part in ours.groupby("method"):
                values = part[f"prefix {width}"]
                row[method if "(tuned)" in method else f"{method} (paper's settings)"] = f"{values.mean():.4f} ± {values.std():.4f}" if len(values) > 1 else \
                    f"{values.mean():.4f}"
            for model, part in theirs[theirs.width == width].groupby("model"):
                values = part["test"].map(lambda t: t["recall@20"])
                row[model] = f"{values.mean():.4f} ± {values.std():.4f}" if len(values) > 1 else f"{values.mean():.4f}"
                row[f"{model} fit s"] = f"{part.fit_seconds.mean():.1f}"
            rows.append(row)
        for method, part in ours.groupby("method"):
            seconds.append(f"{method} {part.train_seconds.mean():.0f} s ({len(part)} seeds)")
        out += [f"**{dataset}** (Matryoshka training: {', '.join(seconds)})", "",
                pd.DataFrame(rows).to_markdown(index=False), ""]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default="runs/reproduction")
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(GRADIENT_METHODS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--protocols", default="refit,authors,tuned",
                        help="refit: every configuration with the paper's settings; authors: MF MRL-M's "
                             "authors'-protocol runs; tuned: MF with each tuned recipe (mrl-train's defaults)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.runs)
    if not args.report_only:
        # seeds outermost: every configuration has a first seed early on
        jobs = []
        for seed in map(int, args.seeds.split(",")):
            for dataset in args.datasets.split(","):
                protocols = args.protocols.split(",")
                if "authors" in protocols and "mf" in args.models.split(",") and "mrl-m" in args.methods.split(","):
                    jobs.append((dataset, "mf", "mrl-m", seed, "authors", args.data_dir, str(root)))
                if "refit" in protocols:
                    jobs += [(dataset, model, method, seed, "refit", args.data_dir, str(root))
                             for model in args.models.split(",") for method in args.methods.split(",")]
                if "tuned" in protocols and "mf" in args.models.split(","):
                    jobs += [(dataset, "mf", method, seed, "tuned", args.data_dir, str(root))
                             for method in args.methods.split(",") if METHODS[method].recipe]
        with ProcessPoolExecutor(args.workers) as pool:
            for line in pool.map(run_one, jobs):
                print(line, flush=True)
    body = report(collect(root), Path(args.docs))
    intro = Path(args.docs) / "reproduction_intro.md"
    text = (intro.read_text() if intro.is_file() else "# Reproduction\n") + "\n" + body
    (Path(args.docs) / "reproduction.md").write_text(text)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
