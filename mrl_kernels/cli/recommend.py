"""``mrl-recommend``: top-k items for users of a trained run, with the run's
original ids, each user's seen items excluded. ``--width`` serves through a
shortlist at that prefix width, reranked at full width (default: exact search);
with ``--ann`` (or ``--index``) the shortlist comes from a FAISS index over that
prefix (a NestedIndex; the serve extra) instead of exact narrow scores."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write
from ..ops._checks import check_int
from ._parser import ArgumentParser


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="mrl-recommend", description=__doc__)
    p.add_argument("run", help="a run folder of mrl-train (holding model.pt), e.g. runs/latest")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated original user ids (an id with a comma: --users-file)")
    who.add_argument("--users-file", metavar="FILE",
                     help="a text file of original user ids, one a line, each line's whole text (blank lines skipped)")
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
                   help="the FAISS index's search parameters, ints: efSearch=128 (HNSW, at most the items) or "
                        "nprobe=32 (IVF, at most its nlist)")
    p.add_argument("--rerank-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="with --ann: the dtype of the full-width table the shortlist is reranked with "
                        "(default float32)")
    p.add_argument("--out", default=None, help="write the table to this .parquet or .csv file instead of printing it")
    p.add_argument("--force", action="store_true",
                   help="replace --out and --save-index where they exist, each named on stderr (default: refuse); "
                        "never a file of the run folder, a file read (--index, --users-file), or one by the other")
    p.add_argument("--batch-size", type=int, default=4096, help="users per search call")
    return p


TABLE_FORMATS = (".parquet", ".csv")  # what --out writes, by its suffix


def _search_params(text: str | None) -> dict:
    """``"efSearch=128,nprobe=32"`` as ``{"efSearch": 128, "nprobe": 32}`` (their
    ranges are the index's to check)."""
    params = {}
    for part in filter(None, (text or "").split(",")):
        name, _, value = (x.strip() for x in part.partition("="))
        try:
            params[name] = int(value) if name else None
        except ValueError:
            params[name] = None
        if params[name] is None:
            raise ValueError(f"--search-params must be NAME=NUMBER pairs of whole numbers separated by commas, like "
                             f"efSearch=128; got {part!r}")
    return params


def _users(args, run) -> list:
    """The users asked for: ``--all``, ``--users`` or ``--users-file``."""
    if args.all:
        return run.user_ids
    if args.users is not None:
        users = [u for u in args.users.split(",") if u]
    else:
        try:
            users = [u for u in Path(args.users_file).read_text(encoding="utf-8").splitlines() if u]
        except UnicodeDecodeError as exc:
            raise ValueError(f"--users-file {args.users_file} is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start})") from None
    if not users:
        raise ValueError(f"{'--users' if args.users is not None else '--users-file'} names no user")
    return users


def _exists(flag: str, path) -> ValueError:
    return ValueError(f"{path} exists; --force replaces it, or choose another {flag}")


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    return os.path.samefile(a, b) if a.exists() and b.exists() else a.resolve() == b.resolve()


def _check_outputs(args) -> None:
    """The files written: never a file of the run folder, a file read or the
    other output; an existing one only with ``--force`` (named on stderr)."""
    outputs = [(flag, path) for flag, path in (("--out", args.out), ("--save-index", args.save_index)) if path]
    if len(outputs) == 2 and _same_file(args.out, args.save_index):
        raise ValueError(f"--out and --save-index name the same file {args.out}; choose two")
    inputs = [(flag, path) for flag, path in (("--index", args.index), ("--users-file", args.users_file)) if path]
    for flag, path in outputs:
        for read, source in inputs:
            if _same_file(path, source):
                raise ValueError(f"{flag} {path} is the {read} file read; choose another {flag}")
        if Path(path).exists() and Path(path).resolve().parent == Path(args.run).resolve():
            raise ValueError(f"{flag} {path} is a file of the run folder {args.run}, never replaced (not even with "
                             f"--force); choose another {flag}")
        if Path(path).exists():
            if not args.force:
                raise _exists(flag, path)
            print(f"mrl-recommend: --force replaces {path}", file=sys.stderr)


def _check(args) -> dict:
    """The flags' combinations and values; the FAISS search parameters."""
    if args.all and args.out is None:
        raise ValueError("--all needs --out FILE (.parquet or .csv)")
    for name in ("k", "batch_size"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.out is not None and Path(args.out).suffix.lower() not in TABLE_FORMATS:
        raise ValueError(f"--out must end in .parquet or .csv (the format it is written in), got {args.out}")
    params = _search_params(args.search_params)
    if args.ann is not None and args.width is None:
        raise ValueError("--ann needs --width (the prefix width its FAISS index covers)")
    for flag, value in (("--save-index", args.save_index), ("--rerank-dtype", args.rerank_dtype)):
        if value is not None and args.ann is None:
            raise ValueError(f"{flag} needs --ann (the index to build)")
    if params and args.ann is None and args.index is None:
        raise ValueError("--search-params needs --ann or --index (they set the FAISS index's parameters)")
    _check_outputs(args)
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
            try:
                index.save(args.save_index, force=args.force)
            except FileExistsError:  # another process created it since the check
                raise _exists("--save-index", args.save_index) from None
        return index
    if args.index is not None:
        index = NestedIndex.load(args.index)
        index.set_params(**params)
        return index
    return None


def _write(table: pd.DataFrame, out: str | None, force: bool) -> None:
    """Print ``table``, or write it atomically to ``out`` in the format its
    suffix names, replacing an existing file only with ``force``."""
    if out is None:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    write = (lambda tmp: table.to_parquet(tmp, index=False)) if Path(out).suffix.lower() == ".parquet" else \
        (lambda tmp: table.to_csv(tmp, index=False))
    try:
        atomic_write(out, write, replace=force)
    except FileExistsError:  # another process created it since the check
        raise _exists("--out", out) from None


def main(argv: list[str] | None = None) -> int:
    from ..serving import load_run

    args = parser().parse_args(argv)
    try:
        params = _check(args)
        run = load_run(args.run)
        users = _users(args, run)
        index = _index(args, run, params)
        tables = [run.recommend(users[i:i + args.batch_size], args.k, args.width, args.shortlist, index=index)
                  for i in range(0, len(users), args.batch_size)]
        _write(pd.concat(tables, ignore_index=True), args.out, args.force)
    except (ValueError, OSError, ImportError, RuntimeError, MemoryError) as exc:
        print(f"mrl-recommend: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
