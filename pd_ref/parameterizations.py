"""From network output to `(x_hat, eps_hat)` ([PD] Section 4, docs/spec.md section 2; official `dpm.py`),
and the classifier-free guided prediction ([GD] Section 3, docs/spec.md section 8)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import as_array, coef, out_matches, param_name

#: the label that asks a conditional model for its unconditional prediction (docs/spec.md section 8)
NULL_LABEL = -1


def predict_x_eps(
    z: Any, out: Any, alpha: Any, sigma: Any, param: str, *, clip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """`(x_hat, eps_hat)` from the output `out` of a network evaluated at `(z, alpha, sigma)`.

    - eps:  x_hat = (z - sigma*out) / alpha,       eps_hat = out
    - x:    x_hat = out,                           eps_hat = (z - alpha*x_hat) / sigma
    - v:    x_hat = alpha*z - sigma*out,           eps_hat = sigma*z + alpha*out
    - both: x_hat = sigma^2*x_t + alpha*(z - sigma*e_t), (x_t, e_t) = out split on axis 1;
            eps_hat = (z - alpha*x_hat) / sigma
    With `clip`, x_hat is clipped to [-1, 1] and eps_hat recomputed from it, so that
    `z = alpha*x_hat + sigma*eps_hat` still holds (official `dpm.py`).

    z: (B, ...); out: z's shape, or (B, 2C, ...) for 'both'; alpha, sigma: float, 0-d or (B,).
    """
    param = param_name(param)
    z = as_array("z", z)
    out = as_array("out", out)
    out_matches(out, z, param)
    alpha = coef("alpha", alpha, z.shape[0], z.ndim, positive=True)
    sigma = coef("sigma", sigma, z.shape[0], z.ndim, positive=True)
    return x_eps_from_out(z, out, alpha, sigma, param, clip)


def x_eps_from_out(
    z: np.ndarray, out: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, param: str, clip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The formulas of `predict_x_eps`, without checks; alpha, sigma shaped to broadcast."""
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
    z: np.ndarray, x_hat: np.ndarray, alpha: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`x_hat` clipped to [-1, 1] and `eps_hat = (z - alpha*x_hat) / sigma` recomputed from it
    (docs/spec.md section 2)."""
    x_hat = np.clip(x_hat, -1.0, 1.0)
    return x_hat, (z - alpha * x_hat) / sigma


def guided_x_eps(
    z: Any,
    out_cond: Any,
    out_uncond: Any,
    alpha: Any,
    sigma: Any,
    param: str,
    *,
    clip: bool = False,
    w: Any = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier-free guided `(x_hat_w, eps_hat_w)` ([GD] Section 3, docs/spec.md section 8):

    `x_hat_w = (1 + w)*x_hat(z, c) - w*x_hat(z, null)`,
    `eps_hat_w = (1 + w)*eps_hat(z, c) - w*eps_hat(z, null)`,
    each prediction from its output by `predict_x_eps` (unclipped). With `clip`, x_hat_w is clipped
    to [-1, 1] after combining and eps_hat_w recomputed from it. w = 0 is the conditional prediction.

    z: (B, ...); out_cond, out_uncond: the outputs with the label and with the null label, shaped as
    `predict_x_eps` wants; alpha, sigma, w: float, 0-d or (B,); w >= 0.
    """
    param = param_name(param)
    z = as_array("z", z)
    out_cond = as_array("out_cond", out_cond)
    out_uncond = as_array("out_uncond", out_uncond)
    out_matches(out_cond, z, param, "out_cond")
    out_matches(out_uncond, z, param, "out_uncond")
    alpha = coef("alpha", alpha, z.shape[0], z.ndim, positive=True)
    sigma = coef("sigma", sigma, z.shape[0], z.ndim, positive=True)
    w = coef("w", w, z.shape[0], z.ndim)
    return guided_from_outs(z, out_cond, out_uncond, alpha, sigma, param, w, clip)


def guided_from_outs(
    z: np.ndarray,
    out_cond: np.ndarray,
    out_uncond: np.ndarray,
    alpha: np.ndarray,
    sigma: np.ndarray,
    param: str,
    w: np.ndarray,
    clip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The formulas of `guided_x_eps`, without checks; alpha, sigma, w shaped to broadcast."""
    x_c, eps_c = x_eps_from_out(z, out_cond, alpha, sigma, param, False)
    x_u, eps_u = x_eps_from_out(z, out_uncond, alpha, sigma, param, False)
    x_hat, eps_hat = (1.0 + w) * x_c - w * x_u, (1.0 + w) * eps_c - w * eps_u
    if clip:
        return clipped_x_eps(z, x_hat, alpha, sigma)
    return x_hat, eps_hat


def step_x_eps(
    z: np.ndarray,
    out: np.ndarray,
    alpha: Any,
    sigma: Any,
    param: str,
    clip: bool,
    out_uncond: Any = None,
    w: Any = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`(x_hat, eps_hat)` as a step uses them: from `out` (checked), or, when `out_uncond` is given,
    guided with weight `w` (`guided_x_eps`, docs/spec.md section 8). Checks `out_uncond` and `w`;
    alpha, sigma shaped to broadcast."""
    if out_uncond is None:
        if np.any(np.asarray(w) != 0):
            raise ValueError("w > 0 needs out_uncond, the output with the null label")
        return x_eps_from_out(z, out, alpha, sigma, param, clip)
    out_uncond = as_array("out_uncond", out_uncond)
    out_matches(out_uncond, z, param, "out_uncond")
    w = coef("w", w, z.shape[0], z.ndim)
    return guided_from_outs(z, out, out_uncond, alpha, sigma, param, w, clip)
