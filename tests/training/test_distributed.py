"""Two CPU processes (torchrun, gloo) train one run: it learns, and rank 0 alone writes."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from mrl_kernels.ops import registry
from mrl_kernels.training import TrainConfig, train


def test_two_processes_learn_and_write_their_outputs_once(tmp_path):
    common = ["--users", "400", "--items", "150", "--interactions", "12000", "--dims", "4,8,16", "--epochs", "6",
              "--eval-every", "2", "--lr", "0.01", "--batch-size", "512", "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "mrl_kernels", *common, "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.count("test metrics of the refit model") == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["config"]["world_size"] == 2
    assert set(result["backends"]) == {"mns_bpr_loss"} and result["backends"]["mns_bpr_loss"] in registry.names()
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history.epoch.tolist() == [2, 4, 6]  # each evaluation once
    # it learns: well above the chance level of a random top-20 of 150 items
    assert result["test"]["recall@20"] > 2 * 20 / 150
    assert history["recall@20"].iloc[-1] > history["recall@20"].iloc[0]


def straight_and_resumed(out: Path) -> None:
    """Under torchrun, in one process group: a 4-epoch run in ``out/a``, and a
    2-epoch run in ``out/b`` resumed from its checkpoint to 4 epochs."""
    import torch.distributed as dist

    dist.init_process_group("gloo")  # the runs join it (train starts none of its own)
    config = dict(synthetic_size=(400, 150, 12000), dims=(4, 8, 16), eval_every=2, lr=0.01, batch_size=512,
                  progress=False, refit=False)
    train(TrainConfig(epochs=4, out=str(out / "a"), **config))
    train(TrainConfig(epochs=2, out=str(out / "b"), **config))
    train(TrainConfig(epochs=4, out=str(out / "b"), **config), resume=True)
    dist.destroy_process_group()


def test_two_processes_resume_exactly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29521", __file__, str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("resumed from") == 1  # the third run resumed (rank 0 alone logs)
    straight, resumed = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in "ab")
    assert resumed["epochs_run"] == straight["epochs_run"] == 4
    assert resumed["test"] == straight["test"] and resumed["prefix"] == straight["prefix"]


if __name__ == "__main__":
    straight_and_resumed(Path(sys.argv[1]))
