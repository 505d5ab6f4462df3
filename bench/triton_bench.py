"""Fused Triton ``mns_bpr_loss`` forward+backward against the PyTorch reference on
a CUDA device: milliseconds (median of ``triton.testing.do_bench``), speedup, and
achieved bandwidth (bytes that must move / time) next to the device-to-device copy
bandwidth measured first. Writes ``<out>/triton-<device>-<date>.md`` and ``.json``.

Bytes that must move, per call (forward + backward), with ``e`` the input
element size and ``S = sum_l d_l`` (per-level pools read ``d_l`` columns of each
level's M rows) or ``L' * D`` with ``L' = 1`` (a shared pool read once):

- forward: candidate ids ``B*P*M*8`` (P pools), candidate rows ``B*M*S*e``,
  user and positive ``2*B*D*e``, outputs ``B*(L*8 + 4 + L*4)``;
- backward: user and positive ``2*B*D*e``, ``coef``/negatives/grad
  ``B*(L*12 + 4)``, chosen rows ``B*sum(d_l)*e``, their gradient added into the
  float32 item gradient (read + write) ``2*B*sum(d_l)*4``, user/positive gradients
  ``2*B*D*e``, and the dense item gradient's zero fill and cast ``N*D*(4 + 4 + e)``.
FLOPs (about 2 per multiply-add, forward ``2*B*M*S``) are far below the
bandwidth bound at every shape here.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import pandas as pd
import torch
import triton
from triton.testing import do_bench

import mrl_kernels as mk

N_ITEMS = 100_000
L_DIMS = {64: (4, 8, 16, 32, 64), 256: (16, 32, 64, 128, 256)}


def copy_bandwidth() -> float:
    """Device-to-device copy, GB/s counting bytes read plus written."""
    src = torch.empty(2 ** 29, dtype=torch.float32, device="cuda").normal_()  # 2 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def must_move(B, M, D, dims, layout, elt) -> int:
    L, S_levels = len(dims), sum(dims)
    pools = L if layout == "per-level" else 1
    rows = B * M * (S_levels if layout == "per-level" else D) * elt
    forward = B * pools * M * 8 + rows + 2 * B * D * elt + B * (L * 8 + 4 + L * 4)
    backward = (2 * B * D * elt + B * (L * 12 + 4) + B * S_levels * elt + 2 * B * S_levels * 4
                + 2 * B * D * elt + N_ITEMS * D * (8 + elt))
    return forward + backward


def case(B, M, D, layout, dtype, backend, generator):
    dims = L_DIMS[D]
    leaves = [torch.randn(n, D, device="cuda", dtype=dtype, generator=generator).requires_grad_()
              for n in (B, B, N_ITEMS)]
    shape = (B, M) if layout == "shared" else (B, len(dims), M)
    cand = torch.randint(0, N_ITEMS, shape, device="cuda", generator=generator)

    def step():
        for t in leaves:
            t.grad = None
        loss, _ = mk.mns_bpr_loss(*leaves[:2], leaves[2], cand, dims, backend=backend)
        loss.backward()

    return step


def reference_fits(B, M, D, layout) -> bool:
    """The reference materialises (B, M, D) gathers per level: skip it above ~6 GB."""
    return B * M * D * 4 * 5 <= 6e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--quick", action="store_true", help="one small shape (a smoke test)")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.cuda.get_device_name()
    copy = copy_bandwidth()
    print(f"{device}: device-to-device copy {copy:.0f} GB/s; torch {torch.__version__}, triton {triton.__version__}")
    g = torch.Generator(device="cuda").manual_seed(0)
    grid = [(B, M, D, layout, dtype) for B in (2048, 16384, 65536) for M in (16, 64) for D in (64, 256)
            for layout in ("per-level", "shared") for dtype in (torch.float32, torch.bfloat16)]
    if args.quick:
        grid = grid[:2]
    rows = []
    for B, M, D, layout, dtype in grid:
        timings = {}
        for backend in ("triton", "torch"):
            if backend == "torch" and not reference_fits(B, M, D, layout):
                continue
            step = case(B, M, D, layout, dtype, backend, g)
            timings[backend] = do_bench(step, warmup=10, rep=50, return_mode="median")
            torch.cuda.empty_cache()
        elt = torch.finfo(dtype).bits // 8
        moved = must_move(B, M, D, L_DIMS[D], layout, elt)
        gbps = moved / timings["triton"] / 1e6
        row = dict(B=B, M=M, L=5, D=D, layout=layout, dtype=str(dtype).replace("torch.", ""),
                   triton_ms=timings["triton"], torch_ms=timings.get("torch"),
                   speedup=timings["torch"] / timings["triton"] if "torch" in timings else None,
                   GBps=gbps, copy_fraction=gbps / copy)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    stamp = dt.date.today().isoformat()
    name = f"triton-{device.replace(' ', '_')}-{stamp}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# mns_bpr_loss forward+backward, Triton vs PyTorch reference\n\n"
              f"{device}, torch {torch.__version__}, triton {triton.__version__}, {platform.python_version()}; "
              f"N = {N_ITEMS} items; device-to-device copy {copy:.0f} GB/s (read + write). "
              f"ms: median of triton.testing.do_bench. GBps: bytes that must move / Triton time "
              f"(bench/triton_bench.py says which bytes); copy_fraction: GBps / copy bandwidth. "
              f"torch_ms is empty where the reference's gathers would exceed 6 GB.\n\n")
    (out / f"{name}.md").write_text(header + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    (out / f"{name}.json").write_text(json.dumps({"device": device, "copy_GBps": copy, "torch": torch.__version__,
                                                  "triton": triton.__version__, "rows": rows}, indent=2))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
