"""Per-width confidence ``alpha_l`` and L2 weight ``reg_l`` in :func:`nested_als_solve`:
the dense float64 solve of ``sum_l w_l [sum_obs alpha_l (1 - s_l)^2 + sum_unobs s_l^2 +
reg_l |x[:d_l]|^2]`` built width by width, every fast backend against the reference,
a float and its broadcast alike, and the arguments' checks."""
import numpy as np
import pytest
import torch

from mrl_kernels.ops import nested_als_solve
from mrl_kernels.ops.als import observed_terms

from helpers import FAST, assert_close
from test_als import _dense_solution, _problem

ALPHAS, REGS = [0.6, 3.0, 40.0], [10.0, 0.1, 2.5]


@pytest.mark.parametrize("dim, dims", [(6, [2, 3, 6]), (9, [1, 4, 9])])
def test_per_width_values_solve_the_dense_system(dim, dims):
    x, y, csr = _problem(9, 13, dim, 40, seed=dim, empty=(2,))
    weights = [0.5, 0.2, 1.0]
    solved = nested_als_solve(x, y, csr, dims, weights, alpha=ALPHAS, reg=REGS, cg_steps=4 * dim, backend="torch")
    assert_close(solved, _dense_solution(y, csr, dims, weights, ALPHAS, REGS), atol=1e-9, rtol=1e-9, name="solve")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim, dims", [(7, [1, 3, 7]), (64, [8, 16, 64])])
def test_backends_match_the_reference_per_width(backend, dtype, dim, dims):
    x, y, csr = _problem(11, 17, dim, 50, seed=dim + 1, dtype=dtype, empty=(0, 7))
    weights = [0.3, 0.0, 1.0]
    kwargs = dict(alpha=np.array(ALPHAS), reg=torch.tensor(REGS), cg_steps=3)
    expected = nested_als_solve(x, y, csr, dims, weights, backend="torch", **kwargs)
    actual = nested_als_solve(x, y, csr, dims, weights, backend=backend, **kwargs)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert_close(actual, expected, atol=tol, rtol=tol, name=f"{backend} {dtype}")


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_a_float_is_its_broadcast(backend):
    x, y, csr = _problem(8, 10, 6, 30, seed=2)
    one = nested_als_solve(x, y, csr, [2, 6], alpha=4.0, reg=0.5, backend=backend)
    each = nested_als_solve(x, y, csr, [2, 6], alpha=(4.0, 4.0), reg=[0.5, 0.5], backend=backend)
    assert torch.equal(one, each)


def test_alpha_one_leaves_only_the_gram_part():
    """alpha_l = 1 at every width: observed pairs weigh as unobserved ones (no observed part)."""
    x, y, csr = _problem(5, 8, 4, 20, seed=4, empty=(1,))
    solved = nested_als_solve(x, y, csr, [2, 4], [1.0, 1.0], alpha=1.0, reg=[0.3, 0.7], cg_steps=16)
    assert_close(solved, _dense_solution(y, csr, [2, 4], [1.0, 1.0], 1.0, [0.3, 0.7]), atol=1e-9, rtol=1e-9)


def test_observed_terms_take_one_alpha_per_width():
    g = torch.Generator().manual_seed(0)
    user, item = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g,
                                                                                   dtype=torch.float64)
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64)
    terms = observed_terms(user, item, [2, 4], weights, torch.tensor([3.0, 7.0], dtype=torch.float64))
    s2, s4 = (user[:, :2] * item[:, :2]).sum(1), (user * item).sum(1)
    expected = torch.stack([0.5 * (3 * (1 - s2) ** 2 - s2 ** 2), 2 * (7 * (1 - s4) ** 2 - s4 ** 2)], 1)
    assert_close(terms, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("change, words", [
    (dict(alpha=[1.0, 2.0, 3.0]), "alpha must be a number or one per level (2), got 3 values"),
    (dict(alpha=[1.0, 0.0]), "alpha[1] must be a finite number > 0"),
    (dict(reg=[0.1, -1.0]), "reg[1] must be a finite number >= 0"),
    (dict(reg=[0.1, float("inf")]), "reg[1] must be a finite number >= 0"),
    (dict(reg="0.1"), "reg must be a number or one per level (2)"),
    (dict(alpha=torch.ones(2, 2)), "alpha must be a number or one per level (2)"),
])
def test_bad_per_width_values_name_themselves(change, words):
    x, y, csr = _problem(6, 9, 4, 20, seed=5, dtype=torch.float32)
    arguments = dict(alpha=2.0, reg=0.1)
    arguments.update(change)
    with pytest.raises(ValueError) as raised:
        nested_als_solve(x, y, csr, [2, 4], **arguments)
    assert words in str(raised.value)
