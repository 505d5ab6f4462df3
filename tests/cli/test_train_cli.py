"""mrl-train's command line: flags, help, one-line errors, progress, recipes."""
import json
from dataclasses import replace

import pytest
import torch

from mrl_kernels.cli import train as train_cli
from mrl_kernels import training as trainer
from mrl_kernels.training.methods import METHODS
from mrl_kernels.training import TrainConfig



def test_cli_runs_on_an_authors_folder(tmp_path, shared_datasets, capsys):
    code = train_cli.main(["--dataset", str(shared_datasets / "ml100k"), "--epochs", "2", "--eval-every", "1",
                     "--dims", "8,16", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert "recall@20" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text())["dataset"] == "ml100k"


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "missing-dir"], "unknown dataset 'missing-dir'"),
    (["--dims", "8,4"], "dims must be strictly increasing"),
    (["--batch-size", "0"], "batch_size must be an int >= 1"),
    (["--lr", "-1"], "lr must be a finite number > 0"),
    (["--eval-users", "0"], "eval_users must be an int >= 1"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nonsense"], "device"),
    (["--resume"], "there is no checkpoint to resume"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, words):
    assert train_cli.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrl-train: error:") and words in err and "\n" not in err


def test_one_progress_bar_labelled_evaluations_and_why_it_stopped(tmp_path, capsys):
    assert train_cli.main(["--epochs", "4", "--eval-every", "2", "--users", "300", "--items", "200", "--dims", "4,8,16",
                     "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "training:" in captured.err and "4/4" in captured.err and "valid recall@20" in captured.err
    assert captured.err.count("training:") >= 1 and "epoch 1" not in captured.err  # no bar per epoch
    assert "validation metrics, epoch 2:" in captured.out and "validation metrics, epoch 4:" in captured.out
    assert "reached --epochs 4; best epoch" in captured.out and "wall time" in captured.out


def test_cli_help_gives_every_option_a_description_and_default():
    for action in train_cli.parser()._actions:
        if action.dest != "help":
            assert action.help, action.dest
    text = " ".join(train_cli.parser().format_help().split())
    assert "(default: mrl-m)" in text and "default: 0.001, the paper's" in text


def test_unset_settings_take_the_method_recipe_and_given_ones_win(monkeypatch):
    monkeypatch.setitem(METHODS, "mrl-s", replace(METHODS["mrl-s"], recipe={"l2": 0.5, "temperature": 0.2}))
    assert TrainConfig(method="mrl-s").l2 == 0.5 and TrainConfig(method="mrl-s").temperature == 0.2
    assert TrainConfig(method="mrl-s", l2=0.01).l2 == 0.01
    assert TrainConfig(method="bpr").l2 == trainer.PAPER_RECIPE["l2"]
    assert "mrl-s: 0.5" in " ".join(train_cli.parser().format_help().split())
    args = train_cli.parser().parse_args(["--method", "mrl-s", "--lr", "0.01"])
    assert args.lr == 0.01 and not hasattr(args, "l2")  # an unset flag leaves the method's default


def test_cli_rejects_bad_dims_syntax(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--dims", "4,x"])
    assert "comma-separated ints" in capsys.readouterr().err


