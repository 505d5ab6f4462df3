"""What a fault-injection pass over the trainer found: a diverged run, a resume at
another world size, the second stop request, and what 'the same results' keeps
byte for byte. Each test failed before its fix."""
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from mrl_kernels.training import data
from mrl_kernels.training import TrainConfig, checkpoint, train
from mrl_kernels.training.fit import Fit

SMALL = dict(dims=(4, 8, 16), batch_size=256, progress=False)


@pytest.fixture(scope="module")
def small():
    return data.synthetic(seed=0, n_users=300, n_items=200)


def _poison_after(monkeypatch, epochs: int):
    """Fill every table with NaN after ``epochs`` epochs of the first fit."""
    epoch = Fit.epoch
    done = []

    def poisoned(fit, loss=True):
        loss = epoch(fit, loss)
        done.append(1)
        if len(done) == epochs:
            with torch.no_grad():
                for p in fit.model.parameters():
                    p.fill_(float("nan"))
        return loss
    monkeypatch.setattr(Fit, "epoch", poisoned)


@pytest.mark.parametrize("poisoned, eval_every, words, kept", [(2, 1, "the model's tables hold non-finite values", 1),
                                                               (3, 2, "the training loss is nan", 2)])
def test_a_diverged_run_stops_with_one_error_and_reports_nothing(tmp_path, small, monkeypatch, poisoned, eval_every,
                                                                 words, kept):
    # NaN tables after epoch 2 are seen by its evaluation (the last checkpoint: epoch 1's); after epoch 3 (evaluated
    # every 2), by the loss of epoch 4's first step (the last checkpoint: epoch 2's)
    _poison_after(monkeypatch, poisoned)
    with pytest.raises(RuntimeError, match=f"the run diverged: {words} during the selection, after {poisoned} "
                                           f"epochs.*no metrics were reported; the checkpoint of epoch {kept} is kept"):
        train(TrainConfig(epochs=6, eval_every=eval_every, out=str(tmp_path), **SMALL), log=lambda _: None,
              dataset=small)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.pt").exists()
    kept = checkpoint.read(tmp_path / "checkpoint.pt", torch.device("cpu"))["model"]
    assert all(torch.isfinite(t).all() for t in kept.values()), "the kept checkpoint is the last finite model"


@pytest.mark.parametrize("setting", [dict(l2=float("inf")), dict(lr=float("inf")), dict(lr=float("nan"))])
def test_non_finite_settings_are_refused_up_front(tmp_path, small, setting):
    with pytest.raises(ValueError, match=f"{next(iter(setting))} must be a finite number"):
        train(TrainConfig(epochs=2, out=str(tmp_path), **SMALL, **setting), log=lambda _: None, dataset=small)
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_of_another_world_size_is_refused_both_ways(tmp_path, small):
    config = dict(epochs=2, eval_every=2, refit=False, **SMALL)
    train(TrainConfig(out=str(tmp_path), **config), log=lambda _: None, dataset=small)
    path = tmp_path / "checkpoint.pt"
    saved = checkpoint.read(path, torch.device("cpu"))
    saved["samplers"] = saved["samplers"] * 2  # as a 2-process run writes it: one candidate generator a rank
    checkpoint.write(path, saved)
    with pytest.raises(ValueError, match="the checkpoint was written by 2 processes, not 1; resume with as many"):
        train(TrainConfig(out=str(tmp_path), **{**config, "epochs": 4}), log=lambda _: None, dataset=small,
              resume=True)


def test_the_same_seed_gives_the_same_files_but_for_their_timings(tmp_path, small):
    runs = [train(TrainConfig(epochs=4, eval_every=2, out=str(tmp_path / name), **SMALL), log=lambda _: None,
                  dataset=small) for name in "ab"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "model.pt").read_bytes() == (b / "model.pt").read_bytes()
    histories = [pd.read_csv(folder / "history.csv") for folder in (a, b)]
    assert histories[0].drop(columns="elapsed_s").equals(histories[1].drop(columns="elapsed_s"))
    timings = ("seconds_per_epoch", "wall_seconds")
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (a, b)]
    for m in metrics:
        m["config"].pop("out")
    assert {k: v for k, v in metrics[0].items() if k not in timings} == \
        {k: v for k, v in metrics[1].items() if k not in timings}
    weights = [checkpoint.read(folder / "checkpoint.pt", torch.device("cpu")) for folder in (a, b)]
    assert all(torch.equal(weights[0]["model"][k], weights[1]["model"][k]) for k in weights[0]["model"])
    assert weights[0]["state"]["history"][-1]["recall@20"] == runs[1]["valid"]["recall@20"]


SECOND_STOP = """
import sys
import mrl_kernels.training.loop as loop
from mrl_kernels import training as trainer
from mrl_kernels.cli import train as train_cli

def evaluate(*args, **kwargs):  # two stop requests while an evaluation runs
    trainer.request_stop()
    trainer.request_stop()

loop.evaluate = evaluate
sys.exit(train_cli.main(["--users", "300", "--items", "200", "--epochs", "2", "--eval-every", "1", "--out", sys.argv[1],
                   "--no-progress"]))
"""


def test_a_second_stop_request_ends_with_one_line_not_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(SECOND_STOP), str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert run.returncode == 130, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("mrl-train: interrupted again, stopped at once; no checkpoint was written yet")
    assert "Traceback" not in run.stderr


SIGNALS_WHILE_RANKING = """
import os, signal, sys
from mrl_kernels.cli import train as train_cli
from mrl_kernels.training import metrics

add, sent = metrics._Ranked.add, []

def add_and_signal(self, *args):  # SIGTERM(s) while the first batch of users is ranked
    while len(sent) < int(sys.argv[2]):
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    add(self, *args)

metrics._Ranked.add = add_and_signal
sys.exit(train_cli.main(["--users", "300", "--items", "200", "--epochs", "2", "--eval-every", "1", "--out", sys.argv[1],
                   "--no-progress"]))
"""


@pytest.mark.parametrize("signals, message", [(1, "mrl-train: interrupted; no checkpoint was written yet"),
                                              (2, "mrl-train: interrupted again, stopped at once; no checkpoint")])
def test_sigterm_during_an_evaluation_stops_it_and_a_second_ends_with_one_line(tmp_path, signals, message):
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(SIGNALS_WHILE_RANKING), str(tmp_path / "run"),
                          str(signals)], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert run.returncode == 130, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in run.stderr
