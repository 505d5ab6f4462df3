"""pytest-benchmark suite: ``pytest bench/ --benchmark-only``. Each operator and
backend at the paper's shape (B 2048) and a larger batch, float32; the bytes and
FLOPs that must move (bench/costs.py) go into ``extra_info``."""
import pytest
import torch

from bench.workloads import backends, workload

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("batch", [2048, 16384])
@pytest.mark.parametrize("backend", backends(DEVICE))
@pytest.mark.parametrize("op", ["mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss"])
def test_op(benchmark, op, backend, batch):
    fn, moved, flops = workload(op, backend, batch, DEVICE)
    if DEVICE == "cuda":
        run = fn
        fn = lambda: (run(), torch.cuda.synchronize())  # noqa: E731
    benchmark.extra_info.update(device=DEVICE, bytes=moved, flops=flops)
    benchmark(fn)
