"""Two CPU processes (torchrun, gloo) train one run: it learns, and rank 0 alone writes."""
import json
import subprocess
import sys

import pandas as pd

from mrl_kernels import registry


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


def test_two_processes_resume_exactly(tmp_path):
    common = ["--users", "400", "--items", "150", "--interactions", "12000", "--dims", "4,8,16", "--eval-every", "2",
              "--lr", "0.01", "--batch-size", "512", "--no-progress", "--no-refit"]

    def torchrun(port, *argv):
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "--master-port", str(port), "-m", "mrl_kernels", *common, *argv],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]

    torchrun(29521, "--epochs", "6", "--out", str(tmp_path / "a"))
    torchrun(29522, "--epochs", "4", "--out", str(tmp_path / "b"))
    torchrun(29523, "--epochs", "6", "--out", str(tmp_path / "b"), "--resume")
    straight, resumed = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in "ab")
    assert resumed["test"] == straight["test"] and resumed["prefix"] == straight["prefix"]
