"""One report of every operator and backend, side by side in one process.

``python -m bench.report [--data-dir ../shared/datasets]`` measures, on this
machine's device (CUDA if present, else the CPU):

1. the machine's two ceilings: copy bandwidth (a large tensor copy, bytes read +
   written) and matrix-multiply FLOP rate;
2. each operator (forward + backward for the losses) for each backend over
   batch sizes, median of repeated runs: ms, GB/s and GFLOP/s from
   ``bench/costs.py``, the fraction of the copy bandwidth, and the speedup over
   the reference backend;
3. with ``--data-dir``: seconds per epoch and peak memory of ``mrl-train`` on
   ``phone`` for each method and backend (each run in its own process).

Writes ``bench/results/<device>-<date>.md``, ``.json`` and a plot
``<device>-<date>-speedup.png`` (speedup over the reference against batch size).
"""
from __future__ import annotations

from . import cpu_name, require, result_name

require('python -m bench.report', 'matplotlib', 'tabulate')

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_png, atomic_write_text
from mrl_kernels.training.methods import METHODS

from .timing import median_ms
from .workloads import backends, workload

OPS = ("mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss")


def ceilings(device: str) -> dict:
    src = torch.randn(2 ** 26, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device, 20)
    a = torch.randn(2048, 2048, device=device)
    mm_ms = median_ms(lambda: a @ a, device, 10)
    return {"copy_GBps": 2 * src.numel() * 4 / copy_ms / 1e6, "matmul_GFLOPs": 2 * 2048 ** 3 / mm_ms / 1e6}


def op_table(device: str, batches, repeats: int, limits: dict) -> pd.DataFrame:
    rows = []
    for op in OPS:
        for B in batches:
            timed = {}
            for backend in backends(device):
                fn, moved, flops = workload(op, backend, B, device)
                timed[backend] = median_ms(fn, device, repeats)
                rows.append({"op": op, "B": B, "backend": backend, "ms": timed[backend],
                             "GBps": moved / timed[backend] / 1e6, "GFLOPs": flops / timed[backend] / 1e6})
                rows[-1]["copy_fraction"] = rows[-1]["GBps"] / limits["copy_GBps"]
            for row in rows[-len(timed):]:
                row["speedup"] = timed["torch"] / row["ms"]
            print(pd.DataFrame(rows[-len(timed):]).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


EPOCH_RUN = """
import json, resource, sys
from mrl_kernels.training import TrainConfig, train
r = train(TrainConfig(dataset="phone", data_dir=sys.argv[1], method=sys.argv[2], backend=sys.argv[3],
                      epochs=2, eval_every=2, out=sys.argv[4], progress=False), log=lambda _: None)
print(json.dumps({"seconds_per_epoch": r["seconds_per_epoch"],
                  "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def epoch_table(data_dir: str, device: str, tmp: Path) -> pd.DataFrame:
    rows = []
    for method in (m for m, found in METHODS.items() if not found.solved):
        for backend in backends(device):
            out = subprocess.run([sys.executable, "-c", EPOCH_RUN, data_dir, method, backend,
                                  str(tmp / f"{method}-{backend}")], capture_output=True, text=True, check=True)
            rows.append({"method": method, "backend": backend, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    reference = table[table.backend == "torch"].set_index("method")["seconds_per_epoch"]
    table["speedup"] = reference[table.method].values / table.seconds_per_epoch
    return table


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(OPS), figsize=(4.5 * len(OPS), 3.4), squeeze=False)
    for ax, op in zip(axes[0], OPS):
        sub = table[table.op == op]
        for backend, part in sub.groupby("backend"):
            ax.plot(part.B, part.speedup, marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_title(op)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup over the reference")
    axes[0][0].legend()
    fig.tight_layout()
    atomic_write_png(path, fig, 120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--data-dir", default=None, help="with the paper's datasets: also time mrl-train epochs")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()}-{torch.get_num_threads()}threads"
    limits = ceilings(device)
    print(name, limits, flush=True)
    batches = (512, 2048, 8192, 32768) if device == "cpu" else (2048, 16384, 65536)
    ops = op_table(device, batches, args.repeats, limits)
    out = Path(args.out)
    stem = out / result_name(out, name.replace(' ', '_'))
    plot(ops, stem.with_name(stem.name + "-speedup.png"))
    text = [f"# mrl_kernels benchmark report: {name}", "",
            (f"{cpu_name()}, " if device == "cpu" else "") +
            f"torch {torch.__version__}, {platform.python_version()}; copy bandwidth {limits['copy_GBps']:.1f} GB/s "
            f"(read + write), 2048^3 matmul {limits['matmul_GFLOPs']:.1f} GFLOP/s. Operators at D 64, L 5, "
            f"16 candidates per level, {len(backends(device))} backends side by side; forward + backward for "
            f"the losses; median of {args.repeats} runs; bytes and FLOPs from bench/costs.py.", "",
            ops.to_markdown(index=False, floatfmt=".3f"), "", f"![speedup]({stem.name}-speedup.png)", ""]
    result = {"device": name, "limits": limits, "ops": ops.to_dict("records")}
    if args.data_dir:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            epochs = epoch_table(args.data_dir, device, Path(tmp))
        text += ["## mrl-train on phone: seconds per epoch and peak memory (2 epochs, own process each)", "",
                 epochs.to_markdown(index=False, floatfmt=".3f"), ""]
        result["epochs"] = epochs.to_dict("records")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(text))
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
