import json

import pandas as pd
import pytest

from mrl_kernels import cli, data
from mrl_kernels.objectives import OBJECTIVES
from mrl_kernels.trainer import TrainConfig, train

SMALL = dict(dims=(4, 8, 16), batch_size=256, eval_every=2, progress=False)


@pytest.fixture(scope="module")
def small():
    return data.synthetic(seed=0, n_users=300, n_items=200)


@pytest.mark.parametrize("method", list(OBJECTIVES))
def test_every_method_trains_and_writes_its_outputs(tmp_path, small, method):
    config = TrainConfig(method=method, epochs=4, out=str(tmp_path), **SMALL)
    result = train(config, log=lambda _: None, dataset=small)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved["prefix"]) == {"4", "8", "16"}
    assert {"recall@20", "ndcg@20", "recall@50"} <= set(saved["test"])
    assert saved["seconds_per_epoch"] > 0
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.epoch.tolist() == [2, 4]
    # the best epoch is the evaluation with the highest validation Recall@20 (the first of equals)
    best = history.loc[history["recall@20"].idxmax()]
    assert saved["best_epoch"] == best.epoch
    assert saved["valid"] == pytest.approx({name: best[name] for name in saved["valid"]})
    assert (tmp_path / "checkpoint.pt").is_file()
    assert not list(tmp_path.glob(".*tmp"))


def test_resume_continues_exactly(tmp_path, small):
    straight = train(TrainConfig(epochs=6, out=str(tmp_path / "a"), **SMALL), log=lambda _: None, dataset=small)
    train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **SMALL), log=lambda _: None, dataset=small)
    resumed = train(TrainConfig(epochs=6, out=str(tmp_path / "b"), **SMALL), log=lambda _: None, dataset=small,
                    resume=True)
    assert resumed["test"] == straight["test"]
    assert pd.read_csv(tmp_path / "a" / "history.csv").equals(pd.read_csv(tmp_path / "b" / "history.csv"))


def test_tracked_test_metrics_do_not_change_training(tmp_path, small):
    plain = train(TrainConfig(epochs=4, out=str(tmp_path / "a"), **SMALL), log=lambda _: None, dataset=small)
    tracked = train(TrainConfig(epochs=4, out=str(tmp_path / "b"), track_test=True, **SMALL), log=lambda _: None,
                    dataset=small)
    assert tracked["test"] == plain["test"]
    history = pd.read_csv(tmp_path / "b" / "history.csv")
    assert "test_recall@20" in history and "test_recall@20" not in pd.read_csv(tmp_path / "a" / "history.csv")
    at_best = history.set_index("epoch").loc[plain["best_epoch"], "test_recall@20"]
    assert at_best == pytest.approx(plain["test"]["recall@20"])


def test_resume_refuses_other_settings(tmp_path, small):
    train(TrainConfig(epochs=2, out=str(tmp_path), **SMALL), log=lambda _: None, dataset=small)
    with pytest.raises(ValueError, match="written with other settings"):
        train(TrainConfig(epochs=4, out=str(tmp_path), **{**SMALL, "dims": (8, 16)}), log=lambda _: None,
              dataset=small, resume=True)


def test_early_stopping(tmp_path, small):
    result = train(TrainConfig(epochs=200, patience=1, lr=0.5, out=str(tmp_path), **SMALL),
                   log=lambda _: None, dataset=small)
    assert result["epochs_run"] < 200


def test_cli_runs_on_an_authors_folder(tmp_path, shared_datasets, capsys):
    code = cli.main(["--dataset", str(shared_datasets / "ml100k"), "--epochs", "2", "--eval-every", "1",
                     "--dims", "8,16", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert "recall@20" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["dataset"] == "ml100k"


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "missing-dir"], "unknown dataset 'missing-dir'"),
    (["--dims", "8,4"], "dims must be strictly increasing"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--lr", "-1"], "lr must be > 0"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, words):
    assert cli.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrl-train: error:") and words in err and "\n" not in err


def test_cli_rejects_bad_dims_syntax(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--dims", "4,x"])
    assert "comma-separated ints" in capsys.readouterr().err


@pytest.mark.slow
def test_mrl_m_beats_bpr_on_synthetic(tmp_path):
    """The built-in default job: MRL-M ranks better than BPR on the planted
    hierarchy, and its narrow prefixes capture the coarse categories."""
    ds = data.synthetic(seed=0)
    results = {m: train(TrainConfig(method=m, out=str(tmp_path / m), progress=False), log=lambda _: None,
                        dataset=ds) for m in ("mrl-m", "bpr")}
    assert results["mrl-m"]["test"]["recall@20"] > results["bpr"]["test"]["recall@20"]
    # the 4-wide prefix: an item's nearest items share its top-level category
    # (chance 1/4) more often under MRL-M than under BPR
    coarse = {m: r["hierarchy"]["4"][0] for m, r in results.items()}
    assert coarse["mrl-m"] > max(coarse["bpr"], 0.5)
