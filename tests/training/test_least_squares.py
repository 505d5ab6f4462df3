"""Nested least squares: mrl-als (solved in sweeps) and mrl-ls (by gradient)."""

import pandas as pd
import pytest
import torch

from mrl_kernels import load_run
from mrl_kernels.training import data
from mrl_kernels.training import TrainConfig, train

from helpers import SMALL, same_run


ALS = dict(method="mrl-als", dims=(4, 8, 16), l2=1.0, alpha=10.0, progress=False)


def test_mrl_als_sweeps_lower_its_objective_and_serve_like_every_method(tmp_path, small):
    result = train(TrainConfig(epochs=5, patience=100, out=str(tmp_path), **ALS), log=lambda _: None, dataset=small)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3, 4, 5]  # mrl-als evaluates every sweep by default
    assert history.loss.is_monotonic_decreasing, "each conjugate-gradient solve lowers the objective"
    assert set(result["prefix"]) == {"4", "8", "16"} and result["refit_epochs"] == result["best_epoch"]
    assert result["config"]["alpha"] == 10.0 and result["config"]["cg_steps"] == 3
    assert result["backends"]["nested_als_solve"] == "cpp"
    # the first sweeps of a nested least-squares fit beat a random model by far
    assert result["test"]["recall@20"] > 5 * train(
        TrainConfig(epochs=1, eval_every=1, lr=1e-9, out=str(tmp_path / "random"), progress=False, dims=(4, 8, 16)),
        log=lambda _: None, dataset=small)["test"]["recall@20"]
    run = load_run(tmp_path)
    table = run.recommend(run.user_ids[:3], 5)
    assert len(table) == 15


def test_mrl_als_resumes_exactly(tmp_path, small):
    config = {**ALS, "refit": False, "patience": 100}
    straight = train(TrainConfig(epochs=4, out=str(tmp_path / "a"), **config), log=lambda _: None, dataset=small)
    train(TrainConfig(epochs=2, out=str(tmp_path / "b"), **config), log=lambda _: None, dataset=small)
    resumed = train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **config), log=lambda _: None, dataset=small,
                    resume=True)
    assert same_run(straight, resumed)


def test_mrl_als_at_one_level_is_implicits_ials(small):
    """Weights (0, ..., 0, 1): a sweep is implicit's iteration, users then items, with l2 as its
    regularization (each half compared from the same inputs)."""
    implicit_als = pytest.importorskip("implicit.cpu._als", reason="implicit is not installed (the bench extra)")
    import numpy as np
    import scipy.sparse
    from threadpoolctl import threadpool_limits

    from mrl_kernels.training.als import AlsFit

    # l2 10: conjugate gradient's first steps from the tiny random start amplify float32 rounding
    # in proportion to the system's condition number
    fit = AlsFit(TrainConfig(**{**ALS, "l2": 10.0, "level_weights": (0.0, 0.0, 1.0)}), small.train,
                 torch.device("cpu"))
    users, items = (t.detach().numpy().copy() for t in fit.model.tables())
    fit.epoch()
    ours_users, ours_items = (t.detach().numpy() for t in fit.model.tables())
    rows, cols = small.train.pairs()
    confidence = scipy.sparse.csr_matrix((np.full(len(rows), 10.0, dtype=np.float32), (rows, cols)),
                                         shape=(small.n_users, small.n_items))
    with threadpool_limits(1, "blas"):
        implicit_als.least_squares_cg(confidence, users, items, 10.0, num_threads=1, cg_steps=3)
        np.testing.assert_allclose(ours_users, users, atol=1e-5, rtol=1e-4)
        implicit_als.least_squares_cg(confidence.T.tocsr(), items, ours_users.copy(), 10.0, num_threads=1,
                                      cg_steps=3)
    np.testing.assert_allclose(ours_items, items, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("change, words", [
    (dict(model="lightgcn"), "needs --model mf"),
    (dict(level_weights=(1.0, 1.0)), "level_weights must have one weight per width"),
    (dict(level_weights=(0.0, 0.0, 0.0)), "not all 0"),
    (dict(alpha=-1.0), "alpha must be a finite number > 0"),
    (dict(cg_steps=0), "cg_steps must be an int >= 1"),
    (dict(rotations=-1), "rotations must be an int >= 0"),
    (dict(rotations=1.5), "rotations must be an int >= 0"),
    (dict(sparse=True), "no sparse path"),
    (dict(method="mrl-m"), "alpha only applies to mrl-ls, mrl-als, not --method mrl-m"),
    (dict(method="mrl-ls"), "cg_steps only applies to mrl-als, not --method mrl-ls"),
    (dict(method="mrl-ls", cg_steps=None, rotations=2), "rotations only applies to mrl-als, not --method mrl-ls"),
])
def test_mrl_als_settings_are_checked(change, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**{**ALS, "cg_steps": 3, **change}).check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_keeps_the_product_and_orders_the_basis(dtype):
    from mrl_kernels.training.als import rotate_to_singular_basis

    g = torch.Generator().manual_seed(3)
    users, items = torch.randn(50, 6, generator=g, dtype=dtype), torch.randn(30, 6, generator=g, dtype=dtype) * 3
    product = users.double() @ items.double().T
    before = float(users.double().square().sum() + items.double().square().sum())
    assert rotate_to_singular_basis(users, items) and users.dtype == items.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(users.double() @ items.double().T, product, rtol=tol, atol=tol)
    gram_u, gram_i = users.double().T @ users.double(), items.double().T @ items.double()
    torch.testing.assert_close(gram_u, gram_i, rtol=tol, atol=tol * float(gram_u.abs().max()))
    diagonal = torch.diagonal(gram_u)
    torch.testing.assert_close(gram_u, torch.diag(diagonal), rtol=0, atol=tol * float(diagonal.max()))
    assert bool((diagonal[:-1] >= diagonal[1:]).all()), "the widest singular directions first"
    # each prefix is the product's truncated SVD: width 2 holds its best rank-2 approximation
    u, s, vt = torch.linalg.svd(product)
    torch.testing.assert_close(users[:, :2].double() @ items[:, :2].double().T, (u[:, :2] * s[:2]) @ vt[:2],
                               rtol=tol, atol=tol * float(s[0]))
    # the balanced factorisation has the least squared norm of any with this product
    assert float(users.double().square().sum() + items.double().square().sum()) <= before


@pytest.mark.parametrize("case", ["fewer rows than columns", "dependent columns", "a zero column"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_is_skipped_where_a_gramian_is_singular(case, dtype):
    from mrl_kernels.training.als import rotate_to_singular_basis

    g = torch.Generator().manual_seed(5)
    users, items = torch.randn(40, 6, generator=g, dtype=dtype), torch.randn(30, 6, generator=g, dtype=dtype)
    if case == "fewer rows than columns":
        users = users[:3]
    elif case == "dependent columns":
        items[:, 5] = items[:, 0] * 0.3 + items[:, 2] * 1.7
    else:
        users[:, 4] = 0
    kept = users.clone(), items.clone()
    assert not rotate_to_singular_basis(users, items)
    assert torch.equal(users, kept[0]) and torch.equal(items, kept[1])


def test_rotations_turn_nested_fits_only(small):
    """The first sweeps of a nested fit end by a rotation; a fit whose narrower widths weigh 0
    is iALS's, sweep for sweep, whatever ``rotations``."""
    from mrl_kernels.training.als import AlsFit

    def tables(**change):
        fit = AlsFit(TrainConfig(**{**ALS, "epochs": 3, **change}), small.train, torch.device("cpu"))
        for _ in range(3):
            fit.epoch(loss=False)
        return [t.detach().clone() for t in fit.model.tables()]

    one_level = dict(level_weights=(0.0, 0.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(tables(rotations=0, **one_level), tables(rotations=3, **one_level)))
    plain, once, turned = tables(rotations=0), tables(rotations=1), tables(rotations=3)
    assert not torch.equal(plain[0], once[0]) and not torch.equal(once[0], turned[0])


def test_least_squares_by_gradient_is_its_objective_pair_by_pair():
    """mrl-ls's batch loss: the observed pairs' nested iALS terms, every (user, item) pair
    of the batch's rows through the Gramians, scaled by users x items / observed."""
    from mrl_kernels.training.backbones import Batch
    from mrl_kernels.training.methods import METHODS

    interactions = data.CSR.from_pairs([0, 1, 2, 2], [1, 3, 0, 4], 3, 6)
    config = TrainConfig(method="mrl-ls", dims=(2, 5), l2=0.1, alpha=3.0, level_weights=(0.5, 2.0))
    objective = METHODS["mrl-ls"].objective(config, interactions)
    assert objective.candidate_shape == (0,)
    g = torch.Generator().manual_seed(0)
    user, pos = (torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    batch = Batch(user, pos, pos, user, pos, pos)
    observed = unobserved = 0.0
    for level, d in enumerate((2, 5)):
        w = (0.5, 2.0)[level]
        s = (user[:, :d] * pos[:, :d]).sum(1)
        observed = observed + w * (3.0 * (1 - s) ** 2 - s ** 2).mean()
        unobserved = unobserved + w * ((user[:, :d] @ pos[:, :d].T) ** 2).mean()
    expected = observed + 3 * 6 / 4 * unobserved + 0.1 * (user.square().sum() + pos.square().sum()) / 2 / 7
    loss = objective(batch, torch.zeros(7, 0, dtype=torch.int64))
    torch.testing.assert_close(loss, expected.to(loss.dtype), rtol=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda u, p: objective(Batch(u, p, p, u, p, p), None), (user, pos))
    with pytest.raises(ValueError, match="needs the training interactions"):
        METHODS["mrl-ls"].objective(config)


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_least_squares_by_gradient_trains_any_backbone(tmp_path, small, model):
    result = train(TrainConfig(method="mrl-ls", model=model, epochs=4, lr=1e-2, out=str(tmp_path), **SMALL),
                   log=lambda _: None, dataset=small)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.loss.is_monotonic_decreasing
    assert result["test"]["recall@20"] > 0.1




def test_the_refit_sweeps_without_computing_the_objective(tmp_path, small, monkeypatch):
    # the objective costs about half a sweep: computed for the selection's history rows only
    from mrl_kernels.training.als import AlsFit, Sweeps

    a, b = (AlsFit(TrainConfig(**ALS), small.train, torch.device("cpu")) for _ in range(2))
    assert a.epoch(loss=False) is None and isinstance(b.epoch(), float)
    assert all(torch.equal(x, y) for x, y in zip(a.model.tables(), b.model.tables()))
    calls = []
    original = Sweeps.objective
    monkeypatch.setattr(Sweeps, "objective", lambda self, *args: calls.append(1) or original(self, *args))
    result = train(TrainConfig(epochs=3, patience=100, out=str(tmp_path), **ALS), log=lambda _: None, dataset=small)
    assert result["refit_epochs"] == result["best_epoch"] > 0 and len(calls) == 3  # the selection's sweeps alone


def test_mrl_train_takes_the_rotation_count(tmp_path):
    import json

    from mrl_kernels.cli import train as train_cli

    tiny = ["--users", "40", "--items", "30", "--interactions", "400", "--epochs", "2", "--dims", "4,8",
            "--method", "mrl-als", "--no-progress"]
    for count in ("0", "2"):
        assert train_cli.main([*tiny, "--rotations", count, "--out", str(tmp_path / count)]) == 0
    configs = [json.loads((tmp_path / count / "metrics.json").read_text())["config"] for count in ("0", "2")]
    assert [config["rotations"] for config in configs] == [0, 2]
    assert not torch.equal(*(load_run(tmp_path / count).users for count in ("0", "2")))


def test_initial_tables_and_sweeps_are_the_trainers(small):
    from mrl_kernels.training.als import AlsFit, Sweeps, initial_tables

    config = TrainConfig(**{**ALS, "seed": 3})
    fit = AlsFit(config, small.train, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(fit.model.tables(), initial_tables(small.train, 16, 3)))
    sweeps = Sweeps.of_config(TrainConfig(**{**ALS, "level_weights": (1.0, 2.0, 4.0), "alpha": (1.0, 2.0, 3.0),
                                             "l2": (0.5, 1.0, 2.0), "cg_steps": 4, "rotations": 5}))
    assert torch.equal(sweeps.weights, torch.tensor([1.0, 2.0, 4.0], dtype=sweeps.weights.dtype))
    assert (sweeps.dims, sweeps.alphas, sweeps.regs, sweeps.cg_steps, sweeps.rotations) == \
        ((4, 8, 16), (1.0, 2.0, 3.0), (0.5, 1.0, 2.0), 4, 5)
