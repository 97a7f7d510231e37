"""Sampling steps and the N-step samplers ([DDIM] Eq. 12, [DDPM] Eq. 6-7, docs/spec.md section 3; the
guided prediction and the stochastic sampler of [GD], docs/spec.md section 8), on torch tensors: the
twin of `pd_ref/sampling.py`, plus a CUDA-graph sampler.

Every step is one linear combination with per-example coefficients
`z_s = k_z*z_t + k_x*x_hat + k_eps*eps_hat + k_noise*noise` ((x_hat, eps_hat) from the network
output, docs/spec.md section 2, or the guided prediction, section 8). `ddim_coefs`, `ancestral_coefs`
and `stochastic_coefs` hold the step formulas (in float64); the step engine (`pd_fast/_engine.py`)
runs the combination in fp32, in one fused pass on the Triton path (`kernels.sampler_step`, which
also reads the unconditional output of a guided step) or as the torch expression on the torch path.
Steps are inference: the Triton path does not record autograd history (the torch path does, as
plain torch would). DPM-Solver++(2M) (`dpmpp_2m_coefs`) adds a term in the previous call's x_hat,
which the engine's loop keeps (`_engine.apply_multistep`; on the Triton path a torch pass after the
fused step).
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import Any

import torch

from ._backend import backend_for
from ._checks import (
    FLOAT_DTYPES,
    check_coefs,
    coef,
    coefs_for,
    cond_tensors,
    label_rules,
    labels_tensor,
    like,
    out_matches,
    param_name,
    same_shape,
    steps_count,
    tensor,
    to_device,
)
from ._engine import (
    CapturedLoop,
    Guide,
    Model,
    StepCoefs,
    StepRule,
    apply,
    graphed_loop,
    loop,
    on_cpu,
    plan,
    prepare,
)
from .parameterizations import NULL_LABEL

SAMPLERS = ("ddim", "ancestral", "stochastic", "dpmpp_2m")
VARIANCES = ("fixed_small", "fixed_large")


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


def stochastic_coefs(
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
    alpha_k: torch.Tensor,
    sigma_k: torch.Tensor,
) -> StepCoefs:
    """[GD]'s stochastic step (docs/spec.md section 8): DDIM from t to k < s, then forward noise from
    k back to s, `z_s = (alpha_s/alpha_k)*(alpha_k*x_hat + sigma_k*eps_hat) + sigma_{s|k}*noise`, i.e.
    `k_x = alpha_s`, `k_eps = alpha_s*sigma_k/alpha_k`, `k_noise = sigma_{s|k}` with
    `sigma_{s|k}^2 = -expm1(lambda_s - lambda_k)*sigma_s^2` (sigma_k = 0 allowed)."""
    lambda_k = 2.0 * (torch.log(alpha_k) - torch.log(sigma_k))
    lambda_s = 2.0 * (torch.log(alpha_s) - torch.log(sigma_s))
    var = -torch.expm1(lambda_s - lambda_k) * sigma_s**2
    return StepCoefs(None, alpha_s, alpha_s * sigma_k / alpha_k, torch.sqrt(var))


def dpmpp_2m_coefs(
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    alpha_s: torch.Tensor,
    sigma_s: torch.Tensor,
    alpha_p: torch.Tensor,
    sigma_p: torch.Tensor,
) -> StepCoefs:
    """DPM-Solver++(2M) ([DPM++] Algorithm 2, docs/spec.md section 3) with the previous grid time p > t:
    `h = lambda_s - lambda_t`, `r = (lambda_t - lambda_p)/h`, `k_z = sigma_s/sigma_t`,
    `k_x = alpha_s*(1 - exp(-h/2))*(1 + 1/(2r))`, `k_prev = -alpha_s*(1 - exp(-h/2))/(2r)`.
    A step without a previous x_hat (the first) uses `k_z` and `alpha_s*(1 - exp(-h/2))` as k_x
    (first order, i.e. DDIM): the sampler's plan passes k_prev = None there."""
    lambda_t = 2.0 * (torch.log(alpha_t) - torch.log(sigma_t))
    lambda_s = 2.0 * (torch.log(alpha_s) - torch.log(sigma_s))
    lambda_p = 2.0 * (torch.log(alpha_p) - torch.log(sigma_p))
    h = lambda_s - lambda_t
    phi = -alpha_s * torch.expm1(-0.5 * h)
    half_inv_r = 0.5 * h / (lambda_t - lambda_p)
    first = torch.zeros_like(h, dtype=torch.bool)
    first[0] = True  # the plan's first step: no previous x_hat
    k_x = torch.where(first, phi, phi * (1.0 + half_inv_r))
    return StepCoefs(sigma_s / sigma_t, k_x, None, None, torch.where(first, 0.0, -phi * half_inv_r))


def step_rule(sampler: str, eta: float, variance: str, steps: int = 1, schedule: Any = None) -> StepRule:
    """The step formula of `sampler` ("ddim" with `eta`, "ancestral" with `variance`, "stochastic"
    or "dpmpp_2m" on the grid of `steps` of `schedule`), as the engine's `plan` takes it:
    (alpha_t, sigma_t, alpha_s, sigma_s) -> StepCoefs, all of plan's steps (t_i = i/N, i = N .. 1)
    at once."""
    if sampler == "ddim":
        return partial(ddim_coefs, eta=eta)
    if sampler == "ancestral":
        return partial(ancestral_coefs, variance=variance)
    t = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
    if sampler == "dpmpp_2m":  # p = t + 1/N; the first step's p (above 1) is not used
        alpha_p, sigma_p = on_cpu(schedule.alpha_sigma(torch.clamp(t + 1.0 / steps, max=1.0)))
        return partial(dpmpp_2m_coefs, alpha_p=alpha_p, sigma_p=sigma_p)
    alpha_k, sigma_k = on_cpu(schedule.alpha_sigma(torch.clamp(t - 2.0 / steps, min=0.0)))
    return partial(stochastic_coefs, alpha_k=alpha_k, sigma_k=sigma_k)


def _step_inputs(z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param, out_uncond=None, w=0.0):
    """The checked inputs of a step, and `apply`'s guidance arguments (docs/spec.md section 8):
    `out_uncond` and `w` (fp32 (B,)) when `out_uncond` is given, else none."""
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
    guide = {}
    if out_uncond is not None:
        out_uncond = tensor("out_uncond", out_uncond)
        like("out_uncond", out_uncond, "z_t", z_t)
        out_matches(out_uncond, z_t, param, "out_uncond")
        guide = {"out_uncond": out_uncond, "w": coef("w", w, b, device)}
    elif isinstance(w, torch.Tensor) or w != 0:
        if bool((torch.as_tensor(w) != 0).any()):
            raise ValueError("w > 0 needs out_uncond, the output with the null label")
    check_coefs(
        positive={"alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_s": alpha_s},
        nonnegative={"sigma_s": sigma_s, **{k: v for k, v in guide.items() if k == "w"}},
        before=("sigma_s", "sigma_t"),
    )
    if guide:
        guide["w"] = guide["w"].to(torch.float32).contiguous()
    return z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param, guide


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


def schedule_arg(schedule: Any) -> Any:
    """`schedule` itself, which must have `alpha_sigma(t)` (e.g. a `CosineSchedule`)."""
    if not callable(getattr(schedule, "alpha_sigma", None)):
        raise ValueError(
            f"schedule must be a schedule with alpha_sigma(t), e.g. pd_fast.CosineSchedule(), "
            f"got {schedule!r}"
        )
    return schedule


def _seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or not 0 <= operator.index(seed) < 2**64:
        raise ValueError(f"seed must be None or an integer in [0, 2**64), got {seed!r}")
    return operator.index(seed)


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
    *,
    clip: bool = False,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    out_uncond: torch.Tensor | None = None,
    w: Any = 0.0,
) -> torch.Tensor:
    """One DDIM step from t to s < t ([DDIM] Eq. 12; [PD] Eq. 7 for eta = 0; see `ddim_coefs`).

    z_t, noise: (B, ...) fp32/fp16/bf16; out as in `predict_x_eps`; coefficients float, 0-d or (B,).
    `noise` is needed for eta > 0 and ignored for eta = 0. Returns z_s in z_t's dtype.
    Guided (docs/spec.md section 8): with `out_uncond` (the output with the null label, like `out`),
    `out` is the conditional output and the step uses `guided_x_eps` with weight `w` (float, 0-d
    or (B,)), in the same fused pass.
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param, guide = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param, out_uncond, w
    )
    eta = _eta(eta)
    noise = _noise(noise, z_t) if eta > 0 else None
    backend = backend_for(z_t)
    k = ddim_coefs(alpha_t, sigma_t, alpha_s, sigma_s, eta)
    return apply(backend, z_t, out, prepare(alpha_t, sigma_t, k, backend), param, clip, noise, **guide)


def ancestral_step(
    z_t: torch.Tensor,
    out: torch.Tensor,
    alpha_t: Any,
    sigma_t: Any,
    alpha_s: Any,
    sigma_s: Any,
    param: str,
    *,
    clip: bool = False,
    variance: str = "fixed_large",
    noise: torch.Tensor,
    out_uncond: torch.Tensor | None = None,
    w: Any = 0.0,
) -> torch.Tensor:
    """One ancestral step: a draw from the DDPM posterior q(z_s | z_t, x = x_hat)
    ([DDPM] Eq. 6-7; official `dpm.py` sampler 'noisy'; see `ancestral_coefs`).

    z_t, noise: (B, ...); out as in `predict_x_eps`; coefficients float, 0-d or (B,).
    Guided with `out_uncond` and `w` as `ddim_step`.
    """
    z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param, guide = _step_inputs(
        z_t, out, alpha_t, sigma_t, alpha_s, sigma_s, param, out_uncond, w
    )
    variance = _variance(variance)
    noise = _noise(noise, z_t)
    backend = backend_for(z_t)
    k = ancestral_coefs(alpha_t, sigma_t, alpha_s, sigma_s, variance)
    return apply(backend, z_t, out, prepare(alpha_t, sigma_t, k, backend), param, clip, noise, **guide)


@torch.no_grad()
def sample(
    model: Model,
    z: torch.Tensor,
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
    cond: torch.Tensor | None = None,
    null_cond: torch.Tensor | None = None,
    w: Any = 0.0,
    cuda_graph: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Sample with `steps` network evaluations on the grid `t_i = i / steps`, `i = steps .. 1`, from
    `z = z_1` (docs/spec.md section 3). The last step (to t = 0) returns `x_hat`, not `z_0`.
    sampler: "ddim" (with `eta`), "ancestral" (with `variance`), "stochastic", [GD]'s N-step
    sampler (docs/spec.md section 8: a DDIM step to t - 2/N, then forward noise back to t - 1/N,
    as one fused step; the last step deterministic), or "dpmpp_2m", DPM-Solver++(2M) ([DPM++]
    Algorithm 2, `dpmpp_2m_coefs`; first step first order, the last x_hat; on the Triton path the
    term in the previous x_hat is a torch pass after the fused step).
    Conditional models (docs/spec.md section 8): with `labels` (an int, or integers (B,): a tensor, a
    NumPy array or a list) the model is called `model(z, t, labels)`, and, if some w > 0, also `model(z,
    t, null)` with labels `NULL_LABEL` = -1; the steps then use the guided prediction with weight `w`
    (float, 0-d or (B,), >= 0). A tensor condition instead (e.g. prompt embeddings (B, L, D)): `cond`,
    a floating tensor (B, ...) on z's device, in place of the labels, and `null_cond` (cond's trailing
    shape, dtype and device, first dim 1 or B: e.g. the empty prompt's embedding) in place of the null
    label; their checks read no values (no host sync).

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
    schedule = schedule_arg(schedule)
    seed = _seed(seed)
    z = tensor("z", z)
    if cuda_graph and not z.is_cuda:
        raise ValueError(f"cuda_graph=True needs z on a CUDA device, got {z.device}")
    guide = guide_for(labels, w, z, model, cond=cond, null_cond=null_cond)
    backend = backend_for(z)
    steps_plan = plan(z, steps, schedule, step_rule(sampler, eta, variance, steps, schedule), backend)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=z.device)
        generator.manual_seed(seed)
    if cuda_graph:
        return graphed_loop(model, z, steps_plan, param, clip, generator, backend, guide)
    return loop(model, z, steps_plan, param, clip, generator, backend, progress, guide=guide)


def guide_for(
    labels: Any,
    w: Any,
    z: torch.Tensor,
    model: Any = None,
    rules: tuple[bool, int | None] | None = None,
    *,
    cond: torch.Tensor | None = None,
    null_cond: torch.Tensor | None = None,
) -> Guide | None:
    """How `sample` calls the model (docs/spec.md section 8): None without a condition; with labels
    (or a tensor `cond`), the w of the guided steps, or None in place of w when every w is 0 (one call
    per step). Labels are checked against `rules`, the model's `label_rules` (worked out from `model`
    when None). `w` given as floats or CPU tensors is checked on the CPU (no host sync); labels cost
    one host sync (their range), a tensor condition none (`cond_tensors`)."""
    if labels is None and cond is None and null_cond is None and not isinstance(w, torch.Tensor) and w == 0:
        return None  # unconditional: no checks, no host sync
    if labels is not None and cond is not None:
        raise ValueError("labels and cond are exclusive: give class labels or a tensor condition, not both")
    if null_cond is not None and cond is None:
        raise ValueError("null_cond needs cond: it is the null condition that guidance sets against cond")
    batch, device = z.shape[0], z.device
    w = coefs_for({"w": w}, batch, device)["w"]
    check_coefs(positive={}, nonnegative={"w": w})
    guided = bool((w > 0).any())
    if guided and labels is None and cond is None:
        raise ValueError(
            "w > 0 needs labels (or cond and null_cond): guidance combines the model with and without them"
        )
    if guided and cond is not None and null_cond is None:
        raise ValueError("w > 0 with cond needs null_cond (the null condition, e.g. the empty prompt's)")
    if labels is None and cond is None:
        return None
    takes, classes = rules if rules is not None else label_rules(model)
    name = "labels" if cond is None else "cond"
    if not takes:
        what = "labels" if cond is None else "condition"
        raise ValueError(
            f"{name} given, but the model takes no {what}: a conditional model is called model(z, t, {name})"
        )
    w = to_device(w, device, torch.float32).contiguous() if guided else None
    if cond is not None:
        cond, null_cond = cond_tensors(cond, null_cond, z)
        return Guide(cond, null_cond if guided else None, w)
    labels = labels_tensor(labels, batch, device, classes)
    return Guide(labels, torch.full_like(labels, NULL_LABEL), w)


class Sampler:
    """`sample` for a fixed model, example shape, step count and schedule, planned once
    (docs/spec.md section 3; the steps of `ddim_coefs` / `ancestral_coefs`): the per-step
    coefficients are computed on the first call with a given batch size and reused, and with
    `cuda_graph=True` the whole loop is captured in a CUDA graph on that first call and only
    replayed afterwards (a serving loop pays the capture once, not per call as
    `sample(cuda_graph=True)` does). Elsewhere it runs `sample`'s plain loop.

    `shape`: one example's shape (z is (B, *shape)); `device`, `dtype`: those of z (fp32, fp16 or
    bf16). `sampler(z, generator)` returns what `sample(model, z, steps, schedule, param, ...)`
    returns, the noise of stochastic samplers drawn from `generator` (else torch's default
    generator of the device) as `sample` draws it from its seeded generator: `sample(..., seed=s)`
    equals `sampler(z, torch.Generator(device).manual_seed(s))`. `sampler.sample(batch, generator)`
    first draws `z = randn((batch, *shape))` from the same generator. A conditional model takes
    `labels=` (or `cond=` and `null_cond=`) and `w=` on each call, as `sample` does (a captured graph
    per kind of call: without a condition, with labels, with labels guided, and with a tensor
    condition of each shape and dtype, guided or not; each call copies its condition and w into the
    graph's). Runs under
    `torch.no_grad()`; with `cuda_graph=True` the model must be capturable (no host syncs), and
    seeded or stochastic sampling needs torch >= 2.4.
    """

    def __init__(
        self,
        model: Model,
        shape: Any,
        steps: int,
        schedule: Any,
        param: str,
        *,
        clip: bool = False,
        sampler: str = "ddim",
        eta: float = 0.0,
        variance: str = "fixed_large",
        device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
        cuda_graph: bool = False,
    ) -> None:
        self.steps = steps_count(steps)
        self.param = param_name(param)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.shape, self.device = _example_shape(shape), _sampler_device(device, cuda_graph)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.model, self.schedule, self.clip, self.dtype = model, schedule_arg(schedule), bool(clip), dtype
        self.cuda_graph = bool(cuda_graph)
        self.rule = step_rule(sampler, _eta(eta), _variance(variance), self.steps, self.schedule)
        self.label_rules = label_rules(model)  # what labels the model takes: worked out once
        self._plans: dict[tuple[int, str], Any] = {}  # (batch, backend) -> Plan or CapturedLoop

    def _prepared(self, z: torch.Tensor, backend: str, guide: Guide | None) -> Any:
        # a captured graph makes one model call a step, or two when guided, and reads conditions
        # of one shape and dtype: one graph for each kind
        key = (z.shape[0], backend, _guide_kind(guide))
        prepared = self._plans.get(key)
        if prepared is None:
            prepared = plan(z, self.steps, self.schedule, self.rule, backend)
            if self.cuda_graph:
                generator = torch.Generator(device=z.device) if prepared.noisy else None
                if guide is not None:  # the graph reads these tensors: each call copies its own in
                    guide = Guide(*(None if g is None else g.clone() for g in guide))
                prepared = CapturedLoop(
                    self.model, z, prepared, self.param, self.clip, generator, backend, guide
                )
            self._plans[key] = prepared
        elif self.cuda_graph and guide is not None:
            for static, value in zip(prepared.guide, guide, strict=True):
                if static is not None:
                    static.copy_(value)
        return prepared

    @torch.no_grad()
    def __call__(
        self,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        labels: Any = None,
        cond: torch.Tensor | None = None,
        null_cond: torch.Tensor | None = None,
        w: Any = 0.0,
    ) -> torch.Tensor:
        """x_hat from `z = z_1`, (B, *shape) on the sampler's device, in its dtype; a conditional
        model gets `labels` (or `cond` and `null_cond`) and the guidance weight `w` as in `sample`."""
        z = _sampler_input(z, generator, self.shape, self.device, self.dtype)
        guide = guide_for(labels, w, z, rules=self.label_rules, cond=cond, null_cond=null_cond)
        backend = backend_for(z)
        prepared = self._prepared(z, backend, guide)
        if not self.cuda_graph:
            return loop(self.model, z, prepared, self.param, self.clip, generator, backend, guide=guide)
        return prepared(z) if not prepared.plan.noisy else _replay_noisy(prepared, z, generator)

    @torch.no_grad()
    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        *,
        labels: Any = None,
        cond: torch.Tensor | None = None,
        null_cond: torch.Tensor | None = None,
        w: Any = 0.0,
    ) -> torch.Tensor:
        """`self(z, generator, labels=labels, cond=cond, null_cond=null_cond, w=w)` with
        `z = randn((batch, *shape))` drawn first from `generator`."""
        if isinstance(batch, bool) or not hasattr(batch, "__index__") or operator.index(batch) < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        batch = operator.index(batch)
        z = torch.randn((batch, *self.shape), generator=generator, device=self.device, dtype=self.dtype)
        return self(z, generator, labels=labels, cond=cond, null_cond=null_cond, w=w)


def _guide_kind(guide: Guide | None) -> Any:
    """What a captured graph of `Sampler` depends on beyond the batch: no condition, labels (with
    or without guidance), or a tensor condition's shape and dtype (with or without guidance)."""
    if guide is None:
        return None
    if not guide.cond.is_floating_point():
        return "guided" if guide.w is not None else "labels"
    return ("cond", tuple(guide.cond.shape), guide.cond.dtype, guide.w is not None)


def _example_shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(s) for s in shape)
    except TypeError as err:
        raise ValueError(f"shape must be a tuple of positive integers, got {shape!r}") from err
    if any(s < 1 for s in out):
        raise ValueError(f"shape must be a tuple of positive integers, got {shape!r}")
    return out


def _sampler_device(device: Any, cuda_graph: bool) -> torch.device:
    """`device` as a torch.device; a bare "cuda" is the current CUDA device."""
    try:
        out = torch.device(device)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"device must name a torch device, got {device!r}") from err
    if out.type == "cuda" and out.index is None and torch.cuda.is_available():
        out = torch.device("cuda", torch.cuda.current_device())
    if cuda_graph and out.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {out}")
    return out


def _replay_noisy(prepared: Any, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Replay a captured stochastic loop: the graph draws from its own registered generator, so
    it gets the caller's generator state (the device's default one if None), and hands it back."""
    source = generator
    if source is None:
        index = z.device.index if z.device.index is not None else torch.cuda.current_device()
        source = torch.cuda.default_generators[index]
    prepared.generator.set_state(source.get_state())
    x_hat = prepared(z)
    source.set_state(prepared.generator.get_state())
    return x_hat


def _sampler_input(
    z: Any, generator: Any, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """`z` checked against a `Sampler`'s example shape, device and dtype; `generator` a
    torch.Generator or None."""
    z = tensor("z", z)
    if tuple(z.shape[1:]) != shape:
        raise ValueError(f"z must have shape (B, *{shape}), got {tuple(z.shape)}")
    if z.device != device:
        raise ValueError(f"z is on {z.device} but the sampler runs on {device}")
    if z.dtype != dtype:
        raise ValueError(f"z has dtype {z.dtype} but the sampler runs in {dtype}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return z
