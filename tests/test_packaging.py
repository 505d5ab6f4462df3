"""What a fresh install brings: no Triton for CPU-only users, the two Quickstart commands."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_triton_is_not_a_base_dependency_but_the_test_extra_keeps_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("triton") for d in project["dependencies"])
    assert any(d.lower().startswith("triton") for d in project["optional-dependencies"]["test"])


def test_the_quickstart_is_two_commands_and_ci_runs_exactly_them():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make run", "make test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == commands


# the torchrec / FBGEMM release built for each torch (the 1.9 pair needs torch 2.14; crossed pairs fail at import)
TORCHREC_FOR_TORCH = {"2.13": "1.8."}


def test_the_torchrec_pair_matches_the_pinned_torch():
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH \?= torch==(\d+\.\d+)\.", makefile, re.M).group(1)
    torchrec, fbgemm = re.search(r"^TORCHREC \?= torchrec==(\S+) fbgemm-gpu-cpu==(\S+)$", makefile, re.M).groups()
    assert torchrec == fbgemm and torchrec.startswith(TORCHREC_FOR_TORCH[torch_pin])
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(d.startswith(("torchrec", "fbgemm")) for d in extras["torchrec"])  # they come --no-deps
