"""The distillation target and loss ([PD] Algorithm 2 and Section 4, docs/spec.md sections 4-5), on torch
tensors: the twin of `pd_ref/distillation.py`, plus what training needs fast:

- `teacher_two_step`: the teacher's two DDIM steps (fused sampler steps on the Triton path);
- `fused_distill_loss`: target, loss and its gradient with respect to the student output in one
  pass (`kernels.distill_loss_fwd_bwd`), as a `torch.autograd.Function`.

The losses are differentiable with respect to `out` only: `z_t` and the targets are constants
(detached), as in [PD] Algorithm 2. Losses are returned in fp32 whatever the input dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._backend import backend_for, kernels
from ._checks import (
    batch_times,
    check_coefs,
    coefs_for,
    like,
    out_matches,
    param_name,
    per_example,
    remember_host_copy,
    same_shape,
    steps_count,
    tensor,
    to_device,
    weighting_name,
)
from ._engine import Model, apply, on_cpu, prepare, step_outs
from .parameterizations import x_eps_from_out
from .sampling import ddim_coefs, guide_for, schedule_arg


def _target_coefs(
    alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_tpp: torch.Tensor, sigma_tpp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ratio, den) = (sigma_tpp/sigma_t, alpha_tpp - (sigma_tpp/sigma_t)*alpha_t)` in float64:
    `x_tilde = (z_tpp - ratio*z_t) / den` ([PD] Algorithm 2, line 9). den is O(1/N)."""
    ratio = sigma_tpp / sigma_t
    return ratio, alpha_tpp - ratio * alpha_t


def _target_like(name: str, target: torch.Tensor, z_t: torch.Tensor) -> None:
    """A target (z_tpp or x_tilde) on z_t's device, in z_t's dtype or in fp32 (a target kept in
    fp32 for a low-precision student, as `teacher_two_step` returns z_tpp)."""
    if target.dtype == torch.float32 and target.device == z_t.device:
        return
    like(name, target, "z_t", z_t)


def _target_inputs(z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp):
    z_t = tensor("z_t", z_t)
    z_tpp = tensor("z_tpp", z_tpp)
    _target_like("z_tpp", z_tpp, z_t)
    same_shape("z_tpp", z_tpp, "z_t", z_t)
    alpha_t, sigma_t, alpha_tpp, sigma_tpp = _target_coef_inputs(z_t, alpha_t, sigma_t, alpha_tpp, sigma_tpp)
    return z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp


def _target_coef_inputs(z_t, alpha_t, sigma_t, alpha_tpp, sigma_tpp):
    """The four coefficients as checked float64 (B,) tensors, on the CPU where they can be (see
    `coefs_for`: then neither their check nor the coefficient arithmetic syncs with the device)."""
    c = coefs_for(
        {"alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_tpp": alpha_tpp, "sigma_tpp": sigma_tpp},
        z_t.shape[0],
        z_t.device,
    )
    check_coefs(
        positive={"alpha_t": c["alpha_t"], "sigma_t": c["sigma_t"], "alpha_tpp": c["alpha_tpp"]},
        nonnegative={"sigma_tpp": c["sigma_tpp"]},
        before=("sigma_tpp", "sigma_t"),
    )
    return c["alpha_t"], c["sigma_t"], c["alpha_tpp"], c["sigma_tpp"]


def two_step_target(
    z_t: torch.Tensor, z_tpp: torch.Tensor, alpha_t: Any, sigma_t: Any, alpha_tpp: Any, sigma_tpp: Any
) -> torch.Tensor:
    """`x_tilde = (z_tpp - (sigma_tpp/sigma_t)*z_t) / (alpha_tpp - (sigma_tpp/sigma_t)*alpha_t)`
    ([PD] Algorithm 2, line 9): the x_hat with which one DDIM step from z_t lands on z_tpp.

    z_t, z_tpp: (B, ...) of one dtype and device (z_tpp may also be fp32); coefficients float,
    0-d or (B,); t'' < t.
    Ratio and denominator in float64, the element arithmetic in fp32 (relative error ~1e-7 * N,
    docs/spec.md section 4); returned in z_t's dtype.
    """
    z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp = _target_inputs(
        z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp
    )
    ratio, den = _target_coefs(alpha_t, sigma_t, alpha_tpp, sigma_tpp)
    ratio, den = to_device(torch.stack([ratio, den]), z_t.device, torch.float32).unbind(0)
    return _two_step_torch(z_t, z_tpp, ratio, den).to(z_t.dtype)


def _two_step_torch(z_t: torch.Tensor, z_tpp: torch.Tensor, ratio: torch.Tensor, den: torch.Tensor):
    nd = z_t.ndim
    return (z_tpp.float() - per_example(ratio.float(), nd) * z_t.float()) / per_example(den.float(), nd)


def student_grid_index(t: np.ndarray, steps: int, resolution: float = 0.0) -> np.ndarray:
    """`i` (float64 integers) with `t = i / steps`, `1 <= i <= steps`, for float64 times `t` (B,)
    in [0, 1]; ValueError if t is off the grid. `resolution`: the relative rounding of t's
    original dtype (0 for float64 input)."""
    tol = 1e-6 + 2.0 * resolution * steps  # in units of the grid spacing
    if tol >= 0.25:
        raise ValueError(f"t's dtype cannot resolve the grid i/{steps}: pass t as float32 or float64")
    scaled = t * steps
    i = np.rint(scaled)
    if np.abs(scaled - i).max(initial=0.0) > tol or i.min(initial=1.0) < 1:
        raise ValueError(f"t must lie on the student grid i/{steps}, i in 1..{steps}")
    return i


def _teacher_two_step(teacher, z_t, t, steps, schedule, param, labels=None, w=0.0, cond=None, null_cond=None):
    """`teacher_two_step`, also returning the float64 (alpha_t, sigma_t) of the student's time.

    The (B,) times live on the host, in NumPy (an op on a hundred floats costs about a
    microsecond there, several in torch), and go to the device with the coefficients in one copy."""
    steps = steps_count(steps)
    param = param_name(param)
    schedule = schedule_arg(schedule)
    z_t = tensor("z_t", z_t)
    guide = guide_for(labels, w, z_t, teacher, cond=cond, null_cond=null_cond)
    batch, device, dtype = z_t.shape[0], z_t.device, z_t.dtype
    floating = isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
    resolution = torch.finfo(t.dtype).eps if floating else 0.0
    t = np.broadcast_to(batch_times(t, batch).cpu().numpy().reshape(-1), (batch,))
    i = student_grid_index(t, steps, resolution)
    t = i / steps  # float64, exactly on the grid even when t came in float32
    t_p, t_pp = t - 0.5 / steps, (i - 1) / steps
    alpha, sigma = on_cpu(schedule.alpha_sigma(torch.from_numpy(np.concatenate([t, t_p, t_pp]))))
    alpha, sigma = alpha.numpy().reshape(3, batch), sigma.numpy().reshape(3, batch)
    # final interval: the second "step" lands on the teacher's x_hat at t' (official `dpm.py`)
    final = i == 1
    alpha_pp, sigma_pp = np.where(final, 1.0, alpha[2]), np.where(final, 0.0, sigma[2])
    host = torch.from_numpy(np.stack([alpha[0], sigma[0], alpha[1], sigma[1], alpha_pp, sigma_pp, t, t_p]))
    # One copy to the device (no host sync). The returned coefficients keep their CPU copies, so
    # that checking them later (fused_distill_loss, two_step_target) needs no device sync either.
    block = to_device(host, device, torch.float64)
    alpha_t, sigma_t, alpha_p, sigma_p, alpha_pp, sigma_pp, t, t_p = block.unbind(0)
    for row, value in ((0, alpha_t), (1, sigma_t), (4, alpha_pp), (5, sigma_pp)):
        remember_host_copy(value, host[row])
    a_t, s_t, a_p, s_p, a_pp, s_pp, t32, t32_p = block.to(torch.float32).unbind(0)
    t, t_p = (t32, t32_p) if dtype == torch.float32 else (t.to(dtype), t_p.to(dtype))
    backend = backend_for(z_t)
    # The states z_t' and z_t'' stay fp32 whatever z_t's dtype: x_tilde amplifies their rounding by
    # ~N (docs/spec.md section 4). The teacher sees them in its own dtype.
    # A guided teacher's outputs are combined as the step's (docs/spec.md section 8).
    with torch.no_grad():
        out, guided = _fp32(*step_outs(teacher, z_t, t, param, guide))
        first = prepare(a_t, s_t, ddim_coefs(a_t, s_t, a_p, s_p, 0.0), backend)  # eta = 0: no arithmetic
        z_p = apply(backend, z_t.float(), out, first, param, False, None, **guided)
        out_p, guided = _fp32(*step_outs(teacher, z_p.to(dtype), t_p, param, guide))
        second = prepare(a_p, s_p, ddim_coefs(a_p, s_p, a_pp, s_pp, 0.0), backend)
        z_pp = apply(backend, z_p, out_p, second, param, False, None, **guided)
    return z_pp, alpha_pp, sigma_pp, alpha_t, sigma_t


def _fp32(out: torch.Tensor, guided: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's outputs in fp32, as the fp32 states z_t', z_t'' are stepped."""
    if "out_uncond" in guided:
        guided = {**guided, "out_uncond": guided["out_uncond"].float()}
    return out.float(), guided


def teacher_two_step(
    teacher: Model,
    z_t: torch.Tensor,
    t: Any,
    steps: int,
    schedule: Any,
    param: str,
    *,
    labels: Any = None,
    cond: torch.Tensor | None = None,
    null_cond: torch.Tensor | None = None,
    w: Any = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's two DDIM steps (never clipped) t -> t' = t - 0.5/N -> t'' = t - 1/N for a
    student of N = `steps` steps ([PD] Algorithm 2, lines 6-8), under `torch.no_grad()`.

    Returns `(z_tpp, alpha_tpp, sigma_tpp)`: z_tpp in fp32 whatever z_t's dtype (the target amplifies
    its rounding by ~N), coefficients float64 (B,) on z_t's device. On the final
    interval (t = 1/N) a row gets `z_tpp` = the teacher's x_hat at (z_t', t') with `alpha_tpp = 1`,
    `sigma_tpp = 0`, so that `two_step_target` (and `fused_distill_loss`) give that x_hat exactly.
    z_t: (B, ...); t: float, 0-d or (B,), each on the grid i/N (float32 t is snapped to the nearest
    grid point); the teacher sees t in z_t's dtype.
    Guided teacher (docs/spec.md section 8): with `labels` (an int, or integers (B,): a tensor, a NumPy
    array or a list) the teacher is called `teacher(z, t, labels)`, and, if some w > 0, also `teacher(z,
    t, null)`; both steps (and the final x_hat) use the guided prediction with weight `w` (float, 0-d or
    (B,), >= 0). A tensor condition `cond` (B, ...) and `null_cond` (first dim 1 or B) take the place
    of the labels and the null label, as in `sample`.
    """
    z_tpp, alpha_tpp, sigma_tpp, _, _ = _teacher_two_step(
        teacher, z_t, t, steps, schedule, param, labels, w, cond, null_cond
    )
    return z_tpp, alpha_tpp, sigma_tpp


def teacher_target(
    teacher: Model,
    z_t: torch.Tensor,
    t: Any,
    steps: int,
    schedule: Any,
    param: str,
    *,
    labels: Any = None,
    cond: torch.Tensor | None = None,
    null_cond: torch.Tensor | None = None,
    w: Any = 0.0,
) -> torch.Tensor:
    """The student's target x_tilde ([PD] Algorithm 2, lines 6-9) for a student of `steps` steps:
    `two_step_target` of `teacher_two_step` (the teacher's x_hat at t' on the final interval);
    guided by `labels` (or `cond` and `null_cond`) and `w` as there."""
    z_tpp, alpha_tpp, sigma_tpp, alpha_t, sigma_t = _teacher_two_step(
        teacher, z_t, t, steps, schedule, param, labels, w, cond, null_cond
    )
    return two_step_target(z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp)


def loss_weight(alpha: Any, sigma: Any, weighting: str) -> torch.Tensor:
    """`w(lambda)` ([PD] Section 4): constant 1, snr `exp(lambda)`, snr_trunc
    `max(exp(lambda), 1)`, snr+1 `exp(lambda) + 1`; `exp(lambda) = alpha^2 / sigma^2`.
    Floats or tensors in, a float64 tensor out (on their device)."""
    weighting = weighting_name(weighting)
    alpha, sigma = (
        v.detach().to(torch.float64)
        if isinstance(v, torch.Tensor)
        else torch.as_tensor(v, dtype=torch.float64)
        for v in (alpha, sigma)
    )
    if not bool((torch.isfinite(alpha) & (alpha >= 0)).all()):
        raise ValueError("alpha must be finite and >= 0")
    if not bool((torch.isfinite(sigma) & (sigma > 0)).all()):
        raise ValueError("sigma must be finite and > 0")
    return _loss_weight(alpha, sigma, weighting)


def _loss_weight(alpha: torch.Tensor, sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """`loss_weight` without the checks (alpha, sigma validated float64 tensors)."""
    snr = alpha**2 / sigma**2
    if weighting == "constant":
        return torch.ones_like(snr)
    if weighting == "snr":
        return snr
    if weighting == "snr_trunc":
        return torch.clamp(snr, min=1.0)
    return snr + 1.0


def _loss_inputs(out, z_t, target_name, target, param, weighting):
    param = param_name(param)
    weighting = weighting_name(weighting)
    z_t = tensor("z_t", z_t)
    out = tensor("out", out)
    target = tensor(target_name, target)
    like("out", out, "z_t", z_t)
    _target_like(target_name, target, z_t)
    out_matches(out, z_t, param)
    same_shape(target_name, target, "z_t", z_t)
    if z_t.shape[0] == 0:
        raise ValueError("z_t must hold a batch of at least one example (the loss of none is undefined)")
    return out, z_t, target, param, weighting


def _loss_torch(
    out: torch.Tensor,
    z_t: torch.Tensor,
    x_tilde: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    w: torch.Tensor,
    param: str,
) -> torch.Tensor:
    """`w * mean((x_hat - x_tilde)^2)` per example, fp32, differentiable through `out` only."""
    nd = z_t.ndim
    alpha_t, sigma_t = (per_example(c.to(torch.float32), nd) for c in (alpha_t, sigma_t))
    x_hat, _ = x_eps_from_out(z_t.detach().float(), out.float(), alpha_t, sigma_t, param, False)
    mse = ((x_hat - x_tilde.detach().float()) ** 2).reshape(z_t.shape[0], -1).mean(dim=1)
    return w.to(torch.float32) * mse


class _FusedLoss(torch.autograd.Function):
    """Per-example loss from `kernels.distill_loss_fwd_bwd`, which also writes d loss[b] / d out[b]
    in the same pass; backward scales that stored gradient by the incoming per-example gradient."""

    @staticmethod
    def forward(ctx, out, z_t, z_tpp, alpha_t, sigma_t, p, q, w, param):  # noqa: ANN001
        ctx.out_dtype = out.dtype
        # fp16 has too little range for the unscaled gradient 2w/M * diff (w = SNR reaches ~1e8)
        grad_dtype = torch.float32 if out.dtype == torch.float16 else out.dtype
        loss, grad = kernels().distill_loss_fwd_bwd(
            out, z_t, z_tpp, alpha_t, sigma_t, p, q, w, param, grad_dtype=grad_dtype
        )
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return (
            (grad * per_example(grad_loss, grad.ndim)).to(ctx.out_dtype),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _fused(out, z_t, z_tpp, alpha_t, sigma_t, p, q, w, param) -> torch.Tensor:
    """The Triton path: all per-example coefficients from float64, cast to fp32 (B,) on out's device."""
    f32 = to_device(torch.stack([alpha_t, sigma_t, p, q, w]), out.device, torch.float32).unbind(0)
    return _FusedLoss.apply(out, z_t.detach(), z_tpp.detach(), *f32, param)


def distill_loss(
    out: torch.Tensor,
    z_t: torch.Tensor,
    x_tilde: torch.Tensor,
    alpha_t: Any,
    sigma_t: Any,
    param: str,
    *,
    weighting: str = "snr_trunc",
) -> torch.Tensor:
    """Per-example loss `w(lambda_t) * mean((x_hat - x_tilde)^2)` over the non-batch dims
    ([PD] Section 4, Algorithm 2 line 10), x_hat the student's unclipped prediction.

    out: z_t's shape, or (B, 2C, ...) for 'both'; x_tilde: z_t's shape; one dtype and device
    (x_tilde may also be fp32).
    Returns fp32 (B,), differentiable with respect to `out` (the fused kernel on the Triton path,
    with x_tilde passed as z_tpp and p = 1, q = 0).
    """
    out, z_t, x_tilde, param, weighting = _loss_inputs(out, z_t, "x_tilde", x_tilde, param, weighting)
    c = coefs_for({"alpha_t": alpha_t, "sigma_t": sigma_t}, z_t.shape[0], z_t.device)
    check_coefs(positive=c)
    alpha_t, sigma_t = c["alpha_t"], c["sigma_t"]
    w = _loss_weight(alpha_t, sigma_t, weighting)
    if backend_for(z_t) == "triton":
        return _fused(out, z_t, x_tilde, alpha_t, sigma_t, torch.ones_like(w), torch.zeros_like(w), w, param)
    alpha_t, sigma_t, w = to_device(torch.stack([alpha_t, sigma_t, w]), z_t.device, torch.float32).unbind(0)
    return _loss_torch(out, z_t, x_tilde, alpha_t, sigma_t, w, param)


def fused_distill_loss(
    out: torch.Tensor,
    z_t: torch.Tensor,
    z_tpp: torch.Tensor,
    alpha_t: Any,
    sigma_t: Any,
    alpha_tpp: Any,
    sigma_tpp: Any,
    param: str,
    *,
    weighting: str = "snr_trunc",
) -> torch.Tensor:
    """`distill_loss(out, z_t, two_step_target(z_t, z_tpp, ...), ...)` in one pass: the target
    `x_tilde = p*z_tpp + q*z_t` with `p = 1/den`, `q = -ratio/den` from float64 ([PD] Algorithm 2,
    lines 9-10), the loss, and its gradient with respect to `out`. For the final interval pass the
    teacher's x_hat as z_tpp with alpha_tpp = 1, sigma_tpp = 0 (as `teacher_two_step` returns).

    out: z_t's shape, or (B, 2C, ...) for 'both'; z_t, z_tpp: (B, ...); one dtype and device
    (z_tpp may also be fp32, as `teacher_two_step` returns it; the Triton path then runs in fp32);
    coefficients float, 0-d or (B,). Returns fp32 (B,), differentiable with respect to `out`.
    """
    out, z_t, z_tpp, param, weighting = _loss_inputs(out, z_t, "z_tpp", z_tpp, param, weighting)
    alpha_t, sigma_t, alpha_tpp, sigma_tpp = _target_coef_inputs(z_t, alpha_t, sigma_t, alpha_tpp, sigma_tpp)
    w = _loss_weight(alpha_t, sigma_t, weighting)
    ratio, den = _target_coefs(alpha_t, sigma_t, alpha_tpp, sigma_tpp)
    if backend_for(z_t) == "triton":
        return _fused(out, z_t, z_tpp, alpha_t, sigma_t, 1.0 / den, -ratio / den, w, param)
    f32 = to_device(torch.stack([alpha_t, sigma_t, ratio, den, w]), z_t.device, torch.float32)
    alpha_t, sigma_t, ratio, den, w = f32.unbind(0)
    x_tilde = _two_step_torch(z_t.detach(), z_tpp.detach(), ratio, den)
    return _loss_torch(out, z_t, x_tilde, alpha_t, sigma_t, w, param)
