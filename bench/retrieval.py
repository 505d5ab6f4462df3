"""Serving at a narrow width: quality on trained models and speed at scale, in one run.

``python -m bench.retrieval --data-dir ../shared/datasets`` writes
``bench/results/retrieval-<machine>-<date>.{md,json,png}``:

1. **Quality** (``--quality``, the default). MRL-M and BPR (the contrast)
   trained on phone and tool (seed 0, the paper's settings, at most
   ``--epochs`` epochs, validation-selected, no refit; runs are kept in
   ``--runs`` and reused). For each width in ``WIDTHS`` and shortlist in
   ``SHORTLISTS``: test Recall@20 of the served top-20 (training and validation
   items excluded) and its agreement with exact full-width search (the fraction
   of the exact top-20 it returns).
2. **The nested index on phone MRL-M** (always): test Recall@20 and agreement
   served through ``MatryoshkaIndex`` (exact narrow scores) and ``NestedIndex``
   (IVF and HNSW first stages) at widths 8, 16, 32.
3. **Speed** at N in ``--sizes`` items, D 64: queries/s (batches of ``BATCH``
   queries, one process, torch and FAISS on the same threads), memory and
   top-20 agreement with exact search of every route at each of its settings:
   exact torch search (matmul + topk), FAISS ``IndexFlatIP``, FAISS HNSW (M 32)
   at full width over ``EF_SEARCH`` (its build time-boxed by
   ``--hnsw-budget-s``), and ``NestedIndex`` at each width (``first_stages``);
   the fastest setting of each route reaching agreement ``TARGET``, and the
   Pareto plot (queries/s against agreement). The large tables are synthetic
   but keep the trained phone MRL-M model's structure: each item is a random
   row of that model's item table plus Gaussian noise of half its column
   standard deviation, and the queries are that model's user vectors (no
   held-out data: agreement is their quality measure). The report is rewritten
   after each size, so a run stopped at the larger size keeps the smaller.
"""
from __future__ import annotations

from . import cpu_name, require, result_name

require("python -m bench.retrieval", "faiss", "matplotlib", "tabulate")

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_png, atomic_write_text
import mrl_kernels as mk
from mrl_kernels.training import data
from mrl_kernels.serving import load_run
from mrl_kernels.training import TrainConfig, train

from .timing import median_ms

WIDTHS = (4, 8, 16, 32)
SHORTLISTS = (50, 100, 200, 500, 1000)
SIZES = (1_000_000, 10_000_000)
EF_SEARCH = (128, 256, 512, 1024, 2048, 4096)
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


def test_users(dataset: str, args) -> tuple:
    """(users with test items, their test items, their training and validation items)."""
    ds = data.load(dataset, args.data_dir, seed=0)
    seen = data.CSR.union(ds.train, ds.valid)
    users = torch.nonzero(ds.test.row_lengths() > 0).flatten()
    truth = [set(ds.test.indices[ds.test.indptr[u]:ds.test.indptr[u + 1]].tolist()) for u in users.tolist()]
    return users, truth, [seen.indices[seen.indptr[u]:seen.indptr[u + 1]] for u in users.tolist()]


def nested_quality(args, run) -> pd.DataFrame:
    """Test Recall@K on phone (MRL-M) served exactly, through the exact narrow shortlist
    (MatryoshkaIndex) and through the nested index (IVF and HNSW first stages) at each width."""
    users, truth, exclude = test_users("phone", args)
    query = run.users[users]
    _, exact = run.index.search(query, K, exclude=exclude)
    rows = [{"route": "exact", "width": 64, "shortlist": "", "recall@20": recall(exact, truth), "agreement": 1.0}]
    nlist = 2 ** round(np.log2(np.sqrt(run.index.items.shape[0])))
    for width in WIDTHS[1:]:
        routes = {"MatryoshkaIndex (exact narrow scores)": None,
                  f"NestedIndex IVF{nlist},Flat, nprobe 32": (f"IVF{nlist},Flat", {"nprobe": 32}),
                  "NestedIndex HNSW32, efSearch = shortlist": ("HNSW32", {})}
        for route, stage in routes.items():
            index = None if stage is None else mk.NestedIndex(run.index.items, width, stage[0], torch.float16,
                                                              stage[1])
            for shortlist in (200, 1000):
                if index is None:
                    ids = run.index.search(query, K, width=width, shortlist=shortlist, exclude=exclude)[1]
                else:
                    if stage[0].startswith("HNSW"):
                        index.set_params(efSearch=shortlist)
                    ids = index.search(query, K, shortlist=shortlist, exclude=exclude)[1]
                rows.append({"route": route, "width": width, "shortlist": shortlist,
                             "recall@20": recall(ids, truth), "agreement": agreement(ids, exact)})
    print(pd.DataFrame(rows).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def quality(args) -> pd.DataFrame:
    rows = []
    for dataset in ("phone", "tool"):
        users, truth, exclude = test_users(dataset, args)
        for method in ("mrl-m", "bpr"):
            run = load_run(trained(dataset, method, args))
            query = run.users[users]
            _, exact = run.index.search(query, K, exclude=exclude)
            rows.append({"dataset": dataset, "method": method, "width": 64, "shortlist": "exact",
                         "recall@20": recall(exact, truth), "agreement": 1.0})
            for width in WIDTHS:
                for shortlist in SHORTLISTS:
                    _, ids = run.index.search(query, K, width=width, shortlist=shortlist, exclude=exclude)
                    rows.append({"dataset": dataset, "method": method, "width": width, "shortlist": shortlist,
                                 "recall@20": recall(ids, truth), "agreement": agreement(ids, exact)})
            print(pd.DataFrame(rows[-len(WIDTHS) * len(SHORTLISTS) - 1:]).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def exact_search(query: torch.Tensor, items: torch.Tensor, chunk_bytes: float = 2**30) -> torch.Tensor:
    """Exact torch search (matmul + topk), in query chunks of at most ``chunk_bytes`` of scores."""
    rows = max(1, int(chunk_bytes // (4 * items.shape[0])))
    return torch.cat([(query[i:i + rows] @ items.T).topk(K, dim=1).indices for i in range(0, len(query), rows)])


def first_stages(n: int) -> list[tuple]:
    """(width, FAISS factory of the narrow index, settings) of the nested index at n items: IVF with about
    sqrt(n) lists at every width (float32 codes at widths 8 and 16, float16 at 32: a quarter of the full
    vector's bytes or less), and up to 10^6 items HNSW (M 32, float16 codes) at width 32 (at 10^7 its graph
    alone would take 2.6 GB and its build on 2 cores most of an hour)."""
    nlist = 2 ** round(np.log2(np.sqrt(n)))
    ivf = [{"nprobe": p, "shortlist": s} for p in (16, 64) for s in (1000, 4000)]
    wide = [{"nprobe": p, "shortlist": s} for p in (16, 32, 64, 128) for s in (1000, 2000, 4000, 8000)]
    hnsw = [{"efSearch": s, "shortlist": s} for s in (1000, 2000, 4000)]
    stages = [(8, f"IVF{nlist},Flat", ivf), (16, f"IVF{nlist},Flat", ivf), (32, f"IVF{nlist},SQfp16", wide)]
    return stages + ([(32, "HNSW32_SQfp16", hnsw)] if n <= 1_000_000 else [])


def structured_table(base_items: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n items: random rows of a trained item table plus Gaussian noise of half its column standard deviation."""
    items = base_items[torch.randint(0, len(base_items), (n,), generator=g)]
    return items.add_(torch.randn(items.shape, generator=g).mul_(0.5 * base_items.std(0)))


def build_hnsw(items: np.ndarray, budget_s: float) -> tuple:
    """FAISS HNSW (M 32) at full width, added in chunks; (index, build seconds), index None when the
    build passes ``budget_s`` (then the seconds it had run and the fraction of items added)."""
    hnsw = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    started, step = time.perf_counter(), 100_000
    for i in range(0, len(items), step):
        hnsw.add(items[i:i + step])
        if time.perf_counter() - started > budget_s and i + step < len(items):
            return None, (time.perf_counter() - started, (i + step) / len(items))
    return hnsw, time.perf_counter() - started


def speed(args, base_items: torch.Tensor, base_users: torch.Tensor) -> pd.DataFrame:
    """Every route's queries/s, memory and top-K agreement with exact search, over its settings."""
    rows = []
    g = torch.Generator().manual_seed(0)
    query = base_users[torch.randperm(len(base_users), generator=g)[:BATCH]].contiguous()
    for n in args.sizes:
        items = structured_table(base_items, n, g)
        exact = exact_search(query, items)

        def add(method, setting, search, memory, build_s=None):
            ids = search()
            rows.append({"N": n, "method": method, "setting": setting, "agreement": agreement(ids, exact),
                         "ms": median_ms(search, "cpu", args.repeats, warmup=1), "memory MB": memory / 2**20,
                         "build s": build_s})
            print({k: v for k, v in rows[-1].items()}, flush=True)
        table_bytes = items.numel() * items.element_size()
        add("torch exact (matmul + topk)", "", lambda: exact_search(query, items), table_bytes)
        flat = faiss.IndexFlatIP(items.shape[1])
        flat.add(items.numpy())
        add("FAISS IndexFlatIP", "", lambda: torch.from_numpy(flat.search(query.numpy(), K)[1]),
            faiss.serialize_index(flat).nbytes)
        del flat
        hnsw, build = build_hnsw(items.numpy(), args.hnsw_budget_s)
        if hnsw is None:
            rows.append({"N": n, "method": "FAISS HNSW (M 32)", "setting": f"build stopped at {build[1]:.0%} of the "
                         f"items after {build[0]:.0f} s (--hnsw-budget-s)", "build s": build[0]})
        else:
            memory = faiss.serialize_index(hnsw).nbytes
            for ef in EF_SEARCH:
                hnsw.hnsw.efSearch = ef
                add("FAISS HNSW (M 32)", f"efSearch {ef}", lambda: torch.from_numpy(hnsw.search(query.numpy(), K)[1]),
                    memory, build)
        del hnsw
        for width, factory, settings in first_stages(n):
            started = time.perf_counter()
            index = mk.NestedIndex(items, width, factory, rerank_dtype=torch.float16)
            build, memory = time.perf_counter() - started, index.nbytes()
            for setting in settings:
                setting = dict(setting)
                shortlist = setting.pop("shortlist")
                index.set_params(**setting)
                add(f"NestedIndex width {width}, {factory}, float16 rerank",
                    ", ".join(f"{k} {v}" for k, v in setting.items()) + f", shortlist {shortlist}",
                    lambda: index.search(query, K, shortlist=shortlist)[1], memory, build)
            del index
    table = pd.DataFrame(rows)
    table["queries/s"] = BATCH / table["ms"] * 1e3
    table["vs exact torch"] = table.groupby("N")["ms"].transform("first") / table["ms"]
    return table


def best_at(table: pd.DataFrame, target: float = TARGET) -> pd.DataFrame:
    """Per size and route, the fastest setting whose agreement reaches ``target``."""
    reached = table[table.agreement >= target].copy()
    reached["route"] = reached.method.str.replace(r", (IVF|HNSW)\S*", ", \\1", regex=True)
    best = reached.loc[reached.groupby(["N", "route"])["queries/s"].idxmax()]
    return best.sort_values(["N", "queries/s"], ascending=[True, False]).drop(columns="route")


def plot(table: pd.DataFrame, path: Path) -> None:
    """Queries/s against top-K agreement, one panel per size: the Pareto plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(table.N.unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for method, part in table[(table.N == n) & table.ms.notna()].groupby("method", sort=False):
            # every setting a point; the line joins the route's Pareto front (none faster at more agreement)
            part = part.sort_values(["agreement", "queries/s"], ascending=False)
            front = part[part["queries/s"] > part["queries/s"].cummax().shift(fill_value=0)]
            line, = ax.plot(front.agreement, front["queries/s"], marker="o", ms=4, label=method)
            ax.scatter(part.agreement, part["queries/s"], s=10, color=line.get_color(), alpha=0.5)
        ax.axvline(TARGET, color="grey", lw=0.8, ls="--")
        ax.set(yscale="log", xlabel=f"top-{K} agreement with exact search", ylabel="queries/s",
               title=f"N = {n:,} items, D 64, batches of {BATCH} queries")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_png(path, fig, 110)


def report(args, quality_table: pd.DataFrame | None, nested_table: pd.DataFrame, speed_table: pd.DataFrame) -> str:
    out = Path(args.out)
    name = result_name(out, f"retrieval-{platform.machine()}-{torch.get_num_threads()}threads")
    plot(speed_table, out / f"{name}.png")
    quality_part = [] if quality_table is None else [
        "## Quality on trained models (test users; training and validation items excluded)", "",
        quality_table.to_markdown(index=False, floatfmt=".4f"), ""]
    quality_part += [
        "## The nested index on a trained model: phone MRL-M (test users; training and validation items excluded)",
        "", f"Test Recall@{K} and top-{K} agreement with exact search; the nested index reranks from a float16 "
        "table.", "", nested_table.to_markdown(index=False, floatfmt=".4f"), ""]
    text = "\n".join([
        "# Serving at a narrow width", "",
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads and {faiss.omp_get_max_threads()} FAISS (OpenMP) threads, torch {torch.__version__}, faiss "
        f"{faiss.__version__}; `python -m bench.retrieval {' '.join(args.argv)}`.", "", *quality_part,
        f"## Speed: top-{K} of batches of {BATCH} queries, D 64", "",
        "Synthetic tables with the trained phone MRL-M model's structure (its test Recall@20 is in the quality "
        "table): each item a random row of its item table plus Gaussian noise of half its column standard "
        "deviation; queries: its user vectors. Agreement: the fraction of the exact full-width top-"
        f"{K} returned (no held-out data on these tables). Memory: the bytes each route searches (the float32 "
        "table; FAISS indexes' serialised size; the nested index's narrow FAISS index plus its float16 rerank "
        "table). Build: seconds to build the index.", "",
        f"### Fastest setting of each route reaching agreement {TARGET}", "",
        best_at(speed_table).to_markdown(index=False, floatfmt=".3f"), "",
        "### Every setting", "", speed_table.to_markdown(index=False, floatfmt=".3f"), "",
        f"![queries/s against agreement]({name}.png)", ""])
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps({"quality": None if quality_table is None else
                                                  quality_table.to_dict("records"),
                                                  "nested on phone": nested_table.to_dict("records"),
                                                  "speed": speed_table.to_dict("records")}, indent=2))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default="runs/retrieval")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--epochs", type=int, default=40, help="most training epochs of the quality models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="items of the speed tables")
    parser.add_argument("--hnsw-budget-s", type=float, default=1200,
                        help="stop building the full-width HNSW index after this many seconds (reported)")
    parser.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True,
                        help="train and measure the quality models (phone and tool, MRL-M and BPR)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    faiss.omp_set_num_threads(torch.get_num_threads())  # every route on the same threads
    quality_table = quality(args) if args.quality else None
    phone = load_run(trained("phone", "mrl-m", args))
    nested_table = nested_quality(args, phone)
    tables = []
    for n in args.sizes:  # the report is rewritten after each size: a time-boxed run keeps what finished
        args_n = argparse.Namespace(**{**vars(args), "sizes": [n]})
        tables.append(speed(args_n, phone.index.items, phone.users))
        text = report(args, quality_table, nested_table, pd.concat(tables, ignore_index=True))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
