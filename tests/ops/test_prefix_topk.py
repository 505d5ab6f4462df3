"""prefix_topk on every backend against the reference: exact and narrow
shortlists, ties, exclusion, padding, NaN rows, malformed CSRs, bad arguments."""

import pytest
import torch

import mrl_kernels as mk
import mrl_kernels.training.data
from mrl_kernels import reference

from helpers import BACKENDS, DEVICE, FAST, exact, integer_case


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(3))
def test_a_full_shortlist_is_exact_search_with_ties_and_exclusion(backend, seed):
    query, items, exclude = integer_case(seed)
    scores, ids = mk.prefix_topk(query, items, 7, 4, items.shape[0], exclude, backend=backend)
    expected_scores, expected_ids = exact(query.cpu(), items.cpu(), 7, exclude)
    assert torch.equal(ids.cpu(), expected_ids)
    torch.testing.assert_close(scores.cpu().double(), expected_scores)
    assert not any(set(row) & set(ex) for row, ex in zip(ids.tolist(), exclude))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("width, shortlist", [(2, 5), (4, 9), (7, 20), (12, 12)])
def test_narrow_shortlists_match_the_reference(backend, width, shortlist):
    for seed in range(3):
        query, items, exclude = integer_case(seed)
        offsets, ids = mk.ops.exclusion(exclude, query.shape[0], items.shape[0], query.device)
        expected = reference.prefix_topk(query.cpu(), items[:, :width].cpu(), items.cpu(), 5, shortlist,
                                         offsets.cpu(), ids.cpu())
        actual = mk.prefix_topk(query, items, 5, width, shortlist, exclude, backend=backend)
        assert torch.equal(actual[1].cpu(), expected[1])
        torch.testing.assert_close(actual[0].cpu(), expected[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_beyond_the_items_left_pads_with_minus_one(backend):
    query, items = torch.randn(2, 6, device=DEVICE), torch.randn(5, 6, device=DEVICE)
    scores, ids = mk.prefix_topk(query, items, 4, 3, 8, [[0, 1], [0, 1, 2, 3, 4]], backend=backend)
    assert ids[0, :3].sort().values.tolist() == [2, 3, 4] and ids[0, 3] == -1 and ids[1].tolist() == [-1] * 4
    assert torch.isneginf(scores[0, 3]) and torch.isneginf(scores[1]).all()


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("width, shortlist", [(32, 2000), (8, 2000), (3, 50)])
def test_nan_item_rows_rank_as_in_the_reference(backend, width, shortlist):
    # the reference's rule on every backend: NaN scores rank first (lower id first), then the right items
    torch.manual_seed(0)
    queries = 64 if DEVICE == "cuda" or backend != "triton" else 8  # the interpreter: a few programs
    query, items = torch.randn(queries, 32), torch.randn(2000, 32)
    items[[0, 1, 5, 9, 100, 1500], :3] = float("nan")  # the rows of nan_rows below
    expected = mk.prefix_topk(query, items, 10, width, shortlist, backend="torch")
    actual = mk.prefix_topk(query.to(DEVICE), items.to(DEVICE), 10, width, shortlist, backend=backend)
    assert torch.equal(actual[1].cpu(), expected[1])
    torch.testing.assert_close(actual[0].cpu(), expected[0], equal_nan=True)
    nan_rows = [0, 1, 5, 9, 100, 1500]
    clean = mk.prefix_topk(query, items.nan_to_num(0.0), 4, 32, 2000, [nan_rows] * queries, backend="torch")[1]
    if width == 32:  # exact search: the NaN rows, then the true top items of the others
        assert torch.equal(expected[1][:, :6], torch.tensor([nan_rows] * queries))
        assert torch.equal(expected[1][:, 6:], clean)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indptr, words", [([0, 2, 9], "end at len"), ([0, 3, 2], "decreasing"),
                                           ([1, 2, 4], "start at 0")])
def test_a_malformed_csr_exclude_is_refused(backend, indptr, words):
    query, items = torch.randn(2, 8, device=DEVICE), torch.randn(10, 8, device=DEVICE)
    bad = mk.CSR.__new__(mk.CSR)  # past CSR's own check (tests/ops/test_csr.py): prefix_topk checks what it is given
    bad.indptr, bad.indices, bad.n_cols = torch.tensor(indptr), torch.tensor([1, 2, 3, 4]), 10
    with pytest.raises(ValueError, match=f"exclude is not a well-formed CSR.*{words}"):
        mk.prefix_topk(query, items, 2, 4, 5, bad, backend=backend)


def test_bad_arguments_name_themselves():
    q, items = torch.randn(2, 8), torch.randn(10, 8)
    for kwargs, words in [(dict(k=0), "k must be an int >= 1"), (dict(width=9), "width must be at most"),
                          (dict(k=5, shortlist=3), "shortlist must be >= k"),
                          (dict(exclude=[[11], []]), "exclude must lie in"),
                          (dict(exclude=[[1]]), "sequence of 2 id collections")]:
        args = {"k": 2, "width": 4, "shortlist": 5, **kwargs}
        with pytest.raises(ValueError, match=words):
            mk.prefix_topk(q, items, args.pop("k"), args.pop("width"), args.pop("shortlist"), **args)
