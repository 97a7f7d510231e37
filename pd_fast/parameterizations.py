"""From network output to `(x_hat, eps_hat)` ([PD] Section 4, docs/spec.md section 2; official `dpm.py`),
and the classifier-free guided prediction ([GD] Section 3, docs/spec.md section 8), on torch tensors:
the twin of `pd_ref/parameterizations.py`. The fused Triton kernels compute the same formulas inside
their passes (`x_eps_from_out` of `pd_fast/kernels/step.py`)."""

from __future__ import annotations

from typing import Any

import torch

from ._checks import (
    check_coefs,
    coef,
    coefs_for,
    like,
    out_matches,
    param_name,
    per_example,
    tensor,
    to_device,
)

#: the label that asks a conditional model for its unconditional prediction (docs/spec.md section 8)
NULL_LABEL = -1


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
        return clipped_x_eps(z, x_hat, alpha, sigma)
    return x_hat, eps_hat


def clipped_x_eps(
    z: torch.Tensor, x_hat: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x_hat` clipped to [-1, 1] and `eps_hat = (z - alpha*x_hat) / sigma` recomputed from it
    (docs/spec.md section 2), in fp32."""
    x_hat = torch.clamp(x_hat, -1.0, 1.0)
    return x_hat, (z - alpha * x_hat) / sigma


def guided_x_eps(
    z: torch.Tensor,
    out_cond: torch.Tensor,
    out_uncond: torch.Tensor,
    alpha: Any,
    sigma: Any,
    param: str,
    *,
    clip: bool = False,
    w: Any = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier-free guided `(x_hat_w, eps_hat_w)` ([GD] Section 3, docs/spec.md section 8):
    `x_hat_w = (1 + w)*x_hat(z, c) - w*x_hat(z, null)`, likewise eps_hat_w, each prediction from its
    output as in `predict_x_eps` (unclipped); with `clip`, x_hat_w clipped after combining and
    eps_hat_w recomputed from it. Computed as `x_c + w*(x_c - x_u)` in fp32; returned in z's dtype.

    z: (B, ...) fp32/fp16/bf16; out_cond, out_uncond: the outputs with the label and with the null
    label, shaped as `predict_x_eps` wants, in z's dtype and on its device; alpha, sigma, w: float,
    0-d or (B,); w >= 0.
    """
    param = param_name(param)
    z = tensor("z", z)
    for name, out in (("out_cond", out_cond), ("out_uncond", out_uncond)):
        tensor(name, out)
        like(name, out, "z", z)
        out_matches(out, z, param, name)
    # checked on the CPU where they can be (`coefs_for`), then one copy to the device
    c = coefs_for({"alpha": alpha, "sigma": sigma, "w": w}, z.shape[0], z.device)
    check_coefs(positive={"alpha": c["alpha"], "sigma": c["sigma"]}, nonnegative={"w": c["w"]})
    block = to_device(torch.stack([c["alpha"], c["sigma"], c["w"]]), z.device, torch.float32)
    alpha, sigma, w = (per_example(v, z.ndim) for v in block.unbind(0))
    x_hat, eps_hat = guided_from_outs(
        z.float(), out_cond.float(), out_uncond.float(), alpha, sigma, param, w, clip
    )
    return x_hat.to(z.dtype), eps_hat.to(z.dtype)


def guided_from_outs(
    z: torch.Tensor,
    out_cond: torch.Tensor,
    out_uncond: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    param: str,
    w: torch.Tensor,
    clip: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulas of `guided_x_eps` in fp32, without checks; alpha, sigma, w fp32 (B, 1, ..., 1)."""
    x_c, eps_c = x_eps_from_out(z, out_cond, alpha, sigma, param, False)
    x_u, eps_u = x_eps_from_out(z, out_uncond, alpha, sigma, param, False)
    x_hat, eps_hat = x_c + w * (x_c - x_u), eps_c + w * (eps_c - eps_u)
    if clip:
        return clipped_x_eps(z, x_hat, alpha, sigma)
    return x_hat, eps_hat
