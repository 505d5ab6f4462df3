"""Item 17 of issue 28 (the trainer's side): the real settings are checked in
float32, the dtype training computes in: a value float32 rounds to 0, level
weights whose float32 sum is 0, or an alpha x weights that overflows the
objective are refused, naming the setting and the range."""
import pytest

from mrl_kernels.cli import train as train_cli
from mrl_kernels.training import TrainConfig


@pytest.mark.parametrize("method", ["mrl-als", "mrl-ls"])
@pytest.mark.parametrize("settings, words", [
    (dict(level_weights=(1e-50, 0, 0, 0, 0)), r"level_weights must be 0 or at least 1.18e-38, the smallest normal "
                                               r"float32"),
    (dict(level_weights=(1e-40, 1, 1, 1, 1)), r"level_weights must be 0 or at least 1.18e-38"),
    (dict(alpha=1e-50), r"alpha must be at least 1.18e-38, the smallest normal float32"),
    (dict(alpha=1e39), r"alpha must be a finite number > 0 and <= 3.40282e\+38"),
    (dict(alpha=1e19), r"alpha x level_weights must lie in \[1.18e-38, 1.84e\+19\] in float32"),
    (dict(alpha=1e-30, level_weights=(1e-20, 1, 1, 1, 1)), r"alpha x level_weights must lie in"),
    (dict(level_weights=(1e38, 1e38, 1e38, 1e38, 1e38)), r"alpha x level_weights must lie in"),
])
def test_least_squares_weights_are_checked_in_float32(method, settings, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(method=method, **settings).check()


@pytest.mark.parametrize("settings", [dict(alpha=1e-30), dict(level_weights=(0, 0, 0, 0, 1e-30)),
                                      dict(alpha=1e-8, level_weights=(1e-25, 1, 1, 1, 1)),
                                      dict(alpha=1e18, level_weights=(1, 1, 1, 1, 1))])
def test_weights_float32_keeps_are_accepted(settings):
    TrainConfig(method="mrl-als", **settings).check()


@pytest.mark.parametrize("settings, words", [
    (dict(lr=1e-50), "lr must be at least 1.18e-38"),
    (dict(l2=1e-50), "l2 must be 0 or at least 1.18e-38"),
    (dict(l2=1e40), r"l2 must be a finite number >= 0 and <= 3.40282e\+38"),
    (dict(method="mrl-s", temperature=1e-300), "temperature must be at least 1.18e-38"),
])
def test_the_other_real_settings_are_checked_in_float32(settings, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**settings).check()
    TrainConfig(**{**settings, **{name: 1e-30 for name in settings if name != "method"}}).check()


@pytest.mark.parametrize("flags", [["--level-weights", "1e-50,0,0,0,0"], ["--alpha", "1e-50"]])
def test_mrl_train_refuses_weights_that_train_nothing(tmp_path, capsys, flags):
    tiny = ["--users", "30", "--items", "20", "--interactions", "200", "--epochs", "1"]  # where it would train
    code = train_cli.main(["--method", "mrl-als", *flags, *tiny, "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "the smallest normal float32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
