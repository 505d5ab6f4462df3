"""bench/ commands without the bench extra end with one line naming it."""
import subprocess
import sys
from pathlib import Path

import pytest

HIDE = """
import importlib.util, runpy, sys
find, missing, module = importlib.util.find_spec, sys.argv[1], sys.argv[2]
importlib.util.find_spec = lambda name, *a: None if name == missing else find(name, *a)
sys.argv = [module, "--help"]
runpy.run_module(module, run_name="__main__")
"""


@pytest.mark.parametrize("module, missing", [("bench.baselines", "implicit"), ("bench.report", "matplotlib"),
                                             ("bench.reproduce", "tabulate")])
def test_a_missing_bench_extra_is_one_line(module, missing):
    run = subprocess.run([sys.executable, "-c", HIDE, missing, module], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    # one line naming the command, what is missing (the hidden module, and any other of
    # the extra that is not installed here) and the extra
    assert run.returncode != 0
    line = run.stderr.strip()
    assert "\n" not in line and line.startswith(f"python -m {module}: needs ") and missing in line
    assert line.endswith(', from the bench extra: pip install -e ".[bench]"')
