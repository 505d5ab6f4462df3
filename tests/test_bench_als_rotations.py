"""bench.als_rotations: validation curves of mrl-als's defaults by rotation count."""
from dataclasses import replace

from mrl_kernels.training import TrainConfig, data
from mrl_kernels.training.search import score

from bench.als_rotations import curve


def test_curves_are_the_fit_evaluated_every_few_sweeps():
    ds = data.load("synthetic", seed=0, synthetic_size=(200, 60, 2000))
    config = TrainConfig(dataset="synthetic", method="mrl-als", dims=(2, 4, 8), alpha=3.0, l2=0.5)
    plain, turned = (curve(replace(config, rotations=r), ds, 4, 2) for r in (0, 3))
    assert [row["sweeps"] for row in plain] == [2, 4] and {row["rotations"] for row in turned} == {3}
    for row in plain + turned:
        assert row["score"] == score({w: row[f"recall@20_{w}"] for w in (2, 4, 8)})
    assert plain[0]["score"] != turned[0]["score"], "the rotations change the fit"
    assert curve(replace(config, rotations=0), ds, 4, 2) == plain, "the same seed gives the same curve"


def test_main_writes_its_table_beside_earlier_runs(tmp_path, monkeypatch):
    from bench import als_rotations

    small = data.load("synthetic", seed=0, synthetic_size=(200, 60, 2000))
    monkeypatch.setattr(als_rotations.data, "load", lambda *args, **kwargs: small)
    argv = ["--dataset", "synthetic", "--rotations", "0,2", "--sweeps", "2", "--every", "1", "--out", str(tmp_path)]
    for _ in range(2):
        assert als_rotations.main(argv) == 0
    first, second = sorted(tmp_path.glob("als-rotations-synthetic-s0-*.txt"))
    assert first.read_text() == second.read_text(), "a second run writes its own file, the same table"
    lines = first.read_text().splitlines()
    assert lines[0] == "# python -m bench.als_rotations " + " ".join(argv)
    assert len(lines) == 3 + 1 + 4  # the command, the machine, the title, the header, 2 counts x 2 sweeps
