"""``mrl-train``: train one of the paper's methods and write its metrics.

Bare ``mrl-train`` trains MRL-M on the built-in synthetic data (a minute or two on
2 cores) and writes runs/<time>-synthetic-mrl-m/ (runs/latest points at it):
metrics.json, history.csv, curves.png and checkpoint.pt.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import pandas as pd

from .atomic import atomic_write
from .backbones import BACKBONES
from .data import SYNTHETIC_ITEMS, SYNTHETIC_PER_USER, SYNTHETIC_USERS, DataError
from .registry import names as backend_names
from .sampling import LAYOUTS
from .trainer import PAPER_RECIPE, Interrupted, TrainConfig, recipe, request_stop, train
from .trainer.config import LEAST_SQUARES, METHODS, ONLY_FOR, SOLVED


def _numbers(kind, example: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s like {example}, got {text!r}")
    return parse


_dims = _numbers(int, "4,8,16,32,64")


def _defaults(name: str, methods=METHODS) -> str:
    """``name``'s default per method, e.g. "1e-4; mrl-m: 1e-2" (the paper's, then the tuned ones)."""
    if name in ONLY_FOR:
        return "; ".join(f"{m}: {recipe(m)[name]}" for m in methods)
    tuned = [f"{m}: {recipe(m)[name]}" for m in methods if recipe(m)[name] != PAPER_RECIPE[name]]
    common = f"{PAPER_RECIPE[name]}" + (", the paper's" if name not in ("temperature", "cosine") else "")
    return "; ".join(([common] if len(tuned) < len(methods) else []) + tuned)


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="mrl-train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=d.dataset,
                   help="synthetic | phone | tool | sport | ml100k | a folder in the authors' format | a .csv/.parquet "
                        "table with columns user,item")
    p.add_argument("--data-dir", default=None,
                   help="where named datasets live (missing ones are downloaded there); default $MRL_DATA, else "
                        "~/.cache/mrl_kernels")
    p.add_argument("--users", type=int, default=None, help=f"synthetic data: users (default {SYNTHETIC_USERS})")
    p.add_argument("--items", type=int, default=None, help=f"synthetic data: items (default {SYNTHETIC_ITEMS})")
    p.add_argument("--interactions", type=int, default=None,
                   help=f"synthetic data: interactions (default {SYNTHETIC_PER_USER} a user), with the planted "
                        "category tree")
    p.add_argument("--model", default=d.model, choices=tuple(BACKBONES),
                   help="the backbone: mf (matrix factorisation) or lightgcn")
    p.add_argument("--layers", type=int, default=d.layers, help="LightGCN's propagation layers")
    p.add_argument("--method", default=d.method, choices=METHODS,
                   help="negative selector x loss: bpr (uniform), bpr-d (DNS), bpr-m (MNS, BPR), mrl-d (DNS, MRL "
                        "loss), mrl-m (MNS, MRL loss), mrl-s (sampled softmax over every candidate at every width)"
                        "; mrl-ls: nested least squares (iALS's objective summed over the widths) by gradient, "
                        "no negatives sampled; or mrl-als: the same objective solved by alternating least "
                        "squares (mf), an epoch being one sweep")
    p.add_argument("--dims", type=_dims, default=d.dims, help="nested widths, the last is the embedding width")
    p.add_argument("--candidates", type=int, default=argparse.SUPPRESS,
                   help=f"candidates per pool (default: {_defaults('candidates')})")
    p.add_argument("--layout", default=argparse.SUPPRESS, choices=LAYOUTS,
                   help="pools: one per level (the authors' layout) or one shared by all levels "
                        f"(default: {_defaults('layout')})")
    p.add_argument("--epochs", type=int, default=d.epochs, help="most epochs to train")
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS,
                   help=f"(user, positive) pairs per step (default: {_defaults('batch_size')})")
    p.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                   help=f"Adam's learning rate (default: {_defaults('lr')})")
    p.add_argument("--l2", type=float, default=argparse.SUPPRESS,
                   help=f"L2 weight on the batch's rows; mrl-als: on the tables, implicit's regularization "
                        f"(default: {_defaults('l2')})")
    p.add_argument("--temperature", type=float, default=argparse.SUPPRESS,
                   help=f"mrl-s: the softmax temperature (default: {_defaults('temperature', ('mrl-s',))})")
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help=f"mrl-s: cosine scores of the prefixes (default: {_defaults('cosine', ('mrl-s',))})")
    p.add_argument("--alpha", type=float, default=argparse.SUPPRESS,
                   help=f"mrl-als, mrl-ls: the weight of an observed pair, an unobserved one weighing 1 "
                        f"(default: {_defaults('alpha', LEAST_SQUARES)})")
    p.add_argument("--level-weights", type=_numbers(float, "1,1,1,1,1"), default=argparse.SUPPRESS,
                   help="mrl-als, mrl-ls: the weight of each width's iALS objective (default: 1 each, their sum; "
                        "0,0,0,0,1 is iALS at full width)")
    p.add_argument("--cg-steps", type=int, default=argparse.SUPPRESS,
                   help=f"mrl-als: conjugate-gradient steps per solve (default: {_defaults('cg_steps', SOLVED)})")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split, the initialisation and the sampling")
    p.add_argument("--eval-every", type=int, default=argparse.SUPPRESS,
                   help=f"epochs between validation evaluations (default: {_defaults('eval_every')})")
    p.add_argument("--patience", type=int, default=argparse.SUPPRESS,
                   help=f"stop after this many evaluations without a better validation Recall@20 (default: "
                        f"{_defaults('patience')})")
    p.add_argument("--out", default=None,
                   help="the run folder; default a new runs/<time>-<dataset>-<method> (runs/latest points at it)")
    p.add_argument("--device", default=d.device, help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--backend", default=d.backend, choices=("auto", *backend_names()),
                   help="the operators' backend (auto: triton on CUDA, cpp on the CPU, else torch)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default runs/latest) from its checkpoint")
    p.add_argument("--track-test", action="store_true",
                   help="also record test metrics at every evaluation in history.csv (to compare with protocols "
                        "that select epochs on the test set; selection here always uses the validation split)")
    p.add_argument("--eval-users", type=int, default=None, metavar="N",
                   help="evaluate (for selection and the reported metrics) a sample of N users with held-out items, "
                        "seeded by --seed, the same at every evaluation and recorded in metrics.json (default: all)")
    p.add_argument("--no-refit", action="store_true",
                   help="report the selected model's test metrics instead of refitting: by default a fresh model "
                        "is trained on train + validation for the selected number of epochs and reported")
    path = p.add_mutually_exclusive_group()
    path.add_argument("--sparse", dest="sparse", action="store_const", const=True, default=None,
                      help="row-sparse training (mf): sparse lookups, MNS + a gathered MRL loss instead of the fused "
                           "operator, and lazy Adam (mrl_kernels.optim.LazyAdam), so a step costs about the same for any "
                           "table size; default: on for mf from 1,000,000 items")
    path.add_argument("--dense", dest="sparse", action="store_const", const=False,
                      help="dense tables, the fused operator and fused Adam (default below 1,000,000 items)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, layers=args.layers, method=args.method, dims=args.dims,
        epochs=args.epochs, seed=args.seed,
        # the method's defaults where not given (their flags default to SUPPRESS)
        **{name: getattr(args, name, None)
           for name in ("candidates", "layout", "batch_size", "lr", "l2", "temperature", "cosine", "eval_every",
                        "patience", "alpha", "level_weights", "cg_steps")},
        device=args.device, backend=args.backend, out=args.out, progress=not args.no_progress,
        track_test=args.track_test, eval_users=args.eval_users, refit=not args.no_refit, sparse=args.sparse,
        synthetic_size=None if (args.users, args.items, args.interactions) == (None, None, None)
        else (args.users, args.items, args.interactions),
    )
    # Ctrl-C and SIGTERM stop the run after the current step or batch of evaluated users (a second one at once)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(config, resume=args.resume)
    except (DataError, ValueError, RuntimeError, OSError) as exc:
        print(f"mrl-train: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"mrl-train: {exc}", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


RECOMMEND = """``mrl-recommend``: top-k items for users of a trained run, with the run's
original ids, each user's seen items excluded. ``--width`` serves through a
shortlist at that prefix width, reranked at full width (default: exact search);
with ``--ann`` (or ``--index``) the shortlist comes from a FAISS index over that
prefix (a NestedIndex; the serve extra) instead of exact narrow scores."""


def recommend_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrl-recommend", description=RECOMMEND,
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


def recommend_main(argv: list[str] | None = None) -> int:
    import torch

    from .serving import NestedIndex, load_run

    args = recommend_parser().parse_args(argv)
    try:
        if args.all and args.out is None:
            raise ValueError("--all needs --out FILE (.parquet or .csv)")
        for name in ("k", "batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.out is not None:
            suffix = Path(args.out).suffix.lower()
            if suffix not in TABLE_FORMATS:
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
        run = load_run(args.run)
        users = run.user_ids if args.all else [u for u in args.users.split(",") if u]
        if not users:
            raise ValueError("--users names no user")
        index = None
        if args.ann is not None:
            index = NestedIndex(run.index.items, args.width, args.ann, getattr(torch, args.rerank_dtype or "float32"),
                                params)
            if args.save_index is not None:
                index.save(args.save_index, force=True)
        elif args.index is not None:
            index = NestedIndex.load(args.index)
            index.set_params(**params)
        tables = [run.recommend(users[i:i + args.batch_size], args.k, args.width, args.shortlist, index=index)
                  for i in range(0, len(users), args.batch_size)]
        table = pd.concat(tables, ignore_index=True)
        if args.out is None:
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        elif suffix == ".parquet":
            atomic_write(args.out, lambda tmp: table.to_parquet(tmp, index=False))
        else:
            atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False))
    except (ValueError, OSError, ImportError) as exc:
        print(f"mrl-recommend: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
