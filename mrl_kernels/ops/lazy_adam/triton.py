"""The Triton kernel of lazy Adam's row pass and its launcher (the
``"triton"`` backend's ``IMPLEMENTATIONS``): a program moves one row, reading
and writing its weights and moments once."""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_common import launch


@triton.jit
def _lazy_adam_kernel(param_ptr, m_ptr, v_ptr, indices_ptr, values_ptr, D, beta1, beta2, eps, step_size,
                      stride_p, stride_m, stride_v, stride_g, BLOCK_D: tl.constexpr):
    """Row ``indices[program]`` of the tables moves by gradient row ``program``;
    arithmetic in the table's dtype, as the reference's."""
    r = tl.program_id(0).to(tl.int64)
    row = tl.load(indices_ptr + r).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    g = tl.load(values_ptr + r * stride_g + cols, mask=ok, other=0.0)
    m = tl.load(m_ptr + row * stride_m + cols, mask=ok, other=0.0)
    v = tl.load(v_ptr + row * stride_v + cols, mask=ok, other=0.0)
    m += (g - m) * (1 - beta1)
    v += (g * g - v) * (1 - beta2)
    tl.store(m_ptr + row * stride_m + cols, m, mask=ok)
    tl.store(v_ptr + row * stride_v + cols, v, mask=ok)
    w = tl.load(param_ptr + row * stride_p + cols, mask=ok, other=0.0)
    tl.store(param_ptr + row * stride_p + cols, w - step_size * (m / (tl.sqrt(v) + eps)), mask=ok)


def lazy_adam(param, exp_avg, exp_avg_sq, indices, values, beta1, beta2, eps, step_size):
    """In place; the tables' rows contiguous (column stride 1), ``values`` made so."""
    if indices.numel() == 0:
        return
    values = values.to(param.dtype).contiguous()
    launch(_lazy_adam_kernel, (indices.shape[0],), param_ptr=param, m_ptr=exp_avg, v_ptr=exp_avg_sq,
           indices_ptr=indices, values_ptr=values, D=param.shape[1], beta1=float(beta1), beta2=float(beta2),
           eps=float(eps), step_size=float(step_size), stride_p=param.stride(0), stride_m=exp_avg.stride(0),
           stride_v=exp_avg_sq.stride(0), stride_g=values.stride(0),
           BLOCK_D=max(16, triton.next_power_of_2(param.shape[1])))


IMPLEMENTATIONS = {"lazy_adam": lazy_adam}
