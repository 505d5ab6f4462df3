"""``mk.CSR``, the sparse matrix the candidate draws exclude with: exported,
built from scipy (any format) or pairs, back to scipy, and refused by name
where malformed."""
import numpy as np
import pytest
import torch

import mrl_kernels as mk

sp = pytest.importorskip("scipy.sparse", reason="scipy is not installed (implicit, in the test extra, brings it)")


def random_matrix(rows=7, cols=11, nnz=30, seed=0):
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, rows, nnz), rng.integers(0, cols, nnz)  # repeats and unsorted columns
    return sp.coo_matrix((rng.random(nnz) + 0.5, (r, c)), shape=(rows, cols))


def test_csr_is_exported_at_the_top():
    assert "CSR" in mk.__all__ and mk.CSR is mk.ops.CSR


@pytest.mark.parametrize("fmt", ["coo", "csr", "csc", "lil", "dok", "bsr", "dia", "coo_array", "csr_array"])
def test_from_scipy_round_trips_against_scipy(fmt):
    coo = random_matrix()
    matrix = sp.coo_array(coo).tocsr() if fmt == "csr_array" else sp.coo_array(coo) if fmt == "coo_array" \
        else coo.asformat(fmt)
    csr = mk.CSR.from_scipy(matrix)
    dense = coo.toarray() != 0  # binary: repeated entries once, values ignored
    assert (csr.n_rows, csr.n_cols, csr.nnz) == (7, 11, int(dense.sum()))
    back = csr.to_scipy()
    assert isinstance(back, sp.csr_matrix) and back.dtype == np.float32 and back.has_sorted_indices
    assert np.array_equal(back.toarray(), dense.astype(np.float32))
    assert csr.dense_rows(torch.arange(7)).numpy().tolist() == dense.tolist()
    again = mk.CSR.from_scipy(back)
    assert torch.equal(again.indptr, csr.indptr) and torch.equal(again.indices, csr.indices)


def test_from_pairs_and_from_scipy_agree_and_to_scipy_shares_no_memory():
    coo = random_matrix(seed=1)
    a, b = mk.CSR.from_scipy(coo), mk.CSR.from_pairs(coo.row.tolist(), coo.col, 7, 11)
    assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices)
    scipy_copy = a.to_scipy()
    scipy_copy.indices[:] = 0
    assert torch.equal(a.indices, b.indices)


def test_explicit_zeros_count_and_an_empty_matrix_works():
    m = sp.csr_matrix((np.array([0.0, 2.0]), np.array([1, 3]), np.array([0, 2, 2])), shape=(2, 4))
    assert mk.CSR.from_scipy(m).nnz == 2
    m.eliminate_zeros()
    assert mk.CSR.from_scipy(m).nnz == 1
    empty = mk.CSR.from_scipy(sp.csr_matrix((0, 5)))
    assert (empty.n_rows, empty.n_cols, empty.nnz) == (0, 5, 0) and empty.to_scipy().shape == (0, 5)


def test_negative_stride_arrays_are_copied_and_exclusion_works():
    indptr, indices = np.array([3, 2, 0])[::-1], np.array([4, 2, 1])[::-1]  # [0, 2, 3], [1, 2, 4]
    csr = mk.CSR(indptr, indices, 5)
    assert csr.indptr.dtype == torch.int64 and csr.indptr.tolist() == [0, 2, 3] and csr.indices.tolist() == [1, 2, 4]
    draws = mk.sample_candidates(torch.tensor([0, 1] * 50), 3, 5, exclude=csr, generator=torch.Generator().manual_seed(0))
    assert not (draws[0::2, :, None] == torch.tensor([1, 2])).any() and not (draws[1::2] == 4).any()
    m = sp.csr_matrix((np.ones(3), indices, indptr), shape=(2, 5))
    assert torch.equal(mk.CSR.from_scipy(m).indices, csr.indices)


@pytest.mark.parametrize("build, error, words", [
    (lambda: mk.CSR(torch.tensor([0, 2, 1]), torch.tensor([0, 1]), 3), ValueError, "CSR is not a well-formed CSR"),
    (lambda: mk.CSR(torch.tensor([0, 2]), torch.tensor([0, 3]), 3), ValueError, "CSR.indices must lie in [0, n_cols)"),
    (lambda: mk.CSR(torch.tensor([0, 2]), torch.tensor([2, 1]), 3), ValueError, "sorted without repeats"),
    (lambda: mk.CSR(torch.tensor([0, 2]), torch.tensor([1, 1]), 3), ValueError, "sorted without repeats"),
    (lambda: mk.CSR(np.array([0.0, 1.0]), np.array([1]), 3), TypeError, "CSR.indptr must hold integer ids"),
    (lambda: mk.CSR([0, 1], [1], -1), ValueError, "n_cols must be an int >= 0"),
    (lambda: mk.CSR.from_pairs([0, 1], [1], 2, 3), ValueError, "rows and cols must pair up"),
    (lambda: mk.CSR.from_pairs([0, 2], [1, 1], 2, 3), ValueError, "rows must lie in [0, 2)"),
    (lambda: mk.CSR.from_pairs([0, 1], [1, -1], 2, 3), ValueError, "cols must lie in [0, 3)"),
    (lambda: mk.CSR.from_pairs([0.5], [1], 2, 3), TypeError, "rows must hold integer ids"),
    (lambda: mk.CSR.from_scipy(np.eye(3)), TypeError, "matrix must be a scipy.sparse matrix or array"),
    (lambda: mk.CSR.from_scipy(sp.coo_array(np.array([1.0, 0.0, 2.0]))), ValueError, "matrix must be 2-D"),
])
def test_malformed_input_is_refused_by_name(build, error, words):
    with pytest.raises(error) as info:
        build()
    assert words in str(info.value)
