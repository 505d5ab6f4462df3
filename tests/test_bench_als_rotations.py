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
