"""The step engine under `pd_fast.sampling` and `pd_fast.distillation` (docs/spec.md sections 2-3):
package-internal, with public names so that those modules and the benchmarks share it.

Every step is one linear combination with per-example coefficients
`z_s = k_z*z_t + k_x*x_hat + k_eps*eps_hat + k_noise*noise` ((x_hat, eps_hat) from the network
output, docs/spec.md section 2). The step formulas give the coefficients in float64 (`ddim_coefs`,
`ancestral_coefs` in sampling.py; `x_hat_coefs` here, the sampler's last call); `prepare` casts
them to fp32; `apply` runs the combination in fp32, in one fused pass on the Triton path
(`kernels.sampler_step`) or as the torch expression on the torch path. `plan` computes every
step of the sampler before its `loop` (no host work inside the loop, so it can be captured in a
CUDA graph: `graphed_loop`). A `Guide` makes every step classifier-free guided (docs/spec.md
section 8): the model is called with the condition (labels or a tensor) and, when guided, with the
null condition, and `apply` combines the two predictions. Nothing here checks its inputs: the
public functions did.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ._backend import kernels
from ._checks import like, out_matches, per_example, tensor
from .parameterizations import guided_from_outs, x_eps_from_out

Model = Callable[..., torch.Tensor]


class StepCoefs(NamedTuple):
    """Per-example coefficients of `z_s = k_z*z_t + k_x*x_hat + k_eps*eps_hat + k_noise*noise`,
    float64 tensors; None marks a term the step does not have. A multistep sampler (DPM-Solver++(2M),
    docs/spec.md section 3) adds `k_prev*x_hat_prev`, the previous model call's x_hat, which `loop`
    keeps; `prepare` and `apply` see only the first four."""

    k_z: torch.Tensor | None
    k_x: torch.Tensor
    k_eps: torch.Tensor | None
    k_noise: torch.Tensor | None
    k_prev: torch.Tensor | None = None


#: a step formula: (alpha_t, sigma_t, alpha_s, sigma_s), float64 tensors of one shape -> StepCoefs
StepRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], StepCoefs]

#: what `apply` takes: (alpha_t, sigma_t, k_z, k_x, k_eps, k_noise) as fp32 (B,) tensors
Prepared = tuple[torch.Tensor | None, ...]


class Guide(NamedTuple):
    """How a conditional model is called (docs/spec.md section 8): `model(z, t, cond)`, and, when
    `w` is set (fp32 (B,), some w > 0), also `model(z, t, null)` for the guided prediction. The
    condition is class labels (int64 (B,); null: all NULL_LABEL) or a floating tensor (B, ...)
    (null: the null condition, e.g. the empty prompt's embedding, broadcast to the batch)."""

    cond: torch.Tensor
    null: torch.Tensor | None  # None for a tensor condition when no w > 0
    w: torch.Tensor | None


def x_hat_coefs(alpha_t: torch.Tensor) -> StepCoefs:
    """`x_hat` itself (the sampler's last step, docs/spec.md section 3): k_x = 1, no other term."""
    return StepCoefs(None, torch.ones_like(alpha_t), None, None)


def prepare(alpha_t: torch.Tensor, sigma_t: torch.Tensor, k: StepCoefs, backend: str) -> Prepared:
    """Float64 (B,) coefficients as contiguous fp32 (B,) tensors; on the Triton path an absent
    term becomes a zero coefficient (the kernel always has all four)."""
    coefs = (alpha_t, sigma_t, *k[:4])
    if backend == "triton":
        coefs = tuple(torch.zeros_like(alpha_t) if c is None else c for c in coefs)
    return tuple(None if c is None else c.to(torch.float32).contiguous() for c in coefs)


def apply(
    backend: str,
    z: torch.Tensor,
    out: torch.Tensor,
    coefs: Prepared,
    param: str,
    clip: bool,
    noise: torch.Tensor | None,
    out_uncond: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """`z_s = k_z*z + k_x*x_hat + k_eps*eps_hat + k_noise*noise` in fp32, returned in z's dtype.
    `noise` is None exactly when k_noise is absent. With `out_uncond` and `w` (fp32 (B,)) the
    prediction is guided: `x_c + w*(x_c - x_u)` (docs/spec.md section 8)."""
    alpha_t, sigma_t, k_z, k_x, k_eps, k_noise = coefs
    if backend == "triton":
        z_s, _ = kernels().sampler_step(
            z, out, alpha_t, sigma_t, k_z, k_x, k_eps, k_noise, param, clip, noise, out_uncond=out_uncond, w=w
        )
        return z_s
    nd = z.ndim
    z32 = z.float()
    x_hat, eps_hat = _x_eps_torch(z32, out, alpha_t, sigma_t, param, clip, out_uncond, w)
    z_s = per_example(k_x, nd) * x_hat
    if k_z is not None:
        z_s = per_example(k_z, nd) * z32 + z_s
    if k_eps is not None:
        z_s = z_s + per_example(k_eps, nd) * eps_hat
    if k_noise is not None:
        z_s = z_s + per_example(k_noise, nd) * noise.float()
    return z_s.to(z.dtype)


def _x_eps_torch(
    z32: torch.Tensor,
    out: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    param: str,
    clip: bool,
    out_uncond: torch.Tensor | None,
    w: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, eps_hat) in fp32 on the torch path: the network's own (docs/spec.md section 2), or the
    guided combination when `out_uncond` is given (section 8); (B,) coefficients."""
    nd = z32.ndim
    alpha_t, sigma_t = per_example(alpha_t, nd), per_example(sigma_t, nd)
    if out_uncond is None:
        return x_eps_from_out(z32, out.float(), alpha_t, sigma_t, param, clip)
    return guided_from_outs(
        z32, out.float(), out_uncond.float(), alpha_t, sigma_t, param, per_example(w, nd), clip
    )


def apply_multistep(
    backend: str,
    z: torch.Tensor,
    out: torch.Tensor,
    coefs: Prepared,
    k_prev: torch.Tensor | None,
    x_hat_prev: torch.Tensor | None,
    param: str,
    clip: bool,
    out_uncond: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply` plus `k_prev*x_hat_prev` (a multistep step, docs/spec.md section 3), and this step's
    x_hat (in z's dtype) for the next. The Triton kernel has no slot for a second x_hat: it runs the
    rest of the step fused and writes x_hat, and the `k_prev` term is one torch pass after it (in fp32
    on the kernel's output). No noise term."""
    alpha_t, sigma_t, k_z, k_x, k_eps, _ = coefs
    nd = z.ndim
    if backend == "triton":
        z_s, x_hat = kernels().sampler_step(
            z, out, alpha_t, sigma_t, k_z, k_x, k_eps, torch.zeros_like(k_x), param, clip, None,
            write_x_hat=True, out_uncond=out_uncond, w=w,
        )  # fmt: skip
        if k_prev is not None:
            z_s = (z_s.float() + per_example(k_prev, nd) * x_hat_prev.float()).to(z.dtype)
        return z_s, x_hat
    z32 = z.float()
    x_hat, _ = _x_eps_torch(z32, out, alpha_t, sigma_t, param, clip, out_uncond, w)
    z_s = per_example(k_x, nd) * x_hat
    if k_z is not None:
        z_s = per_example(k_z, nd) * z32 + z_s
    if k_prev is not None:
        z_s = z_s + per_example(k_prev, nd) * x_hat_prev.float()
    return z_s.to(z.dtype), x_hat.to(z.dtype)


def on_cpu(pair: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A schedule's (alpha, sigma) as float64 CPU tensors (pd_fast schedules give tensors; any
    schedule with an `alpha_sigma` giving arrays works too)."""
    return tuple(
        c
        if isinstance(c, torch.Tensor) and c.dtype == torch.float64 and c.device.type == "cpu"
        else torch.as_tensor(c, dtype=torch.float64).cpu()
        for c in pair
    )


def model_out(
    model: Model, z: torch.Tensor, t: torch.Tensor, param: str, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """`model(z, t)`, or `model(z, t, cond)` (labels or a tensor condition), checked: a tensor of
    z's dtype and device, shaped as `param` wants."""
    out = tensor("model output", model(z, t) if cond is None else model(z, t, cond))
    like("model output", out, "z", z)
    out_matches(out, z, param, name="model output")
    return out


def step_outs(
    model: Model, z: torch.Tensor, t: torch.Tensor, param: str, guide: Guide | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's output at (z, t) (with the condition, if any), and `apply`'s guidance arguments
    (`out_uncond`, the output with the null condition, and `w`) when the step is guided."""
    if guide is None:
        return model_out(model, z, t, param), {}
    out = model_out(model, z, t, param, guide.cond)
    if guide.w is None:
        return out, {}
    return out, {"out_uncond": model_out(model, z, t, param, guide.null), "w": guide.w}


@dataclass
class Plan:
    """Everything the sampler's loop needs, computed before it (no host work inside the loop)."""

    t: list[torch.Tensor]  # model times, (B,) in z's dtype, one per model call
    coefs: list[Prepared]  # one per model call; the last gives x_hat
    noisy: bool  # whether the steps (all but the last) draw noise
    prev: list[torch.Tensor | None] | None = None  # a multistep sampler's k_prev, fp32 (B,), per call


def plan(z: torch.Tensor, steps: int, schedule: Any, rule: StepRule, backend: str) -> Plan:
    """Per-step coefficients on the grid `t_i = i/N`, i = N .. 1 (docs/spec.md section 3): `rule`
    for the steps to `s = t - 1/N`, `x_hat_coefs` for the last call; schedule values and
    coefficients in float64 (all steps at once), then one copy to z's device in fp32.

    Rows are padded to a multiple of 8 entries so that every (B,) view starts 16-byte aligned
    (a kernel compiled for one step fits every other, which CUDA-graph capture relies on)."""
    batch, device = z.shape[0], z.device
    t = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
    s = torch.arange(steps - 1, -1, -1, dtype=torch.float64) / steps
    alpha_t, sigma_t = on_cpu(schedule.alpha_sigma(t))
    alpha_s, sigma_s = on_cpu(schedule.alpha_sigma(s))
    k = rule(alpha_t, sigma_t, alpha_s, sigma_s)
    last = x_hat_coefs(alpha_t)
    zero = torch.zeros_like(alpha_t)
    columns = [alpha_t, sigma_t]  # one row per model call; the last row is the x_hat-only call
    for c_step, c_last in zip(k[:4], last[:4], strict=True):
        c_step, c_last = (zero if c is None else c for c in (c_step, c_last))
        columns.append(torch.cat([c_step[:-1], c_last[-1:]]))
    present_step = (True, True) + tuple(c is not None or backend == "triton" for c in k[:4])
    present_last = (True, True) + tuple(c is not None or backend == "triton" for c in last[:4])
    padded = -(-batch // 8) * 8
    table = torch.stack(columns, dim=1).to(device=device, dtype=torch.float32)  # (N, 6)
    table = table.unsqueeze(-1).expand(steps, 6, padded).contiguous()
    times = t.to(device=device, dtype=z.dtype).unsqueeze(-1).expand(steps, padded).contiguous()
    coefs = []
    for j in range(steps):
        present = present_last if j == steps - 1 else present_step
        coefs.append(tuple(table[j, c, :batch] if present[c] else None for c in range(6)))
    prev = None
    if k.k_prev is not None:  # used from the second step on; the last call has none
        k_prev = (
            k.k_prev.to(device=device, dtype=torch.float32).unsqueeze(-1).expand(steps, padded).contiguous()
        )
        prev = [k_prev[j, :batch] if 0 < j < steps - 1 else None for j in range(steps)]
    return Plan([times[j, :batch] for j in range(steps)], coefs, k.k_noise is not None, prev)


def loop(
    model: Model,
    z: torch.Tensor,
    plan: Plan,
    param: str,
    clip: bool,
    generator: torch.Generator | None,
    backend: str,
    progress: bool = False,
    calls: list[int] | None = None,
    guide: Guide | None = None,
) -> torch.Tensor:
    """The sampler's loop over `calls` (default all): one model call (two when guided) and one step
    each; the last call returns x_hat. Noise: one `randn(z.shape)` in z's dtype per step with noise,
    in order. A multistep plan (`plan.prev`) keeps each call's x_hat for the next step."""
    steps = len(plan.t)
    x_hat_prev = None
    for j in tqdm(calls or range(steps), disable=not progress, desc="sampling", leave=False):
        out, guided = step_outs(model, z, plan.t[j], param, guide)
        if plan.prev is not None and j < steps - 1:
            k_prev = plan.prev[j] if x_hat_prev is not None else None
            z, x_hat_prev = apply_multistep(
                backend, z, out, plan.coefs[j], k_prev, x_hat_prev, param, clip, **guided
            )
            continue
        noise = None
        if plan.noisy and j < steps - 1:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = apply(backend, z, out, plan.coefs[j], param, clip, noise, **guided)
    return z


def graph_generators_supported() -> bool:
    """Whether this torch can replay a seeded generator's draws in a CUDA graph
    (`CUDAGraph.register_generator_state`, torch >= 2.4)."""
    return hasattr(torch.cuda.CUDAGraph, "register_generator_state")


def _register_generator(graph: Any, generator: torch.Generator) -> None:
    if not graph_generators_supported():
        raise ValueError(
            f"a seeded or stochastic sampler in a CUDA graph needs torch >= 2.4 "
            f"(CUDAGraph.register_generator_state); this is torch {torch.__version__}"
        )
    with warnings.catch_warnings():  # newer torch registers lazily and deprecates the call
        warnings.simplefilter("ignore")
        graph.register_generator_state(generator)


class CapturedLoop:
    """`loop` captured once in a CUDA graph on a static copy of z; each call copies its z in,
    replays the graph and returns a copy of x_hat (which lives in the graph's memory pool).

    The object holds everything the graph reads or writes (the model, the static z, the plan's
    tensors, the generator, the output), so that none of it is freed and reused while the graph
    lives. A warm-up of the first and the last call runs first on a side stream (kernels compiled,
    libraries initialised); the capture runs on that same stream, passed explicitly (not torch's
    process-wide capture stream). The warm-up's draws are undone: `generator` (None: the
    device's default generator) is set back to its state before it, so a replay draws what an
    eager run from the same state draws, and advances the generator as that run would."""

    def __init__(
        self,
        model: Model,
        z: torch.Tensor,
        plan: Plan,
        param: str,
        clip: bool,
        generator: torch.Generator | None,
        backend: str,
        guide: Guide | None = None,
    ) -> None:
        self.model, self.plan, self.param, self.clip, self.backend = model, plan, param, clip, backend
        self.guide = guide
        self.static_z = z.clone()
        device = z.device
        self.generator = generator
        if plan.noisy and generator is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            generator = torch.cuda.default_generators[index]
        warm_up = sorted({0, len(plan.t) - 1})
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            state = generator.get_state() if plan.noisy else None
            with torch.cuda.stream(side):
                loop(
                    model,
                    self.static_z,
                    plan,
                    param,
                    clip,
                    self.generator,
                    backend,
                    calls=warm_up,
                    guide=guide,
                )
            torch.cuda.current_stream(device).wait_stream(side)
            if state is not None:
                generator.set_state(state)
            self.graph = torch.cuda.CUDAGraph()
            if self.generator is not None:  # the default generator is registered by torch itself
                _register_generator(self.graph, self.generator)
            with torch.cuda.graph(self.graph, stream=side):
                self.x_hat = loop(
                    model, self.static_z, plan, param, clip, self.generator, backend, guide=guide
                )
            self.stream = side

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.static_z.copy_(z)
        self.graph.replay()
        return self.x_hat.clone()


def graphed_loop(
    model: Model,
    z: torch.Tensor,
    plan: Plan,
    param: str,
    clip: bool,
    generator: torch.Generator | None,
    backend: str,
    guide: Guide | None = None,
) -> torch.Tensor:
    """`loop`, captured whole (model calls and steps) in one CUDA graph and replayed once
    (`CapturedLoop`): the noise is what an eager run from the generator's state draws."""
    return CapturedLoop(model, z, plan, param, clip, generator, backend, guide)(z)
