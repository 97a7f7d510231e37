"""From network output to `(x_hat, eps_hat)` ([PD] Section 4, docs/spec.md section 2; official `dpm.py`),
on torch tensors: the twin of `pd_ref/parameterizations.py`. The fused Triton kernels compute the
same formulas inside their passes (`x_eps_from_out` of `pd_fast/kernels/step.py`)."""

from __future__ import annotations

from typing import Any

import torch

from ._checks import check_coefs, coef, like, out_matches, param_name, per_example, tensor


def predict_x_eps(
    z: torch.Tensor, out: torch.Tensor, alpha: Any, sigma: Any, param: str, *, clip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x_hat, eps_hat)` from the output `out` of a network evaluated at `(z, alpha, sigma)`
    (docs/spec.md section 2).

    - eps:  x_hat = (z - sigma*out) / alpha,       eps_hat = out
    - x:    x_hat = out,                           eps_hat = (z - alpha*x_hat) / sigma
    - v:    x_hat = alpha*z - sigma*out,           eps_hat = sigma*z + alpha*out
    - both: x_hat = sigma^2*x_t + alpha*(z - sigma*e_t), (x_t, e_t) = out split on axis 1;
            eps_hat = (z - alpha*x_hat) / sigma
    With `clip`, x_hat is clipped to [-1, 1] and eps_hat recomputed from it, so that
    `z = alpha*x_hat + sigma*eps_hat` still holds (official `dpm.py`).

    z: (B, ...) fp32/fp16/bf16; out: z's shape, or (B, 2C, ...) for 'both', z's dtype and device;
    alpha, sigma: float, 0-d or (B,). Computed in fp32; returned in z's dtype.
    """
    param = param_name(param)
    z = tensor("z", z)
    out = tensor("out", out)
    like("out", out, "z", z)
    out_matches(out, z, param)
    alpha = coef("alpha", alpha, z.shape[0], z.device)
    sigma = coef("sigma", sigma, z.shape[0], z.device)
    check_coefs(positive={"alpha": alpha, "sigma": sigma})
    alpha, sigma = (per_example(c.to(torch.float32), z.ndim) for c in (alpha, sigma))
    x_hat, eps_hat = x_eps_from_out(z.float(), out.float(), alpha, sigma, param, clip)
    return x_hat.to(z.dtype), eps_hat.to(z.dtype)


def x_eps_from_out(
    z: torch.Tensor, out: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, param: str, clip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulas of `predict_x_eps` in fp32, without checks (docs/spec.md section 2).
    z, out fp32 ((B, ...) and z's shape or (B, 2C, ...)); alpha, sigma fp32 (B, 1, ..., 1).
    """
    if param == "eps":
        x_hat, eps_hat = (z - sigma * out) / alpha, out
    elif param == "x":
        x_hat = out
        eps_hat = (z - alpha * x_hat) / sigma
    elif param == "v":
        x_hat = alpha * z - sigma * out
        eps_hat = sigma * z + alpha * out
    else:
        channels = z.shape[1]
        x_t, e_t = out[:, :channels], out[:, channels:]
        x_hat = sigma**2 * x_t + alpha * (z - sigma * e_t)
        eps_hat = (z - alpha * x_hat) / sigma
    if clip:
        x_hat = torch.clamp(x_hat, -1.0, 1.0)
        eps_hat = (z - alpha * x_hat) / sigma
    return x_hat, eps_hat
