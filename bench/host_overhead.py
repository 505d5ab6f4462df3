"""Where the host's time goes in one eager ``mns_bpr_loss`` forward+backward at
the paper's shape (B 2048, 16 candidates per level, L 5, D 64) on a CUDA device:
wall time of the public call, of the registered operator alone (no checks), and
a cProfile of the public call (top functions by own time). ``python -m
bench.host_overhead [backend]``."""
from __future__ import annotations

import cProfile
import pstats
import sys

import torch

import mrl_kernels as mk
from mrl_kernels.ops.testing import make_inputs

from .timing import median_ms


def main() -> int:
    backend = sys.argv[1] if len(sys.argv) > 1 else "triton"
    dims = (4, 8, 16, 32, 64)
    x = make_inputs(2048, 64, 100_000, 16, dims, device="cuda", requires_grad=True)
    leaves, cand = [x["user"], x["pos"], x["item_weight"]], x["candidates"]
    w = torch.full((5,), 0.2, device="cuda")

    def public():
        loss, _ = mk.mns_bpr_loss(*leaves[:2], leaves[2], cand, dims, backend=backend)
        loss.backward()

    public()  # registers the backend's operators
    op = getattr(torch.ops.mrl_kernels, f"mns_bpr_loss_{backend}")

    def raw():
        loss, _, _ = op(*leaves[:2], leaves[2], cand, list(dims), w)
        loss.mean().backward()

    for name, fn in (("public", public), ("operator only", raw)):
        print(f"{backend} {name}: {median_ms(fn, 'cuda', repeats=200, warmup=20):.3f} ms per call (median)")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        public()
    torch.cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
