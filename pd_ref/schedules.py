"""Noise schedules of the variance-preserving forward process ([PD] Section 2, docs/spec.md section 1).

`z_t = alpha_t * x + sigma_t * eps`, `alpha_t^2 + sigma_t^2 = 1`, log-SNR
`lambda_t = log(alpha_t^2 / sigma_t^2)` strictly decreasing in `t` on [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import as_array, same_shape, times

DISCRETE_KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2")
LOG_FLOAT64_MAX = float(np.log(np.finfo(np.float64).max))  # ~709.78: exp() of more overflows
# A cosine schedule must reproduce its own endpoints within ENDPOINT_RTOL: near t = 1, theta = a t + b
# nears pi/2 and rounds there, so lambda(1) is off by more than that for logsnr_min below about -53
# (and is -74.7 for every logsnr_min below -75); near t = 0, tan(b) underflows for logsnr_max above
# about 1477.
ENDPOINT_RTOL = 1e-6


def _real(name: str, value: Any) -> float:
    """`value` as a float; ValueError unless it is one real number (bool and str are not)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number, got {value!r}") from err


def _beta(name: str, value: Any) -> float:
    """A beta of `from_betas` as a float in (0, 1); ValueError naming it otherwise."""
    beta = _real(name, value)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return beta


class CosineSchedule:
    """The cosine schedule of [PD] (official `dpm.py`): `lambda(t) = -2 log tan(a t + b)`.

    `b = arctan(exp(-lambda_max / 2))`, `a = arctan(exp(-lambda_min / 2)) - b`, so that
    `lambda(0) = lambda_max` and `lambda(1) = lambda_min`. With `theta = a t + b`,
    `alpha_t = cos(theta)` and `sigma_t = sin(theta)` exactly.
    """

    def __init__(self, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> None:
        logsnr_min, logsnr_max = _real("logsnr_min", logsnr_min), _real("logsnr_max", logsnr_max)
        if not (np.isfinite(logsnr_min) and np.isfinite(logsnr_max)):
            raise ValueError("logsnr_min and logsnr_max must be finite")
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min ({logsnr_min}) must be < logsnr_max ({logsnr_max})")
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        if -0.5 * self.logsnr_min > LOG_FLOAT64_MAX:
            raise ValueError(
                f"logsnr_min must be >= {-2 * LOG_FLOAT64_MAX:.6g} (exp(-logsnr_min / 2) overflows float64), "
                f"got {logsnr_min}"
            )
        self.b = float(np.arctan(np.exp(-0.5 * self.logsnr_max)))
        self.a = float(np.arctan(np.exp(-0.5 * self.logsnr_min))) - self.b
        if not self.a > 0:
            raise ValueError(
                f"logsnr_min ({logsnr_min}) and logsnr_max ({logsnr_max}) are too close for float64 "
                "to tell their times apart"
            )
        for t, name, want in ((1.0, "logsnr_min", self.logsnr_min), (0.0, "logsnr_max", self.logsnr_max)):
            tan = float(np.tan(self.a * t + self.b))
            got = -2.0 * float(np.log(tan)) if tan > 0 else np.inf
            if not abs(got - want) <= ENDPOINT_RTOL * max(1.0, abs(want)):
                raise ValueError(
                    f"{name}={want} is beyond what the schedule can represent in float64: lambda({t:g}) "
                    f"evaluates to {got:.6g} (keep logsnr_min >= -50 and logsnr_max <= 1400)"
                )

    def _theta(self, t: Any) -> np.ndarray:
        return self.a * times("t", t) + self.b

    def logsnr(self, t: Any) -> np.ndarray:
        """`lambda(t) = -2 log tan(a t + b)`."""
        return -2.0 * np.log(np.tan(self._theta(t)))

    def alpha_sigma(self, t: Any) -> tuple[np.ndarray, np.ndarray]:
        """`(alpha_t, sigma_t) = (cos(a t + b), sin(a t + b))`, i.e. sqrt(sigmoid(+-lambda))."""
        theta = self._theta(t)
        return np.cos(theta), np.sin(theta)

    def t_from_logsnr(self, logsnr: Any) -> np.ndarray:
        """Inverse of `logsnr`: `t = (arctan(exp(-lambda / 2)) - b) / a`."""
        lam = np.asarray(logsnr, dtype=np.float64)
        if not np.all(np.isfinite(lam)):
            raise ValueError("logsnr must be finite")
        slack = 1e-9 * (self.logsnr_max - self.logsnr_min)  # rounding of logsnr(0) and logsnr(1)
        if np.any(lam < self.logsnr_min - slack) or np.any(lam > self.logsnr_max + slack):
            raise ValueError(
                f"logsnr must lie in [{self.logsnr_min}, {self.logsnr_max}], "
                f"got range [{lam.min()}, {lam.max()}]"
            )
        lam = np.clip(lam, self.logsnr_min, self.logsnr_max)
        return (np.arctan(np.exp(-0.5 * lam)) - self.b) / self.a

    def __repr__(self) -> str:
        return f"CosineSchedule(logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max})"


class DiscreteSchedule:
    """A DDPM-style schedule of `T` steps seen in continuous time (docs/spec.md section 1).

    `alpha_bar(t)` is piecewise linear through `(0, 1)` and `((k + 1) / T, alphas_cumprod[k])`
    for `k = 0 .. T-1`, so the grid `t = i / N` (N dividing T) is diffusers'
    `DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True)`.
    `alpha = sqrt(alpha_bar)`, `sigma = sqrt(1 - alpha_bar)`; `lambda(0) = +inf`.
    """

    def __init__(self, alphas_cumprod: Any) -> None:
        try:
            values = np.asarray(alphas_cumprod)
        except ValueError:  # a ragged list
            values = np.asarray(None)
        if values.dtype.kind not in "iuf":
            raise ValueError(f"alphas_cumprod must be real numbers, got {type(alphas_cumprod).__name__}")
        acp = values.astype(np.float64)
        if acp.ndim != 1 or acp.shape[0] < 1:
            raise ValueError(f"alphas_cumprod must be 1-D and non-empty, got shape {acp.shape}")
        if not np.all(np.isfinite(acp)) or np.any(acp <= 0) or np.any(acp >= 1):
            raise ValueError("alphas_cumprod must lie in (0, 1)")
        if np.any(np.diff(acp) >= 0):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = acp
        self.num_train_timesteps = acp.shape[0]
        self._grid = np.arange(acp.shape[0] + 1, dtype=np.float64) / acp.shape[0]
        self._values = np.concatenate([[1.0], acp])

    @classmethod
    def from_betas(
        cls,
        kind: str,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> DiscreteSchedule:
        """`alphas_cumprod = cumprod(1 - beta)` for diffusers' beta schedules ([DDPM] Section 4;
        `squaredcos_cap_v2` is Nichol & Dhariwal's cosine with beta capped at 0.999)."""
        T = num_train_timesteps
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {T!r}")
        if kind in ("linear", "scaled_linear"):
            beta_start, beta_end = _beta("beta_start", beta_start), _beta("beta_end", beta_end)
        if kind == "linear":
            betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        elif kind == "scaled_linear":
            betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
        elif kind == "squaredcos_cap_v2":

            def f(u: np.ndarray) -> np.ndarray:
                return np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2

            k = np.arange(T, dtype=np.float64)
            betas = np.minimum(1.0 - f((k + 1) / T) / f(k / T), 0.999)
        else:
            raise ValueError(f"kind must be one of {DISCRETE_KINDS}, got {kind!r}")
        if np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("beta_start and beta_end must give betas in (0, 1)")
        return cls(np.cumprod(1.0 - betas))

    def alpha_bar(self, t: Any) -> np.ndarray:
        """`alpha_t^2`, piecewise linear in t."""
        return np.interp(times("t", t), self._grid, self._values)

    def logsnr(self, t: Any) -> np.ndarray:
        """`lambda(t) = log(alpha_bar / (1 - alpha_bar))`; +inf at t = 0."""
        ab = self.alpha_bar(t)
        with np.errstate(divide="ignore"):
            return np.log(ab) - np.log1p(-ab)

    def alpha_sigma(self, t: Any) -> tuple[np.ndarray, np.ndarray]:
        ab = self.alpha_bar(t)
        return np.sqrt(ab), np.sqrt(1.0 - ab)

    def __repr__(self) -> str:
        return f"DiscreteSchedule(T={self.num_train_timesteps})"


def diffuse(x: Any, t: Any, schedule: Any, noise: Any) -> np.ndarray:
    """The forward process `z_t = alpha_t * x + sigma_t * noise` (docs/spec.md section 1).

    x, noise: (B, ...) arrays of one shape; t: float, 0-d or (B,) in [0, 1]; `schedule` any
    schedule with `alpha_sigma(t)`. Returns z_t as float64, x's shape.
    """
    x = as_array("x", x)
    noise = as_array("noise", noise)
    same_shape("noise", noise, "x", x)
    t = times("t", t)
    if t.ndim > 1 or t.size not in (1, x.shape[0]):
        raise ValueError(f"t must be a float, 0-d, or 1-D of length {x.shape[0]} (the batch), got {t.shape}")
    alpha_t, sigma_t = schedule.alpha_sigma(t.reshape(-1))
    column = (-1,) + (1,) * (x.ndim - 1)
    return np.reshape(alpha_t, column) * x + np.reshape(sigma_t, column) * noise
