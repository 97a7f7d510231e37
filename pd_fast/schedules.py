"""Noise schedules of the variance-preserving forward process ([PD] Section 2, docs/spec.md section 1),
on torch tensors: the twin of `pd_ref/schedules.py`.

`z_t = alpha_t * x + sigma_t * eps`, `alpha_t^2 + sigma_t^2 = 1`, log-SNR
`lambda_t = log(alpha_t^2 / sigma_t^2)` strictly decreasing in `t` on [0, 1].
Times are floats or tensors on any device; results are float64 tensors on t's device (on the
CPU for float times). Callers cast the coefficients to fp32 only after combining them.

A schedule serializes itself: `to_dict()` gives a JSON-able description (what checkpoints store,
docs/spec.md section 6) and `schedule_from_dict` rebuilds the schedule from it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._checks import batch_times, like, per_example, same_shape, tensor, times

DISCRETE_KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2")
LOG_FLOAT64_MAX = math.log(torch.finfo(torch.float64).max)  # ~709.78: exp() of more overflows
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
        if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max)):
            raise ValueError("logsnr_min and logsnr_max must be finite")
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min ({logsnr_min}) must be < logsnr_max ({logsnr_max})")
        if -0.5 * logsnr_min > LOG_FLOAT64_MAX:
            raise ValueError(
                f"logsnr_min must be >= {-2 * LOG_FLOAT64_MAX:.6g} (exp(-logsnr_min / 2) overflows float64), "
                f"got {logsnr_min}"
            )
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        self.b = math.atan(math.exp(-0.5 * self.logsnr_max))
        self.a = math.atan(math.exp(-0.5 * self.logsnr_min)) - self.b
        if not self.a > 0:
            raise ValueError(
                f"logsnr_min ({logsnr_min}) and logsnr_max ({logsnr_max}) are too close for float64 "
                "to tell their times apart"
            )
        for t, name, want in ((1.0, "logsnr_min", self.logsnr_min), (0.0, "logsnr_max", self.logsnr_max)):
            tan = math.tan(self.a * t + self.b)
            got = -2.0 * math.log(tan) if tan > 0 else math.inf
            if not abs(got - want) <= ENDPOINT_RTOL * max(1.0, abs(want)):
                raise ValueError(
                    f"{name}={want} is beyond what the schedule can represent in float64: lambda({t:g}) "
                    f"evaluates to {got:.6g} (keep logsnr_min >= -50 and logsnr_max <= 1400)"
                )

    def _theta(self, t: Any) -> torch.Tensor:
        return self.a * times("t", t) + self.b

    def logsnr(self, t: Any) -> torch.Tensor:
        """`lambda(t) = -2 log tan(a t + b)`."""
        return -2.0 * torch.log(torch.tan(self._theta(t)))

    def alpha_sigma(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`(alpha_t, sigma_t) = (cos(a t + b), sin(a t + b))`, i.e. sqrt(sigmoid(+-lambda))."""
        theta = self._theta(t)
        return torch.cos(theta), torch.sin(theta)

    def t_from_logsnr(self, logsnr: Any) -> torch.Tensor:
        """Inverse of `logsnr`: `t = (arctan(exp(-lambda / 2)) - b) / a`."""
        if isinstance(logsnr, torch.Tensor):
            lam = logsnr.detach().to(torch.float64)
        else:
            lam = torch.as_tensor(logsnr, dtype=torch.float64)
        slack = 1e-9 * (self.logsnr_max - self.logsnr_min)  # rounding of logsnr(0) and logsnr(1)
        finite, low, high = torch.stack(
            [
                torch.isfinite(lam).all(),
                (lam < self.logsnr_min - slack).any(),
                (lam > self.logsnr_max + slack).any(),
            ]
        ).tolist()
        if not finite:
            raise ValueError("logsnr must be finite")
        if low or high:
            raise ValueError(
                f"logsnr must lie in [{self.logsnr_min}, {self.logsnr_max}], "
                f"got range [{lam.min().item()}, {lam.max().item()}]"
            )
        lam = torch.clamp(lam, self.logsnr_min, self.logsnr_max)
        return (torch.atan(torch.exp(-0.5 * lam)) - self.b) / self.a

    def to_dict(self) -> dict[str, Any]:
        """`{"kind": "cosine", "logsnr_min", "logsnr_max"}`, the input of `schedule_from_dict`."""
        return {"kind": "cosine", "logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max}

    def __repr__(self) -> str:
        return f"CosineSchedule(logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max})"


class DiscreteSchedule:
    """A DDPM-style schedule of `T` steps seen in continuous time (docs/spec.md section 1).

    `alpha_bar(t)` is piecewise linear through `(0, 1)` and `((k + 1) / T, alphas_cumprod[k])`
    for `k = 0 .. T-1`, so the grid `t = i / N` (N dividing T) is diffusers'
    `DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True)`.
    `alpha = sqrt(alpha_bar)`, `sigma = sqrt(1 - alpha_bar)`; `lambda(0) = +inf`.
    `alphas_cumprod` is kept as a float64 CPU tensor.
    """

    def __init__(self, alphas_cumprod: Any) -> None:
        if isinstance(alphas_cumprod, torch.Tensor):
            if alphas_cumprod.is_complex() or alphas_cumprod.dtype == torch.bool:
                raise ValueError(f"alphas_cumprod must be real numbers, got dtype {alphas_cumprod.dtype}")
            acp = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
        else:
            try:
                values = np.asarray(alphas_cumprod)
            except ValueError:  # a ragged list
                values = np.asarray(None)
            if values.dtype.kind not in "iuf":
                raise ValueError(f"alphas_cumprod must be real numbers, got {type(alphas_cumprod).__name__}")
            acp = torch.from_numpy(values.astype(np.float64))
        if acp.ndim != 1 or acp.shape[0] < 1:
            raise ValueError(f"alphas_cumprod must be 1-D and non-empty, got shape {tuple(acp.shape)}")
        if not bool(torch.isfinite(acp).all()) or bool((acp <= 0).any()) or bool((acp >= 1).any()):
            raise ValueError("alphas_cumprod must lie in (0, 1)")
        if bool((acp.diff() >= 0).any()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = acp
        self.num_train_timesteps = acp.shape[0]
        self._values = torch.cat([torch.ones(1, dtype=torch.float64), acp])
        self._values_on: dict[torch.device, torch.Tensor] = {}

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
        if isinstance(T, bool) or not hasattr(T, "__index__") or T < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {T!r}")
        T = int(T)
        f64 = torch.float64
        if kind in ("linear", "scaled_linear"):
            beta_start, beta_end = _beta("beta_start", beta_start), _beta("beta_end", beta_end)
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=f64)
        elif kind == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=f64) ** 2
        elif kind == "squaredcos_cap_v2":

            def f(u: torch.Tensor) -> torch.Tensor:
                return torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            k = torch.arange(T, dtype=f64)
            betas = torch.clamp(1.0 - f((k + 1) / T) / f(k / T), max=0.999)
        else:
            raise ValueError(f"kind must be one of {DISCRETE_KINDS}, got {kind!r}")
        if bool((betas <= 0).any()) or bool((betas >= 1).any()):
            raise ValueError("beta_start and beta_end must give betas in (0, 1)")
        return cls(torch.cumprod(1.0 - betas, dim=0))

    def alpha_bar(self, t: Any) -> torch.Tensor:
        """`alpha_t^2`, piecewise linear in t through `(k / T, [1, alphas_cumprod][k])`."""
        t = times("t", t)
        values = self._values_on.get(t.device)
        if values is None:
            values = self._values_on[t.device] = self._values.to(t.device)
        pos = t * self.num_train_timesteps
        k = torch.clamp(torch.floor(pos), max=self.num_train_timesteps - 1).long()
        frac = pos - k
        # as np.interp: a + f (b - a), and the last point itself at t = 1 (where f = 1 would round)
        return torch.where(frac == 1.0, values[k + 1], values[k] + frac * (values[k + 1] - values[k]))

    def logsnr(self, t: Any) -> torch.Tensor:
        """`lambda(t) = log(alpha_bar / (1 - alpha_bar))`; +inf at t = 0."""
        ab = self.alpha_bar(t)
        return torch.log(ab) - torch.log1p(-ab)

    def alpha_sigma(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar(t)
        return torch.sqrt(ab), torch.sqrt(1.0 - ab)

    def to_dict(self) -> dict[str, Any]:
        """`{"kind": "discrete", "alphas_cumprod": [...]}`, the input of `schedule_from_dict`."""
        return {"kind": "discrete", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return f"DiscreteSchedule(T={self.num_train_timesteps})"


def diffuse(x: torch.Tensor, t: Any, schedule: Any, noise: torch.Tensor) -> torch.Tensor:
    """The forward process `z_t = alpha_t * x + sigma_t * noise` (docs/spec.md section 1).

    x, noise: (B, ...) fp32/fp16/bf16 tensors of one shape, dtype and device; t: float, 0-d or (B,)
    in [0, 1] (on x's device or the CPU); `schedule` any schedule with `alpha_sigma(t)`.
    The coefficients and the combination are float64; z_t is returned in x's dtype.
    """
    x = tensor("x", x)
    noise = tensor("noise", noise)
    like("noise", noise, "x", x)
    same_shape("noise", noise, "x", x)
    t = batch_times(t, x.shape[0])
    alpha_t, sigma_t = schedule.alpha_sigma(t if t.ndim == 1 else t.reshape(1))
    alpha_t, sigma_t = (torch.as_tensor(c, dtype=torch.float64).to(x.device) for c in (alpha_t, sigma_t))
    return (per_example(alpha_t, x.ndim) * x.double() + per_example(sigma_t, x.ndim) * noise.double()).to(
        x.dtype
    )


def schedule_from_dict(d: dict[str, Any]) -> CosineSchedule | DiscreteSchedule:
    """The schedule described by `d`, the output of a schedule's `to_dict()`:
    `{"kind": "cosine", "logsnr_min", "logsnr_max"}` or `{"kind": "discrete", "alphas_cumprod"}`."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "cosine":
        return CosineSchedule(d["logsnr_min"], d["logsnr_max"])
    if kind == "discrete":
        return DiscreteSchedule(torch.tensor(d["alphas_cumprod"], dtype=torch.float64))
    raise ValueError(f"schedule description must have kind 'cosine' or 'discrete', got {d!r}")
