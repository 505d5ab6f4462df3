"""File plumbing, without training: atomic writes (permissions of new files,
errors that name the path, stale temporaries), a run's folder (runs/latest, the
lock, never overwriting a run), its outputs and its checkpoint."""
import errno
import os
import stat

import pytest
import torch

from mrl_kernels import atomic
from mrl_kernels.training import TrainConfig, checkpoint, outputs


def test_written_files_get_the_permissions_of_new_files(tmp_path):
    before = os.umask(0o027)
    try:
        atomic.atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640


def test_a_full_disk_names_the_path_and_leaves_nothing_behind(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("old")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'a.json'}: No space left on device"):
        atomic.atomic_write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / f".metrics.json.x1y2{atomic.TEMP_SUFFIX}").write_text("half")
    (tmp_path / "metrics.json").write_text("{}")
    assert [p.name for p in atomic.remove_stale_temporaries(tmp_path)] == [f".metrics.json.x1y2{atomic.TEMP_SUFFIX}"]
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_only_this_programs_temporaries_are_removed(tmp_path):
    # a user's own dot-files in a run folder, .tmp ones included, are never this program's to delete
    theirs = [".notes.tmp", ".draft.json.tmp", ".partial"]
    for name in theirs:
        (tmp_path / name).write_text("the user's")
    atomic.atomic_write_text(tmp_path / "a.json", "{}")
    assert atomic.remove_stale_temporaries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == sorted([*theirs, "a.json"])


def test_outputs_get_the_permissions_of_new_files(tmp_path):
    before = os.umask(0o022)
    try:
        checkpoint.write(tmp_path / "checkpoint.pt", {"state": {}})
        outputs.write_history(tmp_path, [{"epoch": 2, "loss": 0.5, "recall@20": 0.1, "ndcg@20": 0.05}])
        outputs.write_metrics(tmp_path, {"test": {}})
    finally:
        os.umask(before)
    for name in ("metrics.json", "history.csv", "checkpoint.pt", "curves.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_history_is_rewritten_whole(tmp_path):
    rows = [{"epoch": 2, "loss": 0.5, "recall@20": 0.1, "ndcg@20": 0.05}]
    outputs.write_history(tmp_path, rows + [{"epoch": 4, "loss": 0.4, "recall@20": 0.2, "ndcg@20": 0.1}])
    outputs.write_history(tmp_path, rows)
    assert (tmp_path / "history.csv").read_text().splitlines() == ["epoch,loss,recall@20,ndcg@20", "2,0.5,0.1,0.05"]
    assert set(os.listdir(tmp_path)) == {"history.csv", "curves.png"}  # no temporaries left


def test_without_out_each_run_gets_a_new_folder_and_latest_points_at_it(tmp_path):
    root = tmp_path / "runs"
    first, second = (outputs.run_folder(None, "synthetic-mrl-m", resume=False, root=root) for _ in range(2))
    assert first != second and first.is_dir() and second.is_dir() and first.parent == second.parent == root
    assert first.name.endswith("-synthetic-mrl-m") and second.name.startswith(first.name)
    latest = root / "latest"
    assert latest.is_symlink() and latest.resolve() == second.resolve()
    assert outputs.run_folder(None, "synthetic-mrl-m", resume=True, root=root) == latest  # resume: runs/latest
    assert outputs.run_folder(str(tmp_path / "mine"), "synthetic-mrl-m", resume=False, root=root) == tmp_path / "mine"
    assert sorted(p.name for p in root.iterdir()) == sorted([first.name, second.name, "latest"])


@pytest.mark.parametrize("name", outputs.OUTPUTS)
def test_a_folder_holding_any_output_holds_a_run(tmp_path, name):
    outputs.check_new(tmp_path)  # empty: a new run may start
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=f"already holds a run \\({name}\\); --resume continues it"):
        outputs.check_new(tmp_path)


def test_stale_temporaries_are_removed_on_start(tmp_path):
    stale = tmp_path / "run" / f".checkpoint.pt.k3j2h1{atomic.TEMP_SUFFIX}"
    stale.parent.mkdir()
    stale.write_bytes(b"x" * 1000)  # left by a killed write
    with outputs.claimed(tmp_path / "run"):
        assert not stale.exists()
    with outputs.claimed(tmp_path / "new" / "run") as out:  # a missing folder is made
        assert out.is_dir()


def _checkpoint(tmp_path) -> tuple:
    """A checkpoint of a run of ``config`` on data of fingerprint "f"."""
    config, path = TrainConfig(dims=(4, 8, 16)), tmp_path / "checkpoint.pt"
    checkpoint.save(path, config, "f", {"model": {"w": torch.arange(3.0)}}, {"phase": "select"})
    return config, path


def test_a_checkpoint_gives_back_what_was_saved(tmp_path):
    config, path = _checkpoint(tmp_path)
    saved = checkpoint.load(path, config, "f", "synthetic", torch.device("cpu"))
    assert torch.equal(saved["model"]["w"], torch.arange(3.0)) and saved["state"] == {"phase": "select"}
    assert saved["config"] == checkpoint.settings(config) and saved["data"] == "f"
    # what may change on resume: where it runs and how long it goes on
    checkpoint.load(path, TrainConfig(dims=(4, 8, 16), epochs=1000, patience=3, backend="torch", out="elsewhere",
                                      progress=False), "f", "synthetic", torch.device("cpu"))


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(b"\x00garbage" * 10), "not a checkpoint written by mrl-train"),
    (lambda p: torch.save({"model": {}}, p), "not a checkpoint written by mrl-train"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10] + b"0123456789"), "is damaged"),
    (lambda p: (p.unlink(), p.mkdir()), "is a directory"),
    (lambda p: checkpoint.write(p, {"model": {}}), "not written by this version of mrl-train"),
])
def test_bad_checkpoints_are_one_clear_error(tmp_path, damage, words):
    config, path = _checkpoint(tmp_path)
    damage(path)
    with pytest.raises(ValueError, match=words):
        checkpoint.load(path, config, "f", "synthetic", torch.device("cpu"))
