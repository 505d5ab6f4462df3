"""``python -m bench.full_softmax``: the shapes measured, both routes' rows, refusals, and
bench.result_name: a run never overwrites an earlier one's results."""
import json

import pytest

pytest.importorskip("tabulate", reason="tabulate is not installed (the bench extra)")

from bench import full_softmax  # noqa: E402


def test_shapes_measure_those_pairs_only(tmp_path):
    assert full_softmax.main(["--shapes", "40:3", "30:2", "--repeats", "1", "--threads", "1",
                              "--out", str(tmp_path)]) == 0
    [written] = tmp_path.glob("full-softmax-*.json")
    rows = json.loads(written.read_text())["rows"]
    assert [(r["N"], r["B"], r["route"]) for r in rows] == [
        (40, 3, "fused"), (40, 3, "materialised"), (30, 2, "fused"), (30, 2, "materialised")]
    assert all(r["ms"] > 0 for r in rows)
    assert written.with_suffix(".md").read_text().count("| fused ") == 2


@pytest.mark.parametrize("bad", ["3x4", "1000:0", "a:b"])
def test_a_bad_shape_is_refused_by_name(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exit:
        full_softmax.main(["--shapes", bad, "--out", str(tmp_path)])
    assert exit.value.code == 2 and "argument --shapes" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_second_run_the_same_day_writes_beside_the_first(tmp_path):
    for _ in range(2):
        assert full_softmax.main(["--shapes", "20:2", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    first, second = sorted(tmp_path.glob("full-softmax-*.json"), key=lambda p: len(p.name))
    assert second.name == first.name.replace(".json", "-2.json")
    assert first.with_suffix(".md").is_file() and second.with_suffix(".md").is_file()
