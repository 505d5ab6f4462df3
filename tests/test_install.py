"""Items 5 and 6 of issue 28: ``make install`` sets everything up and runs
nothing (checked by ``make -n``, never by installing); ``make run`` / ``make
test`` stay as the README Quickstart uses them; every message about a missing
torchrec gives the command that installs it, with the Makefile's pins; the
package's every folder is a package setuptools installs."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(target: str, tmp_path: Path) -> str:
    """What ``make -n target`` would run with a virtual environment not yet made."""
    # not as a sub-make of `make test` (which prints "Entering directory" and passes its flags down)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=60, env=env).stdout


def test_make_install_sets_everything_up_and_runs_nothing(tmp_path):
    commands = dry_run("install", tmp_path)
    venv = tmp_path / "venv"
    assert f"-m venv {venv}" in commands and "pip install torch==" in commands
    assert re.search(r"pip install --no-deps torchrec==\S+ fbgemm-gpu-cpu==", commands)
    assert re.search(r'pip install --no-build-isolation -e "\.\[test,plot,serve,torchrec\]"', commands)
    assert "bin/mrl-train" not in commands and "-m pytest" not in commands


def test_make_run_and_test_still_run_the_job_and_the_tests(tmp_path):
    run, test = dry_run("run", tmp_path), dry_run("test", tmp_path)
    assert run.strip().endswith(f"{tmp_path / 'venv'}/bin/mrl-train") and "-m pytest" not in run
    assert 'pytest -q -n 2 -m "not slow"' in test and "--no-deps torchrec==" in test


def test_the_torchrec_command_has_the_makefiles_pins():
    from mrl_kernels.distributed import TORCHREC_INSTALL

    pins = re.search(r"^TORCHREC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert TORCHREC_INSTALL == f'pip install --no-deps {" ".join(pins)} && pip install "mrl_kernels[torchrec]"'
    for path in ("tests/distributed/test_torchrec.py", "mrl_kernels/distributed/torchrec_sharded.py"):
        text = (ROOT / path).read_text()
        assert "{TORCHREC_INSTALL}" in text and "pip install '.[torchrec]'" not in text, path


def test_every_folder_of_the_package_is_installed():
    found = set(setuptools.find_packages(str(ROOT), include=["mrl_kernels*"]))
    folders = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "mrl_kernels").rglob("*.py")}
    assert folders <= found, sorted(folders - found)
