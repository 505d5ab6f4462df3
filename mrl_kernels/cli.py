"""``mrl-train``: train one of the paper's methods and write its metrics.

Bare ``mrl-train`` trains MRL-M on the built-in synthetic data.
"""
from __future__ import annotations

import argparse
import sys

from .backbones import BACKBONES
from .data import DataError
from .objectives import OBJECTIVES
from .registry import names as backend_names
from .sampling import LAYOUTS
from .trainer import TrainConfig, train


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 4,8,16,32,64, got {text!r}")


def parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="mrl-train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=defaults.dataset,
                   help="synthetic | phone | tool | sport | ml100k | a folder in the authors' format | a .csv/.parquet")
    p.add_argument("--data-dir", default=None, help="where named datasets live (default $MRL_DATA or ~/.cache/mrl_kernels)")
    p.add_argument("--model", default=defaults.model, choices=tuple(BACKBONES), help="the backbone")
    p.add_argument("--method", default=defaults.method, choices=tuple(OBJECTIVES))
    p.add_argument("--dims", type=_dims, default=defaults.dims, help="nested widths, the last is the embedding width")
    p.add_argument("--candidates", type=int, default=defaults.candidates, help="candidates per pool")
    p.add_argument("--layout", default=defaults.layout, choices=LAYOUTS,
                   help="MNS pools: one per level (the authors' layout) or one shared by all levels")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--l2", type=float, default=defaults.l2)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--patience", type=int, default=defaults.patience, help="evaluations without a better validation Recall@20")
    p.add_argument("--out", default=defaults.out, help="folder for metrics.json, history.csv and the checkpoint")
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--backend", default=defaults.backend, choices=("auto", *backend_names()))
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--track-test", action="store_true",
                   help="also record test metrics at every evaluation in history.csv (to compare with protocols "
                        "that select epochs on the test set; selection here always uses the validation split)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, method=args.method, dims=args.dims,
        candidates=args.candidates, layout=args.layout, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, l2=args.l2, seed=args.seed, eval_every=args.eval_every, patience=args.patience,
        device=args.device, backend=args.backend, out=args.out, progress=not args.no_progress,
        track_test=args.track_test,
    )
    try:
        train(config, resume=args.resume)
    except (DataError, ValueError, RuntimeError, OSError) as exc:
        print(f"mrl-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrl-train: interrupted; the last checkpoint is kept (--resume continues)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
