"""The softmax over every item never holds a ``(B, N)`` logit matrix: the peak
memory a forward+backward adds, gradients included, measured in a fresh process
(bench.timing.peak_growth: the peak resident set over the one before the call)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP = """
import json, sys, torch
import mrl_kernels as mk
from bench.timing import peak_growth
n_items, batch, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
user = torch.randn(batch, 64, generator=g).requires_grad_()
table = (torch.randn(n_items, 64, generator=g) * 0.1).requires_grad_()
pos_ids = torch.randint(0, n_items, (batch,), generator=g)
def step(user, table, pos_ids):
    mk.mrl_softmax_loss(user, table[pos_ids], table, None, (4, 8, 16, 32, 64), pos_ids=pos_ids,
                        backend=backend).backward()
# the first call loads the backend (and what its registration imports): not the operator's memory
step(user[:4].detach().requires_grad_(), table[:50].detach().requires_grad_(), pos_ids[:4] % 50)
seconds, grown = peak_growth(lambda: step(user, table, pos_ids), "cpu")
assert table.grad is not None and torch.isfinite(table.grad).all()
print(json.dumps({"grown": grown, "seconds": seconds}))
"""


def grown_bytes(n_items: int, batch: int, backend: str) -> int:
    run = subprocess.run([sys.executable, "-c", STEP, str(n_items), str(batch), backend], capture_output=True,
                         text=True, cwd=ROOT, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])["grown"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.slow), "auto"])
def test_far_less_than_one_widths_logits(backend):
    # N 10^5, B 1024: one width's float32 logits are 400 MB; the item gradients (every item gets one) 25 MB each
    assert grown_bytes(100_000, 1024, backend) < 200 * 2 ** 20


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
def test_a_million_items_add_less_than_a_gigabyte():
    # the bound: N 10^6, B 1024, D 64 on the CPU (one width's logits alone would be 4 GB); measured
    # 503 MiB (the 244 MiB item gradient twice: the operator's and the positives' lookup's, then their sum)
    assert grown_bytes(1_000_000, 1024, "auto") < 2 ** 30
