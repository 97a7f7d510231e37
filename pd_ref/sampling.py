"""Sampling steps and the N-step samplers ([DDIM] Eq. 12, [DDPM] Eq. 6-7, DPM-Solver++(2M) of [DPM++]
Algorithm 2, docs/spec.md section 3; the guided prediction and the stochastic sampler of [GD],
docs/spec.md section 8)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import (
    as_array,
    before,
    check_takes_labels,
    coef,
    cond_arrays,
    labels_array,
    model_classes,
    out_matches,
    param_name,
    same_shape,
    steps_count,
)
from .parameterizations import NULL_LABEL, step_x_eps

SAMPLERS = ("ddim", "ancestral", "stochastic", "dpmpp_2m")
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
    out_uncond: Any = None,
    w: Any = 0.0,
) -> np.ndarray:
    """One DDIM step from t to s < t ([DDIM] Eq. 12; [PD] Eq. 7 for eta = 0).

    eta = 0: `z_s = alpha_s*x_hat + sigma_s*eps_hat`.
    eta > 0: `c = eta*(sigma_s/sigma_t)*sqrt(1 - alpha_t^2/alpha_s^2)`,
             `z_s = alpha_s*x_hat + sqrt(sigma_s^2 - c^2)*eps_hat + c*noise`.
    z_t, noise: (B, ...); out as in `predict_x_eps`; coefficients float, 0-d or (B,).
    Guided (docs/spec.md section 8): with `out_uncond` (the output with the null label), `out` is
    the conditional output and (x_hat, eps_hat) are `guided_x_eps` with weight `w` (float, 0-d or (B,)).
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param
    )
    if not (np.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    x_hat, eps_hat = step_x_eps(z_t, out, alpha_t, sigma_t, param, clip, out_uncond, w)
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
    out_uncond: Any = None,
    w: Any = 0.0,
) -> np.ndarray:
    """One ancestral step: a draw from the DDPM posterior q(z_s | z_t, x = x_hat)
    ([DDPM] Eq. 6-7; official `dpm.py` sampler 'noisy').

    `r = exp(lambda_t - lambda_s)`, `mean = r*(alpha_s/alpha_t)*z_t + (1 - r)*alpha_s*x_hat`,
    variance `(1 - r)*sigma_s^2` ('fixed_small') or `(1 - r)*sigma_t^2` ('fixed_large');
    `1 - r = -expm1(lambda_t - lambda_s)`. Guided with `out_uncond` and `w` as `ddim_step`.
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param
    )
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    noise = _noise(noise, z_t)
    x_hat, _ = step_x_eps(z_t, out, alpha_t, sigma_t, param, clip, out_uncond, w)
    with np.errstate(divide="ignore"):
        lambda_t = 2.0 * (np.log(alpha_t) - np.log(sigma_t))
        lambda_s = 2.0 * (np.log(alpha_s) - np.log(sigma_s))
    r = np.exp(lambda_t - lambda_s)
    one_minus_r = -np.expm1(lambda_t - lambda_s)
    mean = r * (alpha_s / alpha_t) * z_t + one_minus_r * alpha_s * x_hat
    var = one_minus_r * (sigma_s**2 if variance == "fixed_small" else sigma_t**2)
    return mean + np.sqrt(var) * noise


def dpmpp_2m_update(
    z_t: np.ndarray,
    x_hat: np.ndarray,
    x_hat_prev: np.ndarray | None,
    lambda_prev: float | None,
    alpha_t: float,
    sigma_t: float,
    alpha_s: float,
    sigma_s: float,
) -> np.ndarray:
    """One DPM-Solver++(2M) step from t to s < t ([DPM++] Algorithm 2, the data-prediction multistep
    solver; docs/spec.md section 3), from `x_hat` at t and `x_hat_prev` at the previous grid time
    (with log-SNR `lambda_prev`; None for the first step, which is first order, i.e. DDIM):
    `h = lambda_s - lambda_t`, `r = (lambda_t - lambda_prev)/h`,
    `D = (1 + 1/(2r))*x_hat - (1/(2r))*x_hat_prev` (`D = x_hat` for the first step),
    `z_s = (sigma_s/sigma_t)*z_t + alpha_s*(1 - exp(-h/2))*D`
    (lambda is the log-SNR `2*log(alpha/sigma)`, so the paper's half-log-SNR step is h/2; the ratio r
    is the same in either). z_t, x_hat, x_hat_prev: (B, ...); coefficients floats, sigma_s > 0.
    """
    lambda_t = 2.0 * (np.log(alpha_t) - np.log(sigma_t))
    lambda_s = 2.0 * (np.log(alpha_s) - np.log(sigma_s))
    h = lambda_s - lambda_t
    d = x_hat
    if x_hat_prev is not None:
        half_inv_r = 0.5 * h / (lambda_t - lambda_prev)
        d = (1.0 + half_inv_r) * x_hat - half_inv_r * x_hat_prev
    return (sigma_s / sigma_t) * z_t - alpha_s * np.expm1(-0.5 * h) * d


def noise_back(z_k: Any, alpha_k: Any, sigma_k: Any, alpha_s: Any, sigma_s: Any, noise: Any) -> np.ndarray:
    """Forward noising from k to s > k, a draw from q(z_s | z_k) ([GD] Section 4.3's "stochastic step
    backward", docs/spec.md section 8): `z_s = (alpha_s/alpha_k)*z_k + sigma_{s|k}*noise`,
    `sigma_{s|k}^2 = (1 - exp(lambda_s - lambda_k))*sigma_s^2 = sigma_s^2 - (alpha_s/alpha_k)^2*sigma_k^2`
    (`1 - exp(.)` as `-expm1(.)`; sigma_k = 0 is allowed).

    z_k, noise: (B, ...); coefficients float, 0-d or (B,).
    """
    z_k = as_array("z_k", z_k)
    noise = as_array("noise", noise)
    same_shape("noise", noise, "z_k", z_k)
    b, nd = z_k.shape[0], z_k.ndim
    alpha_k = coef("alpha_k", alpha_k, b, nd, positive=True)
    sigma_k = coef("sigma_k", sigma_k, b, nd)
    alpha_s = coef("alpha_s", alpha_s, b, nd, positive=True)
    sigma_s = coef("sigma_s", sigma_s, b, nd, positive=True)
    before("sigma_k", sigma_k, "sigma_s", sigma_s)
    with np.errstate(divide="ignore"):
        lambda_k = 2.0 * (np.log(alpha_k) - np.log(sigma_k))
    lambda_s = 2.0 * (np.log(alpha_s) - np.log(sigma_s))
    var = -np.expm1(lambda_s - lambda_k) * sigma_s**2
    return (alpha_s / alpha_k) * z_k + np.sqrt(var) * noise


def conditions(
    model: Any, batch: int, labels: Any, cond: Any, null_cond: Any, w: Any, who: str = "model"
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """How `sample` and `teacher_target` call a conditional model (docs/spec.md section 8):
    `(c, null, w)` with `c` the checked labels (int64 (B,)) or tensor condition (float64 (B, ...)),
    or None for an unconditional model; `null` the null condition (labels -1, or `null_cond` broadcast
    to cond's shape) when some w > 0, else None; `w` the (B,) guidance weights."""
    if labels is not None and cond is not None:
        raise ValueError("labels and cond are exclusive: give class labels or a tensor condition, not both")
    if null_cond is not None and cond is None:
        raise ValueError("null_cond needs cond: it is the null condition that guidance sets against cond")
    w = coef("w", w, batch, 1).reshape(-1)
    guided = bool(np.any(w != 0))
    if guided and labels is None and cond is None:
        raise ValueError(
            f"w > 0 needs labels (or cond and null_cond): guidance combines the {who} with and without them"
        )
    if guided and cond is not None and null_cond is None:
        raise ValueError("w > 0 with cond needs null_cond (the null condition, e.g. the empty prompt's)")
    if cond is not None:
        check_takes_labels(model, "cond")
        cond, null_cond = cond_arrays(cond, null_cond, batch)
        return cond, null_cond if guided else None, w
    if labels is None:
        return None, None, w
    check_takes_labels(model)
    labels = labels_array(labels, batch, model_classes(model))
    return labels, np.full_like(labels, NULL_LABEL) if guided else None, w


def sample(
    model: Callable[..., np.ndarray],
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
    labels: Any = None,
    cond: Any = None,
    null_cond: Any = None,
    w: Any = 0.0,
) -> np.ndarray:
    """Sample with `steps` network evaluations on the grid `t_i = i / steps`, `i = steps .. 1`, from
    `z = z_1` (docs/spec.md section 3). The last step (to t = 0) returns `x_hat`, not `z_0`.

    sampler: "ddim" (with `eta`), "ancestral" (with `variance`), "stochastic", [GD]'s N-step
    sampler (docs/spec.md section 8): from t, a DDIM step to `k = max(t - 2/N, 0)`, then `noise_back`
    to `s = t - 1/N`; the last step deterministic; or "dpmpp_2m", DPM-Solver++(2M) ([DPM++]
    Algorithm 2, `dpmpp_2m_update`): the first step first order, the last (to t = 0) x_hat, as
    diffusers' `DPMSolverMultistepScheduler` with `final_sigmas_type="zero"`.
    model(z, t) takes t of shape (B,); `seed` seeds the noise of stochastic samplers.
    Conditional models (docs/spec.md section 8): with `labels` (an int or (B,) ints) the model is
    called `model(z, t, labels)`, and for any w > 0 also `model(z, t, null)` with the null label -1;
    the steps then use the guided prediction with weight `w` (float, 0-d or (B,), >= 0). A tensor
    condition instead: `cond` (floating, (B, ...), e.g. prompt embeddings (B, L, D)) in place of the
    labels and `null_cond` (cond's trailing shape, first dim 1 or B) in place of the null label.
    """
    steps = steps_count(steps)
    param = param_name(param)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    z = as_array("z", z)
    c, null, w = conditions(model, z.shape[0], labels, cond, null_cond, w)
    rng = np.random.default_rng(seed)
    t_batch = np.ones(z.shape[0])

    def model_out(z: np.ndarray, t: float, c: np.ndarray | None) -> np.ndarray:
        out = model(z, t * t_batch) if c is None else model(z, t * t_batch, c)
        out = as_array("model output", out)
        out_matches(out, z, param, "model output")
        return out

    def outs(z: np.ndarray, t: float) -> tuple[np.ndarray, dict[str, Any]]:
        """The conditional (or only) output, and the guidance arguments of the steps."""
        out = model_out(z, t, c)
        if null is None:
            return out, {}
        return out, {"out_uncond": model_out(z, t, null), "w": w}

    x_hat_prev, lambda_prev = None, None
    for i in range(steps, 1, -1):
        t, s = i / steps, (i - 1) / steps
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        out, guide = outs(z, t)
        if sampler == "dpmpp_2m":
            x_hat, _ = step_x_eps(z, out, alpha_t, sigma_t, param, clip, **guide)
            z = dpmpp_2m_update(z, x_hat, x_hat_prev, lambda_prev, alpha_t, sigma_t, alpha_s, sigma_s)
            x_hat_prev, lambda_prev = x_hat, 2.0 * (np.log(alpha_t) - np.log(sigma_t))
        elif sampler == "ddim":
            noise = rng.standard_normal(z.shape) if eta > 0 else None
            z = ddim_step(
                z, out, alpha_t, sigma_t, alpha_s, sigma_s, param, clip=clip, eta=eta, noise=noise, **guide
            )
        elif sampler == "ancestral":
            noise = rng.standard_normal(z.shape)
            z = ancestral_step(
                z, out, alpha_t, sigma_t, alpha_s, sigma_s, param,
                clip=clip, variance=variance, noise=noise, **guide,
            )  # fmt: skip
        else:
            alpha_k, sigma_k = schedule.alpha_sigma(max(t - 2.0 / steps, 0.0))
            z_k = ddim_step(z, out, alpha_t, sigma_t, alpha_k, sigma_k, param, clip=clip, **guide)
            z = noise_back(z_k, alpha_k, sigma_k, alpha_s, sigma_s, rng.standard_normal(z.shape))
    alpha_t, sigma_t = schedule.alpha_sigma(1.0 / steps)
    out, guide = outs(z, 1.0 / steps)
    x_hat, _ = step_x_eps(z, out, alpha_t, sigma_t, param, clip, **guide)
    return x_hat
