"""Every bad argument gets a clear exception naming it."""
import numpy as np
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import reference
from mrl_kernels.ops.testing import make_inputs

from helpers import DEVICE

B, D, N = 4, 8, 10
DIMS = [2, 4, 8]


def good():
    x = make_inputs(B, D, N, 5, DIMS)
    del x["neg"]
    return x


def call(**changes):
    args = {**good(), **changes}
    return mk.mns_bpr_loss(**args, backend="torch")


@pytest.mark.parametrize("changes, error, words", [
    (dict(dims=[2, 2, 8]), ValueError, "strictly increasing"),
    (dict(dims=[0, 4, 8]), ValueError, "positive"),
    (dict(dims=[2, 4, 6]), ValueError, "dims[-1] must equal the embedding width 8"),
    (dict(dims=[]), ValueError, "non-empty"),
    (dict(dims="248"), ValueError, "dims"),
    (dict(dims=[2.0, 4, 8]), ValueError, "ints"),
    (dict(user=torch.randn(B, D, 1)), ValueError, "user must have 2 dimensions"),
    (dict(user=torch.randn(0, D), pos=torch.randn(0, D), candidates=torch.zeros(0, 3, 5, dtype=torch.long)),
     ValueError, "at least one row"),
    (dict(user=[[1.0] * D] * B), TypeError, "user must be a torch.Tensor"),
    (dict(user=torch.randint(0, 3, (B, D))), TypeError, "user must be float16, bfloat16, float32 or float64"),
    (dict(pos=torch.randn(B, D).double()), TypeError, "pos has dtype torch.float64 but user has torch.float32"),
    (dict(item_weight=torch.randn(N, D).half()), TypeError, "item_weight has dtype"),
    (dict(item_weight=torch.randn(N, D + 1)), ValueError, "item_weight has width 9"),
    (dict(pos=torch.randn(B + 1, D)), ValueError, "pos has 5 rows but user has 4"),
    (dict(pos=torch.randn(B, D - 1)), ValueError, "pos has width 7"),
    (dict(candidates=torch.randint(0, N, (B + 1, 5))), ValueError, "candidates has 5 rows"),
    (dict(candidates=torch.randint(0, N, (B, 2, 5))), ValueError, "L = len(dims) = 3 pools"),
    (dict(candidates=torch.randint(0, N, (B,))), ValueError, "(B, M) or (B, L, M)"),
    (dict(candidates=torch.zeros(B, 0, dtype=torch.long)), ValueError, "M >= 1"),
    (dict(candidates=torch.full((B, 3, 5), N)), ValueError, "candidates must lie in [0, 10)"),
    (dict(candidates=torch.full((B, 3, 5), -1)), ValueError, "candidates must lie in [0, 10)"),
    (dict(candidates=torch.zeros(B, 3, 5)), TypeError, "candidates must hold integer ids"),
    (dict(weights=[1.0, 1.0]), ValueError, "weights must have one entry per level (3)"),
    (dict(weights=[1.0, -1.0, 1.0]), ValueError, "weights must be finite and >= 0"),
    (dict(weights=[1.0, float("nan"), 1.0]), ValueError, "weights must be finite and >= 0"),
    (dict(reduction="max"), ValueError, "reduction must be one of"),
])
def test_bad_arguments(changes, error, words):
    with pytest.raises(error) as info:
        call(**changes)
    assert words in str(info.value)


def test_int32_candidates_are_accepted():
    assert call(candidates=torch.randint(0, N, (B, 3, 5), dtype=torch.int32))[1].dtype == torch.int64


def test_mrl_bpr_loss_shapes():
    u = torch.randn(B, D)
    with pytest.raises(ValueError, match="neg must have L = len"):
        mk.mrl_bpr_loss(u, u, torch.randn(B, 2, D), DIMS, backend="torch")
    with pytest.raises(ValueError, match="neg has 3 rows"):
        mk.mrl_bpr_loss(u, u, torch.randn(B - 1, 3, D), DIMS, backend="torch")
    with pytest.raises(ValueError, match="width 8 like user"):
        mk.mrl_bpr_loss(u, u, torch.randn(B, 3, D + 1), DIMS, backend="torch")
    with pytest.raises(ValueError, match="neg must have 3 dimensions"):
        mk.mrl_bpr_loss(u, u, torch.randn(B, D), DIMS, backend="torch")


def test_mns_sample_checks_the_same_way():
    args = good()
    del args["pos"]
    with pytest.raises(ValueError, match="candidates must lie in"):
        mk.mns_sample(**{**args, "candidates": torch.full((B, 3, 2), 99)}, backend="torch")


def test_backend_names():
    u = torch.randn(B, D)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'cpp', 'triton'; got 'cuda'"):
        mk.mrl_bpr_loss(u, u, torch.randn(B, 3, D), DIMS, backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_triton_on_cpu_tensors_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    u = torch.randn(B, D)
    with pytest.raises(ValueError, match="backend='triton' does not run on cpu tensors"):
        mk.mrl_bpr_loss(u, u, torch.randn(B, 3, D), DIMS, backend="triton")


def test_sample_candidates_arguments():
    with pytest.raises(ValueError, match="num must be an int >= 1"):
        mk.sample_candidates(torch.arange(3), 0, 10)
    with pytest.raises(ValueError, match="n_items must be an int >= 1"):
        mk.sample_candidates(torch.arange(3), 2, 0)
    with pytest.raises(ValueError, match="users must be a 1-D tensor"):
        mk.sample_candidates(torch.zeros(3, 2, dtype=torch.long), 2, 10)


def test_too_wide_for_triton():
    if "triton" not in mk.available_backends(DEVICE):
        pytest.skip("Triton runs nowhere here")
    u, p, n = torch.randn(2, 1030, device=DEVICE), torch.randn(2, 1030, device=DEVICE), torch.randn(2, 1, 1030,
                                                                                                      device=DEVICE)
    with pytest.raises(ValueError, match="backend='triton' takes embedding widths up to 1024, got 1030"):
        mk.mrl_bpr_loss(u, p, n, [1030], backend="triton")
    if DEVICE == "cuda":  # auto falls back to the reference
        expected = reference.mrl_bpr_loss(u, p, n, [1030], [1.0]).mean()
        torch.testing.assert_close(mk.mrl_bpr_loss(u, p, n, [1030]), expected)


@pytest.mark.parametrize("dims", [np.array(DIMS), torch.tensor(DIMS), tuple(np.int64(d) for d in DIMS)])
def test_dims_as_an_array_or_numpy_ints(dims):
    expected = call(dims=DIMS)
    actual = call(dims=dims)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])


def test_meta_tensors_give_shapes_without_reading_values():
    x = make_inputs(B, D, N, 5, DIMS, device="meta")
    loss, negatives = mk.mns_bpr_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], DIMS,
                                      reduction="none")
    assert loss.is_meta and loss.shape == (B,) and negatives.shape == (B, 3) and negatives.dtype == torch.int64
    assert mk.mns_sample(x["user"], x["item_weight"], x["candidates"], DIMS).shape == (B, 3)


def softmax(**changes):
    args = {**good(), **changes}
    return mk.mrl_softmax_loss(**args, backend="torch")


@pytest.mark.parametrize("changes, error, words", [
    (dict(temperature=0.0), ValueError, "temperature must be a finite number >="),
    (dict(temperature=float("inf")), ValueError, "temperature must be a finite number >="),
    (dict(temperature="1"), ValueError, "temperature must be a finite number >="),
    (dict(pos_ids=torch.zeros(B + 1, dtype=torch.long)), ValueError, "pos_ids must have shape (4,)"),
    (dict(pos_ids=torch.full((B,), N)), ValueError, "pos_ids must lie in [0, 10)"),
    (dict(candidates=torch.full((B, 3, 5), N)), ValueError, "candidates must be < 10"),
    (dict(weights=[1.0, 1.0]), ValueError, "weights must have one entry per level (3)"),
])
def test_bad_softmax_arguments(changes, error, words):
    with pytest.raises(error) as info:
        softmax(**changes)
    assert words in str(info.value)


def test_softmax_takes_padding_ids_where_sampling_refuses_them():
    x = good()
    x["candidates"][:, :, 0] = -1
    assert torch.isfinite(softmax(candidates=x["candidates"]))
    with pytest.raises(ValueError, match="candidates must lie in"):
        mk.mns_sample(x["user"], x["item_weight"], x["candidates"], DIMS)
