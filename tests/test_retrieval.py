"""prefix_topk on every backend against the reference, the Matryoshka index, and
recommendations from a trained run (Python and mrl-recommend)."""
import pandas as pd
import pytest
import torch

import mrl_kernels as mk
import mrl_kernels.data
from mrl_kernels import cli, reference
from mrl_kernels.trainer import TrainConfig, train

from conftest import DEVICE, FAST

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
    query, items = torch.randn(64, 32), torch.randn(2000, 32)
    items[[0, 1, 5, 9, 100, 1500], :3] = float("nan")  # the rows of nan_rows below
    expected = mk.prefix_topk(query, items, 10, width, shortlist, backend="torch")
    actual = mk.prefix_topk(query.to(DEVICE), items.to(DEVICE), 10, width, shortlist, backend=backend)
    assert torch.equal(actual[1].cpu(), expected[1])
    torch.testing.assert_close(actual[0].cpu(), expected[0], equal_nan=True)
    nan_rows = [0, 1, 5, 9, 100, 1500]
    clean = mk.prefix_topk(query, items.nan_to_num(0.0), 4, 32, 2000, [nan_rows] * 64, backend="torch")[1]
    if width == 32:  # exact search: the NaN rows, then the true top items of the others
        assert torch.equal(expected[1][:, :6], torch.tensor([nan_rows] * 64))
        assert torch.equal(expected[1][:, 6:], clean)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("indptr, words", [([0, 2, 9], "end at len"), ([0, 3, 2], "decreasing"),
                                           ([1, 2, 4], "start at 0")])
def test_a_malformed_csr_exclude_is_refused(backend, indptr, words):
    query, items = torch.randn(2, 8, device=DEVICE), torch.randn(10, 8, device=DEVICE)
    bad = mk.data.CSR(torch.tensor(indptr), torch.tensor([1, 2, 3, 4]), 10)
    with pytest.raises(ValueError, match=f"exclude is not a well-formed CSR.*{words}"):
        mk.prefix_topk(query, items, 2, 4, 5, bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_beyond_every_item_pads_exact_and_narrow_search(backend):
    items = torch.randn(50, 8, device=DEVICE)
    index = mk.MatryoshkaIndex(items, [4])
    query = torch.randn(3, 8, device=DEVICE)
    for width in (None, 4):
        scores, ids = index.search(query, 80, width, exclude=[[0, 1], [], [7]], backend=backend)
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
    index = mk.MatryoshkaIndex(items, [4, 8, 16], shortlist_dtype=torch.bfloat16)
    assert index.narrow[8].dtype == torch.bfloat16 and index.narrow[8].is_contiguous()
    scores, ids = index.search(query, 10, width=8, shortlist=300, backend=backend)  # shortlist = N: exact
    torch.testing.assert_close(scores.cpu().double(), expected_scores, rtol=1e-5, atol=1e-5)
    narrow = index.narrow[8]
    offsets, none = mk.ops.exclusion(None, 9, 300, query.device)
    expected = reference.prefix_topk(query.cpu(), narrow.cpu(), items.cpu(), 10, 40, offsets.cpu(), none.cpu())
    actual = index.search(query, 10, width=8, shortlist=40, backend=backend)
    assert torch.equal(actual[1].cpu(), expected[1])


def test_bad_arguments_name_themselves():
    q, items = torch.randn(2, 8), torch.randn(10, 8)
    for kwargs, words in [(dict(k=0), "k must be a positive int"), (dict(width=9), "width must be at most"),
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
    for a, b in zip(index.search(query, 5, 4, 20), again.search(query, 5, 4, 20)):
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
    for argv, words in [([run, "--users", "user-3", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                        ([run, "--users", "user-3", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
                        ([run, "--users", "user-3", "--k", "0"], "--k must be >= 1"),
                        ([run, "--all", "--out", str(tmp_path / "x.txt")], "--out must end in .parquet or .csv"),
                        ([run, "--all", "--out", str(existing)], "exists; --force replaces it")]:
        assert cli.recommend_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("mrl-recommend: error:") and words in err and "\n" not in err
    assert existing.read_text() == "the user's own table\n"
    assert cli.recommend_main([run, "--all", "--out", str(existing), "--force"]) == 0
    assert pd.read_csv(existing).columns.tolist() == ["user", "rank", "item", "score"]
    upper = tmp_path / "x.PARQUET"
    assert cli.recommend_main([run, "--users", "user-3", "--out", str(upper)]) == 0
    assert pd.read_parquet(upper).user.tolist() == ["user-3"] * 20
    # k beyond the items left: every unseen item, exact or through a shortlist
    for width in ([], ["--width", "8"]):
        assert cli.recommend_main([run, "--users", "user-3", "--k", "1000", *width]) == 0
        table = capsys.readouterr().out.splitlines()
        seen = mk.load_run(run).seen
        row = mk.load_run(run).rows(["user-3"])[0]
        assert len(table) - 1 == 80 - int(seen.indptr[row + 1] - seen.indptr[row])


def test_mrl_recommend_prints_writes_and_refuses(csv_run, capsys, tmp_path):
    assert cli.recommend_main([str(csv_run / "run"), "--users", "user-3,user-7", "--k", "3", "--width", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["user", "rank", "item", "score"] and len(out.splitlines()) == 7
    assert cli.recommend_main([str(csv_run / "run"), "--all", "--out", str(tmp_path / "recs.parquet")]) == 0
    recs = pd.read_parquet(tmp_path / "recs.parquet")
    assert recs.user.nunique() == mk.load_run(csv_run / "run").users.shape[0]
    for argv, words in [([str(csv_run / "run"), "--users", "ghost"], "unknown user ids ['ghost']"),
                        ([str(tmp_path), "--users", "user-3"], "does not exist"),
                        ([str(csv_run / "run"), "--all"], "--all needs --out"),
                        ([str(csv_run / "run"), "--users", "user-3", "--width", "5"], "width must be one of")]:
        assert cli.recommend_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mrl-recommend: error:") and words in err and "\n" not in err
