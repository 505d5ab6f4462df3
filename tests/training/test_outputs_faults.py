"""A user's files and mrl-train's command line under faults: a create that must
not replace is atomic (two writers: one wins, one gets FileExistsError), a
folder holding a user's file a run writes is refused, and bad flags get a
message that says what to type."""
import errno
import re
import os
import threading

import pytest

from mrl_kernels import atomic
from mrl_kernels.cli import train as train_cli
from mrl_kernels.training import outputs

TINY = ["--users", "40", "--items", "30", "--interactions", "300", "--epochs", "1", "--no-progress"]


def _race(path, contents):
    """Each of ``contents`` written to ``path`` by its own thread with ``replace=False``,
    all of them past their write before any creates ``path``: {content: None or the error}."""
    written, results = threading.Barrier(len(contents)), {}

    def writer(text):
        def write(tmp):
            with open(tmp, "w") as f:
                f.write(text)
            written.wait(timeout=60)
        try:
            atomic.atomic_write(path, write, replace=False)
            results[text] = None
        except OSError as exc:
            results[text] = exc
    threads = [threading.Thread(target=writer, args=(text,)) for text in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_two_concurrent_creates_one_wins_the_other_gets_file_exists(tmp_path):
    path = tmp_path / "s.csv"
    results = _race(path, ["first\n", "second\n"])
    winners = [text for text, exc in results.items() if exc is None]
    assert len(winners) == 1 and path.read_text() == winners[0]
    loser = next(exc for exc in results.values() if exc is not None)
    assert isinstance(loser, FileExistsError) and str(loser) == f"{path} exists (it is not replaced)"
    assert os.listdir(tmp_path) == ["s.csv"]  # no temporary left


def test_a_create_never_replaces_a_users_file_and_replace_still_does(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("the user's")
    with pytest.raises(FileExistsError, match="mine.txt exists"):
        atomic.atomic_write_text(path, "ours", replace=False)
    assert path.read_text() == "the user's" and os.listdir(tmp_path) == ["mine.txt"]
    atomic.atomic_write_text(path, "ours")
    assert path.read_text() == "ours"


def test_a_create_without_hard_links_claims_the_name_exclusively(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(atomic.os, "link", no_links)
    atomic.atomic_write_text(tmp_path / "a.txt", "new", replace=False)
    assert (tmp_path / "a.txt").read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(FileExistsError, match="a.txt exists"):
        atomic.atomic_write_text(tmp_path / "a.txt", "newer", replace=False)
    assert (tmp_path / "a.txt").read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("name", ["metrics.json", "history.csv", "checkpoint.pt", "model.pt", "curves.png"])
def test_a_folder_holding_a_file_a_run_writes_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"the user's own")
    with pytest.raises(ValueError, match=f"{tmp_path}"):
        outputs.check_new(tmp_path)


def test_mrl_train_never_overwrites_a_users_curves_png(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "curves.png").write_bytes(b"the user's own plot")
    assert train_cli.main([*TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"mrl-train: error: {out} holds curves.png, which a run writes, but no run; move it or choose " \
                  "another --out"
    assert (out / "curves.png").read_bytes() == b"the user's own plot"
    assert sorted(os.listdir(out)) == [".lock", "curves.png"]


def test_resume_with_a_dangling_latest_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to("20240101-000000-synthetic-mrl-m")
    assert train_cli.main([*TINY, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("mrl-train: error: runs/latest is a link to 20240101-000000-synthetic-mrl-m, which does not exist "
                   "(the run was moved or deleted); --out names the run folder to use")


def test_out_naming_a_file_says_so(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("the user's")
    assert train_cli.main([*TINY, "--out", str(tmp_path / "notes.txt")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"mrl-train: error: {tmp_path / 'notes.txt'} is a file, not a run folder; --out names a folder"
    assert (tmp_path / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], "argument --seed: expected an int in [0, 2**63 - 1], got '-1'"),
    (["--seed", str(2 ** 70)], f"argument --seed: expected an int in [0, 2**63 - 1], got '{2 ** 70}'"),
    (["--seed", "1.5"], "argument --seed: expected an int in [0, 2**63 - 1], got '1.5'"),
    (["--level-weights", "-1,1,1,1,1"], "argument --level-weights: expected one argument (a value that starts with "
                                        "'-' is given with '=': --level-weights=-1,1,1,1,1)"),
    (["--level", "-1,1,1,1,1"], "(a value that starts with '-' is given with '=': --level-weights=-1,1,1,1,1)"),
    (["--dims", "-4,8"], "(a value that starts with '-' is given with '=': --dims=-4,8)"),
])
def test_unclear_flag_values_get_a_message_that_says_what_to_type(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_cli.main([*TINY, *argv])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mrl-train: error: argument --") and last.endswith(words), last


def test_a_flag_without_its_value_gets_no_hint(capsys):
    with pytest.raises(SystemExit):
        train_cli.main([*TINY, "--level-weights"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "mrl-train: error: argument --level-weights: expected one argument"


def test_the_largest_seed_trains(tmp_path):
    assert train_cli.main([*TINY, "--seed", str(2 ** 63 - 1), "--out", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize("seed, words", [(-1, "seed must be an int >= 0, got -1"),
                                         (2 ** 63, f"seed must be an int in [0, 2**63 - 1], got {2 ** 63}"),
                                         (1.5, "seed must be an int >= 0, got 1.5"),
                                         (True, "seed must be an int >= 0, got True")])
def test_a_seed_from_python_is_checked_like_the_flag(seed, words):
    from mrl_kernels.training import TrainConfig

    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(seed=seed).check()


def test_mrl_train_never_empties_a_users_lock_file(tmp_path, capsys):
    # the run's lock opens its file truncated: a .lock with content is the user's, and is refused
    out = tmp_path / "d"
    out.mkdir()
    (out / ".lock").write_bytes(b"the user's own notes")
    assert train_cli.main([*TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"mrl-train: error: {out / '.lock'} is not a run's lock file (a run's is empty) and taking the " \
                  "lock would empty it; move it or choose another --out"
    assert (out / ".lock").read_bytes() == b"the user's own notes" and os.listdir(out) == [".lock"]
    (out / ".lock").write_bytes(b"")  # an empty one (a run's, left behind) is taken
    assert train_cli.main([*TINY, "--out", str(out)]) == 0
