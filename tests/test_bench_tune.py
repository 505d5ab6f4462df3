"""``python -m bench.tune``: mrl-als runs mrl-train --tune's search (the same trials,
the same choice), other methods the shared study; each refit for every seed."""
import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("optuna", reason="optuna is not installed (the tune extra)")

from bench import tune as bench_tune  # noqa: E402
from mrl_kernels.training import TrainConfig  # noqa: E402
from mrl_kernels.training import search  # noqa: E402
from mrl_kernels.training.data import load  # noqa: E402


@pytest.fixture
def clustered(tmp_path):
    """150 users in 3 groups, each with 12 of its group's 30 items and 2 others."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(150):
        group = user % 3
        rows += [(user, 30 * group + item) for item in rng.choice(30, 12, replace=False)]
        rows += [(user, item) for item in rng.choice(90, 2, replace=False)]
    path = tmp_path / "clustered.csv"
    pd.DataFrame(rows, columns=["user", "item"]).drop_duplicates().to_csv(path, index=False)
    return str(path)


def test_mrl_als_is_searched_by_mrl_train_tunes_search(tmp_path, clustered):
    out = tmp_path / "tune"
    assert bench_tune.main(["--dataset", clustered, "--method", "mrl-als", "--trials", "3", "--max-epochs", "3",
                            "--seeds", "0,1", "--out", str(out)]) == 0
    config = TrainConfig(dataset=clustered, method="mrl-als", epochs=3, patience=bench_tune.SELECT_PATIENCE,
                         progress=False)
    chosen, history = search.tune(config, load(clustered, seed=0), 3, log=lambda _: None)
    trials = pd.read_csv(out / "trials.csv")
    pd.testing.assert_frame_equal(trials.drop(columns="seconds"), history.drop(columns="seconds"),
                                  check_dtype=False)
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == int(history.shortfall.idxmax()) and best["trials"] == 3
    assert best["valid_score"] == history.shortfall.max() and history.chosen.sum() == 1
    assert best["config"]["alpha"] == pytest.approx(chosen.alpha) and best["config"]["epochs"] == chosen.epochs
    assert [run["seed"] for run in best["runs"]] == [0, 1] and all("recall@20" in run["test"] for run in best["runs"])


@pytest.mark.parametrize("flag", [["--budget", "60"], ["--select", "mean-width"], ["--search-only"]])
def test_settings_of_the_shared_study_are_refused_for_mrl_als(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit:
        bench_tune.main(["--method", "mrl-als", *flag, "--out", str(tmp_path / "tune")])
    assert exit.value.code == 2
    assert f"{flag[0]}: not for --method mrl-als" in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()


def test_a_gradient_method_searches_the_shared_study_and_refits(tmp_path, clustered):
    out = tmp_path / "tune"
    assert bench_tune.main(["--dataset", clustered, "--method", "bpr", "--trials", "2", "--max-epochs", "2",
                            "--seeds", "0", "--out", str(out)]) == 0
    trials = pd.read_csv(out / "trials.csv")
    best = json.loads((out / "best.json").read_text())
    assert len(trials) == 2 and (out / "study.db").is_file() and best["trials"] == 2
    assert trials.params_l2[0] == pytest.approx(TrainConfig(method="bpr").l2)  # the defaults come first
    assert best["config"]["epochs"] == TrainConfig.epochs and best["runs"][0]["seed"] == 0
