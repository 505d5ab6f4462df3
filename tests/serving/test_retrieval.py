"""prefix_topk on every backend against the reference, the Matryoshka index, and
recommendations from a trained run (Python and mrl-recommend)."""
import importlib.util
import sys

import pandas as pd
import pytest
import torch

import mrl_kernels as mk
import mrl_kernels.training.data
from mrl_kernels import reference
from mrl_kernels.cli import recommend as recommend_cli
from mrl_kernels.training import TrainConfig, train

from helpers import DEVICE, FAST

BACKENDS = ["torch", *FAST]


def exact(query, items, k, exclude):
    """Brute force: every item's full score, excluded ones dropped, ties to the lower id."""
    scores = query.double() @ items.double().T
    for row, ids in enumerate(exclude):
        scores[row, list(ids)] = -torch.inf
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


def integer_case(seed, B=5, N=37, D=12):
    g = torch.Generator().manual_seed(seed)
    query = torch.randint(-2, 3, (B, D), generator=g).float()
    items = torch.randint(-2, 3, (N, D), generator=g).float()
    items[N // 2:] = items[:N - N // 2].clone()  # repeated rows: exact ties between different items
    exclude = [torch.randperm(N, generator=g)[:int(torch.randint(0, 6, (1,), generator=g))].tolist()
               for _ in range(B)]
    return query.to(DEVICE), items.to(DEVICE), exclude


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_beyond_every_item_pads_exact_and_narrow_search(backend):
    items = torch.randn(50, 8, device=DEVICE)
    index = mk.MatryoshkaIndex(items, [4], backend=backend)
    query = torch.randn(3, 8, device=DEVICE)
    for width in (None, 4):
        scores, ids = index.search(query, 80, width=width, exclude=[[0, 1], [], [7]])
        assert ids.shape == (3, 80) and (ids >= 0).sum(1).tolist() == [48, 50, 49]
        assert sorted(ids[1, :50].tolist()) == list(range(50)) and (ids[2, 49:] == -1).all()
        assert torch.isneginf(scores[ids < 0]).all() and not torch.isneginf(scores[ids >= 0]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_inputs_and_a_bfloat16_shortlist(backend):
    g = torch.Generator().manual_seed(3)
    query, items = torch.randn(9, 16, generator=g).to(DEVICE), torch.randn(300, 16, generator=g).to(DEVICE)
    expected_scores, expected_ids = exact(query.cpu(), items.cpu(), 10, [[]] * 9)
    scores, ids = mk.prefix_topk(query, items, 10, 16, 300, backend=backend)
    torch.testing.assert_close(scores.cpu().double(), expected_scores, rtol=1e-5, atol=1e-5)
    index = mk.MatryoshkaIndex(items, [4, 8, 16], shortlist_dtype=torch.bfloat16, backend=backend)
    assert index.narrow[8].dtype == torch.bfloat16 and index.narrow[8].is_contiguous()
    scores, ids = index.search(query, 10, width=8, shortlist=300)  # shortlist = N: exact
    torch.testing.assert_close(scores.cpu().double(), expected_scores, rtol=1e-5, atol=1e-5)
    narrow = index.narrow[8]
    offsets, none = mk.ops.exclusion(None, 9, 300, query.device)
    expected = reference.prefix_topk(query.cpu(), narrow.cpu(), items.cpu(), 10, 40, offsets.cpu(), none.cpu())
    actual = index.search(query, 10, width=8, shortlist=40)
    assert torch.equal(actual[1].cpu(), expected[1])


def test_bad_arguments_name_themselves():
    q, items = torch.randn(2, 8), torch.randn(10, 8)
    for kwargs, words in [(dict(k=0), "k must be an int >= 1"), (dict(width=9), "width must be at most"),
                          (dict(k=5, shortlist=3), "shortlist must be >= k"),
                          (dict(exclude=[[11], []]), "exclude must lie in"),
                          (dict(exclude=[[1]]), "sequence of 2 id collections")]:
        args = {"k": 2, "width": 4, "shortlist": 5, **kwargs}
        with pytest.raises(ValueError, match=words):
            mk.prefix_topk(q, items, args.pop("k"), args.pop("width"), args.pop("shortlist"), **args)


def test_index_save_and_load(tmp_path):
    items = torch.randn(50, 8)
    index = mk.MatryoshkaIndex(items, [2, 4], shortlist_dtype=torch.float16)
    index.save(tmp_path / "index.pt")
    again = mk.MatryoshkaIndex.load(tmp_path / "index.pt")
    query = torch.randn(3, 8)
    for a, b in zip(index.search(query, 5, width=4, shortlist=20), again.search(query, 5, width=4, shortlist=20)):
        assert torch.equal(a, b)


def test_bad_index_files_and_tables_are_one_clear_error(tmp_path):
    good = tmp_path / "index.pt"
    mk.MatryoshkaIndex(torch.randn(20, 8), [4]).save(good)
    blob = good.read_bytes()
    files = {"truncated": blob[:len(blob) // 2], "garbage": b"\x00not an index" * 10, "empty": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"something": 1}, tmp_path / "wrong")
    torch.save(torch.randn(3), tmp_path / "bare")
    for name in (*files, "wrong", "bare"):
        with pytest.raises(ValueError, match=f"{name} is not an index written by MatryoshkaIndex.save"):
            mk.MatryoshkaIndex.load(tmp_path / name)
    with pytest.raises(ValueError, match="does not exist"):
        mk.MatryoshkaIndex.load(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"item_weight must be an \(N, D\) float table, got shape \(5,\)"):
        mk.MatryoshkaIndex(torch.randn(5), [4])


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run trained on a table with string ids."""
    folder = tmp_path_factory.mktemp("run")
    g = torch.Generator().manual_seed(0)
    users = [f"user-{u}" for u in torch.randint(0, 60, (1500,), generator=g).tolist()]
    items = [f"item-{i}" for i in torch.randint(0, 80, (1500,), generator=g).tolist()]
    pd.DataFrame({"user": users, "item": items}).to_csv(folder / "table.csv", index=False)
    train(TrainConfig(dataset=str(folder / "table.csv"), dims=(4, 8, 16), epochs=2, eval_every=1,
                      batch_size=256, progress=False, out=str(folder / "run")), log=lambda _: None)
    return folder


def test_load_run_recommends_with_original_ids_and_excludes_seen_items(csv_run):
    run = mk.load_run(csv_run / "run")
    table = pd.read_csv(csv_run / "table.csv")
    recs = run.recommend(["user-3", "user-7"], k=5)
    assert list(recs.columns) == ["user", "rank", "item", "score"] and len(recs) == 10
    assert recs.item.str.startswith("item-").all()
    for user, part in recs.groupby("user"):
        assert not set(part.item) & set(table[table.user == user].item), "a seen item was recommended"
        assert part.score.is_monotonic_decreasing
    narrow = run.recommend(["user-3"], k=5, width=8, shortlist=80)  # shortlist = N: same as exact
    assert narrow.item.tolist() == recs[recs.user == "user-3"].item.tolist()
    with pytest.raises(ValueError, match=r"unknown user ids \['nobody'\]"):
        run.recommend(["nobody"])


def test_mrl_recommend_refuses_bad_sizes_formats_and_replacing_a_file(csv_run, capsys, tmp_path):
    run = str(csv_run / "run")
    existing = tmp_path / "mine.csv"
    existing.write_text("the user's own table\n")
    for argv, words in [([run, "--users", "user-3", "--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
                        ([run, "--users", "user-3", "--batch-size", "-1"], "--batch-size must be an int >= 1, got -1"),
                        ([run, "--users", "user-3", "--k", "0"], "--k must be an int >= 1"),
                        ([run, "--all", "--out", str(tmp_path / "x.txt")], "--out must end in .parquet or .csv"),
                        ([run, "--all", "--out", str(existing)], "exists; --force replaces it")]:
        assert recommend_cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("mrl-recommend: error:") and words in err and "\n" not in err
    assert existing.read_text() == "the user's own table\n"
    assert recommend_cli.main([run, "--all", "--out", str(existing), "--force"]) == 0
    assert pd.read_csv(existing).columns.tolist() == ["user", "rank", "item", "score"]
    upper = tmp_path / "x.PARQUET"
    assert recommend_cli.main([run, "--users", "user-3", "--out", str(upper)]) == 0
    assert pd.read_parquet(upper).user.tolist() == ["user-3"] * 20
    # k beyond the items left: every unseen item, exact or through a shortlist
    for width in ([], ["--width", "8"]):
        assert recommend_cli.main([run, "--users", "user-3", "--k", "1000", *width]) == 0
        table = capsys.readouterr().out.splitlines()
        seen = mk.load_run(run).seen
        row = mk.load_run(run).rows(["user-3"])[0]
        assert len(table) - 1 == 80 - int(seen.indptr[row + 1] - seen.indptr[row])


def test_mrl_recommend_prints_writes_and_refuses(csv_run, capsys, tmp_path):
    assert recommend_cli.main([str(csv_run / "run"), "--users", "user-3,user-7", "--k", "3", "--width", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["user", "rank", "item", "score"] and len(out.splitlines()) == 7
    assert recommend_cli.main([str(csv_run / "run"), "--all", "--out", str(tmp_path / "recs.parquet")]) == 0
    recs = pd.read_parquet(tmp_path / "recs.parquet")
    assert recs.user.nunique() == mk.load_run(csv_run / "run").users.shape[0]
    for argv, words in [([str(csv_run / "run"), "--users", "ghost"], "unknown user ids ['ghost']"),
                        ([str(tmp_path), "--users", "user-3"], "does not exist"),
                        ([str(csv_run / "run"), "--all"], "--all needs --out"),
                        ([str(csv_run / "run"), "--users", "user-3", "--width", "5"], "width must be one of")]:
        assert recommend_cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mrl-recommend: error:") and words in err and "\n" not in err


# NestedIndex: a FAISS first stage over the narrow prefix (the serve extra), reranked at full width
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason='needs faiss, from the serve extra: pip install -e ".[serve]"')


def decaying(seed, n=2000, d=32, b=9):
    """Items and queries whose columns' scale decays, as a Matryoshka table's do."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(2.0, 0.2, d)
    return torch.randn(b, d, generator=g) * scale, torch.randn(n, d, generator=g) * scale


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


@needs_faiss
def test_mrl_recommend_serves_through_a_nested_index_and_saves_it(csv_run, capsys, tmp_path):
    run = str(csv_run / "run")
    assert recommend_cli.main([run, "--users", "user-3,user-7", "--k", "5"]) == 0
    exact_out = capsys.readouterr().out
    saved = tmp_path / "nested.pt"
    argv = [run, "--users", "user-3,user-7", "--k", "5", "--width", "8", "--shortlist", "80", "--ann", "IVF4,Flat",
            "--search-params", "nprobe=4", "--save-index", str(saved)]
    assert recommend_cli.main(argv) == 0 and capsys.readouterr().out == exact_out
    assert recommend_cli.main([run, "--users", "user-3,user-7", "--k", "5", "--shortlist", "80",
                               "--index", str(saved)]) == 0
    assert capsys.readouterr().out == exact_out
    before = saved.read_bytes()
    for args, words in [(["--ann", "HNSW32"], "--ann needs --width"),
                        (["--save-index", str(tmp_path / "x.pt")], "--save-index needs --ann"),
                        (["--index", str(saved), "--rerank-dtype", "float16"], "--rerank-dtype needs --ann"),
                        (["--index", str(saved), "--search-params", "=4"], "NAME=NUMBER pairs"),
                        (["--search-params", "efSearch=4"], "--search-params needs --ann or --index"),
                        (["--index", str(saved), "--search-params", "efSearch"], "NAME=NUMBER pairs"),
                        (["--index", str(saved), "--search-params", "efSearch=8"], "does not apply to a 'IVF4,Flat'"),
                        (["--width", "8", "--ann", "Bogus"], "is not a FAISS index_factory string"),
                        (["--width", "8", "--ann", "Flat", "--save-index", str(saved)], "exists; --force replaces it"),
                        (["--index", str(tmp_path / "absent.pt")], "does not exist")]:
        assert recommend_cli.main([run, "--users", "user-3", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("mrl-recommend: error:") and words in err and "\n" not in err, err
    assert saved.read_bytes() == before
