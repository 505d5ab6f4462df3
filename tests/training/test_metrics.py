import math

import pytest
import torch

from bench.dense_eval import dense_prefix_evaluate
from mrl_kernels.training import data
from mrl_kernels.ops import CSR
from mrl_kernels.training.metrics import evaluate, prefix_evaluate, sample_users


def test_recall_and_ndcg_by_hand():
    # one user, 6 items; item scores = item_weight[:, 0] (user vector [1, 0])
    user = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[6.0, 0], [5.0, 0], [4.0, 0], [3.0, 0], [2.0, 0], [1.0, 0]])
    train = CSR.from_pairs([0], [0], 2, 6)       # item 0 is excluded from user 0's ranking
    heldout = CSR.from_pairs([0, 0], [2, 5], 2, 6)  # user 1 has none: not averaged
    m = evaluate(user, items, heldout, [train], ks=(2, 3, 5))
    # ranking without item 0: 1, 2, 3, 4, 5 -> hits at ranks 1 (item 2) and 4 (item 5), 0-based
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(1.0)
    d = lambda r: 1 / math.log2(r + 2)  # noqa: E731
    assert m["ndcg@2"] == pytest.approx(d(1) / (d(0) + d(1)))  # IDCG with min(2, 2) hits
    assert m["ndcg@5"] == pytest.approx((d(1) + d(4)) / (d(0) + d(1)))


def test_idcg_uses_min_k_heldout():
    user = torch.tensor([[1.0]])
    items = torch.tensor([[3.0], [2.0], [1.0]])
    heldout = CSR.from_pairs([0, 0, 0], [0, 1, 2], 1, 3)
    m = evaluate(user, items, heldout, ks=(1, 2))
    assert m["ndcg@1"] == pytest.approx(1.0) and m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx(1.0) and m["recall@2"] == pytest.approx(2 / 3)


def test_batches_do_not_change_the_result():
    torch.manual_seed(0)
    u, i = torch.randn(50, 8), torch.randn(30, 8)
    held = CSR.from_pairs(torch.randint(0, 50, (80,)), torch.randint(0, 30, (80,)), 50, 30)
    train = CSR.from_pairs(torch.randint(0, 50, (80,)), torch.randint(0, 30, (80,)), 50, 30)
    assert evaluate(u, i, held, [train], batch_size=7) == pytest.approx(evaluate(u, i, held, [train]))


def test_prefix_metrics_use_only_the_first_columns():
    torch.manual_seed(1)
    u, i = torch.randn(20, 8), torch.randn(15, 8)
    held = CSR.from_pairs(torch.arange(20), torch.randint(0, 15, (20,)), 20, 15)
    out = prefix_evaluate(u, i, [2, 8], held)
    assert out["2"] == pytest.approx(evaluate(u[:, :2], i[:, :2], held))
    assert out["8"] == pytest.approx(evaluate(u, i, held))


def test_excluded_items_are_never_hits_when_k_exceeds_the_items_left():
    # 40 items; user 0 trained on items 0..34; its held-out items: 3 (a repeat of a
    # training interaction) and 36; K = 50 ranks all 40 items, the excluded ones last
    train = CSR.from_pairs([0] * 35, list(range(35)), 1, 40)
    heldout = CSR.from_pairs([0, 0], [3, 36], 1, 40)
    g = torch.Generator().manual_seed(0)
    result = evaluate(torch.randn(1, 4, generator=g), torch.randn(40, 4, generator=g), heldout, [train], ks=(50,))
    assert result["recall@50"] == 0.5


def _full_ranking(u, i, dims, held, exclude=(), ks=(1, 3, 10, 50), users=None):
    """The specification: every item scored at once (``u[:, :n] @ i[:, :n].T``), the
    excluded ones removed, ranked by a stable descending sort (NaN first, ties to
    the lower id), excluded items never hits; summed in one batch."""
    users = torch.nonzero(held.row_lengths() > 0).flatten() if users is None else users
    top = min(max(ks), i.shape[0])
    blocked = torch.zeros((len(users), i.shape[0]), dtype=torch.bool)
    for part in exclude:
        blocked |= part.dense_rows(users)
    truth = held.dense_rows(users)
    n_true = truth.sum(1).double()
    discount = 1.0 / torch.log2(torch.arange(top, dtype=torch.float64) + 2.0)
    ideal = torch.cumsum(discount, 0)
    out = {}
    for n in dims:
        scores = (u[users][:, :n].float() @ i[:, :n].float().T).masked_fill(blocked, -torch.inf)
        ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]
        hits = (truth.gather(1, ranked) & ~blocked.gather(1, ranked)).double()
        out[str(n)] = {}
        for k in ks:
            out[str(n)][f"recall@{k}"] = float((hits[:, :k].sum(1) / n_true).sum()) / len(users)
            idcg = ideal[(n_true.clamp(max=min(k, top)) - 1).long()]
            out[str(n)][f"ndcg@{k}"] = float(((hits[:, :k] * discount[:k]).sum(1) / idcg).sum()) / len(users)
    return {n: {name: out[n][name] for k in ks for name in (f"recall@{k}", f"ndcg@{k}")} for n in out}


def _random_case(seed, n_users, n_items, width, ties):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct scores: most rankings are decided by the tie rule
        u = torch.randint(-1, 2, (n_users, width), generator=g).float()
        i = torch.randint(-1, 2, (n_items, width), generator=g).float()
    else:
        u, i = torch.randn(n_users, width, generator=g), torch.randn(n_items, width, generator=g)
    pairs = lambda count: (torch.randint(0, n_users, (count,), generator=g),  # noqa: E731
                           torch.randint(0, n_items, (count,), generator=g))
    held = CSR.from_pairs(*pairs(3 * n_users), n_users, n_items)
    train = CSR.from_pairs(*pairs(n_items * n_users // 4), n_users, n_items)
    return u, i, held, train


@pytest.mark.parametrize("n_items, block", [(1, 64), (7, 64), (50, 64), (333, 64), (1037, 100), (2100, 256)])
@pytest.mark.parametrize("ties", [False, True])
def test_one_pass_equals_the_full_ranking_at_every_width(n_items, block, ties):
    u, i, held, train = _random_case(n_items, 70, n_items, 12, ties)
    got = prefix_evaluate(u, i, [1, 4, 12], held, [train], ks=(1, 3, 10, 50), block=block, batch_size=1024)
    assert got == _full_ranking(u, i, [1, 4, 12], held, [train])
    # batches of users: the same rankings, summed batch by batch
    assert prefix_evaluate(u, i, [4], held, [train], ks=(1, 3, 10, 50), block=block, batch_size=16)["4"] == \
        pytest.approx(got["4"], rel=1e-12)


def test_ties_go_to_the_lower_id_and_nan_ranks_first():
    # every item scores the same but item 5 (NaN): ranking 5, 0, 1, 2, ... with item 0 excluded: 5, 1, 2, ...
    items = torch.ones(300, 2)
    items[5, 0] = float("nan")
    user = torch.ones(1, 2)
    for held_item, rank in ((5, 0), (1, 1), (2, 2), (199, 198)):
        held = CSR.from_pairs([0], [held_item], 1, 300)
        ndcg = evaluate(user, items, held, [CSR.from_pairs([0], [0], 1, 300)], ks=(200,), block=64)["ndcg@200"]
        assert ndcg == pytest.approx(1 / math.log2(rank + 2)), held_item


def test_todays_topk_ranking_gives_the_same_metrics_on_phone_and_tool(shared_datasets):
    """Against the evaluation this one replaced (bench/dense_eval.py: (users, N)
    scores, dense masks, torch.topk, one width at a time) on a seeded sample of
    each dataset's users; bench/results/scale-eval-* compares the full test and
    validation sets of trained models."""
    for name in ("phone", "tool"):
        ds = data.read_authors(shared_datasets / name)
        g = torch.Generator().manual_seed(0)
        u, i = torch.randn(ds.n_users, 64, generator=g) * 0.1, torch.randn(ds.n_items, 64, generator=g) * 0.1
        users = sample_users(ds.test, 600, seed=0)
        got = prefix_evaluate(u, i, [4, 64], ds.test, [ds.train, ds.valid], users=users, batch_size=256)
        assert got == dense_prefix_evaluate(u, i, [4, 64], ds.test, [ds.train, ds.valid], users, batch_size=256), name


def test_a_user_sample_is_seeded_and_drawn_among_users_with_held_out_items():
    held = CSR.from_pairs([1, 3, 3, 4, 8, 9], [0, 1, 2, 0, 1, 2], 10, 3)
    with_items = [1, 3, 4, 8, 9]
    assert sample_users(held, None, 0).tolist() == with_items == sample_users(held, 5, 0).tolist() \
        == sample_users(held, 50, 1).tolist()
    drawn = sample_users(held, 3, 0)
    assert drawn.tolist() == sorted(drawn.tolist()) and set(drawn.tolist()) <= set(with_items) and len(drawn) == 3
    assert torch.equal(drawn, sample_users(held, 3, 0))
    assert len({tuple(sample_users(held, 3, seed).tolist()) for seed in range(10)}) > 1


def test_users_choose_whom_the_metrics_average_over():
    u, i, held, train = _random_case(3, 60, 90, 8, False)
    users = sample_users(held, 20, 5)
    assert prefix_evaluate(u, i, [8], held, [train], ks=(1, 3, 10, 50), users=users) == \
        _full_ranking(u, i, [8], held, [train], users=users)
    with pytest.raises(ValueError, match="users must all have held-out items"):
        evaluate(u, i, CSR.from_pairs([0], [0], 60, 90), users=torch.tensor([0, 1]))


def test_between_is_called_after_every_batch_of_users_and_can_stop_the_evaluation():
    u, i, held, _ = _random_case(4, 50, 40, 4, False)
    calls = []
    evaluate(u, i, held, batch_size=8, between=lambda: calls.append(1))
    assert len(calls) == math.ceil(len(sample_users(held, None, 0)) / 8)

    def stop():
        calls.append(1)
        raise KeyboardInterrupt
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        evaluate(u, i, held, batch_size=8, between=stop)
    assert len(calls) == 1
