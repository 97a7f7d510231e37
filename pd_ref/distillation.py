"""The distillation target and loss ([PD] Algorithm 2 and Section 4, docs/spec.md sections 4-5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import (
    as_array,
    before,
    coef,
    out_matches,
    param_name,
    same_shape,
    steps_count,
    times,
    weighting_name,
)
from .parameterizations import step_x_eps, x_eps_from_out
from .sampling import conditions, ddim_step


def two_step_target(
    z_t: Any, z_tpp: Any, alpha_t: Any, sigma_t: Any, alpha_tpp: Any, sigma_tpp: Any
) -> np.ndarray:
    """`x_tilde = (z_tpp - (sigma_tpp/sigma_t)*z_t) / (alpha_tpp - (sigma_tpp/sigma_t)*alpha_t)`
    ([PD] Algorithm 2, line 9): the x_hat with which one DDIM step from z_t lands on z_tpp.

    z_t, z_tpp: (B, ...); coefficients float, 0-d or (B,); t'' < t.
    """
    z_t = as_array("z_t", z_t)
    z_tpp = as_array("z_tpp", z_tpp)
    same_shape("z_tpp", z_tpp, "z_t", z_t)
    b, nd = z_t.shape[0], z_t.ndim
    alpha_t = coef("alpha_t", alpha_t, b, nd, positive=True)
    sigma_t = coef("sigma_t", sigma_t, b, nd, positive=True)
    alpha_tpp = coef("alpha_tpp", alpha_tpp, b, nd, positive=True)
    sigma_tpp = coef("sigma_tpp", sigma_tpp, b, nd)
    before("sigma_tpp", sigma_tpp, "sigma_t", sigma_t)
    ratio = sigma_tpp / sigma_t
    return (z_tpp - ratio * z_t) / (alpha_tpp - ratio * alpha_t)


def student_grid_index(t: Any, steps: int) -> np.ndarray:
    """`i` with `t = i / steps`, `1 <= i <= steps`; ValueError if t is off the grid."""
    t = times("t", t)
    i = np.rint(t * steps)
    if np.any(np.abs(t * steps - i) > 1e-6) or np.any(i < 1):
        raise ValueError(f"t must lie on the student grid i/{steps}, i in 1..{steps}")
    return i.astype(np.int64)


def teacher_target(
    teacher: Callable[..., np.ndarray],
    z_t: Any,
    t: Any,
    steps: int,
    schedule: Any,
    param: str,
    *,
    labels: Any = None,
    cond: Any = None,
    null_cond: Any = None,
    w: Any = 0.0,
) -> np.ndarray:
    """The student's target x_tilde ([PD] Algorithm 2, lines 6-9) for a student of `steps` steps.

    The teacher (never clipped) takes two DDIM steps, t -> t' = t - 0.5/N -> t'' = t - 1/N, and
    the target is `two_step_target` of the result. On the final interval (t = 1/N, t'' = 0) the
    target is the teacher's x_hat at (z_t', t') (official `dpm.py`).
    Guided teacher (docs/spec.md section 8): with `labels` the teacher is called
    `teacher(z, t, labels)`, and for any w > 0 also `teacher(z, t, null)`; its steps and its final
    x_hat then use the guided prediction with weight `w` (float, 0-d or (B,), >= 0). A tensor
    condition `cond` (B, ...) and `null_cond` (first dim 1 or B) take the place of the labels and
    the null label, as in `sample`.

    z_t: (B, ...); t: (B,) or a float, each on the grid i/N; labels: an int or (B,) ints.
    """
    steps = steps_count(steps)
    param = param_name(param)
    z_t = as_array("z_t", z_t)
    batch, nd = z_t.shape[0], z_t.ndim
    c, null, w = conditions(teacher, batch, labels, cond, null_cond, w, who="teacher")
    t = np.broadcast_to(times("t", t), (batch,)).astype(np.float64)
    final = (student_grid_index(t, steps) == 1).reshape((-1,) + (1,) * (nd - 1))
    t_p, t_pp = t - 0.5 / steps, np.maximum(t - 1.0 / steps, 0.0)
    (alpha_t, sigma_t), (alpha_p, sigma_p), (alpha_pp, sigma_pp) = (
        schedule.alpha_sigma(t),
        schedule.alpha_sigma(t_p),
        schedule.alpha_sigma(t_pp),
    )

    def teacher_out(z: np.ndarray, time: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        out = as_array("teacher output", teacher(z, time) if c is None else teacher(z, time, c))
        out_matches(out, z, param, "teacher output")
        return out

    def outs(z: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The conditional (or only) output, and the guidance arguments of the steps."""
        out = teacher_out(z, time, c)
        if null is None:
            return out, {}
        return out, {"out_uncond": teacher_out(z, time, null), "w": w}

    out, guide = outs(z_t, t)
    z_p = ddim_step(z_t, out, alpha_t, sigma_t, alpha_p, sigma_p, param, **guide)
    out_p, guide = outs(z_p, t_p)
    z_pp = ddim_step(z_p, out_p, alpha_p, sigma_p, alpha_pp, sigma_pp, param, **guide)
    a_p, s_p = alpha_p.reshape(final.shape), sigma_p.reshape(final.shape)
    x_hat_p, _ = step_x_eps(z_p, out_p, a_p, s_p, param, False, **guide)
    return np.where(final, x_hat_p, two_step_target(z_t, z_pp, alpha_t, sigma_t, alpha_pp, sigma_pp))


def loss_weight(alpha: Any, sigma: Any, weighting: str) -> np.ndarray:
    """`w(lambda)` ([PD] Section 4): constant 1, snr `exp(lambda)`, snr_trunc
    `max(exp(lambda), 1)`, snr+1 `exp(lambda) + 1`; `exp(lambda) = alpha^2 / sigma^2`."""
    weighting = weighting_name(weighting)
    alpha = np.asarray(alpha, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if not (np.all(np.isfinite(alpha)) and np.all(alpha >= 0)):
        raise ValueError("alpha must be finite and >= 0")
    if not (np.all(np.isfinite(sigma)) and np.all(sigma > 0)):
        raise ValueError("sigma must be finite and > 0")
    snr = alpha**2 / sigma**2
    if weighting == "constant":
        return np.ones_like(snr)
    if weighting == "snr":
        return snr
    if weighting == "snr_trunc":
        return np.maximum(snr, 1.0)
    return snr + 1.0


def distill_loss(
    out: Any,
    z_t: Any,
    x_tilde: Any,
    alpha_t: Any,
    sigma_t: Any,
    param: str,
    *,
    weighting: str = "snr_trunc",
) -> np.ndarray:
    """Per-example loss `w(lambda_t) * mean((x_hat - x_tilde)^2)` over the non-batch dims
    ([PD] Section 4, Algorithm 2 line 10), x_hat the student's unclipped prediction.

    out: z_t's shape, or (B, 2C, ...) for 'both'; x_tilde: z_t's shape. Returns shape (B,).
    """
    param = param_name(param)
    weighting = weighting_name(weighting)
    z_t = as_array("z_t", z_t)
    out = as_array("out", out)
    x_tilde = as_array("x_tilde", x_tilde)
    out_matches(out, z_t, param)
    same_shape("x_tilde", x_tilde, "z_t", z_t)
    b, nd = z_t.shape[0], z_t.ndim
    alpha_t = coef("alpha_t", alpha_t, b, nd, positive=True)
    sigma_t = coef("sigma_t", sigma_t, b, nd, positive=True)
    x_hat, _ = x_eps_from_out(z_t, out, alpha_t, sigma_t, param, False)
    mse = ((x_hat - x_tilde) ** 2).reshape(b, -1).mean(axis=1)
    return np.broadcast_to(loss_weight(alpha_t, sigma_t, weighting).reshape(-1), (b,)) * mse
