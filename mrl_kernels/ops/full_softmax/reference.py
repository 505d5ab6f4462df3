"""Plain PyTorch reference of the nested log-sum-exp over every item: the
specification the Triton and C++ kernels are tested against, blocked over items
so that it never holds a ``(B, N)`` matrix either. ``IMPLEMENTATIONS`` is what
the ``"torch"`` backend registers."""
from __future__ import annotations

from typing import Sequence

import torch

from ..common import acc, masked

__all__ = ["full_softmax_lse", "full_softmax_lse_backward"]

BLOCK = 1 << 20  # scores a block holds at most (B x items): 4 MiB in float32


def _blocks(batch: int, n: int) -> list[tuple[int, int]]:
    """``[start, stop)`` item ranges of at most ``BLOCK / batch`` items each."""
    step = max(1, BLOCK // max(1, batch))
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def _block_logits(u, table, exclude, d, temperature, log_q, start, stop):
    """``(B, stop - start)`` width-``d`` logits of items ``[start, stop)``: scores
    over ``temperature`` less ``log_q``, ``-inf`` at each row's excluded id."""
    z = u[:, :d] @ table[start:stop, :d].T / temperature
    if log_q is not None:
        z = z - log_q[start:stop]
    if exclude is not None:
        hit = exclude[:, None] == torch.arange(start, stop, device=z.device)
        z = z.masked_fill(hit, -torch.inf)
    return z


def full_softmax_lse(user: torch.Tensor, item_weight: torch.Tensor, exclude: torch.Tensor | None,
                     dims: Sequence[int], temperature: float, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """``lse[b, l] = logsumexp_{i != exclude[b]} (<u_b[:d_l], e_i[:d_l]> / t - log_q[i])``
    over every row of ``item_weight`` (``(B, L)``, accumulation dtype; ``-inf``
    where no item counts), block by block of items. Differentiable by autograd
    (which then keeps each block's logits)."""
    u, table = acc(user), acc(item_weight)
    lse = u.new_full((u.shape[0], len(dims)), -torch.inf)
    for start, stop in _blocks(u.shape[0], table.shape[0]):
        block = [_block_logits(u, table, exclude, d, temperature, log_q, start, stop).logsumexp(1) for d in dims]
        lse = torch.logaddexp(lse, torch.stack(block, 1))
    return lse


def full_softmax_lse_backward(grad: torch.Tensor, user: torch.Tensor, item_weight: torch.Tensor,
                              exclude: torch.Tensor | None, lse: torch.Tensor, dims: Sequence[int],
                              temperature: float, log_q: torch.Tensor | None = None,
                              output_mask: Sequence[bool] = (True, True)) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of :func:`full_softmax_lse` from the saved ``lse``, block by
    block: with ``p_bi = exp(z_bi - lse_bl)`` the softmax at width l and
    ``c_bi = grad_bl p_bi / t``, ``d u_b[:d_l] += sum_i c_bi e_i[:d_l]`` and
    ``d e_i[:d_l] += sum_b c_bi u_b[:d_l]``. A gradient ``output_mask`` masks is
    returned empty."""
    u, table = acc(user), acc(item_weight)
    g = grad.to(lse.dtype) / temperature
    grad_user = torch.zeros_like(u)
    grad_items = torch.zeros_like(table) if output_mask[1] else table.new_empty(0)
    for start, stop in _blocks(u.shape[0], table.shape[0]):
        for level, d in enumerate(dims):
            z = _block_logits(u, table, exclude, d, temperature, log_q, start, stop)
            p = torch.where(z == -torch.inf, 0.0, torch.exp(z - lse[:, level, None])) * g[:, level, None]
            grad_user[:, :d] += p @ table[start:stop, :d]
            if output_mask[1]:
                grad_items[start:stop, :d] += p.T @ u[:, :d]
    return masked((grad_user.to(user.dtype), grad_items.to(item_weight.dtype)), output_mask)


IMPLEMENTATIONS = {
    "full_softmax_lse": full_softmax_lse,
    "full_softmax_lse_backward": full_softmax_lse_backward,
}
