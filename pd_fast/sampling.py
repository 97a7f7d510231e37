"""Sampling steps and the N-step sampler ([DDIM] Eq. 12, [DDPM] Eq. 6-7, docs/spec.md section 3), on torch
tensors: the twin of `pd_ref/sampling.py`, plus a CUDA-graph sampler.

Every step is one linear combination with per-example coefficients
`z_s = k_z*z_t + k_x*x_hat + k_eps*eps_hat + k_noise*noise` ((x_hat, eps_hat) from the network
output, docs/spec.md section 2). `ddim_coefs` and `ancestral_coefs` hold the step formulas (in float64);
`_apply` runs the combination in fp32, in one fused pass on the Triton path
(`kernels.sampler_step`) or as the torch expression on the torch path. Steps are inference: the
Triton path does not record autograd history (the torch path does, as plain torch would).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ._backend import backend_for, kernels
from ._checks import check_coefs, coef, like, out_matches, param_name, same_shape, steps_count, tensor
from .parameterizations import _predict

SAMPLERS = ("ddim", "ancestral")
VARIANCES = ("fixed_small", "fixed_large")
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepCoefs(NamedTuple):
    """Per-example coefficients of `z_s = k_z*z_t + k_x*x_hat + k_eps*eps_hat + k_noise*noise`,
    float64 tensors; None marks a term the step does not have."""

    k_z: torch.Tensor | None
    k_x: torch.Tensor
    k_eps: torch.Tensor | None
    k_noise: torch.Tensor | None


def ddim_coefs(
    alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor, sigma_s: torch.Tensor, eta: float
) -> StepCoefs:
    """DDIM ([DDIM] Eq. 12; [PD] Eq. 7 for eta = 0): `z_s = alpha_s*x_hat + sigma_s*eps_hat`, and
    for eta > 0 `c = eta*(sigma_s/sigma_t)*sqrt(1 - alpha_t^2/alpha_s^2)`,
    `z_s = alpha_s*x_hat + sqrt(sigma_s^2 - c^2)*eps_hat + c*noise`."""
    if eta == 0.0:
        return StepCoefs(None, alpha_s, sigma_s, None)
    c = eta * (sigma_s / sigma_t) * torch.sqrt(1.0 - (alpha_t / alpha_s) ** 2)
    return StepCoefs(None, alpha_s, torch.sqrt(torch.clamp(sigma_s**2 - c**2, min=0.0)), c)


def ancestral_coefs(
    alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor, sigma_s: torch.Tensor, variance: str
) -> StepCoefs:
    """The DDPM posterior q(z_s | z_t, x = x_hat) ([DDPM] Eq. 6-7; official `dpm.py` 'noisy'):
    `r = exp(lambda_t - lambda_s)`, `mean = r*(alpha_s/alpha_t)*z_t + (1 - r)*alpha_s*x_hat`,
    variance `(1 - r)*sigma_s^2` ('fixed_small') or `(1 - r)*sigma_t^2` ('fixed_large'),
    `1 - r = -expm1(lambda_t - lambda_s)`."""
    lambda_t = 2.0 * (torch.log(alpha_t) - torch.log(sigma_t))
    lambda_s = 2.0 * (torch.log(alpha_s) - torch.log(sigma_s))
    r = torch.exp(lambda_t - lambda_s)
    one_minus_r = -torch.expm1(lambda_t - lambda_s)
    var = one_minus_r * (sigma_s**2 if variance == "fixed_small" else sigma_t**2)
    return StepCoefs(r * (alpha_s / alpha_t), one_minus_r * alpha_s, None, torch.sqrt(var))


def x_hat_coefs(alpha_t: torch.Tensor) -> StepCoefs:
    """`x_hat` itself (the sampler's last step, docs/spec.md section 3): k_x = 1, no other term."""
    return StepCoefs(None, torch.ones_like(alpha_t), None, None)


#: what `_apply` takes: (alpha_t, sigma_t, k_z, k_x, k_eps, k_noise) as fp32 (B,) tensors
Prepared = tuple[torch.Tensor | None, ...]


def _prepare(alpha_t: torch.Tensor, sigma_t: torch.Tensor, k: StepCoefs, backend: str) -> Prepared:
    """Float64 (B,) coefficients as contiguous fp32 (B,) tensors; on the Triton path an absent
    term becomes a zero coefficient (the kernel always has all four)."""
    coefs = (alpha_t, sigma_t, *k)
    if backend == "triton":
        coefs = tuple(torch.zeros_like(alpha_t) if c is None else c for c in coefs)
    return tuple(None if c is None else c.to(torch.float32).contiguous() for c in coefs)


def _apply(
    backend: str,
    z: torch.Tensor,
    out: torch.Tensor,
    coefs: Prepared,
    param: str,
    clip: bool,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """`z_s = k_z*z + k_x*x_hat + k_eps*eps_hat + k_noise*noise` in fp32, returned in z's dtype.
    No checks: callers validated the inputs. `noise` is None exactly when k_noise is absent."""
    alpha_t, sigma_t, k_z, k_x, k_eps, k_noise = coefs
    if backend == "triton":
        z_s, _ = kernels().sampler_step(
            z, out, alpha_t, sigma_t, k_z, k_x, k_eps, k_noise, param, clip, noise
        )
        return z_s
    shape = (-1,) + (1,) * (z.ndim - 1)
    z32 = z.float()
    x_hat, eps_hat = _predict(z32, out.float(), alpha_t.reshape(shape), sigma_t.reshape(shape), param, clip)
    z_s = k_x.reshape(shape) * x_hat
    if k_z is not None:
        z_s = k_z.reshape(shape) * z32 + z_s
    if k_eps is not None:
        z_s = z_s + k_eps.reshape(shape) * eps_hat
    if k_noise is not None:
        z_s = z_s + k_noise.reshape(shape) * noise.float()
    return z_s.to(z.dtype)


def _step_inputs(z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param):
    param = param_name(param)
    z_t = tensor("z_t", z_t)
    out = tensor("out", out)
    like("out", out, "z_t", z_t)
    out_matches(out, z_t, param)
    b, device = z_t.shape[0], z_t.device
    alpha_t = coef("alpha_t", alpha_t, b, device)
    sigma_t = coef("sigma_t", sigma_t, b, device)
    alpha_s = coef("alpha_s", alpha_s, b, device)
    sigma_s = coef("sigma_s", sigma_s, b, device)
    check_coefs(
        positive={"alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_s": alpha_s},
        nonnegative={"sigma_s": sigma_s},
        before=("sigma_s", "sigma_t"),
    )
    return z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param


def _noise(noise: Any, z_t: torch.Tensor) -> torch.Tensor:
    if noise is None:
        raise ValueError("noise is required for a stochastic step (eta > 0 or ancestral)")
    noise = tensor("noise", noise)
    like("noise", noise, "z_t", z_t)
    same_shape("noise", noise, "z_t", z_t)
    return noise


def _eta(eta: Any) -> float:
    try:
        value = float(eta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eta must be a float in [0, 1], got {eta!r}") from err
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return value


def _variance(variance: str) -> str:
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    return variance


def ddim_step(
    z_t: torch.Tensor,
    out: torch.Tensor,
    alpha_t: Any,
    sigma_t: Any,
    alpha_s: Any,
    sigma_s: Any,
    param: str,
    clip: bool = False,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step from t to s < t ([DDIM] Eq. 12; [PD] Eq. 7 for eta = 0; see `ddim_coefs`).

    z_t, noise: (B, ...) fp32/fp16/bf16; out as in `predict_x_eps`; coefficients float, 0-d or (B,).
    `noise` is needed for eta > 0 and ignored for eta = 0. Returns z_s in z_t's dtype.
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param
    )
    eta = _eta(eta)
    noise = _noise(noise, z_t) if eta > 0 else None
    backend = backend_for(z_t)
    k = ddim_coefs(alpha_t, sigma_t, alpha_s, sigma_s, eta)
    return _apply(backend, z_t, out, _prepare(alpha_t, sigma_t, k, backend), param, clip, noise)


def ancestral_step(
    z_t: torch.Tensor,
    out: torch.Tensor,
    alpha_t: Any,
    sigma_t: Any,
    alpha_s: Any,
    sigma_s: Any,
    param: str,
    noise: torch.Tensor,
    variance: str = "fixed_large",
    clip: bool = False,
) -> torch.Tensor:
    """One ancestral step: a draw from the DDPM posterior q(z_s | z_t, x = x_hat)
    ([DDPM] Eq. 6-7; official `dpm.py` sampler 'noisy'; see `ancestral_coefs`).

    z_t, noise: (B, ...); out as in `predict_x_eps`; coefficients float, 0-d or (B,).
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param
    )
    variance = _variance(variance)
    noise = _noise(noise, z_t)
    backend = backend_for(z_t)
    k = ancestral_coefs(alpha_t, sigma_t, alpha_s, sigma_s, variance)
    return _apply(backend, z_t, out, _prepare(alpha_t, sigma_t, k, backend), param, clip, noise)


@dataclass
class _Plan:
    """Everything the sampler's loop needs, computed before it (no host work inside the loop)."""

    t: list[torch.Tensor]  # model times, (B,) in z's dtype, one per model call
    coefs: list[Prepared]  # one per model call; the last gives x_hat
    noisy: bool  # whether the steps (all but the last) draw noise


def _plan(
    z: torch.Tensor, steps: int, schedule: Any, sampler: str, eta: float, variance: str, backend: str
) -> _Plan:
    """Per-step coefficients on the grid `t_i = i/N`, i = N .. 1: schedule values and step
    coefficients in float64 (all steps at once), then one copy to z's device in fp32.

    Rows are padded to a multiple of 8 entries so that every (B,) view starts 16-byte aligned
    (a kernel compiled for one step fits every other, which CUDA-graph capture relies on)."""
    batch, device = z.shape[0], z.device
    t = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
    s = torch.arange(steps - 1, -1, -1, dtype=torch.float64) / steps
    alpha_t, sigma_t = _on_cpu(schedule.alpha_sigma(t))
    alpha_s, sigma_s = _on_cpu(schedule.alpha_sigma(s))
    if sampler == "ddim":
        k = ddim_coefs(alpha_t, sigma_t, alpha_s, sigma_s, eta)
    else:
        k = ancestral_coefs(alpha_t, sigma_t, alpha_s, sigma_s, variance)
    last = x_hat_coefs(alpha_t)
    zero = torch.zeros_like(alpha_t)
    columns = [alpha_t, sigma_t]  # one row per model call; the last row is the x_hat-only call
    for c_step, c_last in zip(k, last, strict=True):
        c_step, c_last = (zero if c is None else c for c in (c_step, c_last))
        columns.append(torch.cat([c_step[:-1], c_last[-1:]]))
    present_step = (True, True) + tuple(c is not None or backend == "triton" for c in k)
    present_last = (True, True) + tuple(c is not None or backend == "triton" for c in last)
    padded = -(-batch // 8) * 8
    table = torch.stack(columns, dim=1).to(device=device, dtype=torch.float32)  # (N, 6)
    table = table.unsqueeze(-1).expand(steps, 6, padded).contiguous()
    times = t.to(device=device, dtype=z.dtype).unsqueeze(-1).expand(steps, padded).contiguous()
    coefs = []
    for j in range(steps):
        present = present_last if j == steps - 1 else present_step
        coefs.append(tuple(table[j, c, :batch] if present[c] else None for c in range(6)))
    return _Plan([times[j, :batch] for j in range(steps)], coefs, k.k_noise is not None)


def _on_cpu(pair: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A schedule's (alpha, sigma) as float64 CPU tensors (pd_fast schedules give tensors; any
    schedule with an `alpha_sigma` giving arrays works too)."""
    return tuple(torch.as_tensor(c, dtype=torch.float64).cpu() for c in pair)


def _model_out(model: Model, z: torch.Tensor, t: torch.Tensor, param: str) -> torch.Tensor:
    out = tensor("model output", model(z, t))
    like("model output", out, "z", z)
    out_matches(out, z, param, name="model output")
    return out


def _loop(
    model: Model,
    z: torch.Tensor,
    plan: _Plan,
    param: str,
    clip: bool,
    generator: torch.Generator | None,
    backend: str,
    progress: bool = False,
    calls: list[int] | None = None,
) -> torch.Tensor:
    """The sampler's loop over `calls` (default all): one model call and one step each; the last
    call returns x_hat. Noise: one `randn(z.shape)` in z's dtype per step with noise, in order."""
    steps = len(plan.t)
    for j in tqdm(calls or range(steps), disable=not progress, desc="sampling", leave=False):
        out = _model_out(model, z, plan.t[j], param)
        noise = None
        if plan.noisy and j < steps - 1:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = _apply(backend, z, out, plan.coefs[j], param, clip, noise)
    return z


def _sample_graphed(
    model: Model,
    z: torch.Tensor,
    plan: _Plan,
    param: str,
    clip: bool,
    generator: torch.Generator | None,
    seed: int | None,
    backend: str,
) -> torch.Tensor:
    """Capture the whole loop (model calls and steps) in one CUDA graph and replay it once.

    A warm-up of one step and of the last call runs first, on a side stream, so that every kernel
    is compiled and every library initialised before capture. The warm-up draws noise, so a seeded
    generator is re-seeded before the replay: the replay then draws what an eager run draws."""
    static_z = z.clone()
    steps = len(plan.t)
    with torch.cuda.device(z.device):  # capture on z's device
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _loop(model, static_z, plan, param, clip, generator, backend, calls=sorted({0, steps - 1}))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if generator is not None:  # the default generator is registered by torch itself
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            x_hat = _loop(model, static_z, plan, param, clip, generator, backend)
        if generator is not None:
            generator.manual_seed(seed)
        graph.replay()
        result = x_hat.clone()  # x_hat lives in the graph's private memory pool
    del graph
    return result


@torch.no_grad()
def sample(
    model: Model,
    z: torch.Tensor,
    steps: int,
    schedule: Any,
    param: str,
    clip: bool = False,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int | None = None,
    variance: str = "fixed_large",
    cuda_graph: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Sample with `steps` steps on the grid `t_i = i / steps`, `i = steps .. 1`, from `z = z_1`
    (docs/spec.md section 3). The last step (to t = 0) returns `x_hat`, not `z_0`.

    model(z, t) takes t, a (B,) tensor in z's dtype, and returns a tensor of z's dtype and device
    (shape as `predict_x_eps` wants). `seed` seeds a `torch.Generator` on z's device for the noise of
    stochastic samplers (else torch's global generator is used): one `randn(z.shape, dtype=z.dtype)`
    per step but the last, in order. With `cuda_graph=True` (z on a CUDA
    device) the whole loop is captured in one CUDA graph and replayed; the model must then be
    capturable (no host syncs). `progress` shows a tqdm bar (eager loop only). Runs under
    `torch.no_grad()`.
    """
    steps = steps_count(steps)
    param = param_name(param)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    eta = _eta(eta)
    variance = _variance(variance)
    z = tensor("z", z)
    if cuda_graph and not z.is_cuda:
        raise ValueError(f"cuda_graph=True needs z on a CUDA device, got {z.device}")
    backend = backend_for(z)
    plan = _plan(z, steps, schedule, sampler, eta, variance, backend)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=z.device)
        generator.manual_seed(seed)
    if cuda_graph:
        return _sample_graphed(model, z, plan, param, clip, generator, seed, backend)
    return _loop(model, z, plan, param, clip, generator, backend, progress)
