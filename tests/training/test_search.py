"""``mrl-train --method mrl-als --tune N`` (mrl_kernels.training.search): the score,
the choice, the settings of a trial, a seeded search (the same history twice), the run folder's
tune.csv and metrics.json, refusals; and the per-width ``--alpha`` / ``--l2``."""
import json
import math

import pandas as pd
import pytest

from mrl_kernels.cli.train import main, parser
from mrl_kernels.training import TrainConfig
from mrl_kernels.training.data import load
from mrl_kernels.training.search import (DESIGN, TUNE_HISTORY, score, trial_settings, tune, worst_gain,
                                         worst_shortfall)

pytest.importorskip("optuna", reason="optuna is not installed (the tune extra)")

SMALL = ["--dataset", "synthetic", "--users", "120", "--items", "80", "--interactions", "1500", "--method", "mrl-als",
         "--dims", "2,4,8", "--epochs", "3", "--no-progress"]


def test_the_score_is_the_mean_log_recall():
    assert score({4: 0.1, 8: 0.4}) == pytest.approx(math.log(0.2))
    assert score({4: 0.0, 8: 0.4}) == -math.inf


def test_trials_are_compared_by_their_weakest_width_against_the_first():
    reference = {4: 0.1, 8: 0.2}
    assert worst_gain({4: 0.2, 8: 0.3}, reference) == pytest.approx(math.log(1.5))
    # a large gain at one width does not pay for a loss at another
    assert worst_gain({4: 0.5, 8: 0.19}, reference) == pytest.approx(math.log(0.95))
    assert worst_gain(reference, reference) == 0.0
    assert worst_gain({4: 0.0, 8: 0.4}, reference) == -math.inf


def test_the_shortfall_is_the_weakest_width_against_the_best_trial_there():
    history = pd.DataFrame({"valid_recall@20_4": [0.1, 0.2, 0.11, float("nan"), 0.0],
                            "valid_recall@20_8": [0.1, 0.095, 0.11, float("nan"), 0.05]})
    shortfall = worst_shortfall(history, (4, 8))
    assert shortfall[:3].tolist() == pytest.approx([math.log(0.5), math.log(0.095 / 0.11), math.log(0.55)])
    assert shortfall[3] == shortfall[4] == -math.inf  # a diverged trial (no recall) and a recall of 0
    assert worst_shortfall(history[:1], (4, 8))[0] == 0.0  # alone, a trial is the best at every width


def test_the_trial_chosen_is_the_one_closest_to_the_best_at_its_weakest_width(monkeypatch):
    from mrl_kernels.training import search

    config = TrainConfig(dataset="synthetic", synthetic_size=(120, 80, 1500), method="mrl-als", dims=(2, 4, 8),
                         epochs=2, progress=False)
    ds = load("synthetic", seed=0, synthetic_size=(120, 80, 1500))
    # trial 0 (the defaults) 0.1 at every width; trial 1 twice them at the narrow widths, 5% under at the
    # widest; trial 2 10% over them everywhere, 45% under trial 1 at the narrow widths
    found = iter([{2: 0.1, 4: 0.1, 8: 0.1}, {2: 0.2, 4: 0.2, 8: 0.095}, {2: 0.11, 4: 0.11, 8: 0.11}])
    monkeypatch.setattr(search, "evaluate_trial", lambda *args: (lambda r: {"score": score(r), "sweeps": 2,
                                                                            "recall@20": r,
                                                                            "stop_score": score(r)})(next(found)))
    chosen, history = tune(config, ds, 3, log=lambda _: None)
    # TPE is told the gain on the defaults, by which trial 2 leads; the choice is by the shortfall
    assert list(history.score.round(6)) == [0.0, round(math.log(0.95), 6), round(math.log(1.1), 6)]
    assert list(history.shortfall.round(6)) == [round(math.log(v), 6) for v in (0.5, 0.095 / 0.11, 0.55)]
    assert history.chosen.tolist() == [False, True, False]
    first, last, ratio = DESIGN[0]
    assert chosen.alpha == pytest.approx((first * config.alpha, (first * last) ** 0.5 * config.alpha,
                                          last * config.alpha))
    assert chosen.level_weights == (ratio ** 2, ratio, 1.0)


def test_a_trials_settings_are_geometric_over_the_widths():
    settings = trial_settings({"alpha_first": 1.0, "alpha_last": 100.0, "reg_first": 10.0, "reg_last": 0.1,
                               "level_ratio": 2.0, "cg_steps": 3}, 3)
    assert settings["alpha"] == pytest.approx((1.0, 10.0, 100.0))
    assert settings["l2"] == pytest.approx((10.0, 1.0, 0.1))
    assert settings["level_weights"] == (4.0, 2.0, 1.0) and settings["cg_steps"] == 3


def test_the_search_is_seeded_and_starts_from_the_defaults_then_the_design():
    config = TrainConfig(dataset="synthetic", synthetic_size=(120, 80, 1500), method="mrl-als", dims=(2, 4, 8),
                         epochs=2, progress=False)
    ds = load("synthetic", seed=0, synthetic_size=(120, 80, 1500))
    trials = 2 + len(DESIGN)
    chosen, first = tune(config, ds, trials, log=lambda _: None)
    _, second = tune(config, ds, trials, log=lambda _: None)
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), second.drop(columns="seconds"))
    assert first.alpha_first[0] == first.alpha_last[0] == config.alpha and first.level_ratio[0] == 1.0
    for (alpha_first, alpha_last, ratio), (_, row) in zip(DESIGN, first.iloc[1:].iterrows()):
        assert (row.alpha_first, row.alpha_last, row.level_ratio) == (alpha_first * config.alpha,
                                                                      alpha_last * config.alpha, ratio)
        assert (row.reg_first, row.reg_last, row.cg_steps) == (config.l2, config.l2, config.cg_steps)
    assert first.alpha_first.iloc[-1] not in set(first.alpha_first.iloc[:-1]), "TPE's own trial after the design"
    best = first.loc[first.shortfall.idxmax()]
    assert chosen.alpha == pytest.approx(trial_settings(best.to_dict(), 3)["alpha"])
    assert chosen.epochs == chosen.patience == best.sweeps, "the run sweeps as long as the best trial"
    assert set(first.columns) >= {"score", "shortfall", "mean_log_recall", "sweeps", "valid_recall@20_2", "valid_recall@20_8"}
    assert first.score[0] == 0.0  # the first trial is the reference


def test_tune_runs_end_to_end_and_records_the_search(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--tune", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = pd.read_csv(out / TUNE_HISTORY)
    assert len(history) == 2 and metrics["tune"]["trials"] == 2 and metrics["tune"]["seconds"] > 0
    assert len(metrics["tune"]["chosen"]["alpha"]) == 3
    assert metrics["config"]["alpha"] == metrics["tune"]["chosen"]["alpha"]
    assert "the best trial's at that width" in metrics["tune"]["choice"]
    printed = capsys.readouterr()
    assert "test metrics of the refit model at every width" in printed.out + printed.err


@pytest.mark.parametrize("extra, words", [
    (["--method", "mrl-m", "--tune", "2"], "--tune searches mrl-als's per-width settings"),
    (["--tune", "0"], "--tune must be an int >= 1"),
    (["--tune", "2", "--resume"], "--tune starts a new run"),
])
def test_bad_tune_requests_are_refused(tmp_path, capsys, extra, words):
    arguments = [*SMALL, "--out", str(tmp_path / "run")]
    if "--method" in extra:  # the last --method wins
        arguments = [a for a in arguments if a not in ("--dims", "2,4,8")]
    assert main([*arguments, *extra]) == 2
    assert words in capsys.readouterr().err


def test_alpha_and_l2_take_one_value_per_width():
    args = parser().parse_args([*SMALL, "--alpha", "1,2,40", "--l2", "5"])
    assert args.alpha == (1.0, 2.0, 40.0) and args.l2 == 5.0
    TrainConfig(method="mrl-als", dims=(2, 4, 8), alpha=(1.0, 2.0, 40.0), l2=(1.0, 0.5, 2.0)).check()


@pytest.mark.parametrize("change, words", [
    (dict(alpha=(1.0, 2.0)), "alpha must be a number or one per level (3), got 2 values"),
    (dict(l2=(1.0, -2.0, 1.0)), "l2[1] must be a finite number >= 0"),
    (dict(method="mrl-m", l2=(1.0, 2.0, 3.0), alpha=None), "l2 must be a finite number >= 0"),
])
def test_bad_per_width_settings_are_refused(change, words):
    with pytest.raises(ValueError) as raised:
        TrainConfig(**{"method": "mrl-als", "dims": (2, 4, 8), **change}).check()
    assert words in str(raised.value)


def test_a_trial_is_scored_on_every_validation_user_at_its_best_sweep():
    # the sweep is chosen on a sample; the score the search compares is that sweep's factors on all users
    from mrl_kernels.training.als import Sweeps, initial_factors
    from mrl_kernels.training.metrics import prefix_evaluate, sample_users
    from mrl_kernels.training.search import evaluate_trial
    import torch

    config = TrainConfig(dataset="synthetic", synthetic_size=(300, 80, 3000), method="mrl-als", dims=(2, 4, 8),
                         epochs=4, patience=4, progress=False, alpha=3.0, l2=0.5)
    ds = load("synthetic", seed=0, synthetic_size=(300, 80, 3000))
    sample, every = sample_users(ds.valid, 40, 0), sample_users(ds.valid, None, 0)
    assert len(every) > len(sample)
    found = evaluate_trial(config, ds.train, ds.valid, sample, every)
    stopped = evaluate_trial(config, ds.train, ds.valid, sample)
    assert found["sweeps"] == stopped["sweeps"] and found["stop_score"] == stopped["score"]
    # the same fit by hand to the chosen sweep, evaluated on every user
    sweeps = Sweeps.of(config.dims, None, config.alpha, config.l2, config.cg_steps, config.backend, config.rotations)
    generator = torch.Generator().manual_seed(config.seed)
    user, item = initial_factors(ds.train.n_rows, 8, generator), initial_factors(ds.train.n_cols, 8, generator)
    for done in range(found["sweeps"]):
        sweeps.sweep(user, item, ds.train, ds.train.transpose(), done)
    metrics = prefix_evaluate(user, item, config.dims, ds.valid, [ds.train], ks=(20,), users=every)
    assert found["recall@20"] == {int(w): m["recall@20"] for w, m in metrics.items()}
    assert found["score"] == score(found["recall@20"]) != found["stop_score"]
