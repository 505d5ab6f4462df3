"""bench.nested_als records the code each row was made with."""
import re

import pytest

pytest.importorskip("implicit", reason="bench.nested_als needs the bench extra")


def test_a_row_names_its_commit():
    from bench.nested_als import commit
    found = commit()
    assert found is None or re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", found), found
