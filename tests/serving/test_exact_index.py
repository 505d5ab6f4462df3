"""The Matryoshka index (exact narrow shortlists), its files, and load_run's
recommendations with original ids."""

import pandas as pd
import pytest
import torch

import mrl_kernels as mk
import mrl_kernels.training.data
from mrl_kernels import reference

from helpers import BACKENDS, DEVICE, exact


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
