"""``mrl-recommend``: top-k items for users of a trained run, with the run's
original ids, each user's seen items excluded. ``--width`` serves through a
shortlist at that prefix width, reranked at full width (default: exact search);
with ``--ann`` (or ``--index``) the shortlist comes from a FAISS index over that
prefix (a NestedIndex; the serve extra) instead of exact narrow scores."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write
from ..ops._checks import check_int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrl-recommend", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="a run folder of mrl-train (holding model.pt), e.g. runs/latest")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated original user ids")
    who.add_argument("--all", action="store_true", help="every user of the run (with --out)")
    p.add_argument("--k", type=int, default=20, help="items per user")
    p.add_argument("--width", type=int, default=None, help="shortlist prefix width (one of the run's dims)")
    p.add_argument("--shortlist", type=int, default=None, help="shortlist size (default max(200, k))")
    ann = p.add_mutually_exclusive_group()
    ann.add_argument("--ann", metavar="FACTORY", default=None,
                     help="shortlist through a FAISS index of this index_factory string over the --width prefix "
                          "(HNSW32, IVF4096,Flat, IVF4096,PQ8, ...), built from the run's item table")
    ann.add_argument("--index", metavar="FILE", default=None,
                     help="shortlist through a NestedIndex saved from this run's item table (--save-index)")
    p.add_argument("--save-index", metavar="FILE", default=None,
                   help="with --ann: also save the index built (--force replaces an existing file)")
    p.add_argument("--search-params", default=None, metavar="NAME=VALUE,...",
                   help="the FAISS index's search parameters, e.g. efSearch=128 or nprobe=32")
    p.add_argument("--rerank-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="with --ann: the dtype of the full-width table the shortlist is reranked with "
                        "(default float32)")
    p.add_argument("--out", default=None, help="write the table to this .parquet or .csv file instead of printing it")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")
    p.add_argument("--batch-size", type=int, default=4096, help="users per search call")
    return p


TABLE_FORMATS = (".parquet", ".csv")  # what --out writes, by its suffix


def _search_params(text: str | None) -> dict:
    """``"efSearch=128,nprobe=32"`` as ``{"efSearch": 128.0, "nprobe": 32.0}``."""
    params = {}
    for part in filter(None, (text or "").split(",")):
        name, _, value = (x.strip() for x in part.partition("="))
        try:
            params[name] = float(value) if name else None
        except ValueError:
            params[name] = None
        if params[name] is None:
            raise ValueError(f"--search-params must be NAME=NUMBER pairs separated by commas, like efSearch=128; "
                             f"got {part!r}")
    return params


def _check(args) -> dict:
    """The flags' combinations and values; the FAISS search parameters."""
    if args.all and args.out is None:
        raise ValueError("--all needs --out FILE (.parquet or .csv)")
    for name in ("k", "batch_size"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.out is not None:
        if Path(args.out).suffix.lower() not in TABLE_FORMATS:
            raise ValueError(f"--out must end in .parquet or .csv (the format it is written in), got {args.out}")
        if Path(args.out).exists() and not args.force:
            raise ValueError(f"{args.out} exists; --force replaces it, or choose another --out")
    params = _search_params(args.search_params)
    if args.ann is not None and args.width is None:
        raise ValueError("--ann needs --width (the prefix width its FAISS index covers)")
    for flag, value in (("--save-index", args.save_index), ("--rerank-dtype", args.rerank_dtype)):
        if value is not None and args.ann is None:
            raise ValueError(f"{flag} needs --ann (the index to build)")
    if params and args.ann is None and args.index is None:
        raise ValueError("--search-params needs --ann or --index (they set the FAISS index's parameters)")
    if args.save_index is not None and Path(args.save_index).exists() and not args.force:
        raise ValueError(f"{args.save_index} exists; --force replaces it, or choose another --save-index")
    return params


def _index(args, run, params: dict):
    """The index the run serves through: a NestedIndex built (``--ann``, saved
    with ``--save-index``) or loaded (``--index``), else the run's own."""
    import torch

    from ..serving import NestedIndex

    if args.ann is not None:
        index = NestedIndex(run.index.items, args.width, args.ann, getattr(torch, args.rerank_dtype or "float32"),
                            params)
        if args.save_index is not None:
            index.save(args.save_index, force=True)
        return index
    if args.index is not None:
        index = NestedIndex.load(args.index)
        index.set_params(**params)
        return index
    return None


def _write(table: pd.DataFrame, out: str | None) -> None:
    """Print ``table``, or write it atomically to ``out`` in the format its suffix names."""
    if out is None:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    elif Path(out).suffix.lower() == ".parquet":
        atomic_write(out, lambda tmp: table.to_parquet(tmp, index=False))
    else:
        atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))


def main(argv: list[str] | None = None) -> int:
    from ..serving import load_run

    args = parser().parse_args(argv)
    try:
        params = _check(args)
        run = load_run(args.run)
        users = run.user_ids if args.all else [u for u in args.users.split(",") if u]
        if not users:
            raise ValueError("--users names no user")
        index = _index(args, run, params)
        tables = [run.recommend(users[i:i + args.batch_size], args.k, args.width, args.shortlist, index=index)
                  for i in range(0, len(users), args.batch_size)]
        _write(pd.concat(tables, ignore_index=True), args.out)
    except (ValueError, OSError, ImportError) as exc:
        print(f"mrl-recommend: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
