"""Tables of interactions under faults: ids are their text ("-0" is not "0"),
a file that is not a text table is refused before pandas reads it (a NUL
byte, a line too long to be one), values that are not ids are one DataError."""
import time

import pandas as pd
import pytest

from mrl_kernels.cli import train as train_cli
from mrl_kernels.training import data
from mrl_kernels.training.data import DataError


def test_minus_zero_and_zero_are_two_csv_ids(tmp_path):
    (tmp_path / "t.csv").write_text("user,item\n-0,a\n0,b\n0,c\n-0,d\n1,a\n5,-0\n5,0\n")
    ds = data.read_table(tmp_path / "t.csv")
    assert ds.n_users == 4 and sorted(ds.user_ids.tolist()) == ["-0", "0", "1", "5"]
    assert ds.n_items == 6 and "-0" in ds.item_ids.tolist() and "0" in ds.item_ids.tolist()
    (tmp_path / "ints.csv").write_text("user,item\n0,1\n-3,2\n10,1\n")  # plain integers stay ints
    assert data.read_table(tmp_path / "ints.csv").user_ids.tolist() == [-3, 0, 10]


@pytest.mark.parametrize("content, words", [
    (b"\0" * 5000, "t.csv:1: a NUL byte (at byte 0); not UTF-8 text"),
    (b"user,item\n1,2\n3,\0\n", "t.csv:3: a NUL byte (at byte 16); not UTF-8 text"),
    (b"user,item\n" + b"1,2\n" * 100 + b"\0" * 200, "t.csv:102: a NUL byte (at byte 410)"),
])
def test_a_file_with_nul_bytes_is_refused_at_once_with_its_place(tmp_path, content, words):
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        data.read_table(tmp_path / "t.csv")


@pytest.mark.parametrize("lines, bad_line", [
    ([b"user,item", b"1," + b"9" * 200, b"3,4"], 2),  # inside one read
    ([b"user,item", b"1,2", b"3," + b"9" * 700], 3),  # across reads
    ([b"u" * 150], 1),  # no line break at all
])
def test_a_line_too_long_to_be_a_table_row_is_refused(tmp_path, monkeypatch, lines, bad_line):
    monkeypatch.setattr(data, "MAX_LINE", 100)
    (tmp_path / "t.csv").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=f"t.csv:{bad_line}: a line longer than 100 bytes; not a table of ids"):
        data.read_table(tmp_path / "t.csv")


def test_lines_at_the_limit_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LINE", 100)
    rows = [f"u{i:02d},{'i' * 95}{i % 10}" for i in range(30)]  # 100 bytes a line, across many reads
    (tmp_path / "t.csv").write_text("user,item\n" + "\n".join(rows) + "\n")
    ds = data.read_table(tmp_path / "t.csv")
    assert ds.n_users == 30 and ds.n_items == 10


def test_a_big_file_of_nul_bytes_is_refused_quickly(tmp_path):
    with open(tmp_path / "big.csv", "wb") as f:  # sparse: 2 GiB of NUL bytes, no disk used
        f.truncate(2 << 30)
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"big.csv:1: a NUL byte \(at byte 0\)"):
        data.read_table(tmp_path / "big.csv")
    assert time.perf_counter() - started < 5


def test_a_reader_error_without_a_message_names_its_kind(tmp_path, monkeypatch):
    (tmp_path / "t.csv").write_text("user,item\n1,2\n")

    def out_of_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(data.pd, "read_csv", out_of_memory)
    with pytest.raises(DataError, match=r"^cannot read .*t.csv: MemoryError$"):
        data.read_table(tmp_path / "t.csv")


@pytest.mark.parametrize("column, values, words", [
    ("user", [[1, 2], [3]], r"row 1 of the table has a ndarray as its user id \(\[1 2\]\)"),
    ("item", [{"a": 1}, {"a": 2}], r"row 1 of the table has a dict as its item id"),
])
def test_parquet_ids_that_are_not_scalars_are_one_data_error(tmp_path, column, values, words):
    other = "item" if column == "user" else "user"
    pd.DataFrame({column: values, other: [1, 2]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=words):
        data.read_table(tmp_path / "t.parquet")


@pytest.mark.parametrize("name, words", [("nul.csv", "nul.csv:1: a NUL byte (at byte 0); not UTF-8 text"),
                                         ("lists.parquet", "row 1 of the table has a ndarray as its user id")])
def test_mrl_train_reports_a_table_that_is_not_one_in_one_line(tmp_path, capsys, name, words):
    if name.endswith(".csv"):
        (tmp_path / name).write_bytes(b"\0" * 1000)
    else:
        pd.DataFrame({"user": [[1, 2], [3]], "item": [1, 2]}).to_parquet(tmp_path / name)
    assert train_cli.main(["--dataset", str(tmp_path / name), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrl-train: error:") and words in err and "\n" not in err, err
