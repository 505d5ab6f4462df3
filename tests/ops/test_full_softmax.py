"""The softmax over every item (``mrl_softmax_loss(candidates=None)``, the
``full_softmax_lse`` operator): every backend against per-width
``F.cross_entropy`` over materialised logits, the fast backends against the
reference, gradients, masks, NaN, exclusion, compile, bad arguments."""
import pytest
import torch
import torch.nn.functional as F

import mrl_kernels as mk
from mrl_kernels import reference
from mrl_kernels.ops import full_softmax_lse, registry

from helpers import DEVICE, FAST, INTERPRETED, assert_close, gradcheck, heavy_for_triton

BACKENDS = registry.available_backends(DEVICE)
# (B, N, D, dims): N and B that divide no tile (the C++ tiles 128 users x 512 items, Triton 64 x 32 / 16 x 16),
# B = 1, D not a power of two, widths below 16 (elementwise in Triton) and from 16 up (tl.dot), one width
SHAPES = [(1, 1, 3, (1, 3)), (7, 300, 20, (3, 16, 20)), (130, 1031, 24, (2, 7, 17, 24)),
          (3, 45, 64, (4, 8, 16, 32, 64)), (5, 19, 8, (8,))]
# the C++ kernel's chunks of items (at most 64 of whole 512-item tiles) and users (128 a tile), crossed
LARGE = (300, 40_000, 12, (4, 12))


def shapes(backend):
    """Triton's interpreter takes seconds a launch: the smaller problems only."""
    return [s for s in SHAPES if backend != "triton" or not INTERPRETED or s[0] * s[1] < 5_000]


def problem(B, N, D, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(B, D, generator=g, dtype=torch.float64) * scale
    table = torch.randn(N, D, generator=g, dtype=torch.float64) * scale
    pos_ids = torch.randint(0, N, (B,), generator=g)
    log_q = (torch.rand(N, generator=g, dtype=torch.float64) * 0.99 + 0.01).log()
    return (user.to(dtype).to(DEVICE), table.to(dtype).to(DEVICE), pos_ids.to(DEVICE), log_q.to(DEVICE))


def materialised(user, table, pos_ids, dims, weights, temperature, log_q):
    """The loss the operator replaces: per width, ``F.cross_entropy`` over the ``(B, N)`` logits."""
    loss = 0
    for w, d in zip(weights, dims):
        logits = user[:, :d] @ table[:, :d].T / temperature
        if log_q is not None:
            logits = logits - log_q
        loss = loss + w * F.cross_entropy(logits, pos_ids, reduction="none")
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("corrected", [False, True], ids=["plain", "log-q"])
def test_equals_cross_entropy_over_materialised_logits(backend, corrected):
    for i, (B, N, D, dims) in enumerate(shapes(backend)):
        user, table, pos_ids, log_q = problem(B, N, D, seed=i)
        log_q = log_q if corrected else None
        weights = torch.rand(len(dims), generator=torch.Generator().manual_seed(i)).tolist()
        u, t = user.clone().requires_grad_(), table.clone().requires_grad_()
        expected = materialised(u, t, pos_ids, dims, weights, 0.7, log_q)
        g = torch.randn(B, dtype=torch.float64, device=DEVICE)
        expected_grads = torch.autograd.grad(expected, (u, t), g)
        # pos looked up from the table inside the graph: its gradient joins the table's
        loss = mk.mrl_softmax_loss(u, t[pos_ids], t, None, dims, weights, 0.7, "none", pos_ids=pos_ids, log_q=log_q,
                                   backend=backend)
        grads = torch.autograd.grad(loss, (u, t), g)
        assert_close(loss, expected, 0.0, 1e-6, f"loss {B, N, D}")
        for a, e, name in zip(grads, expected_grads, ("user", "item_weight")):
            assert_close(a, e, 1e-12, 1e-6, f"grad {name} {B, N, D}")


@pytest.mark.parametrize("backend", [b for b in FAST if b != "triton" or not INTERPRETED])
def test_crosses_chunks_and_user_tiles(backend):
    B, N, D, dims = LARGE
    user, table, pos_ids, log_q = problem(B, N, D, seed=3, scale=0.5)
    u, t = user.clone().requires_grad_(), table.clone().requires_grad_()
    expected = materialised(u, t, pos_ids, dims, [0.5, 0.5], 0.3, log_q)
    expected_grads = torch.autograd.grad(expected.sum(), (u, t))
    loss = mk.mrl_softmax_loss(u, t[pos_ids], t, None, dims, [0.5, 0.5], 0.3, "none", pos_ids=pos_ids, log_q=log_q,
                               backend=backend)
    assert_close(loss, expected, 0.0, 1e-6, "loss")
    for a, e, name in zip(torch.autograd.grad(loss.sum(), (u, t)), expected_grads, ("user", "item_weight")):
        assert_close(a, e, 1e-12, 1e-6, f"grad {name}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lse_matches_reference(backend, dtype):
    """The operator itself, against the reference: exclusion (ids < 0 leave none out) and the correction.
    In float32 a row's gradient sums every item's (a column's every user's) in another order than the
    float64 reference: 1e-4 relative."""
    tol = {torch.float32: (5e-5, 1e-4), torch.float64: (1e-10, 1e-10)}[dtype]
    for i, (B, N, D, dims) in enumerate(shapes(backend)):
        user, table, pos_ids, log_q = problem(B, N, D, seed=10 + i, dtype=dtype)
        exclude = torch.where(torch.arange(B, device=DEVICE) % 2 == 0, pos_ids, -1)
        for q in (None, log_q):
            leaves = [user.clone().requires_grad_(), table.clone().requires_grad_()]
            out = full_softmax_lse(*leaves, dims, 0.5, exclude=exclude, log_q=q, backend=backend)
            ref_leaves = [x.detach().double().cpu().requires_grad_() for x in leaves]
            expected = reference.full_softmax_lse(*ref_leaves, exclude.cpu(), dims, 0.5,
                                                  None if q is None else q.double().cpu())
            assert out.dtype == dtype
            assert_close(out, expected, *tol, f"lse {B, N, D}")
            g = torch.randn(out.shape, dtype=torch.float64)
            for a, e in zip(torch.autograd.grad(out, leaves, g.to(out)), torch.autograd.grad(expected, ref_leaves, g)):
                assert_close(a, e, *tol, f"grad {B, N, D}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradcheck(backend):
    user, table, pos_ids, log_q = problem(4, 9, 5, seed=5)
    pos = table[pos_ids].clone()
    assert gradcheck(lambda u, p, t: mk.mrl_softmax_loss(u, p, t, None, [2, 5], [0.3, 0.7], 0.5, "sum",
                                                         pos_ids=pos_ids, log_q=log_q, backend=backend),
                     tuple(x.requires_grad_() for x in (user, pos, table)), backend)


def test_explicit_backward_matches_autograd_of_reference():
    user, table, pos_ids, log_q = (x.cpu() for x in problem(6, 300, 10, seed=6))
    exclude = pos_ids.clone()
    exclude[0] = -1
    leaves = (user.requires_grad_(), table.requires_grad_())
    lse = reference.full_softmax_lse(*leaves, exclude, [3, 10], 0.4, log_q)
    g = torch.randn(lse.shape, dtype=torch.float64)
    expected = torch.autograd.grad(lse, leaves, g)
    actual = reference.full_softmax_lse_backward(g, *(x.detach() for x in leaves), exclude, lse.detach(), [3, 10], 0.4,
                                                 log_q, [True, True])
    for a, e in zip(actual, expected):
        assert_close(a, e, 1e-12, 1e-10, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_positive_counts_once(backend):
    # one item: the positive is the whole softmax (loss 0, no gradient); two identical items: log 2 at every width
    user, table, pos_ids, _ = problem(3, 1, 4, seed=7)
    leaves = [user.requires_grad_(), table.requires_grad_()]
    loss = mk.mrl_softmax_loss(leaves[0], leaves[1][pos_ids], leaves[1], None, [2, 4], pos_ids=pos_ids,
                               reduction="none", backend=backend)
    assert torch.equal(loss, torch.zeros_like(loss))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in torch.autograd.grad(loss.sum(), leaves))
    twins = table.detach().expand(2, 4).contiguous()
    loss = mk.mrl_softmax_loss(user.detach(), twins[:1].expand(3, 4), twins, None, [2, 4],
                               pos_ids=torch.zeros(3, dtype=torch.long, device=DEVICE), reduction="none",
                               backend=backend)
    assert_close(loss, torch.full_like(loss, 0.6931471805599453), 1e-12, 1e-12, "log 2")


@pytest.mark.parametrize("backend", FAST)
def test_nan_propagates_to_its_row_only(backend):
    user, table, pos_ids, _ = problem(5, 40, 6, seed=8, dtype=torch.float32)
    user[2, 1] = float("nan")
    loss = mk.mrl_softmax_loss(user, table[pos_ids], table, None, [2, 6], pos_ids=pos_ids, reduction="none",
                               backend=backend)
    assert loss.isnan().tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("backend", FAST)
def test_a_frozen_table_gets_no_gradient_and_the_same_user_gradient(backend):
    user, table, pos_ids, _ = problem(6, 50, 8, seed=9, dtype=torch.float32)
    op = getattr(torch.ops.mrl_kernels, f"full_softmax_lse_backward_{backend}")
    lse = full_softmax_lse(user, table, [4, 8], exclude=pos_ids, backend=backend)
    grad = torch.randn(lse.shape, device=DEVICE)
    both = op(grad, user, table, pos_ids, lse, [4, 8], 1.0, None, [True, True])
    users_only = op(grad, user, table, pos_ids, lse, [4, 8], 1.0, None, [True, False])
    assert users_only[1].numel() == 0 and torch.equal(users_only[0], both[0])
    u = user.clone().requires_grad_()
    (expected,) = torch.autograd.grad(full_softmax_lse(u, table, [4, 8], exclude=pos_ids, backend="torch").sum(), u)
    (actual,) = torch.autograd.grad(full_softmax_lse(u, table, [4, 8], exclude=pos_ids, backend=backend).sum(), u)
    assert_close(actual, expected, 1e-5, 1e-5, "grad user")


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the C++ kernels are not built here")
def test_cpp_results_do_not_depend_on_the_thread_count():
    user, table, pos_ids, log_q = problem(200, 9000, 16, seed=11, dtype=torch.float32)
    runs = []
    threads = torch.get_num_threads()
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        try:
            u, t = user.clone().requires_grad_(), table.clone().requires_grad_()
            loss = mk.mrl_softmax_loss(u, t[pos_ids], t, None, [4, 16], pos_ids=pos_ids, log_q=log_q, backend="cpp")
            runs.append((loss.detach(), *torch.autograd.grad(loss, (u, t))))
        finally:
            torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(run, runs[0]))


@pytest.mark.parametrize("backend", [pytest.param(b, marks=heavy_for_triton(b, True)) for b in BACKENDS])
def test_compiles_without_a_graph_break(backend):
    torch._dynamo.reset()
    user, table, pos_ids, log_q = problem(6, 70, 8, seed=12, dtype=torch.float32)

    def step(u, t):
        return mk.mrl_softmax_loss(u, t[pos_ids], t, None, [4, 8], temperature=0.5, pos_ids=pos_ids, log_q=log_q,
                                   backend=backend)

    leaves = [user.clone().requires_grad_(), table.clone().requires_grad_()]
    expected = step(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves)
    actual = torch.compile(step, fullgraph=True)(*leaves)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for a, e in zip(torch.autograd.grad(actual, leaves), expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def _call(**changes):
    user, table, pos_ids, log_q = problem(4, 10, 6, seed=13, dtype=torch.float32)
    args = dict(user=user, pos=table[pos_ids], item_weight=table, candidates=None, dims=[3, 6], pos_ids=pos_ids,
                backend="torch")
    return mk.mrl_softmax_loss(**{**args, **changes})


@pytest.mark.parametrize("changes, error, words", [
    (dict(pos_ids=None), ValueError, "pos_ids is required with candidates=None"),
    (dict(cosine=True), ValueError, "cosine=True needs candidates"),
    (dict(pos_log_q=torch.zeros(4)), ValueError, "log_q[pos_ids]"),
    (dict(log_q=torch.zeros(4, 10)), ValueError, "log_q must have shape (10,)"),
    (dict(log_q=torch.zeros(10, dtype=torch.long)), TypeError, "log_q must be a float tensor"),
    (dict(pos_ids=torch.tensor([0, 1, 2, 10])), ValueError, "pos_ids must lie in [0, 10)"),
    (dict(pos_ids=torch.zeros(3, dtype=torch.long)), ValueError, "pos_ids must have shape (4,)"),
    (dict(dims=[3, 5]), ValueError, "dims[-1] must equal the embedding width 6"),
    (dict(item_weight=torch.zeros(10, 5)), ValueError, "item_weight has width 5"),
    (dict(temperature=0.0), ValueError, "temperature must be a finite number >= 5.42101e-20 in float32"),
    (dict(temperature=1e-30), ValueError, "temperature must be a finite number >= 5.42101e-20 in float32"),
    # an item that could never be drawn has an infinite logit: every item is a candidate here
    (dict(log_q=torch.tensor([0.0] * 9 + [-float("inf")])), ValueError,
     "log_q must be finite in float32 (the dtype of the logits) at every item; got [-inf] at 1 places"),
    (dict(log_q=torch.tensor([0.0] * 9 + [float("nan")], dtype=torch.float64)), ValueError, "log_q must be finite"),
    (dict(layout="shared"), ValueError, "layout is for candidate pools: with candidates=None"),
])
def test_bad_arguments_are_named(changes, error, words):
    with pytest.raises(error) as raised:
        _call(**changes)
    assert words in str(raised.value)


def test_bad_lse_arguments_are_named():
    user, table, _, _ = problem(4, 10, 6, seed=14, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"exclude must be < 10 \(the rows of item_weight; ids < 0 are padding\)"):
        full_softmax_lse(user, table, [6], exclude=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"exclude must have shape \(4,\)"):
        full_softmax_lse(user, table, [6], exclude=torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"log_q must have shape \(10,\) on cpu \(one per item\)"):
        full_softmax_lse(user, table, [6], log_q=torch.zeros(9))
