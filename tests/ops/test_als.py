"""The nested least-squares solve (:func:`mrl_kernels.ops.nested_als_solve`):
every fast backend against the reference, the reference against a dense
float64 solve and, at one level, against implicit's iALS step."""
import numpy as np
import pytest
import torch

from mrl_kernels.ops import CSR
from mrl_kernels.ops import nested_als_solve, nested_gram

from helpers import DEVICE, FAST, assert_close


def _problem(rows, items, dim, nnz, seed, dtype=torch.float64, empty=()):
    """Random factors, the other side's table and a CSR whose rows ``empty`` hold nothing."""
    g = torch.Generator().manual_seed(seed)
    r, c = torch.randint(0, rows, (nnz,), generator=g), torch.randint(0, items, (nnz,), generator=g)
    keep = ~torch.isin(r, torch.tensor(list(empty), dtype=torch.int64))
    csr = CSR.from_pairs(r[keep].numpy(), c[keep].numpy(), rows, items)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    y = torch.randn(items, dim, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    return x, y, csr


def _dense_solution(y, csr, dims, weights, alpha, reg):
    """Each row's ``A x = b`` built as a dense float64 matrix, each width's terms added one by one
    (``alpha`` and ``reg`` a float or one per width), and solved directly."""
    y, D = y.double().cpu(), y.shape[1]
    level = lambda value: value if isinstance(value, (list, tuple)) else [value] * len(dims)  # noqa: E731
    solved = []
    for r in range(csr.n_rows):
        seen = y[csr.indices[csr.indptr[r]:csr.indptr[r + 1]]]
        a, b = torch.zeros(D, D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
        for d, w, al, rg in zip(dims, weights, level(alpha), level(reg)):
            a[:d, :d] += w * (y[:, :d].T @ y[:, :d] + (al - 1) * seen[:, :d].T @ seen[:, :d] + rg * torch.eye(d, dtype=torch.float64))
            b[:d] += w * al * seen[:, :d].sum(0)
        solved.append(torch.linalg.solve(a, b))
    return torch.stack(solved)


@pytest.mark.parametrize("dim, dims", [(6, [2, 3, 6]), (7, [1, 3, 7]), (16, [4, 8, 16]), (5, [5])])
def test_enough_steps_solve_the_dense_system(dim, dims):
    """Conjugate gradient in float64 from any start reaches the exact solution (D steps in exact
    arithmetic; a few times D in floating point)."""
    x, y, csr = _problem(9, 13, dim, 40, seed=dim, empty=(2, 5))
    weights = torch.rand(len(dims), generator=torch.Generator().manual_seed(1)).tolist()
    solved = nested_als_solve(x, y, csr, dims, weights, alpha=7.0, reg=0.3, cg_steps=4 * dim, backend="torch")
    assert_close(solved, _dense_solution(y, csr, dims, weights, 7.0, 0.3), atol=1e-9, rtol=1e-9, name="solve")
    assert float(solved[2].abs().max()) < 1e-9, "a row without items solves to zero"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# the C++ kernel's observed part goes 4 floats or 2 doubles at a time where every width allows it, else
# 2 or 1: [2, 6, 10] (2 lanes in float), [4, 16, 28] (segments of 4 and 12: a lone step after the pairs)
@pytest.mark.parametrize("dim, dims, steps", [(6, [2, 3, 6], 3), (7, [1, 3, 7], 5), (33, [4, 8, 16, 33], 2),
                                              (64, [4, 8, 16, 32, 64], 3), (10, [2, 6, 10], 3), (28, [4, 16, 28], 4)])
def test_backends_match_the_reference(backend, dtype, dim, dims, steps):
    x, y, csr = _problem(11, 17, dim, 50, seed=dim, dtype=dtype, empty=(0, 7))
    weights = [0.1 * (i + 1) for i in range(len(dims))]
    expected = nested_als_solve(x, y, csr, dims, weights, alpha=5.0, reg=0.2, cg_steps=steps, backend="torch")
    actual = nested_als_solve(x, y, csr, dims, weights, alpha=5.0, reg=0.2, cg_steps=steps, backend=backend)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert_close(actual, expected, atol=tol, rtol=tol, name=f"{backend} {dtype}")


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_one_level_is_implicits_ials_step(backend):
    """With the weight on the full width only, one solve is implicit's conjugate-gradient user step."""
    implicit_als = pytest.importorskip("implicit.cpu._als", reason="implicit is not installed (the bench extra)")
    import scipy.sparse

    x, y, csr = _problem(20, 30, 16, 90, seed=3, dtype=torch.float32, empty=(4,))
    alpha, reg = 12.0, 0.7
    confidence = scipy.sparse.csr_matrix((np.full(csr.nnz, alpha, dtype=np.float32), csr.indices.numpy(),
                                          csr.indptr.numpy()), shape=(csr.n_rows, csr.n_cols))
    theirs = x.cpu().numpy().copy()
    implicit_als.least_squares_cg(confidence, theirs, y.cpu().numpy().copy(), reg, num_threads=1, cg_steps=3)
    ours = nested_als_solve(x, y, csr, [4, 8, 16], [0.0, 0.0, 1.0], alpha=alpha, reg=reg, cg_steps=3,
                            backend=backend)
    assert_close(ours, torch.from_numpy(theirs), atol=1e-4, rtol=1e-4, name="against implicit")


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_ties_and_repeated_rows_solve_alike(backend):
    """Two rows with the same items and start solve to the same vector."""
    y = torch.randint(-2, 3, (8, 4), generator=torch.Generator().manual_seed(0)).double().to(DEVICE)
    csr = CSR.from_pairs([0, 0, 1, 1], [3, 5, 3, 5], 2, 8)
    x = torch.ones(2, 4, dtype=torch.float64, device=DEVICE)
    solved = nested_als_solve(x, y, csr, [2, 4], alpha=3.0, reg=1.0, cg_steps=4, backend=backend)
    assert torch.equal(solved[0], solved[1])


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_nan_reaches_the_output(backend):
    """A NaN start stays in its row; a NaN in the other side's table enters every row's Gram part
    (a row without items is zero whatever the table)."""
    x, y, csr = _problem(6, 9, 4, 20, seed=5, empty=(3,))
    x[1, 2] = torch.nan
    solved = nested_als_solve(x, y, csr, [2, 4], alpha=2.0, reg=0.1, cg_steps=3, backend=backend)
    assert bool(solved[1].isnan().all()) and bool(torch.isfinite(solved[[0, 2, 3, 4, 5]]).all())
    y[0, 0] = torch.nan
    solved = nested_als_solve(x, y, csr, [2, 4], alpha=2.0, reg=0.1, cg_steps=3, backend=backend)
    assert bool(solved[[0, 1, 2, 4, 5]].isnan().all()) and not bool(solved[3].any())


def test_the_gram_part_is_the_masked_gram_matrix():
    y = torch.randn(10, 5, dtype=torch.float64)
    gram = nested_gram(y, [2, 5], torch.tensor([0.25, 0.75]), 0.5)
    expected = 0.75 * y.T @ y + 0.5 * 0.75 * torch.eye(5, dtype=torch.float64)
    expected[:2, :2] += 0.25 * y[:, :2].T @ y[:, :2] + 0.5 * 0.25 * torch.eye(2, dtype=torch.float64)
    assert_close(gram, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("change, words", [
    (dict(alpha=0.0), "alpha must be a finite number > 0"),
    (dict(alpha=float("nan")), "alpha must be"),
    (dict(reg=-1.0), "reg must be a finite number >= 0"),
    (dict(cg_steps=0), "cg_steps must be an int >= 1"),
    (dict(dims=[2, 3]), "dims[-1] must equal the embedding width 4"),
    (dict(weights=[1.0]), "weights must have one entry per level (2)"),
    (dict(interactions=CSR.from_pairs([0], [1], 3, 9)), "interactions has 3 rows but factors has 6"),
    (dict(interactions=CSR.from_pairs([0], [20], 6, 21)), "indices must lie in [0, 9)"),
    (dict(interactions="rows"), "interactions must be a CSR with indptr and indices"),
    (dict(factors=torch.zeros(6, 4, dtype=torch.float16)), "other has dtype torch.float32 but factors has"),
    (dict(other=torch.zeros(9, 5)), "other has width 5 but factors has width 4"),
])
def test_bad_arguments_name_themselves(change, words):
    x, y, csr = _problem(6, 9, 4, 20, seed=5, dtype=torch.float32)
    arguments = dict(factors=x, other=y, interactions=csr, dims=[2, 4], weights=None, alpha=2.0, reg=0.1,
                     cg_steps=3)
    arguments.update(change)
    with pytest.raises((ValueError, TypeError)) as raised:
        nested_als_solve(**arguments)
    assert words in str(raised.value)


def test_half_precision_is_refused():
    x = torch.zeros(2, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="factors must be float32 or float64"):
        nested_als_solve(x, x, CSR.from_pairs([0], [1], 2, 2), [4], alpha=2.0, reg=0.1)
