import hashlib

import numpy as np
import pandas as pd
import pytest

from mrl_kernels import atomic
from mrl_kernels.training import data
from mrl_kernels.ops.candidates import Membership


def test_authors_format_counts(shared_datasets):
    ds = data.read_authors(shared_datasets / "tool", seed=0)
    assert (ds.n_users, ds.n_items) == (16638, 10217)
    assert ds.train.nnz + ds.valid.nnz == 107772
    assert ds.test.nnz == 26704
    # about 10% held out for validation; no user loses their only interaction
    assert 0.09 < ds.valid.nnz / 107772 < 0.11
    train_len, valid_len = ds.train.row_lengths(), ds.valid.row_lengths()
    assert ((train_len + valid_len == 1) <= (valid_len == 0)).all()
    # disjoint splits
    assert not Membership.of(ds.train, "cpu").contains(ds.valid.rows(), ds.valid.indices).any()


def test_validation_split_is_seeded(shared_datasets):
    a = data.read_authors(shared_datasets / "ml100k", seed=3)
    b = data.read_authors(shared_datasets / "ml100k", seed=3)
    c = data.read_authors(shared_datasets / "ml100k", seed=4)
    assert np.array_equal(a.valid.keys, b.valid.keys)
    assert not np.array_equal(a.valid.keys, c.valid.keys)


def test_split_per_user_fractions():
    csr = data.CSR.from_pairs(np.repeat(np.arange(200), 50), np.tile(np.arange(50), 200), 200, 50)
    kept, out = data.split_per_user(csr, 0.1, seed=0)
    assert (out.row_lengths() == 5).all() and kept.nnz == 200 * 45
    single = data.CSR.from_pairs(np.arange(100), np.zeros(100, dtype=np.int64), 100, 3)
    kept, out = data.split_per_user(single, 0.5, seed=0)
    assert out.nnz == 0 and kept.nnz == 100


def test_lines_with_trailing_spaces_and_missing_test_users(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2 \n1 0\n2 3 4 5 6 7 8 9 10 11 12\n")
    (tmp_path / "test.txt").write_text("0 3\n2 13 \n")
    ds = data.read_authors(tmp_path)
    assert (ds.n_users, ds.n_items) == (3, 14)
    assert ds.test.row_lengths().tolist() == [1, 0, 1]


def test_bad_lines_name_the_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("0 1\n1 x\n")
    (tmp_path / "test.txt").write_text("")
    with pytest.raises(data.DataError, match=r"train.txt:2: expected 'user item item \.\.\.'"):
        data.read_authors(tmp_path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tables_are_remapped(tmp_path, suffix):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user": [f"u{i}" for i in rng.integers(0, 40, 600)],
                          "item": rng.integers(1000, 1100, 600)})
    path = tmp_path / f"log{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    ds = data.load(str(path))
    assert ds.n_users == frame.user.nunique() and ds.n_items == frame.item.nunique()
    assert set(ds.user_ids) == set(frame.user) and set(ds.item_ids) == set(frame.item)
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz
    assert total == len(frame.drop_duplicates())
    # ids map back: every train pair was in the table
    rows, cols = ds.train.pairs()
    original = set(zip(frame.user, frame.item))
    assert all((ds.user_ids[r], ds.item_ids[c]) in original for r, c in zip(rows, cols))


def test_csv_ids_read_back_exactly_as_written(tmp_path):
    # "1", "01" and "001" are three users; "007" stays "007"; all-plain integers are ints
    path = tmp_path / "t.csv"
    path.write_text("user,item\n1,7\n01,7\n001,8\n007,9\nNA,9\n")
    ds = data.read_table(path)
    assert ds.n_users == 5 and sorted(ds.user_ids) == ["001", "007", "01", "1", "NA"]
    assert list(ds.item_ids) == [7, 8, 9] and all(isinstance(i, (int, np.integer)) for i in ds.item_ids)
    rows, cols = data.CSR.union(ds.train, ds.valid, ds.test).pairs()
    assert sorted(zip(ds.user_ids[rows], ds.item_ids[cols])) == sorted(
        [("1", 7), ("01", 7), ("001", 8), ("007", 9), ("NA", 9)])


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user,item\nalice,book,a,b\nbob,pen,c,d\n")  # unquoted commas shift every column
    with pytest.raises(data.DataError, match="rows have more fields than its header .*quote ids"):
        data.read_table(path)


def test_table_without_columns(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(data.DataError, match="needs columns 'user' and 'item'"):
        data.load(str(tmp_path / "t.csv"))


def test_unknown_name():
    with pytest.raises(data.DataError, match="unknown dataset 'nope'"):
        data.load("nope")


def test_download_from_file_url(shared_datasets, tmp_path):
    base = shared_datasets.as_uri() + "/"
    ds = data.load("ml100k", data_dir=tmp_path, base_url=base)
    assert ds.n_users == 943
    for f in ("train.txt", "test.txt"):
        saved = (tmp_path / "ml100k" / f).read_bytes()
        assert hashlib.sha256(saved).hexdigest() == data.SHA256[f"ml100k/{f}"]
    assert not list((tmp_path / "ml100k").glob(f".*{atomic.TEMP_SUFFIX}"))


def test_download_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    served = tmp_path / "served" / "tool"
    served.mkdir(parents=True)
    (served / "train.txt").write_text("0 1\n")
    (served / "test.txt").write_text("0 2\n")
    with pytest.raises(data.DataError, match="has SHA-256 .* expected"):
        data.load("tool", data_dir=tmp_path / "cache", base_url=(tmp_path / "served").as_uri())
    assert not (tmp_path / "cache" / "tool" / "train.txt").exists()


def test_download_reports_unreachable(tmp_path):
    with pytest.raises(data.DataError, match="cannot download") as info:
        data.download("phone", tmp_path, base_url=(tmp_path / "nowhere").as_uri())
    assert "--data-dir" in str(info.value) and "$MRL_DATA" in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("column", ["user", "item"])
def test_a_missing_id_in_a_table_is_refused_with_its_row(tmp_path, column):
    frame = pd.DataFrame({"user": ["a", "b", "c", "d"], "item": ["x", "y", "z", "x"]})
    frame.loc[2, column] = None
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(data.DataError, match=f"row 3 of the table .* has no {column} id"):
        data.read_table(path)


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"0 1 2\n1 \xff\xfe 3\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    with pytest.raises(data.DataError, match=r"train.txt:2: not UTF-8"):
        data.read_authors(tmp_path)
    table = tmp_path / "t.csv"
    table.write_bytes(b"user,item\na,x\nb,y\n\xff,z\n")
    with pytest.raises(data.DataError, match=r"t.csv:4: not UTF-8"):
        data.read_table(table)


def test_ids_too_large_for_a_table_are_refused(tmp_path):
    (tmp_path / "train.txt").write_text("0 1\n1000000000000 2\n")
    (tmp_path / "test.txt").write_text("0 3\n")
    with pytest.raises(data.DataError, match=r"train.txt:2: id 1000000000000 is too large"):
        data.read_authors(tmp_path)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MRL_DATA", str(tmp_path / "env"))
    assert data.dataset_dir() == tmp_path / "env"
    assert data.dataset_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MRL_DATA")
    assert data.dataset_dir().name == "mrl_kernels"


def test_synthetic_is_seeded_and_keeps_its_hierarchy():
    a, b = data.synthetic(seed=5, n_users=200, n_items=150), data.synthetic(seed=5, n_users=200, n_items=150)
    assert np.array_equal(a.train.keys, b.train.keys)
    assert a.item_tree.shape == (150, 3) and a.user_path.shape == (200, 3)
    # each deeper category lies inside its parent
    assert (a.item_tree[:, 1] // 4 == a.item_tree[:, 0]).all() and (a.item_tree[:, 2] // 4 == a.item_tree[:, 1]).all()
    # users mostly interact inside their own top-level category
    rows, cols = a.train.pairs()
    inside = (a.item_tree[cols, 0] == a.user_path[rows, 0]).mean()
    assert inside > 0.8


def test_synthetic_sizes_are_taken_as_given_and_only_for_synthetic_data():
    with pytest.raises(data.DataError, match="synthetic sizes must be positive, got users 0"):
        data.load("synthetic", synthetic_size=(0, None, None))
    with pytest.raises(data.DataError, match="apply to the synthetic data only, not to 'ml100k'"):
        data.load("ml100k", synthetic_size=(300, None, None))
    assert data.load("synthetic", synthetic_size=(300, None, None)).n_users == 300
