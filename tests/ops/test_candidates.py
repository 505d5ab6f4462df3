import math
import threading

import numpy as np
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels.ops import CSR
from mrl_kernels.ops.candidates import Membership, Popularity, in_batch_candidates, mixed_candidates, popularity_candidates


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


def test_popularity_draws_in_proportion_and_gives_expected_counts():
    pop = Popularity(torch.tensor([0.0, 1.0, 2.0, 7.0]))
    ids = pop.draw((200_000,), torch.Generator().manual_seed(0))
    share = torch.bincount(ids, minlength=4).double() / ids.numel()
    assert share[0] == 0  # never an item without count
    assert torch.allclose(share, torch.tensor([0.0, 0.1, 0.2, 0.7], dtype=torch.float64), atol=0.005)
    log_q = pop.log_expected(torch.tensor([[1, 3, -1]]), draws=8)
    assert torch.allclose(log_q, torch.tensor([[math.log(0.8), math.log(5.6), 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="counts"):
        Popularity(torch.tensor([0.0, -1.0]))
    train = CSR.from_pairs([0, 0, 1], [1, 2, 2], 2, 4)
    assert torch.equal(Popularity.of(train, smoothing=1).probs, torch.tensor([1, 2, 3, 1], dtype=torch.float64) / 7)


def test_popularity_candidates_exclude_each_users_items():
    train = CSR.from_pairs([0, 0, 1], [3, 2, 0], 3, 5)
    pop = Popularity(torch.tensor([1.0, 1.0, 5.0, 5.0, 1.0]))
    users = torch.tensor([0, 1, 2, 0])
    ids, log_q = popularity_candidates(users, 50, pop, exclude=train, generator=torch.Generator().manual_seed(1))
    assert ids.shape == (4, 50) and not ((ids[[0, 3]] == 3) | (ids[[0, 3]] == 2)).any() and not (ids[1] == 0).any()
    assert torch.equal(log_q, torch.log(50 * pop.probs[ids]))
    only_own = Popularity(torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0]))  # user 0 has all the mass
    with pytest.raises(ValueError, match=r"users \[0\] still drew their own items"):
        popularity_candidates(users, 4, only_own, exclude=train, max_rounds=5)


def test_in_batch_candidates_mask_own_positives_and_items():
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([4, 1, 4])
    train = CSR.from_pairs([1], [4], 3, 5)  # user 1 has item 4
    ids, log_q = in_batch_candidates(users, pos, exclude=train)
    assert log_q is None
    assert ids.tolist() == [[-1, 1, -1], [-1, -1, -1], [-1, 1, -1]]  # own/equal positives, user 1's item 4
    pop = Popularity(torch.tensor([1.0, 1.0, 1.0, 1.0, 6.0]))
    ids, log_q = in_batch_candidates(users, pos, popularity=pop)
    assert ids.tolist() == [[-1, 1, -1], [4, -1, 4], [-1, 1, -1]]
    assert torch.allclose(log_q, torch.where(ids < 0, 0.0, torch.log(3 * pop.probs[ids.clamp(min=0)])))
    with pytest.raises(ValueError, match="pos_ids"):
        in_batch_candidates(users, pos[:2])


def test_mixed_candidates_log_q_is_both_sources_expected_count():
    users, pos = torch.tensor([0, 1]), torch.tensor([2, 3])
    pop = Popularity(torch.tensor([1.0, 1.0, 3.0, 5.0]))
    train = CSR.from_pairs([0, 1], [0, 1], 2, 4)
    ids, log_q = mixed_candidates(users, pos, 6, 4, pop, exclude=train, generator=torch.Generator().manual_seed(2))
    assert ids.shape == (2, 8) and ids[:, :2].tolist() == [[-1, 3], [2, -1]]
    assert not (ids[0, 2:] == 0).any() and not (ids[1, 2:] == 1).any()
    want = torch.log(2 * pop.probs[ids.clamp(min=0)] + 6 / 4).masked_fill(ids < 0, 0.0)
    assert torch.equal(log_q, want)
    # the softmax over them with the correction: every id counts once per pool entry, padding none
    g = torch.Generator().manual_seed(3)
    user, item = torch.randn(2, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    loss = mk.mrl_softmax_loss(user, item[pos], item, ids, (4, 8), log_q=log_q, reduction="none", layout="shared")
    valid = ids >= 0
    for b in range(2):
        want = 0.0
        for d in (4, 8):
            z = (user[b, :d] * item[ids[b][valid[b]], :d]).sum(-1) - log_q[b][valid[b]]
            zp = (user[b, :d] * item[pos[b], :d]).sum()
            want += float(torch.tensor(0.5, dtype=torch.float32)) * (torch.cat([zp[None], z]).logsumexp(0) - zp)
        assert abs(float(loss[b]) - float(want)) < 1e-12
