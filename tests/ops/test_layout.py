"""The candidates' layout is never guessed: a 2-D tensor for several levels is
one shared pool only where the call says so (``layout="shared"``); the flat
per-level layout ``(B, L*M)`` (pool l in columns ``l*M .. (l+1)*M``, as the
paper's authors keep it) is refused with the ``.view(B, L, M)`` that fixes it,
and that view gives every level its own pool."""
import re

import pytest
import torch

import mrl_kernels as mk
from mrl_kernels.ops.testing import make_inputs

from helpers import DEVICE, FAST

B, D, N, M = 6, 16, 40, 4
DIMS = [4, 8, 16]
L = len(DIMS)
VIEW = f"candidates.view({B}, {L}, {M})"

OPERATORS = {
    "mns_sample": lambda x, cand, **kw: mk.mns_sample(x["user"], x["item_weight"], cand, DIMS, **kw),
    "mns_bpr_loss": lambda x, cand, **kw: mk.mns_bpr_loss(x["user"], x["pos"], x["item_weight"], cand, DIMS,
                                                          reduction="none", **kw),
    "mrl_softmax_loss": lambda x, cand, **kw: mk.mrl_softmax_loss(x["user"], x["pos"], x["item_weight"], cand, DIMS,
                                                                  reduction="none", **kw),
}


def inputs(layout="per-level", seed=0):
    return make_inputs(B, D, N, M, DIMS, layout, torch.float64, DEVICE, seed)


def authors_flat(x):
    """The authors' feed: ``(B, L*M)``, pool l in columns ``l*M .. (l+1)*M``."""
    return x["candidates"].reshape(B, L * M)


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_the_flat_layout_is_refused_with_the_fix_and_the_fix_gives_every_level_its_own_pool(backend):
    x = inputs(seed=1)
    flat = authors_flat(x)
    for op in OPERATORS.values():
        with pytest.raises(ValueError) as info:
            op(x, flat, backend=backend)
        assert "ambiguous" in str(info.value) and VIEW in str(info.value) and "layout='shared'" in str(info.value)
        with pytest.raises(ValueError, match=re.escape(VIEW)):  # said to be per-level, still 2-D
            op(x, flat, layout="per-level", backend=backend)
        with pytest.raises(ValueError, match=re.escape(VIEW)):  # as a numpy array too
            op(x, flat.cpu().numpy(), backend=backend)
    negatives = mk.mns_sample(x["user"], x["item_weight"], flat.view(B, L, M), DIMS, backend=backend)
    for level, d in enumerate(DIMS):  # as the authors pick: the best of columns l*M .. (l+1)*M at width d_l
        pool = flat[:, level * M:(level + 1) * M]
        scores = (x["user"][:, None, :d] * x["item_weight"][pool][..., :d]).sum(-1)
        assert torch.equal(negatives[:, level], pool.gather(1, scores.argmax(1, keepdim=True))[:, 0])
    _, fused = mk.mns_bpr_loss(x["user"], x["pos"], x["item_weight"], flat.view(B, L, M), DIMS, backend=backend)
    assert torch.equal(fused, negatives)


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_a_shared_pool_is_said_so_and_equals_it_repeated_per_level(backend):
    x = inputs("shared", seed=2)
    shared = x["candidates"]
    repeated = shared[:, None, :].expand(B, L, M)
    for op in OPERATORS.values():
        with pytest.raises(ValueError, match="layout='shared'"):
            op(x, shared, backend=backend)
        said, per_level = op(x, shared, layout="shared", backend=backend), op(x, repeated, backend=backend)
        for a, b in zip(*(t if isinstance(t, tuple) else (t,) for t in (said, per_level))):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_one_level_needs_no_keyword_and_a_wrong_keyword_is_refused():
    x = make_inputs(B, D, N, M, [D], "shared", device=DEVICE)
    pool = x["candidates"]
    assert torch.equal(mk.mns_sample(x["user"], x["item_weight"], pool, [D]),
                       mk.mns_sample(x["user"], x["item_weight"], pool[:, None], [D]))
    x = inputs()
    with pytest.raises(ValueError, match=re.escape("layout='shared' takes one (B, M) pool")):
        OPERATORS["mns_sample"](x, x["candidates"], layout="shared")
    with pytest.raises(ValueError, match="layout must be None or one of"):
        OPERATORS["mns_sample"](x, x["candidates"], layout="flat")
    with pytest.raises(ValueError, match=re.escape(f"reshape them to (B, L, M) = ({B}, {L}, M)")):
        OPERATORS["mns_sample"](x, x["candidates"].reshape(B, L * M)[:, :-1])  # no view divides it


@pytest.mark.parametrize("method", ["bpr-d", "mrl-m", "mrl-s"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_the_trainer_says_when_its_pools_are_shared(method, sparse):
    """The trainer's objectives with ``--layout shared`` (the fused, selected and softmax paths) pass the keyword:
    their loss equals the one over each pool repeated per level."""
    from mrl_kernels.training import TrainConfig
    from mrl_kernels.training.backbones import MF
    from mrl_kernels.training.methods import METHODS

    losses = []
    for layout in ("shared", "per-level"):
        objective = METHODS[method].objective(TrainConfig(method=method, dims=(4, 8, 16), candidates=5, layout=layout,
                                                         l2=1e-2))
        pools = torch.randint(0, 50, (24, 5), generator=torch.Generator().manual_seed(0))
        cand = pools if len(objective.candidate_shape) == 1 else pools[:, None].expand(24, 3, 5)
        torch.manual_seed(0)
        model = MF(30, 50, 16, sparse=sparse).to(DEVICE)
        users, pos = torch.arange(24) % 30, torch.arange(24) % 50
        losses.append(objective(model(users.to(DEVICE), pos.to(DEVICE)), cand.to(DEVICE)))
    torch.testing.assert_close(*losses)
