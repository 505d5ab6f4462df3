"""LazyAdam: torch's SparseAdam rule, on the rows in the gradient only, through
the row pass of every backend (tests/ops/test_lazy_adam.py tests the operator)."""
import pytest
import torch
import torch.nn.functional as F

from mrl_kernels.ops import registry
from mrl_kernels.training.optim import LazyAdam

PATHS = registry.available_backends("cpu")  # the reference, C++, Triton (its interpreter here)


def _train(make_optimizer, dtype, steps=6, threads=None):
    """A few steps on a (40, 8) table whose batches repeat ids and miss most rows."""
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(40, 8, dtype=dtype))
    opt = make_optimizer([table])
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 12, (30,), generator=g)  # rows 12.. never looked up
        loss = (F.embedding(ids, table, sparse=True) * torch.randn(30, 8, generator=g, dtype=dtype)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return table.detach(), opt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lazy_adam_is_sparse_adam(path, dtype):
    expected, reference_opt = _train(lambda p: torch.optim.SparseAdam(p, lr=0.05), dtype)
    actual, opt = _train(lambda p: LazyAdam(p, lr=0.05, backend=path), dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)
    state, reference_state = next(iter(opt.state.values())), next(iter(reference_opt.state.values()))
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state[key], reference_state[key], rtol=tol, atol=tol)
    torch.manual_seed(0)
    start = torch.randn(40, 8, dtype=dtype)  # the table before training
    assert torch.equal(actual[12:], start[12:]) and not torch.equal(actual[:12], start[:12])
    assert not state["exp_avg"][12:].any()


@pytest.mark.skipif("cpp" not in PATHS, reason="the C++ library is not built here")
def test_the_fused_pass_gives_the_same_bytes_at_one_and_two_threads():
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_train(lambda p: LazyAdam(p, lr=0.05), torch.float32)[0])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*results)


def test_dense_gradients_and_bad_settings_are_refused():
    table = torch.nn.Parameter(torch.randn(5, 3))
    opt = LazyAdam([table])
    table[[1, 2]].sum().backward()
    with pytest.raises(RuntimeError, match="row-sparse gradients"):
        opt.step()
    for kwargs, words in ((dict(lr=0), "lr must be a finite number > 0"), (dict(betas=(0.9, 1.0)), "betas"),
                          (dict(eps=0), "eps must be a finite number > 0")):
        with pytest.raises(ValueError, match=words):
            LazyAdam([table], **kwargs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad_row", [53, -2])
def test_rows_outside_the_table_are_refused_before_anything_moves(path, bad_row):
    table, dense = torch.nn.Parameter(torch.randn(50, 4)), torch.nn.Parameter(torch.randn(3))
    before = table.detach().clone()
    opt = LazyAdam([table], backend=path)
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, bad_row]]), torch.ones(2, 4), (50, 4))
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 50\)"):
        opt.step()
    assert torch.equal(table.detach(), before) and not opt.state
    # a dense gradient anywhere is refused before the sparse table beside it moves
    both = LazyAdam([table, dense])
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 2]]), torch.ones(2, 4), (50, 4))
    dense.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="row-sparse gradients"):
        both.step()
    assert torch.equal(table.detach(), before) and not both.state


def test_non_finite_and_malformed_settings_are_refused():
    table = torch.nn.Parameter(torch.randn(5, 3))
    for kwargs, words in ((dict(lr=float("inf")), "lr must be a finite number > 0"),
                          (dict(lr=float("nan")), "lr must be a finite number > 0"), (dict(betas=(0.9,)), "betas must be two numbers"),
                          (dict(betas=(0.9, float("nan"))), "betas"), (dict(eps=float("inf")), "eps must be a finite number > 0")):
        with pytest.raises(ValueError, match=words):
            LazyAdam([table], **kwargs)
