import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pandas as pd
import pytest
import torch

from mrl_kernels import atomic
from mrl_kernels.ops import registry
from mrl_kernels.training import data, metrics
from mrl_kernels import training as trainer
from mrl_kernels.training.backbones import BACKBONES
from mrl_kernels.training import Interrupted, TrainConfig, checkpoint, train

from helpers import GRADIENT_METHODS, SMALL, same_run

# the operators each method calls on dense tables
OPERATORS = {"bpr": {"mrl_bpr_loss"}, "bpr-d": {"mns_bpr_loss"}, "bpr-m": {"mns_sample"},
             "mrl-d": {"mns_sample", "mrl_bpr_loss"}, "mrl-m": {"mns_bpr_loss"}, "mrl-s": {"mrl_softmax_loss"},
             "mrl-s-all": {"full_softmax_lse"}, "mrl-ls": set()}


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_trains_and_writes_its_outputs(tmp_path, small, method):
    config = TrainConfig(method=method, epochs=4, out=str(tmp_path), **SMALL)
    result = train(config, log=lambda _: None, dataset=small)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["config"]["world_size"] == 1
    assert saved["config"]["sparse"] is False  # mf below SPARSE_FROM items (test_sparse: Fit's choice)
    # the backend each operator ran on (this process's latest call of it: this run's)
    assert OPERATORS[method] <= set(saved["backends"]) and saved["backends"] == registry.used()
    assert set(saved["backends"].values()) <= set(registry.names())
    assert set(saved["prefix"]) == {"4", "8", "16"}
    assert {"recall@20", "ndcg@20", "recall@50"} <= set(saved["test"])
    assert saved["seconds_per_epoch"] > 0 and saved["wall_seconds"] > 0
    assert {"epochs", "patience", "backend", "device", "threads", "seed", "lr"} <= set(saved["config"])
    assert set(saved["versions"]) == {"mrl_kernels", "torch", "python"}
    assert saved["stopped"] == "reached --epochs 4"
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.epoch.tolist() == [2, 4]
    assert history.elapsed_s.is_monotonic_increasing and history.elapsed_s.iloc[0] > 0
    # the best epoch is the evaluation with the highest validation Recall@20 (the first of equals)
    best = history.loc[history["recall@20"].idxmax()]
    assert saved["best_epoch"] == best.epoch
    assert saved["valid"] == pytest.approx({name: best[name] for name in saved["valid"]})
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "curves.png").is_file()
    assert not list(tmp_path.glob(f".*{atomic.TEMP_SUFFIX}"))


def test_resume_continues_exactly(tmp_path, small):
    config = {**SMALL, "refit": False}
    straight = train(TrainConfig(epochs=6, out=str(tmp_path / "a"), **config), log=lambda _: None, dataset=small)
    train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **config), log=lambda _: None, dataset=small)
    resumed = train(TrainConfig(epochs=6, out=str(tmp_path / "b"), **config), log=lambda _: None, dataset=small,
                    resume=True)
    assert resumed["test"] == straight["test"]
    histories = [pd.read_csv(tmp_path / run / "history.csv").drop(columns="elapsed_s") for run in "ab"]
    assert histories[0].equals(histories[1])


def _refit_spy(monkeypatch, stop_at=None):
    """Record (interactions, epochs) of every fit; request a stop before epoch
    ``stop_at`` of the fit on train + validation."""
    fits = []
    epoch = trainer.Fit.epoch

    def spied(fit, loss=True):
        if not fits or fits[-1][0] is not fit:
            fits.append([fit, 0])
        fits[-1][1] += 1
        if stop_at is not None and len(fits) == 2 and fits[-1][1] == stop_at:
            trainer.request_stop()
        return epoch(fit, loss)
    monkeypatch.setattr(trainer.Fit, "epoch", spied)
    return fits


def test_refit_trains_afresh_on_train_and_validation_for_the_selected_epochs(tmp_path, small, monkeypatch):
    fits = _refit_spy(monkeypatch)
    result = train(TrainConfig(epochs=6, patience=100, out=str(tmp_path), **SMALL), log=lambda _: None,
                   dataset=small)
    (selection, selection_epochs), (refit, refit_epochs) = fits
    assert selection.interactions.nnz == small.train.nnz and selection_epochs == 6
    assert refit.interactions.nnz == small.train.nnz + small.valid.nnz
    assert refit_epochs == result["refit_epochs"] == result["best_epoch"]
    assert result["test"] != result["test_before_refit"]
    no_refit = train(TrainConfig(epochs=6, patience=100, refit=False, out=str(tmp_path / "n"), **SMALL),
                     log=lambda _: None, dataset=small)
    assert no_refit["test"] == result["test_before_refit"] and "refit_epochs" not in no_refit


def test_resume_during_the_refit_equals_an_uninterrupted_run(tmp_path, small, monkeypatch):
    straight = train(TrainConfig(epochs=4, out=str(tmp_path / "a"), **SMALL), log=lambda _: None, dataset=small)
    assert straight["best_epoch"] == 4  # so that the refit has a checkpoint (epoch 2) before the stop at epoch 3
    _refit_spy(monkeypatch, stop_at=3)
    with pytest.raises(Interrupted, match="the checkpoint of the refit is kept"):
        train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **SMALL), log=lambda _: None, dataset=small)
    monkeypatch.undo()
    resumed = train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **SMALL), log=lambda _: None, dataset=small,
                    resume=True)
    assert same_run(straight, resumed)


def test_two_threads_give_the_same_bytes_and_resume_equals_an_uninterrupted_run(tmp_path):
    ds = data.synthetic(seed=0, n_users=3000, n_items=300)  # many repeated ids in every batch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = dict(method="mrl-m", dims=(8, 16, 32), eval_every=1, batch_size=4096, progress=False, refit=False)
        runs = [train(TrainConfig(epochs=3, out=str(tmp_path / name), **config), log=lambda _: None, dataset=ds)
                for name in ("a", "b")]
        train(TrainConfig(epochs=2, out=str(tmp_path / "c"), **config), log=lambda _: None, dataset=ds)
        runs.append(train(TrainConfig(epochs=3, out=str(tmp_path / "c"), **config), log=lambda _: None, dataset=ds,
                          resume=True))
    finally:
        torch.set_num_threads(before)
    assert same_run(runs[0], runs[1]) and same_run(runs[0], runs[2])
    weights = [checkpoint.read(tmp_path / name / "checkpoint.pt", torch.device("cpu"))["model"]
               for name in "abc"]
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0]), "the same seed gave other weights"


def _copy(finished, tmp_path) -> Path:
    """A copy of the finished run's folder to damage or continue."""
    folder, _ = finished
    return Path(shutil.copytree(folder, tmp_path / "run"))


def test_resume_rewrites_every_output(tmp_path, small, finished):
    out, first = _copy(finished, tmp_path), finished[1]
    history = (out / "history.csv").read_text()
    # as if killed between the last checkpoint and the history / metrics writes
    for name in ("history.csv", "metrics.json", "curves.png"):
        (out / name).unlink()
    again = train(TrainConfig(epochs=2, out=str(out), **SMALL), log=lambda _: None, dataset=small, resume=True)
    assert (out / "history.csv").read_text() == history and (out / "curves.png").is_file()
    assert again["test"] == first["test"] and json.loads((out / "metrics.json").read_text())["test"] == first["test"]


def test_a_run_folder_is_never_overwritten(tmp_path, small, finished):
    out = _copy(finished, tmp_path)
    with pytest.raises(ValueError, match="already holds a run .*--resume continues it"):
        train(TrainConfig(epochs=2, out=str(out), **SMALL), log=lambda _: None, dataset=small)


def test_without_out_a_run_gets_a_new_folder_that_latest_points_at_and_resume_continues(tmp_path, small, finished,
                                                                                          monkeypatch):
    folder, first = finished  # trained without --out; outputs.run_folder's own test makes two folders
    assert folder.parent.name == "runs" and folder.name.endswith("-synthetic-mrl-m") and folder.is_dir()
    shutil.copytree(folder.parent, tmp_path / "runs", symlinks=True)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == (tmp_path / "runs" / folder.name)
    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working directory
    resumed = train(TrainConfig(epochs=2, **SMALL), log=lambda _: None, dataset=small, resume=True)  # runs/latest
    assert resumed["test"] == first["test"] and resumed["config"]["out"] == str(Path("runs") / "latest")


def test_resume_without_a_checkpoint_is_an_error(tmp_path, small):
    with pytest.raises(ValueError, match="there is no checkpoint to resume"):
        train(TrainConfig(epochs=2, out=str(tmp_path), **SMALL), log=lambda _: None, dataset=small, resume=True)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, small):
    with filelock.FileLock(tmp_path / ".lock"):  # as a running mrl-train holds it
        with pytest.raises(RuntimeError, match="another mrl-train run is writing to"):
            train(TrainConfig(epochs=2, out=str(tmp_path), **SMALL), log=lambda _: None, dataset=small)
    assert not (tmp_path / "metrics.json").exists()


def test_resume_on_changed_data_is_refused(tmp_path, finished):
    out = _copy(finished, tmp_path)
    other = data.synthetic(seed=1, n_users=300, n_items=200)  # same shapes, other interactions
    with pytest.raises(ValueError, match="trained on other data"):
        train(TrainConfig(epochs=4, out=str(out), **SMALL), log=lambda _: None, dataset=other, resume=True)


def test_an_interrupt_before_any_checkpoint_says_nothing_is_kept(tmp_path, small, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer.fit, "sample_candidates", interrupt)
    with pytest.raises(Interrupted, match="no checkpoint was written yet"):
        train(TrainConfig(epochs=2, out=str(tmp_path), **SMALL), log=lambda _: None, dataset=small)


def test_sigterm_stops_like_ctrl_c_and_keeps_the_checkpoint(tmp_path):
    run = subprocess.Popen([sys.executable, "-m", "mrl_kernels", "--users", "300", "--items", "200", "--epochs", "300",
                            "--eval-every", "1", "--patience", "1000", "--out", str(tmp_path), "--no-progress"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "history.csv").exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    err = run.communicate(timeout=120)[1]
    assert run.returncode == 130, err
    assert "interrupted; the checkpoint of epoch" in err and "Traceback" not in err
    assert not list(tmp_path.glob(f".*{atomic.TEMP_SUFFIX}"))


def test_tracked_test_metrics_do_not_change_training(tmp_path, small):
    plain = train(TrainConfig(epochs=4, out=str(tmp_path / "a"), **SMALL), log=lambda _: None, dataset=small)
    tracked = train(TrainConfig(epochs=4, out=str(tmp_path / "b"), track_test=True, **SMALL), log=lambda _: None,
                    dataset=small)
    assert tracked["test"] == plain["test"]
    history = pd.read_csv(tmp_path / "b" / "history.csv")
    assert "test_recall@20" in history and "test_recall@20" not in pd.read_csv(tmp_path / "a" / "history.csv")
    at_best = history.set_index("epoch").loc[plain["best_epoch"], "test_recall@20"]
    assert at_best == pytest.approx(plain["test_before_refit"]["recall@20"])


def test_resume_refuses_other_settings(tmp_path, small, finished):
    out = _copy(finished, tmp_path)
    with pytest.raises(ValueError, match=r"written with other settings \(dims: \[4, 8, 16\] there, \[8, 16\] now\)"):
        train(TrainConfig(epochs=4, out=str(out), **{**SMALL, "dims": (8, 16)}), log=lambda _: None,
              dataset=small, resume=True)


def test_early_stopping(tmp_path, small):
    result = train(TrainConfig(epochs=200, patience=1, lr=0.5, out=str(tmp_path), **SMALL),
                   log=lambda _: None, dataset=small)
    assert result["epochs_run"] < 200


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


def test_eval_users_samples_the_evaluated_users_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, small):
    config = {**SMALL, "refit": False, "eval_users": 40}
    straight = train(TrainConfig(epochs=4, out=str(tmp_path / "a"), **config), log=lambda _: None, dataset=small)
    assert straight["config"]["eval_users"] == 40
    assert straight["config"]["evaluated_users"] == {"valid": 40, "test": 40}
    users = metrics.sample_users(small.test, 40, 0)
    model = BACKBONES["mf"](small.train, 16, 1, False)  # the selected model, which is reported without a refit
    model.load_state_dict(checkpoint.read(tmp_path / "a" / "checkpoint.pt", torch.device("cpu"))["state"]["best_state"])
    assert straight["test"] == metrics.evaluate(*model.tables(), small.test, [small.train, small.valid], users=users)
    train(TrainConfig(epochs=2, out=str(tmp_path / "b"), **config), log=lambda _: None, dataset=small)
    resumed = train(TrainConfig(epochs=4, out=str(tmp_path / "b"), **config), log=lambda _: None, dataset=small,
                    resume=True)
    assert same_run(straight, resumed)
    everyone = train(TrainConfig(epochs=4, out=str(tmp_path / "c"), **{**config, "eval_users": None}),
                     log=lambda _: None, dataset=small)
    assert everyone["config"]["evaluated_users"]["test"] == int((small.test.row_lengths() > 0).sum()) > 40
    with pytest.raises(ValueError, match="other settings \\(eval_users: 40 there, None now\\)"):
        train(TrainConfig(epochs=6, out=str(tmp_path / "b"), **{**config, "eval_users": None}), log=lambda _: None,
              dataset=small, resume=True)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_eval_users_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match="eval_users must be an int >= 1"):
        TrainConfig(eval_users=value).check()


def test_a_stop_request_during_an_evaluation_stops_after_its_batch_of_users(tmp_path, small, monkeypatch):
    batches = []

    def stop_during_the_evaluation(*args, between, **kwargs):  # the request arrives while users are ranked
        def after_batch():
            batches.append(1)
            trainer.request_stop()
            between()
        return evaluate(*args, between=after_batch, batch_size=16, **kwargs)
    evaluate = metrics.evaluate
    monkeypatch.setattr(trainer.loop, "evaluate", stop_during_the_evaluation)
    with pytest.raises(Interrupted, match="^interrupted; no checkpoint was written yet"):
        train(TrainConfig(epochs=2, out=str(tmp_path), **SMALL), log=lambda _: None, dataset=small)
    assert batches == [1]
