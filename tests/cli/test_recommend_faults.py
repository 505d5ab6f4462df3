"""mrl-recommend under faults: every bad input is its one error line and exit
2 (never a traceback), a user's file is never replaced without --force, nor
ever a file of the run or a file read, and two writers of one new file never
both win."""
import importlib.util
import threading

import pandas as pd
import pytest
import torch

from mrl_kernels import atomic, modelfile
from mrl_kernels.cli import recommend as recommend_cli
from mrl_kernels.ops import CSR

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason='needs faiss, from the serve extra: pip install -e ".[serve]"')
USERS = ["u,1", "u2", "-0", "0"]  # an id with a comma; "-0" and "0" are two ids


@pytest.fixture
def run(tmp_path):
    """A run folder: 4 users, 300 items at widths 4, 8, 16 (save_model's file, no training)."""
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "run"
    folder.mkdir()
    modelfile.save_model(folder / "model.pt", torch.randn(4, 16, generator=g), torch.randn(300, 16, generator=g),
                         [4, 8, 16], CSR.from_pairs([0, 0, 1, 3], [5, 6, 7, 8], 4, 300), USERS,
                         [f"i{i}" for i in range(300)])
    return folder


def error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrl-recommend: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_two_concurrent_writers_of_one_new_out_one_wins_the_other_fails(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    both_written = threading.Barrier(2)
    real = atomic.atomic_write

    def slowly(path, write, **options):  # both pass the check for an existing --out and write their table first
        def written(tmp):
            write(tmp)
            both_written.wait(timeout=60)
        return real(path, written, **options)
    monkeypatch.setattr(recommend_cli, "atomic_write", slowly)
    codes = {}
    threads = [threading.Thread(target=lambda u=u: codes.__setitem__(u, recommend_cli.main([str(run), "--users", u,
                                                                                           "--out", str(out)])))
               for u in ("u2", "0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(codes.values()) == [0, 2], codes
    winner = next(u for u, code in codes.items() if code == 0)
    assert pd.read_csv(out, dtype=str).user.unique().tolist() == [winner]
    assert f"{out} exists; --force replaces it, or choose another --out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "s.csv"]  # no temporary left


def test_force_replaces_and_names_the_file(run, tmp_path, capsys):
    out = tmp_path / "s.csv"
    out.write_text("the user's own table\n")
    assert recommend_cli.main([str(run), "--users", "u2", "--out", str(out)]) == 2
    assert "exists; --force replaces it, or choose another --out" in error(capsys)
    assert out.read_text() == "the user's own table\n"
    assert recommend_cli.main([str(run), "--users", "u2", "--out", str(out), "--force"]) == 0
    assert capsys.readouterr().err.strip() == f"mrl-recommend: --force replaces {out}"
    assert pd.read_csv(out).user.unique().tolist() == ["u2"]


@needs_faiss
def test_outputs_that_collide_with_each_other_or_with_the_runs_files_are_refused(run, tmp_path, capsys):
    model = (run / "model.pt").read_bytes()
    (run / "history.csv").write_text("epoch,loss\n")
    (tmp_path / "users.csv").write_text("u2\n")
    (tmp_path / "recs.csv").write_text("the user's\n")
    ann = ["--users", "u2", "--width", "8", "--ann", "Flat"]
    for args, words in [([*ann, "--save-index", str(run / "model.pt"), "--force"],
                         "--save-index {run}/model.pt is a file of the run folder"),
                        (["--users", "u2", "--out", str(run / "history.csv"), "--force"],
                         "--out {run}/history.csv is a file of the run folder"),
                        ([*ann, "--save-index", str(tmp_path / "x.csv"), "--out", str(tmp_path / "x.csv")],
                         "--out and --save-index name the same file"),
                        ([*ann, "--save-index", str(tmp_path / "recs.csv"), "--out", str(tmp_path / "recs.csv"),
                          "--force"], "--out and --save-index name the same file"),
                        (["--users-file", str(tmp_path / "users.csv"), "--out", str(tmp_path / "users.csv"),
                          "--force"], "is the --users-file file read")]:
        assert recommend_cli.main([str(run), *[a.format(run=run) for a in args]]) == 2, args
        assert words.format(run=run) in error(capsys)
    assert (run / "model.pt").read_bytes() == model and (run / "history.csv").read_text() == "epoch,loss\n"
    assert (tmp_path / "users.csv").read_text() == "u2\n" and not (tmp_path / "x.csv").exists()
    saved = tmp_path / "index.csv"  # an index may be named anything; --out only .csv or .parquet
    assert recommend_cli.main([str(run), *ann, "--save-index", str(saved)]) == 0
    before = saved.read_bytes()
    assert recommend_cli.main([str(run), "--users", "u2", "--index", str(saved), "--out", str(saved),
                               "--force"]) == 2
    assert "is the --index file read" in error(capsys) and saved.read_bytes() == before


@needs_faiss
def test_force_names_each_file_it_replaces(run, tmp_path, capsys):
    out, saved = tmp_path / "s.csv", tmp_path / "nested.pt"
    out.write_text("mine\n")
    saved.write_text("mine too\n")
    assert recommend_cli.main([str(run), "--users", "u2", "--width", "8", "--ann", "Flat", "--out", str(out),
                               "--save-index", str(saved), "--force"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"mrl-recommend: --force replaces {out}",
                                                    f"mrl-recommend: --force replaces {saved}"]


def test_users_file_asks_for_ids_with_commas(run, tmp_path, capsys):
    (tmp_path / "ids.txt").write_text("u,1\n\n-0\n0\n")
    assert recommend_cli.main([str(run), "--users-file", str(tmp_path / "ids.txt"), "--k", "2",
                               "--out", str(tmp_path / "r.csv")]) == 0
    recs = pd.read_csv(tmp_path / "r.csv", dtype=str)
    assert recs.user.tolist() == ["u,1", "u,1", "-0", "-0", "0", "0"]
    (tmp_path / "none.txt").write_text("\n\n")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    for path, words in [("none.txt", "--users-file names no user"), ("latin.txt", "is not UTF-8 text")]:
        assert recommend_cli.main([str(run), "--users-file", str(tmp_path / path)]) == 2
        assert words in error(capsys)


def _damage_model(run, key, value):
    state = torch.load(run / "model.pt", weights_only=True)
    if value is None:
        del state[key]
    else:
        state[key] = value
    torch.save(state, run / "model.pt")


@pytest.mark.parametrize("key, value, words", [
    ("item", torch.where(torch.arange(300)[:, None] == 9, float("nan"), torch.randn(300, 16)),
     "its item table holds NaN or infinite values (1 rows, e.g. row 9)"),
    ("seen_indices", None, "it lacks seen_indices"),
    ("seen_indptr", torch.tensor([0, 2, 3, 4]), "seen.indptr must hold one offset per user and one more (5), got 4"),
])
def test_a_damaged_model_file_is_one_error_line(run, capsys, key, value, words):
    _damage_model(run, key, value)
    assert recommend_cli.main([str(run), "--users", "u2"]) == 2
    err = error(capsys)
    assert f"{run / 'model.pt'} is damaged: " in err and words in err


def test_k_beyond_every_item_is_every_item_left_not_a_huge_allocation(run, capsys):
    assert recommend_cli.main([str(run), "--users", "u2", "--k", "1000000000000"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 299  # the header, every item but the one seen


@needs_faiss
@pytest.mark.parametrize("args, words", [
    (["--ann", "IDMap,Flat"], "first_stage 'IDMap,Flat' is not a FAISS index_factory string of a supported form"),
    (["--ann", "IVF4,Flat", "--search-params", "nprobe=-1"], "nprobe must be an int >= 1, got -1"),
    (["--ann", "IVF4,Flat", "--search-params", "nprobe=0"], "nprobe must be an int >= 1, got 0"),
    (["--ann", "IVF4,Flat", "--search-params", "nprobe=5"], "nprobe must be an int in [1, 4]"),
    (["--ann", "IVF4,Flat", "--search-params", "nprobe=nan"], "NAME=NUMBER pairs of whole numbers"),
    (["--ann", "IVF4,Flat", "--search-params", "nprobe=1e300"], "NAME=NUMBER pairs of whole numbers"),
    (["--ann", "HNSW8", "--search-params", "efSearch=1e30"], "NAME=NUMBER pairs of whole numbers"),
    (["--ann", "HNSW8", "--search-params", "efSearch=2.5"], "NAME=NUMBER pairs of whole numbers"),
    (["--ann", "HNSW8", "--search-params", "efSearch=301"], "efSearch must be an int in [1, 300]"),
    (["--ann", "HNSW8", "--search-params", "nprobe=2"], "search parameter nprobe=2 does not apply to a 'HNSW8'"),
])
def test_bad_first_stages_and_search_parameters_are_one_error_line(run, capsys, args, words):
    assert recommend_cli.main([str(run), "--users", "u2", "--width", "8", "--shortlist", "20", *args]) == 2
    assert words in error(capsys)


@needs_faiss
def test_a_corrupt_index_file_is_one_error_line_never_served(run, tmp_path, capsys):
    saved = tmp_path / "nested.pt"
    assert recommend_cli.main([str(run), "--users", "u2", "--width", "8", "--ann", "HNSW8", "--save-index",
                               str(saved)]) == 0
    capsys.readouterr()
    blob = bytearray(saved.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # inside FAISS's data, most of the file
    saved.write_bytes(bytes(blob))
    assert recommend_cli.main([str(run), "--users", "u2", "--index", str(saved), "--shortlist", "20"]) == 2
    assert f"{saved} is damaged: its content does not match the sha256" in error(capsys)
