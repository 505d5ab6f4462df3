"""Item 16 of issue 28: a setting the run does not read (another method's, or
``--layers`` without LightGCN) is refused when given, never accepted and recorded;
what a run records and resumes holds None for the settings it does not read."""
import json
import re

import pytest
import torch

from mrl_kernels.cli import train as train_cli
from mrl_kernels.training import TrainConfig, checkpoint, data, train
from mrl_kernels.training.methods import METHODS, recipe


@pytest.mark.parametrize("method, setting, value", [
    ("mrl-m", "temperature", 0.5), ("mrl-m", "cosine", True), ("bpr-m", "temperature", 2.0),
    ("mrl-als", "candidates", 8), ("mrl-ls", "candidates", 8), ("mrl-als", "layout", "shared"),
    ("mrl-ls", "layout", "shared"), ("mrl-als", "lr", 0.01), ("mrl-als", "batch_size", 512),
    ("bpr", "candidates", 8), ("bpr-d", "layout", "shared"), ("mrl-m", "alpha", 1.0), ("mrl-s", "cg_steps", 2),
    ("mrl-m", "rotations", 0),
])
def test_a_setting_the_method_does_not_read_is_refused(method, setting, value):
    with pytest.raises(ValueError, match=f"{setting} only applies to .*, not --method {method}"):
        TrainConfig(method=method, **{setting: value}).check()


def test_layers_only_with_lightgcn():
    with pytest.raises(ValueError, match="layers only applies to --model lightgcn, not --model mf"):
        TrainConfig(layers=2).check()
    config = TrainConfig(model="lightgcn")
    config.check()
    assert config.layers == 1 and TrainConfig(model="lightgcn", layers=3).layers == 3
    assert TrainConfig().layers is None


@pytest.mark.parametrize("flags, words", [
    (["--method", "mrl-m", "--temperature", "0.5"], "temperature only applies to mrl-s, mrl-s-all, not --method mrl-m"),
    (["--method", "mrl-m", "--cosine"], "cosine only applies to mrl-s, not --method mrl-m"),
    (["--layers", "2"], "layers only applies to --model lightgcn, not --model mf"),
    (["--method", "mrl-als", "--candidates", "8"], "candidates only applies to .*, not --method mrl-als"),
    (["--method", "mrl-ls", "--layout", "shared"], "layout only applies to .*, not --method mrl-ls"),
    (["--method", "mrl-als", "--lr", "0.01"], "lr only applies to .*, not --method mrl-als"),
    (["--method", "mrl-als", "--batch-size", "64"], "batch_size only applies to .*, not --method mrl-als"),
    (["--method", "mrl-ls", "--rotations", "2"], "rotations only applies to mrl-als, not --method mrl-ls"),
    (["--method", "mrl-als", "--rotations", "-1"], "rotations must be an int >= 0"),
])
def test_mrl_train_refuses_a_flag_its_method_ignores(tmp_path, capsys, flags, words):
    tiny = ["--users", "30", "--items", "20", "--interactions", "200", "--epochs", "1"]  # where it would train
    assert train_cli.main([*flags, *tiny, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert re.search(words, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_each_method_reads_its_recipe_and_nothing_else():
    from mrl_kernels.training.methods import SETTINGS

    for name, method in METHODS.items():
        config = TrainConfig(method=name)
        config.check()
        assert {s for s in SETTINGS if getattr(config, s) is not None} <= method.takes
        assert set(recipe(name)) <= method.takes and set(recipe(name, paper=True)) <= method.takes
        assert all(getattr(config, s) == v for s, v in recipe(name).items())


def test_a_run_records_none_for_what_it_does_not_read_and_resumes(tmp_path):
    small = data.synthetic(seed=0, n_users=120, n_items=80)
    config = dict(dims=(4, 8), batch_size=256, eval_every=1, progress=False, refit=False, out=str(tmp_path))
    train(TrainConfig(epochs=1, **config), log=lambda _: None, dataset=small)
    recorded = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert recorded["temperature"] is None and recorded["cosine"] is None and recorded["layers"] is None
    assert recorded["alpha"] is None and recorded["candidates"] == 16 and recorded["l2"] == 1e-2
    again = train(TrainConfig(epochs=2, **config), log=lambda _: None, dataset=small, resume=True)
    assert again["epochs_run"] == 2


def test_a_checkpoint_that_kept_unread_settings_still_resumes(tmp_path):
    # earlier versions recorded every method's defaults (temperature 1.0 for mrl-m, layers 1 for mf)
    config, path = TrainConfig(dims=(4, 8)), tmp_path / "checkpoint.pt"
    kept = {**checkpoint.settings(config), "temperature": 1.0, "cosine": False, "layers": 1}
    checkpoint.write(path, {"config": kept, "data": "f", "state": {}})
    checkpoint.load(path, config, "f", "synthetic", torch.device("cpu"))
    with pytest.raises(ValueError, match="other settings .*candidates: 16 there, 8 now"):
        checkpoint.load(path, TrainConfig(dims=(4, 8), candidates=8), "f", "synthetic", torch.device("cpu"))
