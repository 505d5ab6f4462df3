"""Scalars and level weights are checked in the dtype that computes with them,
with bounds that keep the result finite: no operator returns all-NaN for an
alpha, reg, temperature or eps that its dtype cannot hold, and weights that
are all 0 (or round to 0) are refused instead of fitting nothing."""
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import ops
from mrl_kernels.ops.testing import make_inputs

from helpers import DEVICE, FAST

BACKENDS = ["torch", *FAST]
F32 = torch.finfo(torch.float32)


def als_problem(dtype=torch.float32, scale=1.0, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    csr = ops.CSR.from_pairs(torch.randint(0, 12, (120,), generator=g), torch.randint(0, 30, (120,), generator=g),
                             12, 30)
    x, y = (torch.randn(n, dim, generator=g, dtype=torch.float64).mul(scale).to(dtype).to(DEVICE) for n in (12, 30))
    return x, y, csr


def solve(x, y, csr, weights=None, backend="torch", **scalars):
    scalars = {"alpha": 2.0, "reg": 0.5, **scalars}
    return mk.nested_als_solve(x, y, csr, [4, 8, 16], weights, **scalars, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, value", [("alpha", 1e39), ("reg", 1e40), ("alpha", 1e-50)])
def test_als_scalars_float32_cannot_hold_are_refused(backend, name, value):
    x, y, csr = als_problem()
    with pytest.raises(ValueError, match=f"{name} must be a finite number .* in float32 \\(the dtype it is computed"):
        solve(x, y, csr, backend=backend, **{name: value})
    # float64 holds them (below its bound): a finite solve
    if value < 1e77:
        assert bool(torch.isfinite(solve(x.double(), y.double(), csr, backend=backend, **{name: value})).all())
    with pytest.raises(ValueError, match="alpha must be a finite number > 0 and <= 1.15792e\\+77 in float64"):
        solve(x.double(), y.double(), csr, backend=backend, alpha=1e80)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_overflowing_solve_is_an_error_not_nan(backend):
    x, y, csr = als_problem(scale=30.0, dim=16)  # vectors of norm ~120: float32 overflows below the bound
    with pytest.raises(ValueError, match="nested_als_solve overflowed float32 with alpha up to 1e\\+09.*solve in float64"):
        solve(x, y, csr, backend=backend, alpha=1e9)
    assert bool(torch.isfinite(solve(x.double(), y.double(), csr, backend=backend, alpha=1e9)).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_als_weights_all_zero_are_refused_and_their_scale_does_not_matter(backend):
    x, y, csr = als_problem(torch.float64, seed=1)
    for weights, words in (([0.0, 0.0, 0.0], "weights must not all be 0"), ([1e-50, 0.0, 0.0], "normal float32")):
        with pytest.raises(ValueError, match=words):
            solve(x, y, csr, weights, backend=backend)
    weights = torch.tensor([0.25, 0.5, 1.5])
    plain = solve(x, y, csr, weights, backend=backend)
    assert not torch.equal(plain, x)
    for factor in (2.0 ** -100, 2.0 ** 100):  # tiny weights once returned the warm start; huge ones NaN
        assert torch.equal(solve(x, y, csr, weights * factor, backend=backend), plain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_temperature_is_checked_in_the_dtype_of_the_logits(backend):
    x = make_inputs(6, 16, 30, 4, [4, 8, 16], device=DEVICE, seed=2)
    args = (x["user"], x["pos"], x["item_weight"], x["candidates"], x["dims"])
    with pytest.raises(ValueError, match="temperature must be a finite number >= 5.42101e-20 in float32"):
        mk.mrl_softmax_loss(*args, temperature=1e-300, backend=backend)
    # the smallest temperature allowed keeps logits, loss and gradients finite
    leaves = [t.detach().clone().requires_grad_() for t in args[:3]]
    loss = mk.mrl_softmax_loss(*leaves, *args[3:], temperature=6e-20, backend=backend)
    assert bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in torch.autograd.grad(loss, leaves))
    doubled = [t.double() for t in args[:3]]
    with pytest.raises(ValueError, match="temperature must be a finite number >= 7.45834e-155 in float64"):
        mk.mrl_softmax_loss(*doubled, *args[3:], temperature=1e-300, backend=backend)
    assert bool(torch.isfinite(mk.mrl_softmax_loss(*doubled, *args[3:], temperature=1e-100, backend=backend)))


@pytest.mark.parametrize("weights, words", [
    ([0.0, 0.0, 0.0], "weights must not all be 0"),
    ([1e-50, 0.0, 0.0], "normal float32"),
    ([1e-40, 1.0, 1.0], "normal float32"),
    ([1e39, 1.0, 1.0], "normal float32"),
    ("abc", "weights must be a sequence, array or tensor of 3 numbers"),
    ([1.0, "a", 2.0], "weights must be a sequence, array or tensor of 3 numbers"),
    (0.5, "weights must be a sequence, array or tensor of 3 numbers"),
])
def test_loss_weights_are_checked_where_they_weigh(weights, words):
    x = make_inputs(6, 16, 30, 4, [4, 8, 16], device=DEVICE, seed=3)
    calls = (lambda: mk.mrl_bpr_loss(x["user"], x["pos"], x["neg"], x["dims"], weights),
             lambda: mk.mns_bpr_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], x["dims"], weights),
             lambda: mk.mrl_softmax_loss(x["user"], x["pos"], x["item_weight"], x["candidates"], x["dims"], weights))
    for call in calls:
        with pytest.raises((ValueError, TypeError), match=words):
            call()


def test_lazy_adam_eps_that_rounds_to_zero_is_refused():
    tables = [torch.zeros(4, 3) for _ in range(3)]
    with pytest.raises(ValueError, match="eps must be a finite number > 0 in float32"):
        ops.lazy_adam(*tables, torch.tensor([1, 2]), torch.zeros(2, 3), beta1=0.9, beta2=0.999, eps=1e-50,
                      step_size=0.1)
    assert not bool(tables[0].isnan().any())
