"""The softmax over every item, fused, against the materialised computation:
forward+backward time and peak memory, side by side in one process.

``python -m bench.full_softmax [--sizes N ...] [--batches B ...]`` (every pair) or
``[--shapes N:B ...]`` (those pairs) writes
``bench/results/full-softmax-<device>-<threads>threads-<date>.{md,json}``
(rewritten after each shape, so a run stopped early keeps what it measured).

For each item count N and batch size B (D 64, widths 4, 8, 16, 32, 64, equal
level weights, temperature 1, every row's positive a random item, the item table
Xavier-uniform as the trainer's): ``fused`` is
``mrl_softmax_loss(user, item_weight[pos_ids], item_weight, None, dims,
pos_ids=pos_ids)`` (the ``full_softmax_lse`` operator of ``--backend``), and
``materialised`` the same loss as ``F.cross_entropy`` over the ``(B, N)`` logits of
each width. Each call runs forward and backward into the user and item
gradients; after a warm-up of both on a tiny problem the two alternate
``--repeats`` times, and the median wall time is reported. Peak memory, of each
route's first call (bench.timing.peak_growth): on the CPU the growth of the
process's peak resident set over its resident set before the call; on CUDA
``torch.cuda.max_memory_allocated`` over the allocated bytes before it. Both
count the gradients the call makes (the item gradient is ``N x D``). The
materialised computation is skipped where its logits alone
(``L x B x N x 4`` bytes, twice with their log-softmax) would pass ``--memory-gb``.
"""
from __future__ import annotations

from . import cpu_name, require, result_name

require("python -m bench.full_softmax", "tabulate")

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

import mrl_kernels as mk
from mrl_kernels.atomic import atomic_write_text
from mrl_kernels.ops import registry

from .timing import peak_growth

DIMS = (4, 8, 16, 32, 64)
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
BATCHES = (1024, 4096, 8192)


def materialised(user, table, pos_ids, dims):
    """The loss without the operator: per width, cross entropy over the ``(B, N)`` logits."""
    return sum(F.cross_entropy(user[:, :d] @ table[:, :d].T, pos_ids) for d in dims) / len(dims)


def routes(backend: str) -> dict:
    """Each route's forward+backward of ``(user, table, pos_ids)``."""
    return {"fused": lambda u, t, ids: mk.mrl_softmax_loss(u, t[ids], t, None, DIMS, pos_ids=ids,
                                                           backend=backend).backward(),
            "materialised": lambda u, t, ids: materialised(u, t, ids, DIMS).backward()}


def inputs(n_items: int, batch: int, device: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    user = torch.randn(batch, 64, generator=g).to(device).requires_grad_()
    table = torch.nn.init.xavier_uniform_(torch.empty(n_items, 64), generator=g).to(device).requires_grad_()
    return user, table, torch.randint(0, n_items, (batch,), generator=g).to(device)


def measure(n_items: int, batch: int, args) -> list[dict]:
    """The rows of one shape: each route's median time and the peak memory growth
    of its first call (before any other call of this shape: the memory freed by
    earlier calls, which the process keeps, would hide growth)."""
    logit_bytes = 2 * len(DIMS) * batch * n_items * 4
    runs = routes(args.backend)
    if logit_bytes > args.memory_gb * 2 ** 30:
        del runs["materialised"]
    for fn in runs.values():  # load the backends (and whatever they import) on a tiny problem
        fn(*inputs(50, 4, args.device))
    user, table, pos_ids = inputs(n_items, batch, args.device)
    found = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            user.grad = table.grad = None
            found[name].append(peak_growth(lambda: fn(user, table, pos_ids), args.device))
    rows = [{"N": n_items, "B": batch, "D": 64, "route": name, "ms": statistics.median(s for s, _ in values) * 1e3,
             "peak_growth_mib": values[0][1] / 2 ** 20,
             "backend": registry.used().get("full_softmax_lse") if name == "fused" else "torch"}
            for name, values in found.items()]
    if "materialised" not in runs:
        rows.append({"N": n_items, "B": batch, "D": 64, "route": "materialised", "ms": None, "peak_growth_mib": None,
                     "backend": f"skipped: logits {logit_bytes / 2 ** 30:.0f} GiB > --memory-gb {args.memory_gb}"})
    return rows


def report(rows: list[dict], args, path: Path) -> None:
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["N", "B"], columns="route", values="ms", aggfunc="first")
    if "materialised" in wide:
        table = table.merge((wide["materialised"] / wide["fused"]).rename("speedup").reset_index(), on=["N", "B"])
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    text = "\n".join([
        "# The softmax over every item: fused against materialised", "",
        f"{device}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"`python -m bench.full_softmax {' '.join(args.argv)}`. Forward + backward (user and item gradients), "
        f"D 64, widths {', '.join(map(str, DIMS))}; median of {args.repeats} calls; peak memory growth of a call "
        "over the memory in use before it, gradients included (bench/full_softmax.py). speedup: materialised ms "
        "/ fused ms.", "",
        table.to_markdown(index=False, floatfmt=".1f"), ""])
    atomic_write_text(path.with_suffix(".md"), text)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"device": device, "threads": torch.get_num_threads(),
                                                             "torch": torch.__version__, "rows": rows}, indent=2))


def shape(text: str) -> tuple[int, int]:
    """``N:B`` as ``(N, B)``."""
    try:
        n_items, batch = map(int, text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is N:B, two ints (e.g. 1000000:4096); got {text!r}") from None
    if n_items < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"a shape's N and B are >= 1; got {text!r}")
    return n_items, batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="item counts N")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes B")
    parser.add_argument("--shapes", type=shape, nargs="+", default=None,
                        help="N:B pairs measured instead of every pair of --sizes and --batches")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="skip the materialised computation where its logits would pass this")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name().replace(" ", "_") if args.device == "cuda" else \
        f"{platform.machine()}-{torch.get_num_threads()}threads"
    path = Path(args.out) / result_name(args.out, f"full-softmax-{device}")
    rows = []
    for n_items, batch in args.shapes or itertools.product(args.sizes, args.batches):
        rows += measure(n_items, batch, args)
        report(rows, args, path)
        print(pd.DataFrame(rows).tail(2).to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
