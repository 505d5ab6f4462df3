"""torch.library registration: opcheck and a whole compiled training step."""
import pytest
import torch

from mrl_kernels import dispatch
from mrl_kernels.model import MF, method_loss


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = dispatch.available_backends(DEVICE)


def _inputs(dtype=torch.float32):
    torch.manual_seed(0)
    B, D, N, L = 6, 8, 12, 3
    make = lambda *s: torch.randn(*s, dtype=dtype, device=DEVICE, requires_grad=True)  # noqa: E731
    cand = torch.randint(0, N, (B, L, 4), device=DEVICE)
    cand[:, :, 1] = cand[:, :, 0]
    return dict(user=make(B, D), pos=make(B, D), neg=make(B, L, D), item_weight=make(N, D), cand=cand,
                dims=[2, 5, 8], weights=torch.tensor([0.2, 0.3, 0.5], device=DEVICE))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = _inputs()
    ops = torch.ops.mrl_kernels
    coef = torch.rand(6, 3, device=DEVICE)
    cases = [
        (getattr(ops, f"mns_sample_{backend}"), (x["user"], x["item_weight"], x["cand"], x["dims"])),
        (getattr(ops, f"mrl_bpr_loss_{backend}"), (x["user"], x["pos"], x["neg"], x["dims"], x["weights"])),
        (getattr(ops, f"mns_bpr_loss_{backend}"),
         (x["user"], x["pos"], x["item_weight"], x["cand"], x["dims"], x["weights"])),
        (getattr(ops, f"mrl_bpr_loss_backward_{backend}"),
         (torch.randn(6, device=DEVICE), x["user"].detach(), x["pos"].detach(), x["neg"].detach(), coef, x["dims"])),
        (getattr(ops, f"mns_bpr_loss_backward_{backend}"),
         (torch.randn(6, device=DEVICE), x["user"].detach(), x["pos"].detach(), x["item_weight"].detach(),
          x["cand"][:, :, 0], coef, x["dims"])),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["mrl-m", "bpr-m", "mrl-d"])
def test_compiled_training_step_matches_eager(backend, method):
    torch._dynamo.reset()
    dims = [4, 8, 16]
    shape = {"mrl-m": (3, 5), "bpr-m": (3, 5), "mrl-d": (5,)}[method]

    def make():
        torch.manual_seed(0)
        model = MF(20, 40, 16).to(DEVICE)
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(model, opt, users, pos, cand):
        loss = method_loss(method, model, users, pos, cand, dims, 1e-4, backend)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    users, pos = torch.randint(0, 20, (16,), device=DEVICE), torch.randint(0, 40, (16,), device=DEVICE)
    cand = torch.randint(0, 40, (16, *shape), device=DEVICE)
    eager_model, eager_opt = make()
    compiled_model, compiled_opt = make()

    # fullgraph: the forward (sampling, loss, regulariser) is one graph and its
    # backward one AOTAutograd graph; a graph break would raise here
    compiled = torch.compile(lambda *a: method_loss(method, *a, dims, 1e-4, backend), fullgraph=True)
    for _ in range(3):
        expected = step(eager_model, eager_opt, users, pos, cand)
        compiled_opt.zero_grad()
        actual = compiled(compiled_model, users, pos, cand)
        actual.backward()
        compiled_opt.step()
        torch.testing.assert_close(actual.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_model.item_weight, eager_model.item_weight, rtol=1e-5, atol=1e-6)
