"""mrl-recommend: printing, writing, refusing, and serving through a nested index."""

import pandas as pd

import mrl_kernels as mk
import mrl_kernels.training.data
from mrl_kernels.cli import recommend as recommend_cli

from helpers import needs_faiss


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
