import threading

import numpy as np
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels.data import CSR
from mrl_kernels.sampling import Membership


def test_excluded_items_are_never_drawn():
    n_items = 12
    # user 0 has all but items 3 and 7; user 1 has none; user 2 has the even items
    rows = [0] * 10 + [2] * 6
    cols = [i for i in range(n_items) if i not in (3, 7)] + list(range(0, 12, 2))
    exclude = CSR.from_pairs(rows, cols, 3, n_items)
    users = torch.tensor([0, 1, 2] * 50)
    out = mk.sample_candidates(users, 40, n_items, exclude, torch.Generator().manual_seed(0))
    assert out.shape == (150, 40) and out.dtype == torch.int64
    assert set(out[users == 0].unique().tolist()) == {3, 7}
    assert set(out[users == 2].unique().tolist()) == set(range(1, 12, 2))
    assert set(out[users == 1].unique().tolist()) == set(range(n_items))


def test_draws_are_uniform_over_the_allowed_items():
    exclude = CSR.from_pairs([0, 0], [0, 1], 1, 6)
    out = mk.sample_candidates(torch.zeros(20000, dtype=torch.long), 1, 6, exclude,
                               torch.Generator().manual_seed(1))
    counts = torch.bincount(out.flatten(), minlength=6).double()
    assert counts[:2].sum() == 0
    # 4 allowed items, 20000 draws: each ~5000, sd ~61
    assert (counts[2:] - 5000).abs().max() < 300


def test_seeded_draws_repeat():
    exclude = CSR.from_pairs([0, 1], [0, 1], 2, 50)
    users = torch.tensor([0, 1, 0])
    a = mk.sample_candidates(users, 8, 50, exclude, torch.Generator().manual_seed(3))
    b = mk.sample_candidates(users, 8, 50, exclude, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_a_user_with_every_item_is_an_error():
    exclude = CSR.from_pairs([1, 1, 1], [0, 1, 2], 2, 3)
    with pytest.raises(ValueError, match=r"users \[1\] have every item"):
        mk.sample_candidates(torch.tensor([0, 1]), 2, 3, exclude)


def test_mismatched_exclusion_is_an_error():
    exclude = CSR.from_pairs([0], [0], 1, 3)
    with pytest.raises(ValueError, match="exclude has 3 columns but n_items is 4"):
        mk.sample_candidates(torch.tensor([0]), 2, 4, exclude)
    with pytest.raises(ValueError, match=r"users must lie in \[0, 1\)"):
        mk.sample_candidates(torch.tensor([1]), 2, 3, exclude)


@pytest.mark.parametrize("kind", ["bitmap", "filter", "filter with collisions"])
def test_membership_by_bitmap_and_by_filtered_binary_search(monkeypatch, kind):
    if kind != "bitmap":
        monkeypatch.setattr(Membership, "BITMAP_MAX_BITS", 0)
    if kind == "filter with collisions":  # most keys share a filter bit: the search decides
        monkeypatch.setattr(Membership, "FILTER_MODULUS", 7)
    g = torch.Generator().manual_seed(4)
    rows, cols = torch.randint(0, 30, (200,), generator=g), torch.randint(0, 17, (200,), generator=g)
    csr = CSR.from_pairs(rows, cols, 30, 17)
    seen = Membership(csr, "cpu")
    assert seen.exact == (kind == "bitmap")
    stored = set(zip(rows.tolist(), cols.tolist()))
    qr, qc = torch.arange(30).repeat_interleave(17), torch.arange(17).repeat(30)
    expected = torch.tensor([(r, c) in stored for r, c in zip(qr.tolist(), qc.tolist())])
    assert torch.equal(seen.contains(qr, qc), expected)
    assert torch.equal(seen.contains(qr.view(17, 30), qc.view(17, 30)), expected.view(17, 30))


def test_a_user_with_nearly_every_item_is_drawn_exactly_and_fast():
    """Rejection would need ~200,000 draws per id here (minutes); the exact draw
    from the items left is immediate."""
    n_items = 200_000
    exclude = CSR.from_pairs([0] * (n_items - 2), [i for i in range(n_items) if i not in (17, 123_456)], 2, n_items)
    users = torch.tensor([0, 1] * 32)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=mk.sample_candidates(users, 64, n_items, exclude, torch.Generator().manual_seed(0))))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "sampling stalled"
    out = result["out"]
    assert set(out[users == 0].unique().tolist()) == {17, 123_456}
    assert len(out[users == 1].unique()) > 1000  # user 1 has no items: uniform over all


def test_numpy_integers_are_accepted_and_an_empty_batch_is_refused():
    out = mk.sample_candidates(torch.tensor([0, 1]), np.int64(3), np.int32(10))
    assert out.shape == (2, 3)
    with pytest.raises(ValueError, match="users must hold at least one user id"):
        mk.sample_candidates(torch.zeros(0, dtype=torch.long), 3, 10)
