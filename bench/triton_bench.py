"""Fused Triton ``mns_bpr_loss`` forward+backward against the PyTorch reference on
a CUDA device. Writes ``<out>/triton-<device>-<date>.md`` and ``.json``.

Times (ms, median of ``bench/timing.py``'s timer):

- ``*_eager``: the public call as a user makes it (argument checks with their one
  device synchronisation, dispatch, launches, autograd) then ``backward()``;
- ``*_graph``: the same step captured in a CUDA graph and replayed: device time
  without the host's launch overhead (checks that read values are skipped
  during capture);
- ``triton_fwd_graph``: the forward alone, graphed.

``speedup`` is reference / Triton on graphed times; ``GBps`` is the bytes that
must move over the graphed Triton time, next to the device-to-device copy
bandwidth measured first (``copy_fraction``).

Bytes that must move per forward+backward: ``bench/costs.py``.
"""
from __future__ import annotations

from . import require, result_name

require('python -m bench.triton_bench', 'tabulate', 'triton')

import argparse
import functools
import json
import platform
from pathlib import Path
from unittest import mock

import pandas as pd
import torch
import triton

from mrl_kernels.atomic import atomic_write_text
import mrl_kernels as mk
from mrl_kernels.ops import triton_common
from mrl_kernels.ops.testing import make_inputs

from . import costs
from .timing import median_ms

N_ITEMS = 100_000
DIMS = {64: (4, 8, 16, 32, 64), 256: (16, 32, 64, 128, 256)}


def copy_bandwidth() -> float:
    """Device-to-device copy, GB/s counting bytes read plus written."""
    src = torch.empty(2 ** 29, dtype=torch.float32, device="cuda").normal_()  # 2 GiB
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), "cuda", repeats=50, warmup=5)
    return 2 * src.numel() * 4 / ms / 1e6


def must_move(B, M, D, layout, elt) -> int:
    return costs.mns_bpr_loss(B, M, N_ITEMS, DIMS[D], layout, elt)[0]


class Case:
    """Inputs of one shape, and steps that run the forward (+ backward)."""

    def __init__(self, B, M, D, layout, dtype, seed=0):
        x = make_inputs(B, D, N_ITEMS, M, DIMS[D], layout, dtype, "cuda", seed, requires_grad=True)
        self.dims, self.cand, self.layout = DIMS[D], x["candidates"], layout
        self.leaves = [x["user"], x["pos"], x["item_weight"]]

    def step(self, backend, backward=True):
        def run():
            for t in self.leaves:
                t.grad = None
            loss, _ = mk.mns_bpr_loss(*self.leaves[:2], self.leaves[2], self.cand, self.dims, layout=self.layout,
                                      backend=backend)
            if backward:
                loss.backward()
        return run


def graphed(fn):
    """``fn`` captured in a CUDA graph (after warm-up on a side stream); returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def bench(fn) -> float:
    return median_ms(fn, "cuda", repeats=40, warmup=10)


def reference_fits(B, M, D) -> bool:
    """The reference materialises (B, M, D) gathers per level: skip it above ~6 GB."""
    return B * M * D * 4 * 5 <= 6e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--quick", action="store_true", help="two small shapes (a smoke test)")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name()
    copy = copy_bandwidth()
    print(f"{device}: device-to-device copy {copy:.0f} GB/s; torch {torch.__version__}, triton {triton.__version__}")
    grid = [(B, M, D, layout, dtype) for B in (2048, 16384, 65536) for M in (16, 64) for D in (64, 256)
            for layout in ("per-level", "shared") for dtype in (torch.float32, torch.bfloat16)]
    if args.quick:
        grid = grid[:2]
    rows = []
    for B, M, D, layout, dtype in grid:
        case = Case(B, M, D, layout, dtype)
        t = {"triton_eager": bench(case.step("triton")), "triton_graph": bench(graphed(case.step("triton"))),
             "triton_fwd_graph": bench(graphed(case.step("triton", backward=False)))}
        if reference_fits(B, M, D):
            t["torch_eager"] = bench(case.step("torch"))
            t["torch_graph"] = bench(graphed(case.step("torch")))
        del case
        torch.cuda.empty_cache()
        gbps = must_move(B, M, D, layout, torch.finfo(dtype).bits // 8) / t["triton_graph"] / 1e6
        row = dict(B=B, M=M, L=5, D=D, layout=layout, dtype=str(dtype).replace("torch.", ""), **t,
                   speedup=t["torch_graph"] / t["triton_graph"] if "torch_graph" in t else None,
                   speedup_eager=t["torch_eager"] / t["triton_eager"] if "torch_eager" in t else None,
                   GBps=gbps, copy_fraction=gbps / copy)
        rows.append(row)
        print(row, flush=True)
    sweep = []
    if not args.quick:
        # tile size / warps at the largest batch, graphed forward+backward
        for M, D, layout in ((64, 64, "per-level"), (16, 256, "shared")):
            case = Case(65536, M, D, layout, torch.float32)
            for tile in (512, 1024, 2048):
                for warps in (4, 8):
                    # the launchers look triton_common.config up at each launch
                    with mock.patch.object(triton_common, "config", functools.partial(triton_common.config, tile=tile,
                                                                                warps=warps)):
                        ms = bench(graphed(case.step("triton")))
                        fwd = bench(graphed(case.step("triton", backward=False)))
                    gbps = must_move(65536, M, D, layout, 4) / ms / 1e6
                    sweep.append(dict(B=65536, M=M, D=D, layout=layout, tile=tile, warps=warps, graph_ms=ms,
                                      fwd_graph_ms=fwd, GBps=gbps, copy_fraction=gbps / copy))
                    print(sweep[-1], flush=True)
            del case
            torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    out = Path(args.out)
    name = result_name(out, f"triton-{device.replace(' ', '_')}")
    header = (f"# mns_bpr_loss forward+backward, Triton vs PyTorch reference\n\n"
              f"{device}, torch {torch.__version__}, triton {triton.__version__}, Python {platform.python_version()}; "
              f"N = {N_ITEMS} items, L = 5; device-to-device copy {copy:.0f} GB/s (read + write). "
              f"Columns: see bench/triton_bench.py. Empty torch columns: the reference's gathers would "
              f"exceed 6 GB.\n\n")
    text = header + table.to_markdown(index=False, floatfmt=".3f") + "\n"
    if sweep:
        text += ("\n## Tile sweep (float32, B = 65536, graphed)\n\n"
                 + pd.DataFrame(sweep).to_markdown(index=False, floatfmt=".3f") + "\n")
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps({"device": device, "copy_GBps": copy, "torch": torch.__version__,
                                                  "triton": triton.__version__, "rows": rows, "sweep": sweep},
                                                 indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
