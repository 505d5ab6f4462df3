"""The sampled softmax (mrl_softmax_loss): every fast backend against the
reference, forward and gradients, both layouts, cosine scores, padding, the logQ
correction, every dtype, non-contiguous inputs, NaN."""
import pytest
import torch
from hypothesis import given, settings

import mrl_kernels as mk
from mrl_kernels import reference

from helpers import (DEVICE, FAST, SHAPES, TOL, assert_close, gradcheck, heavy_for_triton, leaves, make, problems,
                     ref_inputs)


def check_softmax(backend, x, dims, dtype, weights=None, temperature=0.7, pos_ids=None, cosine=False, log_q=None,
                  pos_log_q=None):
    """The fused sampled softmax against the reference's autograd in float64: the
    per-row loss and the gradients of user, pos and item_weight (``log_q`` /
    ``pos_log_q``: float64 on the CPU, the logQ corrections). Rounding errors
    of the scores grow by 1/temperature in the exponent, and cosine gradients
    (differences of terms of size 1/|x| for a prefix x) by 1/|x|: so do the
    tolerances."""
    r = ref_inputs(x)
    scale = 1 / temperature
    if cosine:
        shortest = min(float(r[k][..., :dims[0]].norm(dim=-1).min()) for k in ("user", "pos", "item_weight"))
        scale /= min(1.0, shortest)
    atol, rtol = (tol * max(1.0, scale) for tol in TOL[dtype])
    w = weights if weights is not None else [1 / len(dims)] * len(dims)
    cand = r["candidates"]
    if pos_ids is not None:
        cand = cand.masked_fill(cand == pos_ids.cpu().view(-1, *[1] * (cand.dim() - 1)), -1)
    ref_l = leaves(r, ("user", "pos", "item_weight"))
    ref_loss = reference.mrl_softmax_loss(*ref_l, cand, dims, w, temperature, cosine, log_q, pos_log_q)
    g = torch.randn(ref_loss.shape, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref_loss, ref_l, g)
    fast_l = leaves(x, ("user", "pos", "item_weight"))
    on_device = [None if t is None else t.to(DEVICE) for t in (log_q, pos_log_q)]
    loss = mk.mrl_softmax_loss(*fast_l, x["candidates"], dims, weights, temperature, reduction="none",
                               cosine=cosine, pos_ids=pos_ids, log_q=on_device[0], pos_log_q=on_device[1],
                               layout=x["layout"], backend=backend)
    assert loss.dtype == dtype
    grads = torch.autograd.grad(loss, fast_l, g.to(loss))
    assert_close(loss, ref_loss, atol, rtol, "loss")
    for a, e, name in zip(grads, ref_grads, ("user", "pos", "item_weight")):
        assert a.dtype == dtype
        assert_close(a, e, atol, rtol, f"grad {name}")


def _with_padding(x, seed):
    """Candidates with some ids replaced by padding (-1), a whole pool of one row included."""
    g = torch.Generator().manual_seed(seed)
    cand = x["candidates"].cpu()
    cand = cand.masked_fill(torch.rand(cand.shape, generator=g) < 0.2, -1)
    cand[0] = -1
    return dict(x, candidates=cand.to(x["candidates"].device))


@pytest.mark.parametrize("backend, shape", [
    pytest.param(b, s, id="B{}-D{}-N{}-M{}-".format(*s[:4]) + b, marks=heavy_for_triton(b, s == SHAPES[1]))
    for s in SHAPES for b in FAST])
@pytest.mark.parametrize("layout", ["shared", "per-level"])
@pytest.mark.parametrize("cosine", [False, True], ids=["inner", "cosine"])
def test_mrl_softmax_loss_matches_reference(backend, shape, layout, cosine):
    B, D, N, M, dims = shape
    for seed in range(2):
        x = make(*shape, layout, torch.float32, seed)
        check_softmax(backend, x, list(dims), torch.float32, weights=torch.rand(len(dims)).tolist(), cosine=cosine)
        check_softmax(backend, _with_padding(x, seed), list(dims), torch.float32, temperature=0.1, cosine=cosine)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["shared", "per-level"])
def test_softmax_masks_the_positive_and_sums_repeated_candidates(backend, layout):
    dims = [2, 4, 6]
    x = make(40, 6, 8, 12, dims, layout, torch.float32, seed=5, integer=True)  # 8 items, 12 a pool: repeats
    pos_ids = torch.randint(0, 8, (40,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    check_softmax(backend, x, dims, torch.float32, pos_ids=pos_ids, temperature=2.0)
    masked = mk.mrl_softmax_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], dims, pos_ids=pos_ids,
                                 reduction="none", layout=layout, backend=backend)
    unmasked = mk.mrl_softmax_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], dims,
                                   reduction="none", layout=layout, backend=backend)
    hit = (x["candidates"] == pos_ids.view(-1, *[1] * (x["candidates"].dim() - 1))).flatten(1).any(1)
    # a masked candidate leaves the log-sum-exp (a negligible one may not move it in float32)
    assert bool((masked[hit] <= unmasked[hit]).all()) and bool((masked[hit] < unmasked[hit]).any())
    assert torch.equal(masked[~hit], unmasked[~hit])


def _log_q(candidates, seed):
    """Random logQ corrections for ``candidates`` and their rows' positives
    (float64, CPU), ``-inf`` at padding (which takes no part whatever its value)."""
    g = torch.Generator().manual_seed(seed)
    log_q = (torch.rand(candidates.shape, generator=g, dtype=torch.float64) * 0.99 + 0.01).log() * 3
    log_q[candidates.cpu() < 0] = -torch.inf
    return log_q, (torch.rand(candidates.shape[0], generator=g, dtype=torch.float64) + 0.01).log()


@pytest.mark.parametrize("backend, layout, cosine, corrected", [
    pytest.param(b, layout, cosine, corrected,
                 id=f"{layout}-{'cosine' if cosine else 'inner'}{'-log-q' if corrected else ''}-{b}")
    for b in FAST for layout in ("shared", "per-level") for cosine in (False, True) for corrected in (False, True)])
def test_softmax_float64_gradcheck(backend, layout, cosine, corrected):
    dims = [2, 3, 5]
    x = _with_padding(make(4, 5, 6, 3, dims, layout, torch.float64, seed=8), seed=1)
    x["candidates"][..., 1] = x["candidates"][..., 2]
    log_q, pos_log_q = (t.to(DEVICE) for t in _log_q(x["candidates"], 2)) if corrected else (None, None)
    args = leaves(x, ("user", "pos", "item_weight"))
    assert gradcheck(lambda u, p, i: mk.mrl_softmax_loss(u, p, i, x["candidates"], dims, [0.2, 0.3, 0.5], 0.5, "sum",
                                                         cosine=cosine, log_q=log_q, pos_log_q=pos_log_q,
                                                         layout=layout, backend=backend), args, backend)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["shared", "per-level"])
@pytest.mark.parametrize("cosine", [False, True], ids=["inner", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_log_q_matches_reference(backend, layout, cosine, dtype):
    dims = [3, 5, 12]
    x = _with_padding(make(7, 12, 20, 5, dims, layout, dtype, seed=3), seed=2)
    log_q, pos_log_q = _log_q(x["candidates"], 4)
    weights = [0.25, 0.25, 0.5]  # exact in float32, as the kernels take them
    check_softmax(backend, x, dims, dtype, weights, temperature=0.5, cosine=cosine, log_q=log_q, pos_log_q=pos_log_q)
    check_softmax(backend, x, dims, dtype, weights, log_q=log_q)  # the candidates' alone


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_log_q_is_subtracted_from_every_logit(backend):
    g = torch.Generator().manual_seed(5)
    user, pos, table = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((4, 8), (4, 8), (11, 8)))
    cand = torch.randint(0, 11, (4, 6, 3), generator=g).transpose(1, 2)  # (4, 3, 6), strided unlike log_q
    log_q = torch.rand(cand.shape, generator=g, dtype=torch.float64).log()
    dims = (2, 4, 8)
    got = mk.mrl_softmax_loss(*(t.to(DEVICE) for t in (user, pos, table, cand)), dims, log_q=log_q.to(DEVICE),
                              reduction="none", backend=backend).cpu()
    # by hand: every logit less its log q
    want = torch.zeros(4, dtype=torch.float64)
    weight = torch.tensor(1 / len(dims), dtype=torch.float32).double()  # the default weights are float32
    for level, d in enumerate(dims):
        z = (user[:, None, :d] * table[cand[:, level], :d]).sum(-1) - log_q[:, level]
        zp = (user[:, :d] * pos[:, :d]).sum(-1)
        want += weight * (torch.cat([zp[:, None], z], 1).logsumexp(1) - zp)
    assert_close(got, want, 1e-12, 1e-12, "logQ loss")
    with pytest.raises(ValueError, match="log_q must have shape"):
        mk.mrl_softmax_loss(user, pos, table, cand, dims, log_q=log_q[:, 0], backend=backend)
    with pytest.raises(TypeError, match="pos_log_q must be a float tensor"):
        mk.mrl_softmax_loss(user, pos, table, cand, dims, pos_log_q=torch.zeros(4, dtype=torch.long), backend=backend)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_softmax_half_precision_inputs(backend, dtype):
    if backend == "cpp":
        pytest.skip("the C++ kernels take float32 and float64")
    dims = [4, 8, 16, 32, 64]
    B, N, M = (300, 500, 64) if DEVICE == "cuda" else (10, 50, 4)
    check_softmax(backend, make(B, 64, N, M, dims, "shared", dtype, seed=7), dims, dtype, temperature=4.0)
    check_softmax(backend, make(B, 64, N, M, dims, "per-level", dtype, seed=7), dims, dtype, temperature=1.0,
                  cosine=True)


@pytest.mark.parametrize("backend", FAST)
def test_softmax_non_contiguous_inputs(backend):
    dims = [4, 8, 12]
    x = make(11, 12, 30, 4, dims, "per-level", torch.float32, seed=6)
    wide = torch.cat([x["user"], x["user"]], dim=-1)
    y = dict(x, user=wide[:, :12], item_weight=x["item_weight"].T.contiguous().T,
             candidates=x["candidates"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not y["user"].is_contiguous() and not y["candidates"].is_contiguous()
    check_softmax(backend, y, dims, torch.float32)


@pytest.mark.parametrize("backend", FAST)
def test_softmax_nan_propagates_to_its_row_only(backend):
    dims = [2, 4, 8]
    x = make(6, 8, 12, 4, dims, "shared", torch.float32, seed=11)
    x["item_weight"][x["candidates"][2, 1]] = float("nan")
    rows_with_nan = (x["candidates"] == x["candidates"][2, 1]).any(1)
    loss = mk.mrl_softmax_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], dims, reduction="none",
                               layout="shared", backend=backend)
    ref = reference.mrl_softmax_loss(*(ref_inputs(x)[k] for k in ("user", "pos", "item_weight", "candidates")),
                                     dims, [1 / 3] * 3, 1.0)
    assert torch.equal(loss.isnan().cpu(), ref.isnan()) and torch.equal(loss.isnan(), rows_with_nan)


@pytest.mark.parametrize("backend", FAST)
@settings(max_examples=15, deadline=None)
@given(problem=problems())
def test_softmax_random_problems_match_reference(backend, problem):
    B, D, N, M, dims, layout, seed = problem
    x = _with_padding(make(B, D, N, M, dims, layout, torch.float32, seed), seed)
    log_q, pos_log_q = _log_q(x["candidates"], seed) if seed % 3 == 0 else (None, None)
    check_softmax(backend, x, list(dims), torch.float32, temperature=0.3, cosine=seed % 2 == 1, log_q=log_q,
                  pos_log_q=pos_log_q)
