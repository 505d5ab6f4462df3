"""MNS and the MRL loss (mns_sample, mrl_bpr_loss, mns_bpr_loss): every fast
backend against the reference, forward outputs and every gradient, on fresh
random inputs, awkward shapes, both candidate layouts, ties, repeated negatives,
non-contiguous inputs, every dtype and non-finite values."""
import pytest
import torch
from hypothesis import given, settings

import mrl_kernels as mk
from mrl_kernels import reference

from helpers import DEVICE, FAST, INTERPRETED, SHAPES, TOL, assert_close, gradcheck, leaves, make, problems, ref_inputs


def test_a_fast_backend_runs_here():
    # every test below is parametrised by FAST: an empty list would skip them all
    assert FAST, f"no backend but the reference runs on {DEVICE}"


def check_mns_bpr(backend, x, dims, dtype, weights=None):
    atol, rtol = TOL[dtype]
    r = ref_inputs(x)
    ref_leaves = leaves(r, ("user", "pos", "item_weight"))
    w = weights if weights is not None else [1 / len(dims)] * len(dims)
    ref_loss, ref_negs = reference.mns_bpr_loss(*ref_leaves[:2], ref_leaves[2], r["candidates"], dims, w)
    g = torch.randn(ref_loss.shape, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves, g)

    fast_leaves = leaves(x, ("user", "pos", "item_weight"))
    loss, negs = mk.mns_bpr_loss(*fast_leaves[:2], fast_leaves[2], x["candidates"], dims, weights,
                                 reduction="none", layout=x["layout"], backend=backend)
    assert negs.dtype == torch.int64 and loss.dtype == dtype
    assert torch.equal(negs.cpu(), ref_negs), "negatives differ"
    grads = torch.autograd.grad(loss, fast_leaves, g.to(loss))
    assert_close(loss, ref_loss, atol, rtol, "loss")
    for a, e, name in zip(grads, ref_grads, ("user", "pos", "item_weight")):
        assert a.dtype == dtype
        assert_close(a, e, atol, rtol, f"grad {name}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-D{}-N{}-M{}".format(*s[:4]))
@pytest.mark.parametrize("layout", ["shared", "per-level"])
def test_mns_bpr_loss_matches_reference(backend, shape, layout):
    B, D, N, M, dims = shape
    # the paper's shape takes seconds a seed in Triton's interpreter: one there
    for seed in range(1 if INTERPRETED and backend == "triton" and shape == SHAPES[1] else 2):
        x = make(*shape, layout, torch.float32, seed)
        assert torch.equal(mk.mns_sample(x["user"], x["item_weight"], x["candidates"], dims, layout=layout,
                                         backend=backend).cpu(),
                           reference.mns_sample(*(ref_inputs(x)[k] for k in ("user", "item_weight", "candidates")), dims))
        check_mns_bpr(backend, x, list(dims), torch.float32)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "B{}-D{}".format(*s[:2]))
def test_mrl_bpr_loss_matches_reference(backend, shape):
    B, D, N, M, dims = shape
    x = make(*shape, "shared", torch.float32, seed=3)
    r = ref_inputs(x)
    w = torch.rand(len(dims)).tolist()
    ref_l = leaves(r, ("user", "pos", "neg"))
    ref_loss = reference.mrl_bpr_loss(*ref_l, dims, w)
    g = torch.randn(B, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref_loss, ref_l, g)
    fast_l = leaves(x, ("user", "pos", "neg"))
    loss = mk.mrl_bpr_loss(*fast_l, dims, w, reduction="none", backend=backend)
    grads = torch.autograd.grad(loss, fast_l, g.float().to(DEVICE))
    assert_close(loss, ref_loss, 1e-5, 1e-5, "loss")
    for a, e, name in zip(grads, ref_grads, ("user", "pos", "neg")):
        assert_close(a, e, 1e-5, 1e-5, f"grad {name}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["shared", "per-level"])
def test_exact_ties_between_different_items_and_repeated_negatives(backend, layout):
    """Small integer values make every score exact, so many candidates tie; each
    backend must pick the first of the tied, and gradients of repeated ids sum."""
    dims = [2, 4, 6]
    x = make(40, 6, 8, 12, dims, layout, torch.float32, seed=5, integer=True)
    x["item_weight"][4:] = x["item_weight"][:4]  # items 4..7 copy items 0..3
    check_mns_bpr(backend, x, dims, torch.float32, weights=[0.5, 0.25, 0.25])


@pytest.mark.parametrize("backend", FAST)
def test_non_contiguous_inputs(backend):
    dims = [4, 8, 12]
    x = make(11, 12, 30, 4, dims, "per-level", torch.float32, seed=6)
    wide = {k: torch.cat([x[k], x[k]], dim=-1) for k in ("user", "pos", "item_weight")}
    y = dict(x, user=wide["user"][:, ::2], pos=wide["pos"][:, 12:], item_weight=x["item_weight"].T.contiguous().T,
             candidates=x["candidates"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not y["user"].is_contiguous() and not y["item_weight"].is_contiguous()
    y["user"] = wide["user"][:, :12]  # a strided row view with unit column stride
    check_mns_bpr(backend, y, dims, torch.float32)
    y["user"] = x["user"].T.contiguous().T  # column-major
    check_mns_bpr(backend, y, dims, torch.float32)
    # an expanded negative (stride 0 over levels), as mrl-d uses
    neg = x["item_weight"][x["candidates"][:, 0, :1]].expand(-1, 3, -1)
    fast = mk.mrl_bpr_loss(x["user"], x["pos"], neg, dims, reduction="none", backend=backend)
    ref = reference.mrl_bpr_loss(x["user"].double().cpu(), x["pos"].double().cpu(), neg.double().cpu(), dims,
                                 [1 / 3] * 3)
    assert_close(fast, ref, 1e-5, 1e-5, "expanded neg")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    if backend == "cpp":
        pytest.skip("the C++ kernels take float32 and float64")
    dims = [4, 8, 16, 32, 64]
    B, N, M = (300, 500, 16) if DEVICE == "cuda" else (30, 50, 4)  # the interpreter is slow
    check_mns_bpr(backend, make(B, 64, N, M, dims, "per-level", dtype, seed=7), dims, dtype)


@pytest.mark.parametrize("backend", FAST)
def test_float64_gradcheck(backend):
    dims = [2, 3, 5]
    x = make(4, 5, 6, 3, dims, "per-level", torch.float64, seed=8)
    x["candidates"][:, :, 1] = x["candidates"][:, :, 0]
    args = leaves(x, ("user", "pos", "item_weight"))
    assert gradcheck(lambda u, p, i: mk.mns_bpr_loss(u, p, i, x["candidates"], dims, [0.2, 0.3, 0.5], "sum",
                                                     backend=backend)[0], args, backend)
    args = leaves(x, ("user", "pos", "neg"))
    assert gradcheck(lambda u, p, n: mk.mrl_bpr_loss(u, p, n, dims, reduction="none", backend=backend), args,
                     backend)


@pytest.mark.parametrize("backend", FAST)
@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_random_problems_match_reference(backend, problem):
    B, D, N, M, dims, layout, seed = problem
    check_mns_bpr(backend, make(B, D, N, M, dims, layout, torch.float32, seed), list(dims), torch.float32)


def _nonfinite_cases():
    """(name, inputs): a NaN user row, a NaN item row among the candidates,
    every candidate score -inf, and a NaN in a given negative vector."""
    base = lambda: make(6, 8, 12, 4, [2, 4, 8], "per-level", torch.float32, seed=11)  # noqa: E731
    nan_user, nan_item, all_minus_inf, nan_neg = base(), base(), base(), base()
    nan_user["user"][1] = float("nan")
    nan_item["item_weight"][nan_item["candidates"][2, 1, 2]] = float("nan")
    all_minus_inf["user"] = all_minus_inf["user"].abs() + 1
    all_minus_inf["item_weight"][:] = -float("inf")
    nan_neg["neg"][3, 1, 0] = float("nan")
    return [("nan user row", nan_user), ("nan item row", nan_item), ("all scores -inf", all_minus_inf),
            ("nan in neg", nan_neg)]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", range(4), ids=[name for name, _ in _nonfinite_cases()])
def test_non_finite_inputs_pick_from_the_pool_and_propagate_nan_like_the_reference(backend, case):
    _, x = _nonfinite_cases()[case]
    r = ref_inputs(x)
    dims = x["dims"]
    negs = mk.mns_sample(x["user"], x["item_weight"], x["candidates"], dims, backend=backend).cpu()
    assert torch.equal(negs, reference.mns_sample(r["user"], r["item_weight"], r["candidates"], dims))
    pools = r["candidates"]
    assert all(int(negs[b, l]) in pools[b, l].tolist() for b in range(negs.shape[0]) for l in range(len(dims)))
    names = ("user", "pos", "item_weight")
    ref_l, fast_l = leaves(r, names), leaves(x, names)
    ref_loss, _ = reference.mns_bpr_loss(*ref_l, r["candidates"], dims, [1 / 3] * 3)
    loss, _ = mk.mns_bpr_loss(*fast_l, x["candidates"], dims, reduction="none", backend=backend)
    assert torch.equal(loss.isnan().cpu(), ref_loss.isnan())
    for a, e in zip(torch.autograd.grad(loss.sum(), fast_l), torch.autograd.grad(ref_loss.sum(), ref_l)):
        assert torch.equal(a.isnan().cpu(), e.isnan())
    names = ("user", "pos", "neg")
    ref_l, fast_l = leaves(r, names), leaves(x, names)
    ref_loss = reference.mrl_bpr_loss(*ref_l, dims, [1 / 3] * 3)
    loss = mk.mrl_bpr_loss(*fast_l, dims, reduction="none", backend=backend)
    assert torch.equal(loss.isnan().cpu(), ref_loss.isnan())
    for a, e in zip(torch.autograd.grad(loss.sum(), fast_l), torch.autograd.grad(ref_loss.sum(), ref_l)):
        assert torch.equal(a.isnan().cpu(), e.isnan())


# ------------------------------------------------------------------ mrl_softmax_loss
