"""Serving at a narrow width: quality on trained models and speed at scale, in one run.

``python -m bench.retrieval --data-dir ../shared/datasets`` writes
``bench/results/retrieval-<machine>-<date>.{md,json,png}``:

1. **Quality.** MRL-M and BPR (the contrast) trained on phone and tool (seed 0,
   the paper's settings, at most ``--epochs`` epochs, validation-selected, no
   refit; runs are kept in ``--runs`` and reused). For each width in
   ``WIDTHS`` and shortlist in ``SHORTLISTS``: test Recall@20 of the served
   top-20 (training and validation items excluded) and its agreement with exact
   full-width search (the fraction of the exact top-20 it returns).
2. **Speed.** Queries per second (batches of ``BATCH`` queries, one process, all
   threads) at N in ``SIZES`` items, D 64: exact torch search (matmul + topk),
   ``prefix_topk`` / ``MatryoshkaIndex.search`` at width 8 per backend (float32
   and bfloat16 shortlist tables), FAISS ``IndexFlatIP`` (exact) and an HNSW
   index (with its build time). Each approximate method runs at the smallest
   setting (shortlist, or HNSW's efSearch) whose top-20 agreement with exact
   search reaches ``TARGET``; the table says which and the agreement reached.
   The large tables are synthetic but keep the trained phone MRL-M model's
   structure: each item is a random row of that model's item table plus
   Gaussian noise of half its column standard deviation, and the queries are
   that model's user vectors (stated in the report).
"""
from __future__ import annotations

from . import require

require("python -m bench.retrieval", "faiss", "matplotlib", "tabulate")

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

import mrl_kernels as mk
from mrl_kernels import data
from mrl_kernels.serving import load_run
from mrl_kernels.trainer import TrainConfig, train

from .timing import median_ms

WIDTHS = (4, 8, 16, 32)
SHORTLISTS = (50, 100, 200, 500, 1000)
SIZES = (10_000, 100_000, 1_000_000)
SPEED_SHORTLISTS = (100, 200, 500, 1000, 2000, 5000)
EF_SEARCH = (16, 32, 64, 128, 256, 512)
BATCH, K, TARGET = 256, 20, 0.95


def trained(dataset: str, method: str, args) -> Path:
    out = Path(args.runs) / f"{dataset}-{method}"
    if not (out / "model.pt").is_file():
        train(TrainConfig(dataset=dataset, data_dir=args.data_dir, method=method, epochs=args.epochs, refit=False,
                          out=str(out), progress=False), log=lambda _: None,
              resume=(out / "checkpoint.pt").is_file())
    return out


def agreement(ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), exact_ids.tolist())]))


def recall(ids: torch.Tensor, truth: list[set]) -> float:
    return float(np.mean([len(set(row) & t) / len(t) for row, t in zip(ids.tolist(), truth)]))


def quality(args) -> pd.DataFrame:
    rows = []
    for dataset in ("phone", "tool"):
        ds = data.load(dataset, args.data_dir, seed=0)
        seen = data.CSR.union(ds.train, ds.valid)
        users = torch.nonzero(ds.test.row_lengths() > 0).flatten()
        truth = [set(ds.test.indices[ds.test.indptr[u]:ds.test.indptr[u + 1]].tolist()) for u in users.tolist()]
        exclude = [seen.indices[seen.indptr[u]:seen.indptr[u + 1]] for u in users.tolist()]
        for method in ("mrl-m", "bpr"):
            run = load_run(trained(dataset, method, args))
            query = run.users[users]
            _, exact = run.index.search(query, K, exclude=exclude)
            rows.append({"dataset": dataset, "method": method, "width": 64, "shortlist": "exact",
                         "recall@20": recall(exact, truth), "agreement": 1.0})
            for width in WIDTHS:
                for shortlist in SHORTLISTS:
                    _, ids = run.index.search(query, K, width, shortlist, exclude)
                    rows.append({"dataset": dataset, "method": method, "width": width, "shortlist": shortlist,
                                 "recall@20": recall(ids, truth), "agreement": agreement(ids, exact)})
            print(pd.DataFrame(rows[-len(WIDTHS) * len(SHORTLISTS) - 1:]).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def smallest(settings, run) -> tuple:
    """The first setting whose agreement reaches TARGET (else the last): (setting, ids, agreement)."""
    for setting in settings:
        ids, reached = run(setting)
        if reached >= TARGET:
            break
    return setting, ids, reached


def speed(args, base_items: torch.Tensor, base_users: torch.Tensor) -> pd.DataFrame:
    rows = []
    g = torch.Generator().manual_seed(0)
    noise = 0.5 * base_items.std(0)
    query = base_users[torch.randperm(len(base_users), generator=g)[:BATCH]].contiguous()
    for n in SIZES:
        items = base_items[torch.randint(0, len(base_items), (n,), generator=g)]
        items += torch.randn(items.shape, generator=g) * noise
        exact_ms = median_ms(lambda: (query @ items.T).topk(K, dim=1), "cpu", args.repeats)
        exact = (query @ items.T).topk(K, dim=1).indices
        rows.append({"N": n, "method": "torch exact (matmul + topk)", "setting": "", "agreement": 1.0,
                     "ms": exact_ms})
        for backend in mk.available_backends("cpu"):
            if backend == "triton" or (backend == "torch" and n > 100_000):
                continue  # the interpreter; the reference sorts (B, N) scores
            for dtype in (torch.float32, torch.bfloat16):
                index = mk.MatryoshkaIndex(items, [8], shortlist_dtype=dtype)

                def served(shortlist):
                    ids = index.search(query, K, 8, shortlist, backend=backend)[1]
                    return ids, agreement(ids, exact)
                setting, _, reached = smallest(SPEED_SHORTLISTS, served)
                ms = median_ms(lambda: index.search(query, K, 8, setting, backend=backend), "cpu", args.repeats)
                rows.append({"N": n, "method": f"MatryoshkaIndex width 8, {backend}, "
                             f"{str(dtype).replace('torch.', '')} shortlist", "setting": f"shortlist {setting}",
                             "agreement": reached, "ms": ms})
        flat = faiss.IndexFlatIP(items.shape[1])
        flat.add(items.numpy())
        ms = median_ms(lambda: flat.search(query.numpy(), K), "cpu", args.repeats)
        rows.append({"N": n, "method": "FAISS IndexFlatIP", "setting": "",
                     "agreement": agreement(torch.from_numpy(flat.search(query.numpy(), K)[1]), exact), "ms": ms})
        started = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(items.numpy())
        build = time.perf_counter() - started

        def hnsw_run(ef):
            hnsw.hnsw.efSearch = ef
            ids = torch.from_numpy(hnsw.search(query.numpy(), K)[1])
            return ids, agreement(ids, exact)
        ef, _, reached = smallest(EF_SEARCH, hnsw_run)
        hnsw.hnsw.efSearch = ef
        ms = median_ms(lambda: hnsw.search(query.numpy(), K), "cpu", args.repeats)
        rows.append({"N": n, "method": "FAISS HNSW (M 32)", "setting": f"efSearch {ef}, build {build:.1f} s",
                     "agreement": reached, "ms": ms})
        for row in rows:
            if row["N"] == n:
                row.update({"queries/s": BATCH / row["ms"] * 1e3, "vs exact torch": exact_ms / row["ms"]})
        print(pd.DataFrame([r for r in rows if r["N"] == n]).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, part in table.groupby("method"):
        ax.plot(part.N, part["queries/s"], marker="o", label=method)
    ax.set(xscale="log", yscale="log", xlabel="items N", ylabel="queries/s (top-20, D 64)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default="runs/retrieval")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--epochs", type=int, default=40, help="most training epochs of the quality models")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    quality_table = quality(args)
    phone = load_run(Path(args.runs) / "phone-mrl-m")
    speed_table = speed(args, phone.index.items, phone.users)
    name = f"retrieval-{platform.machine()}-{torch.get_num_threads()}threads-{dt.date.today().isoformat()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(speed_table, out / f"{name}.png")
    text = "\n".join([
        "# Serving at a narrow width", "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, faiss {faiss.__version__}; bench/retrieval.py.", "",
        "## Quality on trained models (test users; training and validation items excluded)", "",
        quality_table.to_markdown(index=False, floatfmt=".4f"), "",
        f"## Speed: top-{K} of batches of {BATCH} queries, D 64", "",
        "Synthetic tables with the trained phone MRL-M model's structure: each item a random row of its item "
        "table plus Gaussian noise of half its column standard deviation; queries: its user vectors. "
        f"Approximate methods at the smallest setting reaching top-{K} agreement {TARGET} with exact search "
        "(or their largest setting).", "",
        speed_table.to_markdown(index=False, floatfmt=".3f"), "", f"![queries/s]({name}.png)", ""])
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"quality": quality_table.to_dict("records"),
                                                  "speed": speed_table.to_dict("records")}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
