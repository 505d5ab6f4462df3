"""Item 18 of issue 28: a resume keeps the backends the run recorded, even when
it calls no operator; a finished run resumed with a larger --epochs trains them
(as a run straight to that many would), a smaller one is refused, and the
"stopped" text is true."""
import json

import pytest

from mrl_kernels.ops import registry
from mrl_kernels.training import TrainConfig, data, train

SMALL = dict(dims=(4, 8, 16), batch_size=256, eval_every=2, progress=False)


@pytest.fixture(scope="module")
def small():
    return data.synthetic(seed=0, n_users=300, n_items=200)


def quiet(**kwargs) -> dict:
    return train(log=lambda _: None, **kwargs)


def test_a_resume_that_calls_no_operator_keeps_the_backends(tmp_path, small, monkeypatch):
    first = quiet(config=TrainConfig(epochs=2, out=str(tmp_path), **SMALL), dataset=small)
    assert first["backends"]
    monkeypatch.setattr(registry, "_USED", {})  # a fresh process: no operator called yet
    again = quiet(config=TrainConfig(epochs=2, out=str(tmp_path), **SMALL), dataset=small, resume=True)
    assert again["backends"] == first["backends"]
    assert json.loads((tmp_path / "metrics.json").read_text())["backends"] == first["backends"]


@pytest.mark.parametrize("refit", [True, False])
def test_a_finished_run_resumed_with_more_epochs_trains_them(tmp_path, small, refit):
    config = dict(SMALL, refit=refit)
    straight = quiet(config=TrainConfig(epochs=4, out=str(tmp_path / "a"), **config), dataset=small)
    quiet(config=TrainConfig(epochs=2, out=str(tmp_path / "b"), **config), dataset=small)
    more = quiet(config=TrainConfig(epochs=4, out=str(tmp_path / "b"), **config), dataset=small, resume=True)
    assert more["epochs_run"] == 4 and more["stopped"] == "reached --epochs 4"
    assert more["test"] == straight["test"] and more["prefix"] == straight["prefix"]
    assert more.get("refit_epochs") == straight.get("refit_epochs")


def test_fewer_epochs_than_trained_are_refused(tmp_path, small):
    quiet(config=TrainConfig(epochs=4, out=str(tmp_path), **SMALL), dataset=small)
    with pytest.raises(ValueError, match="--epochs 2 is below the 4 selection epochs .*resume with --epochs 4 or more"):
        quiet(config=TrainConfig(epochs=2, out=str(tmp_path), **SMALL), dataset=small, resume=True)


def test_an_early_stopped_run_stays_stopped_and_says_so(tmp_path, small):
    config = dict(SMALL, patience=1, eval_every=1)
    first = quiet(config=TrainConfig(epochs=40, out=str(tmp_path), **config), dataset=small)
    assert first["stopped"].startswith(f"early stop at epoch {first['epochs_run']}: 1 evaluations")
    again = quiet(config=TrainConfig(epochs=80, out=str(tmp_path), **config), dataset=small, resume=True)
    assert again["epochs_run"] == first["epochs_run"] and again["stopped"] == first["stopped"]
    assert again["test"] == first["test"]
