"""``mrl_kernels.MatryoshkaALS`` against implicit's ``AlternatingLeastSquares`` on the
same inputs: with the weight on the full width only it is implicit's model (float64:
the same factors), so every method implicit's base classes provide must give the
same ids, scores, filters, return types and errors; and what is its own (the nested
fit, ``width``, save / load of the nested settings, refusals)."""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

implicit_als = pytest.importorskip("implicit.cpu.als", reason="implicit is not installed (the als extra)")
scipy_sparse = pytest.importorskip("scipy.sparse")

import mrl_kernels as mk  # noqa: E402
from mrl_kernels.training.als import Sweeps  # noqa: E402

SETTINGS = dict(factors=8, regularization=0.3, alpha=6.0, iterations=3, random_state=7, num_threads=1,
                dtype=np.float64)


def _data(users=60, items=40, density=0.12, seed=1):
    matrix = scipy_sparse.random(users, items, density=density, format="lil", random_state=seed)
    matrix[5] = 0  # a user without items
    matrix = matrix.tocsr()
    matrix.eliminate_zeros()
    matrix.data[:] = 1
    return matrix


@pytest.fixture(scope="module")
def pair():
    """implicit's model and ours at one level, fitted alike."""
    matrix = _data()
    theirs = implicit_als.AlternatingLeastSquares(**SETTINGS)
    ours = mk.MatryoshkaALS(**SETTINGS, dims=(2, 4, 8), level_weights=(0.0, 0.0, 1.0))
    theirs.fit(matrix, show_progress=False)
    ours.fit(matrix, show_progress=False)
    return theirs, ours, matrix


def _same(a, b, atol=1e-6):
    """Two (ids, scores) answers alike: equal ids, close scores, the same types and shapes."""
    assert type(a) is type(b) and len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert type(x) is type(y) and x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=atol, rtol=1e-7)


def test_one_level_fit_is_implicits(pair):
    theirs, ours, _ = pair
    np.testing.assert_allclose(ours.user_factors, theirs.user_factors, atol=1e-6)
    np.testing.assert_allclose(ours.item_factors, theirs.item_factors, atol=1e-6)
    assert ours.user_factors.dtype == theirs.user_factors.dtype == np.float64


@pytest.mark.parametrize("kwargs", [{}, dict(filter_already_liked_items=False), dict(filter_items=[3, 11, 0]),
                                    dict(items=[1, 4, 9, 22, 30, 31], N=4), dict(N=100), dict(recalculate_user=True)])
def test_recommend_one_user(pair, kwargs):
    theirs, ours, matrix = pair
    for user in (0, 5, 17):
        _same(ours.recommend(user, matrix[user], **kwargs), theirs.recommend(user, matrix[user], **kwargs))


@pytest.mark.parametrize("kwargs", [{}, dict(filter_already_liked_items=False, N=3), dict(filter_items=[2, 8]),
                                    dict(items=[1, 4, 9, 22], N=3), dict(recalculate_user=True)])
def test_recommend_a_batch(pair, kwargs):
    theirs, ours, matrix = pair
    users = np.array([4, 0, 5, 33])
    _same(ours.recommend(users, matrix[users], **kwargs), theirs.recommend(users, matrix[users], **kwargs))


@pytest.mark.parametrize("kwargs", [{}, dict(N=3), dict(filter_items=[0, 2]), dict(items=[0, 3, 7, 9, 12], N=3)])
def test_similar_items_and_users(pair, kwargs):
    theirs, ours, _ = pair
    users_kwargs = {("filter_users" if k == "filter_items" else "users" if k == "items" else k): v
                    for k, v in kwargs.items()}
    for one in (3, np.array([3, 0, 9])):
        _same(ours.similar_items(one, **kwargs), theirs.similar_items(one, **kwargs))
        _same(ours.similar_users(one, **users_kwargs), theirs.similar_users(one, **users_kwargs))


def test_the_same_errors_as_implicit(pair):
    theirs, ours, matrix = pair
    for model in (theirs, ours):
        with pytest.raises(ValueError, match="Can't set both items and filter_items"):
            model.similar_items(3, items=[1, 2], filter_items=[1])
        with pytest.raises(IndexError):
            model.similar_items(3, items=[1, 10_000])
        with pytest.raises(ValueError):
            model.recommend(np.array([0, 1]), matrix[[0]])


def test_recalculate_is_the_exact_solution(pair):
    theirs, ours, matrix = pair
    np.testing.assert_allclose(ours.recalculate_user(3, matrix[3]), theirs.recalculate_user(3, matrix[3]), atol=1e-6)
    rows = np.array([0, 5, 9])
    np.testing.assert_allclose(ours.recalculate_user(rows, matrix[rows]), theirs.recalculate_user(rows, matrix[rows]),
                               atol=1e-6)
    item_users = matrix.T.tocsr()
    np.testing.assert_allclose(ours.recalculate_item([2, 7], item_users[[2, 7]]),
                               theirs.recalculate_item([2, 7], item_users[[2, 7]]), atol=1e-6)


def test_partial_fit_grows_and_updates_like_implicit():
    matrix = _data()
    models = [implicit_als.AlternatingLeastSquares(**SETTINGS), mk.MatryoshkaALS(**SETTINGS, dims=(8,))]
    new_rows = scipy_sparse.csr_matrix(([1.0] * 3, ([0, 0, 1], [1, 5, 7])), shape=(2, 40))
    for model in models:
        model.fit(matrix, show_progress=False)
        model.partial_fit_users([3, 62], new_rows)
        model.partial_fit_items([41], scipy_sparse.csr_matrix(([1.0, 1.0], ([0, 0], [2, 9])), shape=(1, 63)))
    theirs, ours = models
    assert ours.user_factors.shape == theirs.user_factors.shape == (63, 8)
    assert ours.item_factors.shape == theirs.item_factors.shape == (42, 8)
    np.testing.assert_allclose(ours.user_factors, theirs.user_factors, atol=1e-6)
    np.testing.assert_allclose(ours.item_factors, theirs.item_factors, atol=1e-6)


@pytest.mark.parametrize("kind", ["coo", "lil", "csc"])
def test_other_sparse_formats_fit_as_csr(kind):
    matrix = _data()
    csr_model, other_model = mk.MatryoshkaALS(**SETTINGS), mk.MatryoshkaALS(**SETTINGS)
    csr_model.fit(matrix, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit's "Method expects CSR input"
        other_model.fit(matrix.asformat(kind), show_progress=False)
    np.testing.assert_array_equal(other_model.user_factors, csr_model.user_factors)


def test_nested_fit_serves_every_prefix():
    matrix = _data(200, 120, 0.08)
    model = mk.MatryoshkaALS(factors=16, dims=(4, 8, 16), regularization=(1.0, 0.5, 0.1), alpha=(2.0, 4.0, 8.0),
                             iterations=4, random_state=0, num_threads=1, dtype=np.float64)
    model.fit(matrix, show_progress=False)
    full_users, full_items = model.user_factors, model.item_factors
    for width in (4, 8, 11):
        model.width = width
        assert model.user_factors.shape == (200, width) and model.item_factors.shape == (120, width)
        np.testing.assert_array_equal(model.item_factors, full_items[:, :width])
        ids, scores = model.recommend(7, matrix[7], N=5, filter_already_liked_items=False)
        expected = full_items[:, :width] @ full_users[7, :width]
        np.testing.assert_array_equal(ids, np.argsort(-expected, kind="stable")[:5])
        np.testing.assert_allclose(scores, expected[ids], rtol=1e-6)
        assert model.recalculate_user(7, matrix[7]).shape == (width,)
    model.width = 17
    with pytest.raises(ValueError, match="width must be at most factors"):
        model.recommend(7, matrix[7])


def test_fit_is_the_trainers_sweeps():
    """One code path: the estimator's fit from given tables is Sweeps.sweep, sweep for sweep."""
    matrix = _data()
    settings = dict(dims=(2, 8), level_weights=(1.0, 0.5), alpha=(3.0, 9.0), regularization=(0.2, 2.0))
    model = mk.MatryoshkaALS(**{**SETTINGS, **settings})
    g = np.random.default_rng(0)
    users, items = g.random((60, 8)), g.random((40, 8))
    model.user_factors, model.item_factors = users.copy(), items.copy()
    model.fit(matrix, show_progress=False)
    sweeps = Sweeps.of((2, 8), (1.0, 0.5), (3.0, 9.0), (0.2, 2.0), rotations=model.rotations)
    from mrl_kernels.training.estimator import _csr
    u, i = torch.from_numpy(users), torch.from_numpy(items)
    for done in range(SETTINGS["iterations"]):
        sweeps.sweep(u, i, _csr(matrix), _csr(matrix.T.tocsr()), done)
    np.testing.assert_array_equal(model.user_factors, users)
    np.testing.assert_array_equal(model.item_factors, items)


def test_save_load_and_pickle_keep_the_model(tmp_path):
    matrix = _data()
    model = mk.MatryoshkaALS(**{**SETTINGS, "alpha": (2.0, 6.0)}, dims=(4, 8), level_weights=(1.0, 2.0), width=4,
                             rotations=1)
    model.fit(matrix, show_progress=False)
    model.save(tmp_path / "model")
    loaded = mk.MatryoshkaALS.load(str(tmp_path / "model"))
    unpickled = pickle.loads(pickle.dumps(model))
    for other in (loaded, unpickled):
        assert other.dims == (4, 8) and other.width == 4 and list(other.alpha) == [2.0, 6.0] and other.rotations == 1
        _same(other.recommend(3, matrix[3]), model.recommend(3, matrix[3]), atol=0)
        other.width = None
        np.testing.assert_array_equal(other.user_factors, model._user_full)


def test_training_loss_reaches_the_callback():
    matrix, losses = _data(), []
    model = mk.MatryoshkaALS(**{**SETTINGS, "calculate_training_loss": True, "iterations": 4}, dims=(4, 8))
    model.fit(matrix, show_progress=False, callback=lambda it, seconds, loss: losses.append(loss))
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    quiet = []
    mk.MatryoshkaALS(**SETTINGS).fit(matrix, show_progress=False, callback=lambda *a: quiet.append(a[2]))
    assert quiet == [None] * SETTINGS["iterations"], "no objective computed unless asked"


@pytest.mark.parametrize("change, error, words", [
    (dict(dims=(4, 6)), ValueError, "dims must end at factors (8)"),
    (dict(alpha=(1.0, 2.0, 3.0), dims=(4, 8)), ValueError, "alpha must be a number or one per level (2)"),
    (dict(regularization=-1.0), ValueError, "reg must be a finite number >= 0"),
    (dict(level_weights=(1.0,), dims=(4, 8)), ValueError, "weights must have one entry per level (2)"),
    (dict(cg_steps=0), ValueError, "cg_steps must be an int >= 1"),
    (dict(rotations=-1), ValueError, "rotations must be an int >= 0"),
])
def test_bad_settings_are_refused_at_construction(change, error, words):
    with pytest.raises(error) as raised:
        mk.MatryoshkaALS(**{**SETTINGS, **change})
    assert words in str(raised.value)


def test_confidence_values_are_refused():
    matrix = _data()
    matrix.data[:] = 3.0
    with pytest.raises(ValueError, match="user_items must hold ones"):
        mk.MatryoshkaALS(**SETTINGS).fit(matrix, show_progress=False)


def test_importing_the_package_does_not_import_implicit():
    code = "import sys, mrl_kernels; assert 'implicit' not in sys.modules; mrl_kernels.MatryoshkaALS; " \
           "assert 'implicit' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
