"""Serving under faults: FAISS first stages and search parameters that crash,
hang or mislead FAISS are refused before it sees them; a damaged index file or
model file is one clear error, never served."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import modelfile
from mrl_kernels.ops import CSR

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason='needs faiss, from the serve extra: pip install -e ".[serve]"')

# each case once through NestedIndex and once through mrl-recommend, in one process: a native abort
# (HNSW0: SIGABRT, HNSW1: SIGSEGV, IVF4,PQ2x0: SIGFPE) or a hang (NSG0, NSG2) fails the test, not pytest
FAULTY_FIRST_STAGES = """
import sys
import torch
import mrl_kernels as mk
from mrl_kernels.cli import recommend
from mrl_kernels.modelfile import save_model
from mrl_kernels.ops import CSR

g = torch.Generator().manual_seed(0)
items = torch.randn(500, 16, generator=g)
save_model(sys.argv[1] + "/model.pt", torch.randn(4, 16, generator=g), items, [8, 16],
           CSR.from_pairs([0], [1], 4, 500))
for case in sys.argv[2:]:
    try:
        mk.NestedIndex(items, 8, case).search(items[:3], 5, shortlist=20)
        print(case, "accepted")
    except ValueError as exc:
        print(case, "refused:", exc)
    code = recommend.main([sys.argv[1], "--users", "0", "--width", "8", "--ann", case, "--shortlist", "20"])
    print(case, "exit", code, flush=True)
"""

CASES = {"HNSW0": "HNSW's M must lie in [2, 256], got 0", "HNSW1": "HNSW's M must lie in [2, 256], got 1",
         "NSG0": "is not a FAISS index_factory string of a supported form",
         "NSG2": "is not a FAISS index_factory string of a supported form",
         "IVF0,Flat": "IVF's nlist must be >= 1, got 0",
         "IDMap,Flat": "is not a FAISS index_factory string of a supported form",
         "IVF4,PQ2x0": "PQ's bits must lie in [1, 16], got 0",
         "IVF4,PQ3": "PQ<m> needs m >= 1 dividing the width 8, got 3",
         "IVF501,Flat": "cannot be trained on the 500 items: its k-means makes nlist = 501 clusters",
         "HNSW99999999999": "HNSW's M must lie in [2, 256], got 99999999999"}


@needs_faiss
def test_first_stages_that_crash_or_hang_faiss_are_refused_before_it_sees_them(tmp_path):
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(FAULTY_FIRST_STAGES), str(tmp_path), *CASES],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    lines = run.stdout.splitlines()
    for case, words in CASES.items():
        assert f"{case} refused: first_stage {case!r}" in run.stdout and words in run.stdout, (case, run.stdout)
        assert f"{case} exit 2" in lines, (case, run.stdout)
    errors = [line for line in run.stderr.splitlines() if line.startswith("mrl-recommend: error:")]
    assert len(errors) == len(CASES) and "Traceback" not in run.stderr, run.stderr[-2000:]


@needs_faiss
@pytest.mark.parametrize("first_stage", ["Flat", "HNSW", "HNSW2", "IVF1,Flat", "IVF8,SQfp16", "IVF8,SQ8",
                                         "IVF8,PQ4", "IVF8,PQ2x4"])
def test_the_supported_first_stages_build_and_search(first_stage):
    items = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    scores, ids = mk.NestedIndex(items, 8, first_stage).search(items[:4], 5, shortlist=50)
    assert ids.shape == (4, 5) and bool((ids >= 0).all()) and bool(torch.isfinite(scores).all())


@needs_faiss
@pytest.mark.parametrize("first_stage, name", [("HNSW8", "efSearch"), ("IVF16,Flat", "nprobe")])
@pytest.mark.parametrize("value", [float("nan"), -1, 0, 1e30, 1e300, 2.0, True, "8", 10 ** 30])
def test_search_parameters_are_checked_by_type_and_range(first_stage, name, value):
    items = torch.randn(300, 16, generator=torch.Generator().manual_seed(2))
    index = mk.NestedIndex(items, 8, first_stage)
    before = index.search(items[:50], 10, shortlist=20)
    with pytest.raises(ValueError, match=f"{name} must be an int"):
        index.set_params(**{name: value})
    with pytest.raises(ValueError, match=f"{name} must be an int"):
        mk.NestedIndex(items, 8, first_stage, params={name: value})
    after = index.search(items[:50], 10, shortlist=20)  # nothing was set
    assert torch.equal(before[1], after[1]) and bool((after[1] >= 0).all())


@needs_faiss
def test_search_parameters_are_bounded_by_the_index_and_name_what_applies():
    items = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    ivf, hnsw = mk.NestedIndex(items, 8, "IVF16,Flat"), mk.NestedIndex(items, 8, "HNSW8")
    with pytest.raises(ValueError, match=r"nprobe must be an int in \[1, 16\] \(the index's nlist"):
        ivf.set_params(nprobe=17)
    with pytest.raises(ValueError, match=r"efSearch must be an int in \[1, 300\] \(the index's items"):
        hnsw.set_params(efSearch=301)
    with pytest.raises(ValueError, match=r"search parameter efSearch=8 does not apply to a 'Flat' first stage "
                                         r"\(it takes none\)"):
        mk.NestedIndex(items, 8, "Flat", params={"efSearch": 8})
    ivf.set_params(nprobe=16)
    hnsw.set_params(efSearch=300)
    assert ivf.params == {"nprobe": 16} and hnsw.params == {"efSearch": 300}


def _saved(tmp_path, first_stage="HNSW8"):
    items = torch.randn(500, 16, generator=torch.Generator().manual_seed(4))
    index = mk.NestedIndex(items, 8, first_stage)
    index.save(tmp_path / "nested.pt")
    return index, items


@needs_faiss
def test_flipped_bytes_in_faiss_data_are_refused_at_load(tmp_path):
    index, _ = _saved(tmp_path)
    blob = bytearray((tmp_path / "nested.pt").read_bytes())
    data = bytes(torch.load(tmp_path / "nested.pt", weights_only=True)["faiss"].numpy())
    at = blob.find(data[:256])
    assert at > 0  # the FAISS bytes lie in the file as they are
    for offset in (len(data) // 2, len(data) - 10):
        damaged = blob.copy()
        damaged[at + offset] ^= 0xFF
        (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="damaged.pt is damaged: its content does not match the sha256"):
            mk.NestedIndex.load(tmp_path / "damaged.pt")


@needs_faiss
@pytest.mark.parametrize("field, value", [("ntotal", 499), ("ntotal", 10 ** 12), ("width", 4),
                                          ("first_stage", "HNSW0"), ("params", {"efSearch": 10 ** 30})])
def test_an_altered_index_file_is_refused_at_load(tmp_path, field, value):
    _saved(tmp_path)
    state = torch.load(tmp_path / "nested.pt", weights_only=True)
    if field == "ntotal":  # the outer index's header: fourcc, d (int32), ntotal (int64)
        data = state["faiss"].numpy().copy()
        data[8:16] = np.frombuffer(np.int64(value).tobytes(), np.uint8)
        state["faiss"] = torch.from_numpy(data)
    else:
        state[field] = value
    torch.save(state, tmp_path / "altered.pt")
    with pytest.raises(ValueError, match="altered.pt is damaged: its content does not match the sha256"):
        mk.NestedIndex.load(tmp_path / "altered.pt")


@needs_faiss
def test_an_index_of_the_format_without_a_checksum_is_refused_with_the_fix(tmp_path):
    torch.save({"format": "mrl_kernels nested index 1", "faiss": torch.zeros(8, dtype=torch.uint8)},
               tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt is an index of an older mrl_kernels \(without a checksum\); "
                                         r"build it again"):
        mk.NestedIndex.load(tmp_path / "old.pt")


@needs_faiss
def test_a_saved_index_loads_with_its_checked_parameters(tmp_path):
    items = torch.randn(500, 16, generator=torch.Generator().manual_seed(5))
    index = mk.NestedIndex(items, 8, "IVF8,PQ2x4", params={"nprobe": 3})
    index.save(tmp_path / "nested.pt")
    again = mk.NestedIndex.load(tmp_path / "nested.pt")
    assert again.params == {"nprobe": 3} and again.first_stage == "IVF8,PQ2x4"
    for a, b in zip(index.search(items[:9], 5, shortlist=30), again.search(items[:9], 5, shortlist=30)):
        assert torch.equal(a, b)


def _model(tmp_path, **change):
    """A run folder whose model.pt holds 6 users, 20 items at widths 4, 8 (``change`` replaces entries)."""
    g = torch.Generator().manual_seed(6)
    seen = CSR.from_pairs([0, 1, 1, 5], [3, 4, 7, 19], 6, 20)
    modelfile.save_model(tmp_path / "model.pt", torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g),
                         [4, 8], seen, [f"u{i}" for i in range(6)], [f"i{i}" for i in range(20)])
    if change:
        state = torch.load(tmp_path / "model.pt", weights_only=True)
        for key, value in change.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        torch.save(state, tmp_path / "model.pt")
    return tmp_path


def _with_nan(name, row, n):
    table = torch.randn(n, 8)
    table[row, 2] = float("nan")
    return table


@pytest.mark.parametrize("change, words", [
    ({"item": _with_nan("item", 7, 20)}, r"its item table holds NaN or infinite values \(1 rows, e.g. row 7\)"),
    ({"user": _with_nan("user", 2, 6)}, r"its user table holds NaN or infinite values \(1 rows, e.g. row 2\)"),
    ({"item": torch.full((20, 8), float("inf"))}, "its item table holds NaN or infinite values"),
    ({"seen_indptr": None}, "it lacks seen_indptr"),
    ({"seen_indptr": torch.tensor([0, 0, 2, 2, 2])}, "is not a well-formed CSR"),
    ({"seen_indptr": torch.tensor([0, 0, 2])}, "is not a well-formed CSR"),
    ({"seen_indptr": torch.tensor([0, 1, 3, 3, 3, 4])},
     r"seen.indptr must hold one offset per user and one more \(7\), got 6"),
    ({"seen_indices": torch.tensor([3, 4, 7, 20])}, r"seen.indices must lie in \[0, 20\)"),
    ({"dims": [4, 6]}, "dims"),
    ({"item": torch.randn(20, 4)}, "its user table has width 8 but its item table 4"),
    ({"user_ids": ["a"] * 6}, "user_ids must be None or a list of 6 distinct ids"),
    ({"item_ids": ["i0"]}, "item_ids must be None or a list of 20 distinct ids"),
    ({"user": torch.zeros(6, 8, dtype=torch.int64)}, r"user table must be a non-empty \(N, D\) float tensor"),
])
def test_a_damaged_model_file_is_refused_when_the_run_is_loaded(tmp_path, change, words):
    run = _model(tmp_path, **change)
    with pytest.raises(ValueError, match=f"model.pt is damaged: .*{words}"):
        mk.load_run(run)


def test_a_sound_model_file_loads_and_k_beyond_the_items_returns_every_item_left(tmp_path):
    run = mk.load_run(_model(tmp_path))
    recs = run.recommend(["u1"], k=10 ** 12)  # was a (1, 10^12) allocation
    assert len(recs) == 18 and not {"i4", "i7"} & set(recs.item) and recs.score.is_monotonic_decreasing
    assert recs.equals(run.recommend(["u1"], k=18))


def test_a_matryoshka_index_never_replaces_a_file_without_force(tmp_path):
    mine = tmp_path / "mine.pt"
    mine.write_text("the user's own file")
    index = mk.MatryoshkaIndex(torch.randn(20, 8), [4])
    with pytest.raises(FileExistsError, match="mine.pt exists; force=True replaces it"):
        index.save(mine)
    assert mine.read_text() == "the user's own file"
    index.save(mine, force=True)
    assert torch.equal(mk.MatryoshkaIndex.load(mine).items, index.items)
