"""NestedIndex: a FAISS first stage over the narrow prefix, reranked at full
width; its files, its arguments, and a run served through it."""
import sys

import pandas as pd
import pytest
import torch

import mrl_kernels as mk
import mrl_kernels.training.data

from helpers import decaying, exact, integer_case, needs_faiss


@needs_faiss
@pytest.mark.parametrize("first_stage, params", [("Flat", {}), ("HNSW4", {}), ("IVF4,PQ2x4", {"nprobe": 1})])
@pytest.mark.parametrize("seed", range(3))
def test_nested_index_with_a_full_shortlist_is_exact_search_with_ties_and_exclusion(first_stage, params, seed):
    # shortlist + exclusions >= N: every item is reranked, whatever the first stage finds
    query, items, exclude = integer_case(seed)
    query, items = query.cpu(), items.cpu()
    index = mk.NestedIndex(items, 4, first_stage, params=params)
    scores, ids = index.search(query, 7, shortlist=items.shape[0], exclude=exclude)
    expected_scores, expected_ids = exact(query, items, 7, exclude)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores.double(), expected_scores)


@needs_faiss
@pytest.mark.parametrize("first_stage, params", [("Flat", {}), ("IVF8,Flat", {"nprobe": 8})])
@pytest.mark.parametrize("width, shortlist", [(4, 20), (8, 50), (16, 300)])
def test_nested_index_with_an_exact_first_stage_is_the_matryoshka_index(first_stage, params, width, shortlist):
    for seed in range(3):
        query, items = decaying(seed)
        expected = mk.MatryoshkaIndex(items, [width], backend="torch").search(query, 10, width=width,
                                                                           shortlist=shortlist)
        actual = mk.NestedIndex(items, width, first_stage, params=params).search(query, 10, shortlist=shortlist)
        assert torch.equal(actual[1], expected[1])
        torch.testing.assert_close(actual[0], expected[0])


@needs_faiss
@pytest.mark.parametrize("first_stage, params", [("HNSW32", {"efSearch": 64}), ("IVF32,Flat", {"nprobe": 8}),
                                                 ("IVF32,PQ4x4", {"nprobe": 8})])
def test_nested_index_never_returns_an_excluded_item_and_pads(first_stage, params):
    query, items = decaying(1)
    g = torch.Generator().manual_seed(1)
    n = items.shape[0]
    exclude = [torch.randperm(n, generator=g)[:int(torch.randint(0, 300, (1,), generator=g))].tolist()
               for _ in range(query.shape[0])]
    exact_top = exact(query, items, 20, exclude)[1]  # the best unseen items are the likeliest to leak
    exclude[0] = sorted(set(exclude[0]) | set(exact(query, items, 50, [[]] * 9)[1][0].tolist()))
    exclude[1] = [i for i in range(n) if i not in (5, 77, 1999)]  # three items left
    index = mk.NestedIndex(items, 8, first_stage, params=params)
    scores, ids = index.search(query, 20, shortlist=200, exclude=exclude)
    for row, ex in zip(ids.tolist(), exclude):
        assert not set(row) & set(ex), "an excluded item was returned"
    assert sorted(ids[1, :3].tolist()) == [5, 77, 1999] and (ids[1, 3:] == -1).all()
    assert torch.isneginf(scores[ids < 0]).all() and not torch.isneginf(scores[ids >= 0]).any()
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    overlap = [len(set(a) & set(b)) / 20 for a, b in zip(ids[2:].tolist(), exact_top[2:].tolist())]
    assert sum(overlap) / len(overlap) >= 0.6, overlap  # an ANN shortlist, reranked: most of the exact top 20


@needs_faiss
def test_nested_index_hnsw_is_near_the_exact_narrow_shortlist_and_better_with_a_longer_one():
    query, items = decaying(2, n=5000, b=64)
    expected = exact(query, items, 20, [[]] * 64)[1]

    def agreement(ids):
        return sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), expected.tolist())) / ids.numel()
    index, narrow = mk.NestedIndex(items, 16, "HNSW32"), mk.MatryoshkaIndex(items, [16], backend="torch")
    reached = []
    for shortlist in (20, 400):
        index.set_params(efSearch=2 * shortlist)
        reached.append(agreement(index.search(query, 20, shortlist=shortlist)[1]))
    assert reached[0] < reached[1] and reached[1] >= 0.9, reached
    assert reached[1] >= agreement(narrow.search(query, 20, width=16, shortlist=400)[1]) - 0.02


@needs_faiss
@pytest.mark.parametrize("first_stage, rerank_dtype", [("HNSW16", torch.float32), ("IVF16,PQ4x4", torch.float16)])
def test_nested_index_save_and_load_give_equal_results_and_keep_files(tmp_path, first_stage, rerank_dtype):
    query, items = decaying(3)
    index = mk.NestedIndex(items, 8, first_stage, rerank_dtype,
                           params={"efSearch": 40} if first_stage.startswith("HNSW") else {"nprobe": 3})
    index.save(tmp_path / "nested.pt")
    again = mk.NestedIndex.load(tmp_path / "nested.pt")
    assert (again.width, again.first_stage, again.rerank_dtype, again.params) == \
        (8, first_stage, rerank_dtype, index.params)
    exclude = [[0, 1, 2]] * query.shape[0]
    for a, b in zip(index.search(query, 10, shortlist=100, exclude=exclude),
                    again.search(query, 10, shortlist=100, exclude=exclude)):
        assert torch.equal(a, b)
    assert again.nbytes() == index.nbytes() > items[:, :8].numel() * 2
    mine = tmp_path / "mine.pt"
    mine.write_text("the user's own file")
    with pytest.raises(FileExistsError, match="mine.pt exists; force=True replaces it"):
        index.save(mine)
    assert mine.read_text() == "the user's own file"
    index.save(mine, force=True)
    assert torch.equal(mk.NestedIndex.load(mine).search(query, 5)[1], index.search(query, 5)[1])
    blob = (tmp_path / "nested.pt").read_bytes()
    files = {"truncated": blob[:len(blob) // 2], "garbage": b"\x00 not an index" * 9, "empty": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not an index written by NestedIndex.save"):
            mk.NestedIndex.load(tmp_path / name)
    mk.MatryoshkaIndex(items, [8]).save(tmp_path / "other")
    with pytest.raises(ValueError, match="other is not an index written by NestedIndex.save"):
        mk.NestedIndex.load(tmp_path / "other")
    with pytest.raises(ValueError, match="does not exist"):
        mk.NestedIndex.load(tmp_path / "absent")


@needs_faiss
def test_nested_index_bad_arguments_name_themselves():
    query, items = decaying(4, n=300)
    nan = items.clone()
    nan[3, 5] = float("nan")
    for args, kwargs, words in [((torch.randn(5), 4), {}, r"item_weight must be a non-empty \(N, D\) float table"),
                                ((items, 0), {}, "width must be an int >= 1"),
                                ((items, 33), {}, "width must be at most the table's width 32"),
                                ((items, 8, "Bogus"), {}, "first_stage 'Bogus' is not a FAISS index_factory string"),
                                ((items, 8, "IVF1000,Flat"), {}, "cannot be trained on the 300 items: .*clusters"),
                                ((items, 8), {"rerank_dtype": torch.int8}, "rerank_dtype must be one of"),
                                ((items, 8), {"params": {"nprobe": 4}}, "search parameter nprobe=4 does not apply"),
                                ((nan, 8), {}, "NaN or infinite")]:
        with pytest.raises(ValueError, match=words):
            mk.NestedIndex(*args, **kwargs)
    index = mk.NestedIndex(items, 8, "HNSW16")
    for args, kwargs, words in [((query, 0), {}, "k must be an int >= 1"),
                                ((query, 10), {"shortlist": 5}, r"shortlist must be >= k \(10\)"),
                                ((query[:, :16], 10), {}, "query has width 16 but the index's items have width 32"),
                                ((query, 10), {"exclude": [[300]] * 9}, "exclude must lie in"),
                                ((query, 10), {"exclude": [[1]]}, "sequence of 9 id collections")]:
        with pytest.raises(ValueError, match=words):
            index.search(*args, **kwargs)
    with pytest.raises(ValueError, match="search parameter nprobe=2 does not apply to a 'HNSW16' first stage"):
        index.set_params(nprobe=2)


def test_nested_index_without_faiss_names_the_serve_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # what an import of an absent module does
    with pytest.raises(ImportError, match=r'NestedIndex needs FAISS, from the serve extra: pip install '
                                          r'"mrl_kernels\[serve\]"'):
        mk.NestedIndex(torch.randn(10, 8), 4)


@needs_faiss
def test_load_run_recommends_through_a_nested_index(csv_run):
    run = mk.load_run(csv_run / "run")
    users = ["user-3", "user-7", "user-11"]
    exact_recs = run.recommend(users, k=10)
    index = mk.NestedIndex(run.index.items, 8, "Flat")
    served = run.recommend(users, k=10, shortlist=50, index=index)  # shortlist + seen items >= N: exact
    pd.testing.assert_frame_equal(served, exact_recs, atol=1e-6, rtol=1e-6)
    hnsw = run.recommend(users, k=10, width=8, shortlist=30, index=mk.NestedIndex(run.index.items, 8, "HNSW16"))
    table = pd.read_csv(csv_run / "table.csv")
    for user, part in hnsw.groupby("user"):
        assert len(part) == 10 and not set(part.item) & set(table[table.user == user].item)
    with pytest.raises(ValueError, match="width 16 is not the index's width 8"):
        run.recommend(users, width=16, index=index)
    with pytest.raises(ValueError, match="built from another item table than this run's"):
        run.recommend(users, index=mk.NestedIndex(run.index.items + 1, 8, "Flat"))
