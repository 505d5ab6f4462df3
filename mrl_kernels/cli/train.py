"""``mrl-train``: train one of the paper's methods and write its metrics.

Bare ``mrl-train`` trains MRL-M on the built-in synthetic data (a minute or two on
2 cores) and writes runs/<time>-synthetic-mrl-m/ (runs/latest points at it):
metrics.json, history.csv, curves.png and checkpoint.pt.
"""
from __future__ import annotations

import argparse
import signal
import sys


from ..ops import LAYOUTS
from ..ops.registry import names as backend_names
from ..training import Interrupted, TrainConfig, request_stop, train
from ..training.backbones import BACKBONES
from ..ops._checks import check_int
from ..training.config import LAYERS
from ..training.methods import METHODS, PAPER_RECIPE, recipe
from ..training.search import tune_and_train
from ..training.data import SYNTHETIC_ITEMS, SYNTHETIC_PER_USER, SYNTHETIC_USERS, DataError
from ._parser import ArgumentParser


def _numbers(kind, example: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s like {example}, got {text!r}")
    return parse


_dims = _numbers(int, "4,8,16,32,64")


def _seed(text: str) -> int:
    """A seed every generator takes: an int in [0, 2**63 - 1] (numpy's are >= 0; torch's take
    the seed plus the rank, at most 2**64 - 1)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**63 - 1], got {text!r}")
    return seed


def _per_width(text: str):
    """One number, or comma-separated ones (one per width)."""
    values = _numbers(float, "40 or 1,2,4,8,40")(text)
    return values[0] if len(values) == 1 else values


def _defaults(name: str) -> str:
    """Which methods read ``name`` and its default, e.g. "not for mrl-als; default:
    1e-4, the paper's; mrl-m: 1e-2" (the paper's, then the tuned ones)."""
    takers = [m for m, method in METHODS.items() if name in method.takes]
    others = [m for m in METHODS if m not in takers]
    tuned = [f"{m}: {recipe(m)[name]}" for m in takers if recipe(m)[name] != PAPER_RECIPE.get(name)]
    common = [f"{PAPER_RECIPE[name]}, the paper's"] if len(tuned) < len(takers) else []
    which = "" if not others else f"{', '.join(takers)} only; " if len(takers) <= len(others) else \
        f"not for {', '.join(others)}; "
    return f"{which}default: " + "; ".join(common + tuned)


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(prog="mrl-train", description=__doc__)
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
    p.add_argument("--layers", type=int, default=argparse.SUPPRESS,
                   help=f"LightGCN's propagation layers (--model lightgcn only; default: {LAYERS})")
    p.add_argument("--method", default=d.method, choices=tuple(METHODS),
                   help="; ".join(f"{name}: {method.summary}" for name, method in METHODS.items()))
    p.add_argument("--dims", type=_dims, default=d.dims, help="nested widths, the last is the embedding width")
    p.add_argument("--candidates", type=int, default=argparse.SUPPRESS,
                   help=f"candidates per pool ({_defaults('candidates')})")
    p.add_argument("--layout", default=argparse.SUPPRESS, choices=LAYOUTS,
                   help="pools: one per level (the authors' layout) or one shared by all levels "
                        f"({_defaults('layout')})")
    p.add_argument("--epochs", type=int, default=d.epochs, help="most epochs to train")
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS,
                   help=f"(user, positive) pairs per step ({_defaults('batch_size')})")
    p.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                   help=f"Adam's learning rate ({_defaults('lr')})")
    p.add_argument("--l2", type=_per_width, default=argparse.SUPPRESS,
                   help=f"L2 weight on the batch's rows; mrl-als: on the tables, implicit's regularization, one or "
                        f"one per width ({_defaults('l2')})")
    p.add_argument("--temperature", type=float, default=argparse.SUPPRESS,
                   help=f"the softmax temperature ({_defaults('temperature')})")
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help=f"cosine scores of the prefixes ({_defaults('cosine')})")
    p.add_argument("--alpha", type=_per_width, default=argparse.SUPPRESS,
                   help=f"the weight of an observed pair, an unobserved one weighing 1; one or one per width, e.g. "
                        f"1,2,4,8,40 ({_defaults('alpha')})")
    p.add_argument("--level-weights", type=_numbers(float, "1,1,1,1,1"), default=argparse.SUPPRESS,
                   help="the weight of each width's iALS objective (mrl-ls, mrl-als only; default: 1 each, their sum; "
                        "0,0,0,0,1 is iALS at full width)")
    p.add_argument("--cg-steps", type=int, default=argparse.SUPPRESS,
                   help=f"conjugate-gradient steps per solve ({_defaults('cg_steps')})")
    p.add_argument("--rotations", type=int, default=argparse.SUPPRESS,
                   help=f"how many of the first sweeps end by turning both tables to the singular basis of their "
                        f"product, which settles the widths' basis sooner ({_defaults('rotations')})")
    p.add_argument("--tune", type=int, default=None, metavar="N",
                   help="mrl-als: first N trials of a seeded search (Optuna TPE) of the per-width alpha and L2, level "
                        "weights and conjugate-gradient steps on the validation split, then the run with the best "
                        "(the tune extra)")
    p.add_argument("--seed", type=_seed, default=d.seed, help="seeds the split, the initialisation and the sampling")
    p.add_argument("--eval-every", type=int, default=argparse.SUPPRESS,
                   help=f"epochs between validation evaluations ({_defaults('eval_every')})")
    p.add_argument("--patience", type=int, default=argparse.SUPPRESS,
                   help=f"stop after this many evaluations without a better validation Recall@20 "
                        f"({_defaults('patience')})")
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
                           "operator, and lazy Adam (mrl_kernels.training.LazyAdam), so a step costs about the same for any "
                           "table size; default: on for mf from 1,000,000 items")
    path.add_argument("--dense", dest="sparse", action="store_const", const=False,
                      help="dense tables, the fused operator and fused Adam (default below 1,000,000 items)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, method=args.method, dims=args.dims,
        epochs=args.epochs, seed=args.seed,
        # the method's defaults where not given (their flags default to SUPPRESS), LightGCN's layers alike
        **{name: getattr(args, name, None)
           for name in ("layers", "candidates", "layout", "batch_size", "lr", "l2", "temperature", "cosine",
                        "eval_every", "patience", "alpha", "level_weights", "cg_steps", "rotations")},
        device=args.device, backend=args.backend, out=args.out, progress=not args.no_progress,
        track_test=args.track_test, eval_users=args.eval_users, refit=not args.no_refit, sparse=args.sparse,
        synthetic_size=None if (args.users, args.items, args.interactions) == (None, None, None)
        else (args.users, args.items, args.interactions),
    )
    # Ctrl-C and SIGTERM stop the run after the current step or batch of evaluated users (a second one at once)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.tune is not None:
            if args.resume:
                raise ValueError("--tune starts a new run; resume one with --resume alone")
            tune_and_train(config, check_int("--tune", args.tune))
        else:
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


if __name__ == "__main__":
    sys.exit(main())
