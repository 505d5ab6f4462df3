"""One rule for the logQ correction on every backend: ``log_q`` must be finite
(in the dtype of the logits) at every real candidate, ``pos_log_q`` at every
row. Two ``-inf`` in one pool once gave the reference ``inf`` and the C++ and
Triton kernels NaN."""
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels.ops.testing import make_inputs

from helpers import DEVICE, FAST

BACKENDS = ["torch", *FAST]
DIMS = [2, 4, 8]


def inputs(dtype=torch.float32):
    x = make_inputs(4, 8, 20, 5, DIMS, dtype=dtype, device=DEVICE, seed=4)
    log_q = torch.full(x["candidates"].shape, -1.0, dtype=torch.float64, device=DEVICE)
    return x, log_q


def loss(x, backend, **kw):
    return mk.mrl_softmax_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], DIMS, reduction="none",
                               backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_minus_inf_in_one_pool_are_refused_on_every_backend_but_padding_may_hold_them(backend):
    x, log_q = inputs(torch.float64)
    log_q[1, 2, 0] = log_q[1, 2, 3] = -torch.inf
    with pytest.raises(ValueError, match=r"log_q must be finite in float64 \(the dtype of the logits\) at every "
                                         r"candidate \(ids >= 0; padding may hold anything\); got \[-inf\] at 2"):
        loss(x, backend, log_q=log_q)
    # the same -inf at padding, and at a candidate equal to its row's positive (masked by pos_ids), take no part
    x["candidates"][1, 2, 0], x["candidates"][1, 2, 3] = -1, x["candidates"][1, 2, 1]
    pos_ids = x["candidates"][:, 0, 0].clone()
    pos_ids[1] = x["candidates"][1, 2, 3]
    got = loss(x, backend, log_q=log_q, pos_ids=pos_ids)
    want = loss(x, "torch", log_q=log_q.nan_to_num(neginf=-1.0), pos_ids=pos_ids)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [-torch.inf, torch.inf, torch.nan, -1e300])
def test_every_non_finite_correction_is_refused_alike(backend, value):
    x, log_q = inputs()
    log_q[0, 0, 0] = value  # -1e300 is finite in float64 but not in the float32 logits
    with pytest.raises(ValueError, match="log_q must be finite in float32"):
        loss(x, backend, log_q=log_q)
    pos_log_q = torch.zeros(4, dtype=torch.float64, device=DEVICE)
    pos_log_q[3] = value
    with pytest.raises(ValueError, match="pos_log_q must be finite in float32 .* at every row"):
        loss(x, backend, pos_log_q=pos_log_q)
