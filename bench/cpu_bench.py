"""CPU comparison of ``mns_bpr_loss`` forward+backward at the paper's shape
(B 2048, 16 candidates per level, L 5, D 64, a phone-sized item table of 10,429
rows; the inputs and calls of ``bench/workloads.py``): the C++ kernels, the
PyTorch reference backend, and the authors' op sequence (per level: gather the
pool's rows, slice to d_l, dot, max, gather the winner; then a per-level
softplus of the margins; autograd for the backward), all in one process with
the same threads, median of ``--repeats`` runs.

Writes ``<out>/cpu-<machine>-<date>.md`` and ``.json``.
"""
from __future__ import annotations

from . import cpu_name, result_name

import argparse
import json
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_text

from .timing import median_ms
from .workloads import DIMS, M, N_ITEMS, inputs, workload


def authors_step(user, pos, item_weight, candidates, dims):
    """The authors' sequence of tensor ops for MNS + MRL loss (one pool per level)."""
    negs = []
    for level, d in enumerate(dims):
        pool = candidates[:, level]
        rows = item_weight[pool]                                   # (B, M, D)
        scores = (user[:, :d].unsqueeze(1) * rows[:, :, :d]).sum(-1)
        best = scores.max(dim=1)[1].detach()
        negs.append(item_weight[pool.gather(1, best[:, None]).squeeze(1)])
    neg = torch.stack(negs, dim=1)
    loss = 0
    for level, d in enumerate(dims):
        pos_scores = (user[:, :d] * pos[:, :d]).sum(-1)
        neg_scores = (user[:, :d] * neg[:, level, :d]).sum(-1)
        loss = loss + torch.mean(torch.log(1 + torch.exp(neg_scores - pos_scores))) / len(dims)
    return loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args(argv)
    B = args.batch
    x = inputs(B, "cpu")

    def authors():
        for name in ("user", "pos", "item_weight"):
            x[name].grad = None
        authors_step(x["user"], x["pos"], x["item_weight"], x["candidates"], DIMS).backward()

    variants = {
        "cpp": workload("mns_bpr_loss", "cpp", B, "cpu")[0],
        "torch (reference)": workload("mns_bpr_loss", "torch", B, "cpu")[0],
        "authors' op sequence": authors,
    }
    ms = {name: median_ms(fn, "cpu", args.repeats) for name, fn in variants.items()}
    threads = torch.get_num_threads()
    cpu = cpu_name()
    rows = [{"implementation": name, "ms": t, "cpp speedup": t / ms["cpp"]} for name, t in ms.items()]
    table = pd.DataFrame(rows)
    text = (f"# mns_bpr_loss forward+backward on the CPU\n\n"
            f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}; B {B}, "
            f"{M} candidates per level, L 5, D 64, {N_ITEMS} items; median of {args.repeats} runs "
            f"(bench/cpu_bench.py).\n\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}") + "\n")
    print(text)
    out = Path(args.out)
    name = result_name(out, f"cpu-{platform.machine()}-{threads}threads")
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps({"threads": threads, "torch": torch.__version__,
                                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
