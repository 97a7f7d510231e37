"""Sampling steps and the N-step sampler ([DDIM] Eq. 12, [DDPM] Eq. 6-7, docs/spec.md section 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import as_array, before, coef, out_matches, param_name, same_shape, steps_count
from .parameterizations import x_eps_from_out

SAMPLERS = ("ddim", "ancestral")
VARIANCES = ("fixed_small", "fixed_large")


def _step_inputs(z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param):
    param = param_name(param)
    z_t = as_array("z_t", z_t)
    out = as_array("out", out)
    out_matches(out, z_t, param)
    b, nd = z_t.shape[0], z_t.ndim
    alpha_t = coef("alpha_t", alpha_t, b, nd, positive=True)
    sigma_t = coef("sigma_t", sigma_t, b, nd, positive=True)
    alpha_s = coef("alpha_s", alpha_s, b, nd, positive=True)
    sigma_s = coef("sigma_s", sigma_s, b, nd)
    before("sigma_s", sigma_s, "sigma_t", sigma_t)
    return z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param


def _noise(noise: Any, z_t: np.ndarray) -> np.ndarray:
    if noise is None:
        raise ValueError("noise is required for a stochastic step (eta > 0 or ancestral)")
    noise = as_array("noise", noise)
    same_shape("noise", noise, "z_t", z_t)
    return noise


def ddim_step(
    z_t: Any,
    out: Any,
    alpha_t: Any,
    sigma_t: Any,
    alpha_s: Any,
    sigma_s: Any,
    param: str,
    *,
    clip: bool = False,
    eta: float = 0.0,
    noise: Any = None,
) -> np.ndarray:
    """One DDIM step from t to s < t ([DDIM] Eq. 12; [PD] Eq. 7 for eta = 0).

    eta = 0: `z_s = alpha_s*x_hat + sigma_s*eps_hat`.
    eta > 0: `c = eta*(sigma_s/sigma_t)*sqrt(1 - alpha_t^2/alpha_s^2)`,
             `z_s = alpha_s*x_hat + sqrt(sigma_s^2 - c^2)*eps_hat + c*noise`.
    z_t, noise: (B, ...); out as in `predict_x_eps`; coefficients float, 0-d or (B,).
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param
    )
    if not (np.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    x_hat, eps_hat = x_eps_from_out(z_t, out, alpha_t, sigma_t, param, clip)
    if eta == 0.0:
        return alpha_s * x_hat + sigma_s * eps_hat
    noise = _noise(noise, z_t)
    c = eta * (sigma_s / sigma_t) * np.sqrt(1.0 - (alpha_t / alpha_s) ** 2)
    return alpha_s * x_hat + np.sqrt(np.maximum(sigma_s**2 - c**2, 0.0)) * eps_hat + c * noise


def ancestral_step(
    z_t: Any,
    out: Any,
    alpha_t: Any,
    sigma_t: Any,
    alpha_s: Any,
    sigma_s: Any,
    param: str,
    *,
    clip: bool = False,
    variance: str = "fixed_large",
    noise: Any,
) -> np.ndarray:
    """One ancestral step: a draw from the DDPM posterior q(z_s | z_t, x = x_hat)
    ([DDPM] Eq. 6-7; official `dpm.py` sampler 'noisy').

    `r = exp(lambda_t - lambda_s)`, `mean = r*(alpha_s/alpha_t)*z_t + (1 - r)*alpha_s*x_hat`,
    variance `(1 - r)*sigma_s^2` ('fixed_small') or `(1 - r)*sigma_t^2` ('fixed_large');
    `1 - r = -expm1(lambda_t - lambda_s)`.
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param
    )
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    noise = _noise(noise, z_t)
    x_hat, _ = x_eps_from_out(z_t, out, alpha_t, sigma_t, param, clip)
    with np.errstate(divide="ignore"):
        lambda_t = 2.0 * (np.log(alpha_t) - np.log(sigma_t))
        lambda_s = 2.0 * (np.log(alpha_s) - np.log(sigma_s))
    r = np.exp(lambda_t - lambda_s)
    one_minus_r = -np.expm1(lambda_t - lambda_s)
    mean = r * (alpha_s / alpha_t) * z_t + one_minus_r * alpha_s * x_hat
    var = one_minus_r * (sigma_s**2 if variance == "fixed_small" else sigma_t**2)
    return mean + np.sqrt(var) * noise


def sample(
    model: Callable[[np.ndarray, np.ndarray], np.ndarray],
    z: Any,
    steps: int,
    schedule: Any,
    param: str,
    *,
    clip: bool = False,
    sampler: str = "ddim",
    eta: float = 0.0,
    variance: str = "fixed_large",
    seed: int | None = None,
) -> np.ndarray:
    """Sample with `steps` steps on the grid `t_i = i / steps`, `i = steps .. 1`, from `z = z_1`
    (docs/spec.md section 3). The last step (to t = 0) returns `x_hat`, not `z_0`.

    model(z, t) takes t of shape (B,); `seed` seeds the noise of stochastic samplers.
    """
    steps = steps_count(steps)
    param = param_name(param)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    z = as_array("z", z)
    rng = np.random.default_rng(seed)
    t_batch = np.ones(z.shape[0])

    def model_out(z: np.ndarray, t: float) -> np.ndarray:
        out = as_array("model output", model(z, t * t_batch))
        out_matches(out, z, param, "model output")
        return out

    for i in range(steps, 1, -1):
        t, s = i / steps, (i - 1) / steps
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        out = model_out(z, t)
        if sampler == "ddim":
            noise = rng.standard_normal(z.shape) if eta > 0 else None
            z = ddim_step(z, out, alpha_t, sigma_t, alpha_s, sigma_s, param, clip=clip, eta=eta, noise=noise)
        else:
            noise = rng.standard_normal(z.shape)
            z = ancestral_step(
                z, out, alpha_t, sigma_t, alpha_s, sigma_s, param, clip=clip, variance=variance, noise=noise
            )
    alpha_t, sigma_t = schedule.alpha_sigma(1.0 / steps)
    x_hat, _ = x_eps_from_out(z, model_out(z, 1.0 / steps), alpha_t, sigma_t, param, clip)
    return x_hat
