"""Every fast backend against the reference: forward outputs and every gradient,
on fresh random inputs, awkward shapes, both candidate layouts, ties, repeated
negatives, non-contiguous inputs and every dtype."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mrl_kernels as mk
from mrl_kernels import reference
from mrl_kernels.ops.testing import make_inputs

from helpers import DEVICE, FAST, assert_close

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 5e-2),
       torch.float16: (5e-3, 1e-2)}

# (B, D, N, M, dims): B, M, D that divide no block size, M = 1, one level, wide rows
SHAPES = [
    (7, 12, 20, 5, (3, 5, 12)),
    (33, 64, 50, 16, (4, 8, 16, 32, 64)),
    (5, 24, 9, 1, (3, 10, 24)),
    (3, 72, 11, 3, (8, 72)),
    (2, 130, 6, 2, (1, 129, 130)),
    (9, 8, 4, 6, (8,)),
]


# cases that take tens of seconds each in Triton's interpreter (a fraction of one on a GPU): with the slow tests there
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETED_HEAVY = [pytest.mark.slow] if INTERPRETED else []


def heavy_for_triton(backend: str, heavy: bool) -> list:
    return INTERPRETED_HEAVY if heavy and backend == "triton" else []


def gradcheck(fn, args, backend: str) -> bool:
    """float64 ``gradcheck``; in Triton's interpreter its fast mode (``v^T J u`` for
    random ``u``, ``v``: a few launches where the full Jacobian takes one a column)."""
    return torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton" and INTERPRETED)


def make(B, D, N, M, dims, layout, dtype, seed, integer=False):
    return make_inputs(B, D, N, M, dims, layout, dtype, DEVICE, seed, integer)


def test_a_fast_backend_runs_here():
    # every test below is parametrised by FAST: an empty list would skip them all
    assert FAST, f"no backend but the reference runs on {DEVICE}"


def ref_inputs(x):
    """The reference runs on the same values, upcast to float64, on the CPU."""
    return {k: (v.double() if v.is_floating_point() else v).cpu() if isinstance(v, torch.Tensor) else v
            for k, v in x.items()}


def leaves(x, names):
    return [x[n].detach().clone().requires_grad_(True) for n in names]


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


@st.composite
def problems(draw):
    """Random sizes: widths that are not powers of two, any number of levels, M >= 1."""
    width = draw(st.integers(1, 40))
    dims = sorted(draw(st.sets(st.integers(1, width - 1), max_size=4)) | {width}) if width > 1 else [1]
    return (draw(st.integers(1, 9)), width, draw(st.integers(1, 12)), draw(st.integers(1, 6)), tuple(dims),
            draw(st.sampled_from(["shared", "per-level"])), draw(st.integers(0, 2 ** 16)))


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


def _largest_allocation(step) -> int:
    """The most bytes ``step()`` allocated at once on DEVICE: the largest single CPU
    allocation (the profiler's), or the CUDA peak above what was allocated before."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return max(e.self_cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("op", ["mns_bpr_loss", "mrl_softmax_loss"])
def test_a_frozen_item_table_gets_no_gradient_buffer(backend, op):
    # autograd's needs_input_grad reaches the backward operator (output_mask): no (N, D) buffer is formed
    N, D = 50_000, 32
    largest = {}
    for frozen in (True, False):
        x = make(8, D, N, 4, (8, 16, 32), "per-level", torch.float32, seed=5)
        user = x["user"].requires_grad_()
        x["item_weight"].requires_grad_(not frozen)

        def step():
            out = getattr(mk, op)(user, x["pos"], x["item_weight"], x["candidates"], x["dims"], backend=backend)
            (out[0] if isinstance(out, tuple) else out).backward()
        largest[frozen] = _largest_allocation(step)
        assert user.grad is not None and (x["item_weight"].grad is None) == frozen
    table = N * D * 4
    assert largest[False] >= table, "the profiler sees the item gradient of a table that needs one"
    assert largest[True] < table / 100, f"a frozen table still cost {largest[True]} bytes in one allocation"


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("op", ["mns_bpr_loss", "mrl_softmax_loss", "mrl_bpr_loss"])
def test_each_gradient_alone_equals_its_part_of_all_gradients(backend, op):
    x = make(9, 16, 30, 4, (4, 8, 16), "per-level", torch.float32, seed=12)
    third = "neg" if op == "mrl_bpr_loss" else "item_weight"
    names = ("user", "pos", third)

    def gradients(wanted):
        inputs = {n: x[n].detach().clone().requires_grad_(n in wanted) for n in names}
        args = [inputs["user"], inputs["pos"], inputs[third]] + ([] if op == "mrl_bpr_loss" else [x["candidates"]])
        out = getattr(mk, op)(*args, x["dims"], backend=backend)
        loss = out[0] if isinstance(out, tuple) else out
        return dict(zip(wanted, torch.autograd.grad(loss, [inputs[n] for n in wanted])))

    every = gradients(names)
    for name in names:
        assert torch.equal(gradients((name,))[name], every[name]), name
