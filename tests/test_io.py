"""Atomic writes: permissions of new files, errors that name the path, stale temporaries."""
import errno
import os
import stat

import pytest

from mrl_kernels import atomic


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
    (tmp_path / ".metrics.json.x1y2.tmp").write_text("half")
    (tmp_path / "metrics.json").write_text("{}")
    assert [p.name for p in atomic.remove_stale_temporaries(tmp_path)] == [".metrics.json.x1y2.tmp"]
    assert os.listdir(tmp_path) == ["metrics.json"]
