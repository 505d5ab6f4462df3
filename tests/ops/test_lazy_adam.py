"""The lazy Adam row pass (mrl_kernels.ops.lazy_adam): every backend against the
reference on fresh random tables, awkward widths, float64, strided gradient
rows, rows never touched; bad arguments named."""
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import reference

from helpers import DEVICE, FAST, assert_close


def _tables(n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    param = torch.randn(n, d, generator=g, dtype=torch.float64)
    m = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    v = torch.rand(n, d, generator=g, dtype=torch.float64)
    rows = torch.randperm(n, generator=g)[:max(1, n // 3)]
    values = torch.randn(len(rows), d, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(DEVICE) for t in (param, m, v)], rows.to(DEVICE), values.to(dtype).to(DEVICE)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d", [(7, 1), (30, 5), (50, 64), (9, 33)])
def test_every_backend_moves_the_rows_as_the_reference(backend, dtype, n, d):
    for seed in range(3):
        tables, rows, values = _tables(n, d, dtype, seed)
        expected = [t.clone() for t in tables]
        reference.lazy_adam(*expected, rows, values, 0.9, 0.999, 1e-8, 0.05)
        mk.ops.lazy_adam(*tables, rows, values, beta1=0.9, beta2=0.999, eps=1e-8, step_size=0.05, backend=backend)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        for name, actual, wanted in zip(("param", "exp_avg", "exp_avg_sq"), tables, expected):
            assert_close(actual, wanted, atol=tol, rtol=tol, name=f"{backend} {name}")
        untouched = torch.ones(n, dtype=torch.bool, device=DEVICE)
        untouched[rows] = False
        fresh = _tables(n, d, dtype, seed)[0]
        for actual, before in zip(tables, fresh):
            assert torch.equal(actual[untouched], before[untouched])


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_strided_gradient_rows_and_no_rows(backend):
    tables, rows, values = _tables(20, 6, torch.float32, 0)
    wide = torch.zeros(len(rows), 12, device=DEVICE)
    wide[:, ::2] = values
    expected = [t.clone() for t in tables]
    reference.lazy_adam(*expected, rows, values, 0.8, 0.99, 1e-6, 0.1)
    mk.ops.lazy_adam(*tables, rows, wide[:, ::2], beta1=0.8, beta2=0.99, eps=1e-6, step_size=0.1, backend=backend)
    for actual, wanted in zip(tables, expected):
        assert_close(actual, wanted, atol=1e-6, rtol=1e-6)
    before = [t.clone() for t in tables]
    mk.ops.lazy_adam(*tables, rows[:0], values[:0], beta1=0.8, beta2=0.99, eps=1e-6, step_size=0.1, backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(tables, before))


def test_bad_arguments_name_themselves():
    tables, rows, values = _tables(10, 4, torch.float32, 0)
    good = dict(beta1=0.9, beta2=0.999, eps=1e-8, step_size=0.1)
    cases = [
        ((tables[0], tables[1][:5], tables[2], rows, values), good, ValueError, "exp_avg has shape"),
        ((tables[0], tables[1], tables[2].double(), rows, values), good, TypeError, "exp_avg_sq has dtype"),
        ((tables[0], tables[1], tables[2], rows.float(), values), good, TypeError, "indices must hold integer ids"),
        ((tables[0], tables[1], tables[2], rows + 10, values), good, ValueError,
         r"indices must lie in \[0, 10\) \(the rows of param\)"),
        ((tables[0], tables[1], tables[2], rows, values[:, :3]), good, ValueError, "values must hold one row"),
        ((tables[0].t(), tables[1], tables[2], rows, values), good, ValueError, "exp_avg has shape"),
        ((tables[0], tables[1], tables[2], rows, values), {**good, "beta1": 1.0}, ValueError,
         r"beta1 must be a finite number >= 0 and < 1"),
        ((tables[0], tables[1], tables[2], rows, values), {**good, "eps": 0.0}, ValueError,
         "eps must be a finite number > 0"),
        ((tables[0], tables[1], tables[2], rows, values), {**good, "step_size": float("nan")}, ValueError,
         "step_size must be a finite number >= 0"),
    ]
    for args, kwargs, error, words in cases:
        with pytest.raises(error, match=words):
            mk.ops.lazy_adam(*args, **kwargs)
