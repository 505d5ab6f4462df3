"""Item tables of more than 2^31 elements: ids near the end choose and
differentiate correctly (offsets in int64). Slow and needs ~20 GiB: run once by
hand (``python -m pytest -m slow tests/test_int64_scale.py``), not in CI."""
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import reference


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2 ** 20


N = (1 << 31) // 64 + (1 << 16)  # 33,619,968 rows of 64: 2,151,677,952 elements
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_available_gib() < 20, reason="needs about 20 GiB of free memory")]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_ids_past_two_to_the_31_elements(backend):
    dims = [4, 16, 64]
    g = torch.Generator().manual_seed(0)
    B, M = 6, 5
    # the candidates: rows near the end of the table, whose element offsets exceed 2^31
    ids = N - 1 - torch.randperm(4000, generator=g)[:B * len(dims) * M]
    candidates = ids.view(B, len(dims), M)
    rows = torch.randn(len(ids), 64, generator=g)
    items = torch.zeros(N, 64)
    items[ids] = rows
    items.requires_grad_()
    user, pos = torch.randn(B, 64, generator=g, requires_grad=True), torch.randn(B, 64, generator=g)
    loss, negatives = mk.mns_bpr_loss(user, pos, items, candidates, dims, reduction="sum", backend=backend)
    loss.backward()
    # the same problem on the small table of the candidates' rows only
    local = torch.arange(len(ids)).view(B, len(dims), M)
    small = rows.clone().requires_grad_()
    user_small = user.detach().clone().requires_grad_()
    expected_loss, expected_local = reference.mns_bpr_loss(user_small, pos, small, local, dims, [1 / 3] * 3)
    expected_loss.sum().backward()
    assert torch.equal(negatives, ids[expected_local])
    torch.testing.assert_close(loss, expected_loss.sum())
    torch.testing.assert_close(items.grad[ids], small.grad)
    torch.testing.assert_close(user.grad, user_small.grad)
    assert int(negatives.min()) * 64 > 2 ** 31
