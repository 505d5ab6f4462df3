"""Where the host's time goes in one eager ``mns_bpr_loss`` forward+backward at
the paper's shape (B 2048, 16 candidates per level, L 5, D 64) on a CUDA device:
wall time of the public call, of the registered operator alone (no checks), and
a cProfile of the public call (top functions by own time)."""
from __future__ import annotations

import cProfile
import pstats
import sys
import time

import torch

import mrl_kernels as mk


def main() -> int:
    backend = sys.argv[1] if len(sys.argv) > 1 else "triton"
    B, D, N, dims = 2048, 64, 100_000, (4, 8, 16, 32, 64)
    leaves = [torch.randn(n, D, device="cuda", requires_grad=True) for n in (B, B, N)]
    cand = torch.randint(0, N, (B, 5, 16), device="cuda")
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
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        print(f"{backend} {name}: {(time.perf_counter() - start) / 200 * 1e3:.3f} ms per call (host-bound loop)")
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
