"""The reference backend: hand-computed cases, ties, layouts, gradients."""
import math

import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import reference

from helpers import assert_close


def test_one_mns_pick_by_hand():
    user = torch.tensor([[1.0, 0.0, 2.0, -1.0]])
    items = torch.tensor([
        [0.0, 0.0, 0.0, 0.0],   # prefix scores (d=1, d=4): 0, 0
        [3.0, 0.0, -5.0, 0.0],  # 3, -7
        [1.0, 9.0, 1.0, -2.0],  # 1, 5
    ])
    pool = torch.tensor([[0, 1, 2]])
    # width 1: item 1 (3) wins; width 4: item 2 (1 + 2 + 2 = 5) wins
    out = mk.mns_sample(user, items, pool, [1, 4], layout="shared", backend="torch")
    assert out.tolist() == [[1, 2]]
    per_level = mk.mns_sample(user, items, torch.tensor([[[0, 2]], [[1, 0]]]).view(1, 2, 2), [1, 4], backend="torch")
    assert per_level.tolist() == [[2, 0]]  # width 1: max(0, 1) -> 2; width 4: max(-7, 0) -> 0


def test_one_loss_by_hand():
    user = torch.tensor([[1.0, 2.0]])
    pos = torch.tensor([[1.0, 1.0]])
    neg = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    # width 1: s_neg 2, s_pos 1 -> softplus(1); width 2: s_neg 2, s_pos 3 -> softplus(-1)
    expected = 0.25 * math.log1p(math.e) + 0.75 * math.log1p(math.exp(-1))
    loss = mk.mrl_bpr_loss(user, pos, neg, [1, 2], weights=[0.25, 0.75], backend="torch")
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    default = mk.mrl_bpr_loss(user, pos, neg, [1, 2], backend="torch")
    assert default.item() == pytest.approx(0.5 * (math.log1p(math.e) + math.log1p(math.exp(-1))), rel=1e-6)


def test_ties_go_to_the_lowest_position():
    user = torch.tensor([[1.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]])
    # items 0 and 2 are the same vector; 0 and 1 tie at full width
    for pool, expected in ([[3, 2, 0, 1]], [[2, 2]]), ([[3, 1, 0, 2]], [[0, 1]]):
        out = mk.mns_sample(user, items, torch.tensor(pool), [1, 2], layout="shared", backend="torch")
        assert out.tolist() == expected


def test_reductions():
    torch.manual_seed(0)
    u, p, n = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 2, 8)
    rows = mk.mrl_bpr_loss(u, p, n, [4, 8], reduction="none", backend="torch")
    assert rows.shape == (6,)
    assert_close(mk.mrl_bpr_loss(u, p, n, [4, 8], reduction="sum", backend="torch"), rows.sum(), 1e-6, 1e-6)
    assert_close(mk.mrl_bpr_loss(u, p, n, [4, 8], backend="torch"), rows.mean(), 1e-6, 1e-6)


@pytest.mark.parametrize("layout", ["shared", "per-level"])
def test_fused_equals_composed(layout):
    torch.manual_seed(1)
    dims = [2, 5, 12]
    u, p, items = torch.randn(9, 12), torch.randn(9, 12), torch.randn(30, 12)
    cand = torch.randint(0, 30, (9, 7) if layout == "shared" else (9, 3, 7))
    loss, negs = mk.mns_bpr_loss(u, p, items, cand, dims, reduction="none", layout=layout, backend="torch")
    assert torch.equal(negs, mk.mns_sample(u, items, cand, dims, layout=layout, backend="torch"))
    assert_close(loss, mk.mrl_bpr_loss(u, p, items[negs], dims, reduction="none", backend="torch"), 1e-6, 1e-6)
    # each pick is a candidate of its own level's pool
    pools = cand[:, None, :].expand(-1, 3, -1) if layout == "shared" else cand
    assert (pools == negs[..., None]).any(-1).all()


def test_float64_gradcheck_of_both_losses():
    torch.manual_seed(2)
    dims = [1, 3, 6]
    u = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    p = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    n = torch.randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    items = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    cand = torch.randint(0, 8, (5, 3, 4))
    w = [0.2, 0.3, 0.5]
    assert torch.autograd.gradcheck(lambda a, b, c: mk.mrl_bpr_loss(a, b, c, dims, w, "none", backend="torch"),
                                    (u, p, n))
    # repeated candidates make repeated negatives, whose gradients must sum
    cand[:, :, 1:] = cand[:, :, :1]
    assert torch.autograd.gradcheck(
        lambda a, b, c: mk.mns_bpr_loss(a, b, c, cand, dims, w, "sum", backend="torch")[0], (u, p, items))


def test_explicit_backward_matches_autograd_of_reference():
    torch.manual_seed(3)
    dims = [4, 8, 16]
    leaves = [torch.randn(32, 16, requires_grad=True), torch.randn(32, 16, requires_grad=True),
              torch.randn(50, 16, requires_grad=True)]
    cand = torch.randint(0, 50, (32, 3, 5))
    loss, _ = reference.mns_bpr_loss(*leaves[:2], leaves[2], cand, dims, [1 / 3] * 3)
    expected = torch.autograd.grad(loss.mean(), leaves)
    op_loss, _ = mk.mns_bpr_loss(*leaves[:2], leaves[2], cand, dims, backend="torch")
    actual = torch.autograd.grad(op_loss, leaves)
    for a, e, name in zip(actual, expected, ("user", "pos", "item_weight")):
        assert_close(a, e, 1e-6, 1e-5, name)


def test_half_precision_accumulates_in_float32():
    torch.manual_seed(4)
    u, p, n = (torch.randn(16, 64).bfloat16(), torch.randn(16, 64).bfloat16(), torch.randn(16, 2, 64).bfloat16())
    out = mk.mrl_bpr_loss(u, p, n, [32, 64], reduction="none", backend="torch")
    assert out.dtype == torch.bfloat16
    exact = mk.mrl_bpr_loss(u.double(), p.double(), n.double(), [32, 64], reduction="none", backend="torch")
    assert_close(out, exact, 1e-2, 1e-2)


def test_one_softmax_by_hand():
    user = torch.tensor([[1.0, 2.0]])
    pos = torch.tensor([[1.0, 1.0]])
    items = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    pool = torch.tensor([[0, 1, -1]])  # -1: padding, takes no part
    # width 1: scores pos 1, items 2, 0; width 2: pos 3, items 2, 2; temperature 0.5
    level1 = math.log(math.exp(2) + math.exp(4) + math.exp(0)) - 2
    level2 = math.log(math.exp(6) + 2 * math.exp(4)) - 6
    loss = mk.mrl_softmax_loss(user, pos, items, pool, [1, 2], [0.25, 0.75], temperature=0.5, layout="shared",
                               backend="torch")
    assert loss.item() == pytest.approx(0.25 * level1 + 0.75 * level2, rel=1e-6)
    # the positive's own id among the candidates is masked with pos_ids
    masked = mk.mrl_softmax_loss(user, pos, items, torch.tensor([[0, 1, 2]]), [1, 2], [0.25, 0.75], 0.5,
                                 pos_ids=torch.tensor([2]), layout="shared", backend="torch")
    assert masked.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("layout", ["shared", "per-level"])
@pytest.mark.parametrize("cosine", [False, True], ids=["inner", "cosine"])
def test_explicit_softmax_backward_matches_autograd_of_reference(layout, cosine):
    torch.manual_seed(5)
    dims = [4, 8, 16]
    leaves = [torch.randn(32, 16, dtype=torch.float64, requires_grad=True) for _ in range(2)] + \
        [torch.randn(50, 16, dtype=torch.float64, requires_grad=True)]
    cand = torch.randint(-1, 50, (32, 5) if layout == "shared" else (32, 3, 5))
    w = [0.5, 0.3, 0.2]
    expected = torch.autograd.grad(reference.mrl_softmax_loss(*leaves, cand, dims, w, 0.3, cosine).sum(), leaves)
    _, lse = reference.mrl_softmax_loss_lse(*leaves, cand, dims, w, 0.3, cosine)
    actual = reference.mrl_softmax_loss_backward(torch.ones(32, dtype=torch.float64), *leaves, cand, lse, dims, w,
                                                 0.3, cosine)
    for a, e, name in zip(actual, expected, ("user", "pos", "item_weight")):
        assert_close(a, e, 1e-12, 1e-10, name)


def test_cosine_scores_ignore_the_norms():
    torch.manual_seed(6)
    u, p, items = torch.randn(5, 8), torch.randn(5, 8), torch.randn(20, 8)
    cand = torch.randint(0, 20, (5, 6))
    scale = torch.rand(20, 1) + 0.5  # rescale every item (and the positives) by its own factor
    a = mk.mrl_softmax_loss(u, p, items, cand, [8], cosine=True, backend="torch")
    b = mk.mrl_softmax_loss(u * 3, p * 2, items * scale, cand, [8], cosine=True, backend="torch")
    assert_close(a, b, 1e-5, 1e-5, "loss")
