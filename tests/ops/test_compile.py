"""torch.library registration: opcheck of every operator of every backend, with
and without gradients, and a whole compiled training step for every objective."""
import pytest
import torch

from mrl_kernels.ops import registry
from mrl_kernels.training.backbones import MF
from mrl_kernels.ops import CSR
from mrl_kernels.training.methods import METHODS
from mrl_kernels.ops.spec import OPS
from mrl_kernels.ops.testing import make_inputs
from mrl_kernels.training import TrainConfig

from helpers import DEVICE, GRADIENT_METHODS

BACKENDS = registry.available_backends(DEVICE)


def _samples(requires_grad):
    """Arguments for every operator by name (candidates with a repeated id)."""
    x = make_inputs(6, 8, 12, 4, [2, 5, 8], device=DEVICE, requires_grad=requires_grad)
    x["candidates"][:, :, 1] = x["candidates"][:, :, 0]
    plain = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    g = torch.Generator().manual_seed(1)
    log_q = torch.rand(x["candidates"].shape, generator=g).log().to(DEVICE)  # the logQ corrections
    return {
        "mns_sample": (x["user"], x["item_weight"], x["candidates"], x["dims"]),
        "mrl_bpr_loss": (x["user"], x["pos"], x["neg"], x["dims"], torch.tensor([0.2, 0.3, 0.5], device=DEVICE)),
        "mns_bpr_loss": (x["user"], x["pos"], x["item_weight"], x["candidates"], x["dims"],
                         torch.tensor([0.2, 0.3, 0.5], device=DEVICE)),
        "mrl_bpr_loss_backward": (torch.randn(6, generator=g).to(DEVICE), plain["user"], plain["pos"], plain["neg"],
                                  torch.rand(6, 3, generator=g).to(DEVICE), x["dims"], [True, True, True]),
        "mns_bpr_loss_backward": (torch.randn(6, generator=g).to(DEVICE), plain["user"], plain["pos"],
                                  plain["item_weight"], plain["candidates"][:, :, 0],
                                  torch.rand(6, 3, generator=g).to(DEVICE), x["dims"], [True, False, False]),
        "mrl_softmax_loss": (x["user"], x["pos"], x["item_weight"], x["candidates"], x["dims"],
                             torch.tensor([0.2, 0.3, 0.5], device=DEVICE), 0.5, True, log_q,
                             torch.rand(6, generator=g).log().to(DEVICE)),
        "mrl_softmax_loss_backward": (torch.randn(6, generator=g).to(DEVICE), plain["user"], plain["pos"],
                                      plain["item_weight"], plain["candidates"],
                                      torch.rand(6, 3, generator=g).to(DEVICE) + 2, x["dims"],
                                      torch.tensor([0.2, 0.3, 0.5], device=DEVICE), 0.5, False, log_q, None,
                                      [False, True, True]),
        "full_softmax_lse": (x["user"], x["item_weight"], torch.tensor([3, -1, 0, 11, 3, 5], device=DEVICE),
                             x["dims"], 0.5, torch.rand(12, generator=g).log().to(DEVICE)),
        "full_softmax_lse_backward": (torch.randn(6, 3, generator=g).to(DEVICE), plain["user"], plain["item_weight"],
                                      None, torch.rand(6, 3, generator=g).to(DEVICE) + 4, x["dims"], 0.5, None,
                                      [True, False]),
        "nested_als_solve": (plain["user"], plain["item_weight"], torch.eye(8, device=DEVICE) + 1,
                             torch.tensor([0, 2, 2, 3, 5, 5, 6], device=DEVICE),
                             torch.tensor([1, 5, 0, 11, 3, 7], device=DEVICE), x["dims"],
                             torch.tensor([0.2, 0.3, 0.5], device=DEVICE),
                             torch.tensor([3.0, 5.0, 2.0], device=DEVICE), 2),
        "lazy_adam": (plain["item_weight"].clone(), torch.rand(12, 8, generator=g).to(DEVICE),
                      torch.rand(12, 8, generator=g).to(DEVICE), torch.tensor([3, 0, 7], device=DEVICE),
                      torch.randn(3, 8, generator=g).to(DEVICE), 0.9, 0.999, 1e-8, 0.01),
        "prefix_topk": (plain["user"], plain["item_weight"][:, :5], plain["item_weight"], 3, 7,
                        torch.tensor([0, 2, 2, 3, 3, 3, 4], device=DEVICE),
                        torch.tensor([1, 5, 0, 11], device=DEVICE)),
    }

# the training interactions an objective may read (least squares: their density)
INTERACTIONS = CSR.from_pairs(range(20), range(0, 40, 2), 30, 50)


@pytest.mark.parametrize("backend, requires_grad", [
    # without gradients in Triton's interpreter (seconds of launches) with the slow tests
    pytest.param(b, grad, marks=[pytest.mark.slow] if b == "triton" and not grad and DEVICE != "cuda" else [])
    for b in BACKENDS for grad in (True, False)])
def test_opcheck(backend, requires_grad):
    samples = _samples(requires_grad)
    assert set(samples) == set(OPS), "a sample for every operator of the spec"
    for name, args in samples.items():
        torch.library.opcheck(getattr(torch.ops.mrl_kernels, f"{name}_{backend}"), args)


# in the default suite, the methods whose steps take distinct paths: every selector (uniform, DNS, the fused MNS)
# and loss (BPR, MRL), the softmax, least squares (no operator: the reference backend only); the other pairings
# and backends with the slow tests
DISTINCT_PATHS = {"bpr": ("torch",), "mrl-d": BACKENDS, "mrl-m": BACKENDS, "mrl-s": BACKENDS, "mrl-ls": ("torch",)}


@pytest.mark.parametrize("backend, method", [
    pytest.param(b, m, marks=[] if b in DISTINCT_PATHS.get(m, ()) else [pytest.mark.slow])
    for m in GRADIENT_METHODS for b in BACKENDS])
def test_compiled_training_step_matches_eager(backend, method):
    torch._dynamo.reset()
    objective = METHODS[method].objective(TrainConfig(method=method, dims=(4, 8, 16), candidates=5, layout="per-level",
                                                     l2=1e-4, backend=backend), INTERACTIONS)

    def make():
        torch.manual_seed(0)
        model = MF(20, 40, 16).to(DEVICE)
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_of(model, users, pos, cand):
        return objective(model(users, pos), cand)

    users, pos = torch.randint(0, 20, (16,), device=DEVICE), torch.randint(0, 40, (16,), device=DEVICE)
    cand = torch.randint(0, 40, (16, *objective.candidate_shape), device=DEVICE)
    eager_model, eager_opt = make()
    compiled_model, compiled_opt = make()

    # fullgraph: the forward (sampling, loss, regulariser) is one graph and its
    # backward one AOTAutograd graph; a graph break would raise here
    compiled = torch.compile(loss_of, fullgraph=True)
    for _ in range(3):
        for model, opt, fn in ((eager_model, eager_opt, loss_of), (compiled_model, compiled_opt, compiled)):
            opt.zero_grad()
            loss = fn(model, users, pos, cand)
            loss.backward()
            opt.step()
            if fn is loss_of:
                expected = loss.detach()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_model.item_weight, eager_model.item_weight, rtol=1e-5, atol=1e-6)
    assert not torch.equal(compiled_model.item_weight, make()[0].item_weight), "the steps changed the weights"


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_topk_compiles_without_a_graph_break(backend):
    torch._dynamo.reset()
    x = make_inputs(6, 8, 40, 1, [8], device=DEVICE)
    import mrl_kernels as mk

    search = torch.compile(lambda q, items: mk.prefix_topk(q, items, 5, 4, 12, backend=backend), fullgraph=True)
    expected = mk.prefix_topk(x["user"], x["item_weight"], 5, 4, 12, backend=backend)
    actual = search(x["user"], x["item_weight"])
    assert torch.equal(actual[1], expected[1]) and torch.equal(actual[0], expected[0])
