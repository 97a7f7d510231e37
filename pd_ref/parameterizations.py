"""From network output to `(x_hat, eps_hat)` ([PD] Section 4, docs/spec.md section 2; official `dpm.py`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import as_array, coef, out_matches, param_name


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
        x_hat = np.clip(x_hat, -1.0, 1.0)
        eps_hat = (z - alpha * x_hat) / sigma
    return x_hat, eps_hat
