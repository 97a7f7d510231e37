"""How long N-step sampling takes, what one step costs, and how much of a step is the update
rather than the network. Usage: `python benchmarks/steps_vs_latency.py [--quick]`.

For every N in `--steps`, every model (the built-in `ResidualMLP` and `UNet`, sizes by flag) and
every backend available here, it times the full DDIM sampler (eta = 0, param 'v', cosine schedule,
fp32), and, separately, one network call and one update (the step from the network output to
z_s) as the sampler runs them. Backends:

- `pd_ref`: `pd_ref.sample` (NumPy, float64). Its network is the *same* torch model behind a NumPy
  wrapper (array -> fp32 tensor -> model -> float64 array; the conversions count as network time):
  every backend then runs the identical network with identical weights, so differences are the
  sampler's. A NumPy port of the UNet would time NumPy's convolutions instead, and be a second
  network to keep equal to the first.
- `naive_torch`: the loop a user writes by hand: per step the schedule as Python floats, then
  `x_hat = alpha_t*z - sigma_t*v`, `eps_hat = sigma_t*z + alpha_t*v`, `z = alpha_s*x_hat + sigma_s*eps_hat`.
- `diffusers`: the loop a diffusers user writes: `DDIMScheduler` (trailing spacing,
  v-prediction, eta = 0, `set_alpha_to_one`) built from the same cosine schedule through its betas
  (docs/spec.md section 9: `T = N * ceil(1000/N)` training steps, `cumprod(1 - beta)[k] =
  alpha_bar((k + 1)/T)`, so that its grid is `t = i/N`), then `set_timesteps(N)` and per step
  `scheduler.step(v, k, z)`, the network called at `t = (k + 1)/T`.
- `k_diffusion`: `k_diffusion.sampling.sample_euler` on the same network through a v-wrapper
  (a denoiser `D(x, sigma)` with k-diffusion's `sigma = sigma_t/alpha_t`, `x = z/alpha_t`), sigmas
  at `t = i/N` and 0. Optional: skipped with its reason where `k_diffusion` does not import
  (`pip install k-diffusion`; it is no dependency of this project).
- `pd_fast_torch`: `pd_fast.sample` with `PD_FAST_BACKEND=torch`.
- `triton` (CUDA only): `pd_fast.sample` on the default CUDA path (fused Triton step), eager launches.
- `triton_graph` (CUDA only): `pd_fast.Sampler(..., cuda_graph=True)`, which plans and captures the
  whole loop once (untimed) and replays it per call (copy in, replay, copy out: timed).
  `capture_ms_64_steps` records one `pd_fast.sample(..., cuda_graph=True)` call with N = 64, which
  captures and replays once. Its network and update times are replays of graphs of 16 calls, over 16.

Every backend's x_hat after 4 steps is compared with pd_ref's (`max_abs_diff_vs_pd_ref_at_4_steps`)
before it is timed. Per point (model and N): `--warmup` untimed runs of each backend (dropped for
long runs), then rounds in which every backend runs once, in turns (so that all see the same load
on a shared machine), up to `--repeats` rounds or `--budget` seconds per backend; the median and
the minimum are reported (`total_ms` and `per_step_ms` are medians, `total_ms_min` and
`per_step_ms_min` minima; the plot and the markdown summary use the median). torch runs on
`--threads` CPU threads (default 1, recorded as `torch_threads`): with several, a busy machine
inflates the timings badly (a parallel region waits for its slowest, descheduled thread).

Overhead mode (`--mode overhead` or `both`, the default): the network is trivial (`out = 0.5*z`,
one multiply; NumPy for pd_ref), so that a step's time is the sampler's own per-step cost; every
backend samples N = `--overhead-steps` (256) steps at each batch of `--overhead-batches`
(1, 64, 4096) of 8x8 images, the backends timed in turns as above. The JSON's
`overhead_us_per_step` holds `{backend: {batch: us}}` (total time / N, the trivial network's
multiply included for every backend alike) and `overhead_vs_diffusers` diffusers' time over each
backend's.

Writes `steps_vs_latency.json` and `steps_vs_latency.png` into `--out` (default
`benchmarks/results/`; a `--quick` run writes into a new temporary folder). Times depend on the
machine and its load: the JSON records the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch
from torch import nn

import pd_fast
import pd_ref
from pd_fast import _engine
from pd_fast.app.models import ResidualMLP, UNet
from pd_fast.sampling import step_rule

BACKENDS = ("pd_ref", "naive_torch", "diffusers", "k_diffusion", "pd_fast_torch", "triton", "triton_graph")
MODES = ("latency", "overhead", "both")
OVERHEAD_SHAPE = (1, 8, 8)  # the overhead mode's examples: 8x8 images
OVERHEAD_SCALE = 0.5  # its trivial network: out = 0.5 * z
MODELS = ("mlp", "unet")
PARAM = "v"
GRAPH_CALLS = 16  # calls per captured graph when timing one network call / one update in a graph
CHECK_STEPS = 4  # the step count of the consistency check against pd_ref


class Unavailable(Exception):
    """A backend that cannot run here; the message says why."""


@dataclass
class Backend:
    """What the benchmark times for one backend and one model."""

    name: str
    prepare: Callable[[int], Callable[[], Any]]  # N -> a call running N-step sampling
    network: Callable[[], Any]  # one network call
    update: Callable[[], Any]  # one update, as the sampler runs it
    network_note: str
    update_note: str
    env: str | None = None  # PD_FAST_BACKEND while it runs
    extra: dict[str, Any] = field(default_factory=dict)


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated integers, got {text!r}") from err
    if not steps or steps[0] < 1:
        raise argparse.ArgumentTypeError(f"--steps must be positive integers, got {text!r}")
    return steps


def parse_names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps",
        type=parse_steps,
        default=None,
        help="comma-separated step counts (default 1,2,4,...,1024; --quick: 1,...,64)",
    )
    p.add_argument("--models", type=parse_names(MODELS), default=list(MODELS))
    p.add_argument(
        "--backends",
        type=parse_names(BACKENDS),
        default=list(BACKENDS),
        help="those unavailable here are skipped with the reason printed",
    )
    p.add_argument("--batch", type=int, default=None, help="examples per batch (default 64; --quick 16)")
    p.add_argument("--mlp-dim", type=int, default=64, help="MLP data dimension (64 = flattened 8x8 digits)")
    p.add_argument("--mlp-hidden", type=int, default=256)
    p.add_argument("--mlp-depth", type=int, default=3)
    p.add_argument("--unet-channels", type=int, default=1)
    p.add_argument("--unet-size", type=int, default=8, help="UNet image height = width")
    p.add_argument("--unet-ch", type=int, default=32)
    p.add_argument("--unet-blocks", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the run (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per point (skipped for long runs)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point (default 5; --quick 3)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed runs per point before repeats stop (default 4; --quick 0.5)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="both",
        help="latency (the networks), overhead (a trivial network), or both",
    )
    p.add_argument(
        "--overhead-batches",
        type=parse_steps,
        default=None,
        help="batch sizes of the overhead mode (default 1,64,4096; --quick 1,64)",
    )
    p.add_argument(
        "--overhead-steps", type=int, default=None, help="N of the overhead mode (default 256; --quick 16)"
    )
    p.add_argument(
        "--overhead-repeats",
        type=int,
        default=None,
        help="timed rounds of the overhead mode (default 15; --quick 3), within --budget",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/; --quick: a new temporary folder)",
    )
    p.add_argument("--quick", action="store_true", help="small run: under a minute on 2 CPU cores")
    return p


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --quick and check the numbers."""
    quick = args.quick
    if args.steps is None:
        args.steps = [2**k for k in range(7 if quick else 11)]
    if args.batch is None:
        args.batch = 16 if quick else 64
    if args.repeats is None:
        args.repeats = 3 if quick else 5
    if args.budget is None:
        args.budget = 0.5 if quick else 4.0
    if args.overhead_batches is None:
        args.overhead_batches = [1, 64] if quick else [1, 64, 4096]
    if args.overhead_steps is None:
        args.overhead_steps = 16 if quick else 256
    if args.overhead_repeats is None:
        args.overhead_repeats = 3 if quick else 15
    if args.overhead_steps < 1:
        raise ValueError(f"--overhead-steps must be >= 1, got {args.overhead_steps}")
    args.out = _common.out_dir(args.out, quick)
    for name in (
        "batch",
        "mlp_dim",
        "mlp_hidden",
        "mlp_depth",
        "unet_channels",
        "unet_ch",
        "unet_blocks",
        "repeats",
        "overhead_repeats",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.unet_size < 2:
        raise ValueError(f"--unet-size must be >= 2, got {args.unet_size}")
    if args.warmup < 0 or args.budget <= 0:
        raise ValueError("--warmup must be >= 0 and --budget > 0")
    return args


def build(kind: str, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """The fixed network and the starting noise z_1. The zero-initialised last layer gets small
    random weights, so that the output (and the sampler's arithmetic) is not trivially zero."""
    if kind == "mlp":
        model: nn.Module = ResidualMLP(
            args.mlp_dim, hidden=args.mlp_hidden, depth=args.mlp_depth, param=PARAM
        )
        shape: tuple[int, ...] = (args.mlp_dim,)
    else:
        model = UNet(args.unet_channels, ch=args.unet_ch, blocks=args.unet_blocks, param=PARAM)
        shape = (args.unet_channels, args.unet_size, args.unet_size)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.out.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    z = torch.randn((args.batch, *shape), generator=gen)
    return model.to(device).eval(), z.to(device)


def model_summary(model: nn.Module, z: torch.Tensor) -> dict[str, Any]:
    return {
        "config": model.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_shape": list(z.shape[1:]),
        "elements_per_batch": z.numel(),
    }


# --- the backends -------------------------------------------------------------------------------


def naive_sample(model: nn.Module, z: torch.Tensor, steps: int, schedule: Any) -> torch.Tensor:
    """The sampler a user writes by hand: DDIM (eta = 0) with v-prediction ([PD] Eq. 7, docs/spec.md
    sections 2-3), one formula per line, the schedule as Python floats."""
    t_ones = torch.ones(z.shape[0], device=z.device, dtype=z.dtype)
    for i in range(steps, 0, -1):
        alpha_t, sigma_t = (float(c) for c in schedule.alpha_sigma(i / steps))
        v = model(z, t_ones * (i / steps))
        x_hat = alpha_t * z - sigma_t * v
        if i == 1:
            return x_hat
        eps_hat = sigma_t * z + alpha_t * v
        alpha_s, sigma_s = (float(c) for c in schedule.alpha_sigma((i - 1) / steps))
        z = alpha_s * x_hat + sigma_s * eps_hat
    raise AssertionError("unreachable: steps >= 1")


def pd_fast_update(model: nn.Module, z: torch.Tensor, backend: str) -> tuple[Callable[[], Any], str]:
    """One update as `pd_fast.sample` runs it (the step engine's `plan` / `apply`: coefficients
    prepared before the loop, no argument checks)."""
    t = torch.full((z.shape[0],), 0.5, device=z.device)
    out = model(z, t)
    plan = _engine.plan(z, 4, pd_fast.CosineSchedule(), step_rule("ddim", 0.0, "fixed_large"), backend)
    coefs = plan.coefs[2]  # the step t = 2/4 -> s = 1/4
    return (lambda: _engine.apply(backend, z, out, coefs, PARAM, False, None)), "pd_fast._engine.apply"


def make_pd_ref(model: nn.Module, z: torch.Tensor, network: Any = None) -> Backend:
    """`network`: a NumPy network (the overhead mode's); by default the torch model behind a wrapper."""
    device, dtype = z.device, z.dtype

    def network_np(z_np: np.ndarray, t_np: np.ndarray) -> np.ndarray:
        z_t = torch.from_numpy(np.ascontiguousarray(z_np)).to(device=device, dtype=dtype)
        t_t = torch.from_numpy(np.ascontiguousarray(t_np)).to(device=device, dtype=dtype)
        return model(z_t, t_t).double().cpu().numpy()

    network = network or network_np
    schedule = pd_ref.CosineSchedule()
    z_np = z.double().cpu().numpy()
    t_np = np.full(z.shape[0], 0.5)
    out_np = network(z_np, t_np)
    a_t, s_t = schedule.alpha_sigma(0.5)
    a_s, s_s = schedule.alpha_sigma(0.25)
    return Backend(
        "pd_ref",
        prepare=lambda n: lambda: pd_ref.sample(network, z_np, n, schedule, PARAM),
        network=lambda: network(z_np, t_np),
        update=lambda: pd_ref.ddim_step(z_np, out_np, a_t, s_t, a_s, s_s, PARAM),
        network_note="torch model behind a NumPy wrapper (conversions included)"
        if network is network_np
        else "NumPy network",
        update_note="pd_ref.ddim_step, float64 (with its argument checks, as pd_ref.sample calls it)",
    )


def make_naive(model: nn.Module, z: torch.Tensor) -> Backend:
    schedule = pd_fast.CosineSchedule()
    t = torch.full((z.shape[0],), 0.5, device=z.device)
    v = model(z, t)
    a_t, s_t = (float(c) for c in schedule.alpha_sigma(0.5))
    a_s, s_s = (float(c) for c in schedule.alpha_sigma(0.25))

    def update() -> torch.Tensor:
        x_hat = a_t * z - s_t * v
        eps_hat = s_t * z + a_t * v
        return a_s * x_hat + s_s * eps_hat

    return Backend(
        "naive_torch",
        prepare=lambda n: lambda: naive_sample(model, z, n, schedule),
        network=lambda: model(z, t),
        update=update,
        network_note="the torch model",
        update_note="x_hat, eps_hat, z_s as three torch expressions",
    )


def ddim_scheduler(steps: int, schedule: Any) -> tuple[Any, int]:
    """diffusers' `DDIMScheduler` for the continuous `schedule` at N = `steps` (docs/spec.md section 9):
    T = N * ceil(1000/N) training steps (N divides T, so trailing spacing lands on `t = i/N`),
    betas with `cumprod(1 - beta)[k] = alpha_bar((k + 1)/T)`, v-prediction, eta = 0, the last step
    to `alpha_bar = 1` (x_hat). Returns (scheduler, T)."""
    try:
        from diffusers import DDIMScheduler
    except Exception as err:  # missing, or broken against this torch
        raise Unavailable(f"diffusers does not import: {type(err).__name__}: {err}") from err
    big_t = steps * math.ceil(1000 / steps)
    alpha = torch.as_tensor(schedule.alpha_sigma(torch.arange(1, big_t + 1, dtype=torch.float64) / big_t)[0])
    alpha_bar = alpha.double().cpu() ** 2
    betas = 1.0 - alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    scheduler = DDIMScheduler(
        num_train_timesteps=big_t, trained_betas=betas.numpy(), prediction_type="v_prediction",
        timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
    )  # fmt: skip
    return scheduler, big_t


def diffusers_sample(
    model: nn.Module, z: torch.Tensor, steps: int, scheduler: Any, big_t: int
) -> torch.Tensor:
    """The DDIM loop a diffusers user writes (scheduler.set_timesteps, then one step per timestep);
    the network takes the continuous time `t = (k + 1)/T`."""
    scheduler.set_timesteps(steps)
    times = (scheduler.timesteps.to(z.device) + 1).to(z.dtype) / big_t
    for k, t in zip(scheduler.timesteps, times, strict=True):
        v = model(z, t.expand(z.shape[0]))
        z = scheduler.step(v, k, z).prev_sample
    return z


def make_diffusers(model: nn.Module, z: torch.Tensor) -> Backend:
    schedule = pd_fast.CosineSchedule()
    schedulers = {n: ddim_scheduler(n, schedule) for n in (4,)}
    scheduler, big_t = schedulers[4]
    scheduler.set_timesteps(4)
    k = scheduler.timesteps[1]  # t = (k + 1)/T = 3/4 -> 2/4: the middle of the grid
    t = torch.full((z.shape[0],), float(k + 1) / big_t, device=z.device)
    v = model(z, t)

    def prepare(n: int) -> Callable[[], Any]:
        sched, size = schedulers[n] if n in schedulers else ddim_scheduler(n, schedule)
        return lambda: diffusers_sample(model, z, n, sched, size)

    return Backend(
        "diffusers",
        prepare=prepare,
        network=lambda: model(z, t),
        update=lambda: scheduler.step(v, k, z).prev_sample,
        network_note="the torch model",
        update_note="DDIMScheduler.step (t = 3/4 -> 2/4 of N = 4)",
    )


class VDenoiser(nn.Module):
    """A v-prediction network in k-diffusion's convention: `D(x, sigma) -> x_hat` with
    `sigma = sigma_t/alpha_t` and `x = z_t/alpha_t` (the variance-exploding view), so
    `alpha_t = 1/sqrt(1 + sigma^2)`, `sigma_t = sigma*alpha_t` (well conditioned in fp32 even at
    sigma ~ 2e4), and for the cosine schedule `sigma = tan(a t + b)`: `t = (atan(sigma) - b)/a`."""

    def __init__(self, model: nn.Module, schedule: Any) -> None:
        super().__init__()
        self.model, self.a, self.b = model, schedule.a, schedule.b

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha = torch.rsqrt(1.0 + sigma**2)
        alpha_t, sigma_t = alpha.reshape(shape), (sigma * alpha).reshape(shape)
        z_t = alpha_t * x
        v = self.model(z_t, ((torch.atan(sigma) - self.b) / self.a).to(x.dtype))
        return alpha_t * z_t - sigma_t * v  # x_hat ([PD] Section 4, v-prediction)


def k_sigmas(steps: int, schedule: Any, device: torch.device) -> torch.Tensor:
    """k-diffusion's sigmas `tan(a t + b)` at `t = i/N`, i = N .. 1, then 0 (fp32)."""
    t = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
    sigmas = torch.tan(schedule.a * t + schedule.b)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).to(device=device, dtype=torch.float32)


def make_k_diffusion(model: nn.Module, z: torch.Tensor) -> Backend:
    try:
        from k_diffusion.sampling import sample_euler, to_d
    except Exception as err:  # optional: not installed, or its own dependencies are missing
        raise Unavailable(
            f"k_diffusion does not import ({type(err).__name__}: {err}); "
            "it is optional: pip install k-diffusion"
        ) from err
    schedule = pd_fast.CosineSchedule()
    denoiser = VDenoiser(model, schedule)

    def run(n: int) -> torch.Tensor:
        sigmas = k_sigmas(n, schedule, z.device)
        x = z * torch.sqrt(1.0 + sigmas[0] ** 2)  # z_1 / alpha_1: the VE view of the same noise
        return sample_euler(denoiser, x, sigmas, disable=True)

    sigmas = k_sigmas(4, schedule, z.device)
    s_in = z.new_ones(z.shape[0])
    x = z * torch.sqrt(1.0 + sigmas[1] ** 2)
    denoised = denoiser(x, sigmas[1] * s_in)

    def update() -> torch.Tensor:  # sample_euler's arithmetic of one step (s_churn = 0)
        d = to_d(x, sigmas[1], denoised)
        return x + d * (sigmas[2] - sigmas[1])

    return Backend(
        "k_diffusion",
        prepare=lambda n: lambda: run(n),
        network=lambda: denoiser(x, sigmas[1] * s_in),
        update=update,
        network_note="the torch model inside the v-wrapper (its conversions included)",
        update_note="sample_euler's step: to_d, then x + d*dt",
    )


def make_pd_fast(model: nn.Module, z: torch.Tensor, name: str) -> Backend:
    backend = "torch" if name == "pd_fast_torch" else "triton"
    if backend == "triton":
        if z.device.type != "cuda":
            raise Unavailable("the Triton path needs a CUDA device (none here); the interpreter is not timed")
        if _common.triton_version() is None:
            raise Unavailable("triton is not installed")
    schedule = pd_fast.CosineSchedule()
    t = torch.full((z.shape[0],), 0.5, device=z.device)
    with _common.env("PD_FAST_BACKEND", backend):
        update, update_note = pd_fast_update(model, z, backend)
    return Backend(
        name,
        prepare=lambda n: lambda: pd_fast.sample(model, z, n, schedule, PARAM),
        network=lambda: model(z, t),
        update=update,
        network_note="the torch model",
        update_note=update_note + (" (fused Triton kernel)" if backend == "triton" else " (torch ops)"),
        env=backend,
    )


def make_triton_graph(model: nn.Module, z: torch.Tensor) -> Backend:
    if z.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device (none here)")
    if _common.triton_version() is None:
        raise Unavailable("triton is not installed")
    schedule = pd_fast.CosineSchedule()
    device = z.device
    t = torch.full((z.shape[0],), 0.5, device=device)

    def prepare(n: int) -> Callable[[], Any]:
        sampler = pd_fast.Sampler(
            model, z.shape[1:], n, schedule, PARAM, device=device, dtype=z.dtype, cuda_graph=True
        )
        sampler(z)  # plans and captures, untimed
        return lambda: sampler(z)

    def capture_calls(fn: Callable[[], Any]) -> Callable[[], Any]:
        return _common.capture(lambda: [fn() for _ in range(GRAPH_CALLS)], device)

    with _common.env("PD_FAST_BACKEND", "triton"):
        update, note = pd_fast_update(model, z, "triton")
        network_graph = capture_calls(lambda: model(z, t))
        update_graph = capture_calls(update)
    return Backend(
        "triton_graph",
        prepare=prepare,
        network=network_graph,
        update=update_graph,
        network_note=f"the torch model, {GRAPH_CALLS} calls in one CUDA graph (times are per call)",
        update_note=f"{note} (fused Triton kernel), {GRAPH_CALLS} calls in one CUDA graph (per call)",
        env="triton",
        extra={"per_call_divisor": GRAPH_CALLS},
    )


def make_backend(name: str, model: nn.Module, z: torch.Tensor, network_np: Any = None) -> Backend:
    if name == "pd_ref":
        return make_pd_ref(model, z, network_np)
    if name == "diffusers":
        return make_diffusers(model, z)
    if name == "k_diffusion":
        return make_k_diffusion(model, z)
    if name == "naive_torch":
        return make_naive(model, z)
    if name == "triton_graph":
        return make_triton_graph(model, z)
    return make_pd_fast(model, z, name)


# --- the measurement ----------------------------------------------------------------------------


def check_against_pd_ref(bk: Backend, reference: np.ndarray) -> float:
    """max |x_hat - x_hat_pd_ref| after CHECK_STEPS steps: every backend must sample the same thing."""
    result = bk.prepare(CHECK_STEPS)()
    x = result if isinstance(result, np.ndarray) else result.double().cpu().numpy()
    return float(np.max(np.abs(x - reference)))


def per_call(samples: list[float], bk: Backend, which: str) -> float:
    divisor = bk.extra.get("per_call_divisor", 1) if which in ("network", "update") else 1
    return statistics.median(samples) / divisor


def calibrate(
    bk: Backend, kind: str, model: nn.Module, z: torch.Tensor, reference: np.ndarray
) -> dict[str, Any]:
    """A backend's warm-up, its check against pd_ref, and its network and update times."""
    device = z.device
    with _common.env("PD_FAST_BACKEND", bk.env):
        warm = bk.prepare(2)
        for _ in range(2):
            warm()
        network_ms = per_call(_common.measure(bk.network, device, 3, 20, budget_s=1.0), bk, "network")
        update_ms = per_call(_common.measure(bk.update, device, 3, 20, budget_s=1.0), bk, "update")
        max_diff = check_against_pd_ref(bk, reference)
        info: dict[str, Any] = {
            "network": bk.network_note,
            "update": bk.update_note,
            "network_ms": _common.finite_or_none(network_ms),
            "update_ms": _common.finite_or_none(update_ms),
            f"max_abs_diff_vs_pd_ref_at_{CHECK_STEPS}_steps": _common.finite_or_none(max_diff, 3),
        }
        if bk.name == "triton_graph":
            begin = time.perf_counter()
            pd_fast.sample(model, z, 64, pd_fast.CosineSchedule(), PARAM, cuda_graph=True)
            _common.sync(device)
            info["capture_ms_64_steps"] = _common.finite_or_none((time.perf_counter() - begin) * 1e3)
    print(
        f"{bk.name:>13} / {kind}: network {network_ms:.3g} ms, update {update_ms:.3g} ms, "
        f"max |x_hat - pd_ref| {max_diff:.2g}",
        flush=True,
    )
    return info


def side_by_side(
    backends: list[Backend],
    steps: int,
    device: torch.device,
    args: argparse.Namespace,
    long: set[str],
    skip: Callable[[str, Exception, str], None],
    where: str,
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None]:
    """ms of N-step sampling per backend: all backends timed in turns, one run each per round (the
    order reversed every other round), so that they share the machine's load; `--warmup` untimed
    runs first (none for the backends in `long`); rounds stop after `--repeats` or once the runs
    took `--budget` seconds per backend. A backend that fails is reported and dropped. Returns the
    wall-clock samples and, on a CPU with one torch thread, the thread's CPU time of each run (what
    the run itself costs, without the time it waits for a core on a shared machine)."""
    runs, samples, cpu = {}, {}, {}
    for bk in backends:
        try:
            with _common.env("PD_FAST_BACKEND", bk.env):
                runs[bk.name] = bk.prepare(steps)
                for _ in range(0 if bk.name in long else args.warmup):
                    runs[bk.name]()
            samples[bk.name], cpu[bk.name] = [], []
        except Exception as err:
            skip(bk.name, err, where)
    live = [bk for bk in backends if bk.name in runs]
    spent = 0.0
    for r in range(args.repeats):
        for bk in live if r % 2 == 0 else live[::-1]:
            if bk.name not in runs:
                continue
            try:
                with _common.env("PD_FAST_BACKEND", bk.env):
                    begin = time.thread_time()
                    ms = _common.time_once(runs[bk.name], device)
                    cpu[bk.name].append((time.thread_time() - begin) * 1e3)
            except Exception as err:
                skip(bk.name, err, where)
                del runs[bk.name], samples[bk.name], cpu[bk.name]
                continue
            samples[bk.name].append(ms)
            spent += ms
        if spent > 1e3 * args.budget * max(1, len(runs)):
            break
    return samples, (cpu if device.type == "cpu" and torch.get_num_threads() == 1 else None)


def latency_rows(
    backends: list[tuple[Backend, dict[str, Any]]],
    kind: str,
    z: torch.Tensor,
    args: argparse.Namespace,
    skip: Callable[[str, Exception, str], None],
) -> list[dict[str, Any]]:
    """For every N, every backend's N-step sampling timed side by side (`side_by_side`)."""
    rows, last = [], {}
    info = {bk.name: i for bk, i in backends}
    live = [bk for bk, _ in backends]
    print(f"{kind}: N =", end="", flush=True)
    for n in args.steps:
        print(f" {n}", end="", flush=True)
        long = {name for name, (ms, m) in last.items() if ms * n / m > args.budget / 4 * 1e3}
        samples, _ = side_by_side(live, n, z.device, args, long, skip, f"model {kind}")
        live = [bk for bk in live if bk.name in samples]
        for bk in live:
            total = statistics.median(samples[bk.name])
            last[bk.name] = (total, n)
            per_step = total / n
            network_ms, update_ms = info[bk.name]["network_ms"], info[bk.name]["update_ms"]
            rows.append({
                "backend": bk.name, "model": kind, "batch": z.shape[0], "steps": n,
                "total_ms": _common.finite_or_none(total),
                "total_ms_min": _common.finite_or_none(min(samples[bk.name])),
                "per_step_ms": _common.finite_or_none(per_step),
                "per_step_ms_min": _common.finite_or_none(min(samples[bk.name]) / n),
                "network_ms": network_ms, "update_ms": update_ms,
                "update_share": _common.finite_or_none(update_ms / per_step, 3),
                "other_ms": _common.finite_or_none(per_step - network_ms - update_ms),
                "total_ms_max": _common.finite_or_none(max(samples[bk.name])),
                "repeats": len(samples[bk.name]),
            })  # fmt: skip
    print(flush=True)
    return rows


COLUMNS = [
    ("backend", "backend", "s"), ("model", "model", "s"), ("steps", "N", "d"),
    ("total_ms", "median ms", ".3g"), ("total_ms_min", "min ms", ".3g"), ("per_step_ms", "ms/step", ".3g"),
    ("network_ms", "net ms", ".3g"),
    ("update_ms", "update ms", ".3g"), ("update_share", "update share", ".1%"), ("repeats", "runs", "d"),
]  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> str:
    """At a glance: total ms per N (rows) and backend (columns), one block per model, then each
    backend's ms per step and update share at the largest N (markdown, as in docs/results.md)."""
    lines = []
    for model in MODELS:
        sel = [r for r in rows if r["model"] == model]
        names = [b for b in BACKENDS if any(r["backend"] == b for r in sel)]
        if not names:
            continue
        lines += [f"\n{model}: total latency (ms, median)\n", "| N | " + " | ".join(names) + " |",
                  "|---:|" + "---:|" * len(names)]  # fmt: skip
        by_key = {(r["backend"], r["steps"]): r for r in sel}
        for n in sorted({r["steps"] for r in sel}):
            cells = [by_key.get((b, n), {}).get("total_ms") for b in names]
            lines.append(f"| {n} | " + " | ".join(_ms(c) for c in cells) + " |")
        last = max(r["steps"] for r in sel)
        cells = [by_key.get((b, last), {}) for b in names]
        shares = [f"{_ms(c['per_step_ms'])} ({c['update_share']:.1%} update)" if c else "-" for c in cells]
        lines.append(f"| ms/step at N={last} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


COLORS = dict(zip(BACKENDS, ("tab:gray", "tab:orange", "tab:purple", "tab:brown", "tab:blue", "tab:green",
                              "tab:red"), strict=True))  # fmt: skip


def overhead_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Grouped bars: microseconds per step (log scale) per batch, one bar per backend, with the
    ratio to the diffusers loop written above each bar."""
    batches = sorted({r["batch"] for r in rows})
    names = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    by = {(r["backend"], r["batch"]): r["us_per_step"] for r in rows}
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = [k + (j - (len(names) - 1) / 2) * width for k in range(len(batches))]
        values = [by.get((name, b)) or 0.0 for b in batches]
        ax.bar(xs, values, width, color=COLORS[name], label=name)
        for x, b, v in zip(xs, batches, values, strict=True):
            base = by.get(("diffusers", b))
            if v and base and name != "diffusers":
                ax.text(x, v * 1.05, f"{base / v:.2g}x", ha="center", fontsize=6, rotation=90)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("microseconds per step (trivial network)")
    n = rows[0]["steps"]
    ax.set_title(f"sampler overhead: out = {OVERHEAD_SCALE}*z, N = {n}", fontsize=9)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, title="above a bar: diffusers' time / its time", title_fontsize=7)


def plot(rows: list[dict[str, Any]], overhead: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Left: total latency vs steps (log-log), one line per backend x model. Middle: where a step's
    time goes at the largest N (network / update / rest, as shares, per-step ms written on the bar).
    Right: the overhead mode's microseconds per step, per backend and batch."""
    plt = _common.pyplot()
    if plt is None:
        return "matplotlib is not installed"
    panels = [p for p, keep in (("latency", rows), ("share", rows), ("overhead", overhead)) if keep]
    widths = {"latency": 3, "share": 2, "overhead": 2.5}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * sum(widths[p] for p in panels) / 2.5 + 1, 5), squeeze=False,
        gridspec_kw={"width_ratios": [widths[p] for p in panels]},
    )  # fmt: skip
    axes = dict(zip(panels, axes[0], strict=True))
    if overhead:
        overhead_panel(axes["overhead"], overhead)
    if not rows:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return None
    ax, bx = axes["latency"], axes["share"]
    colors = COLORS
    styles = {"mlp": ("-", "o"), "unet": ("--", "s")}
    pairs = sorted(
        {(r["backend"], r["model"]) for r in rows}, key=lambda p: (MODELS.index(p[1]), BACKENDS.index(p[0]))
    )
    bars = []
    for backend, model in pairs:
        sel = [r for r in rows if (r["backend"], r["model"]) == (backend, model) and r["total_ms"]]
        if not sel:
            continue
        line, marker = styles[model]
        ax.plot(
            [r["steps"] for r in sel],
            [r["total_ms"] for r in sel],
            line,
            marker=marker,
            ms=4,
            color=colors[backend],
            label=f"{backend} / {model}",
        )
        bars.append((f"{backend} / {model}", sel[-1]))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps N")
    ax.set_ylabel("total latency (ms, median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    for i, (_, r) in enumerate(bars):
        net, upd = max(r["network_ms"] or 0.0, 0.0), max(r["update_ms"] or 0.0, 0.0)
        rest = max(r["per_step_ms"] - net - upd, 0.0)
        total = net + upd + rest or 1.0
        left = 0.0
        for value, color, name in (
            (net, "tab:blue", "network"),
            (upd, "tab:red", "update"),
            (rest, "tab:gray", "rest = step - network - update"),
        ):
            bx.barh(i, value / total, left=left, color=color, label=name if i == 0 else None)
            left += value / total
        bx.text(1.01, i, f"{r['per_step_ms']:.3g} ms/step", va="center", fontsize=7)
    bx.set_yticks(range(len(bars)), [f"{label} (N={r['steps']})" for label, r in bars], fontsize=7)
    bx.set_xlim(0, 1.3)
    bx.set_xlabel("share of one step")
    bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.4, -0.12), ncol=3)
    bx.set_title("where a step's time goes (largest N)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --- the overhead mode ---------------------------------------------------------------------------


class Scale(nn.Module):
    """The overhead mode's network: `out = 0.5 * z` whatever t (one multiply)."""

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return OVERHEAD_SCALE * z


def scale_np(z: np.ndarray, t: np.ndarray) -> np.ndarray:
    return OVERHEAD_SCALE * z


def run_overhead(
    args: argparse.Namespace, device: torch.device, skip: Callable[[str, Exception, str], None]
) -> list[dict[str, Any]]:
    """Per backend and batch: N-step sampling with the trivial network, checked against pd_ref
    first, then timed (median of repeats within the budget); microseconds per step."""
    model, n, rows = Scale(), args.overhead_steps, []
    print(f"overhead mode: out = {OVERHEAD_SCALE}*z, N = {n}, batches {args.overhead_batches}")
    for batch in args.overhead_batches:
        gen = torch.Generator().manual_seed(2)
        z = torch.randn((batch, *OVERHEAD_SHAPE), generator=gen).to(device)
        reference = make_pd_ref(model, z, scale_np).prepare(CHECK_STEPS)()
        checked, diffs = [], {}
        for name in args.backends:
            try:
                bk = make_backend(name, model, z, scale_np)
                with _common.env("PD_FAST_BACKEND", bk.env):
                    diffs[name] = check_against_pd_ref(bk, reference)
            except Exception as err:
                skip(name, err, f"overhead batch {batch}")
                continue
            checked.append(bk)
        settings = {**vars(args), "warmup": max(1, args.warmup), "repeats": args.overhead_repeats}
        where = f"overhead batch {batch}"
        samples, cpu = side_by_side(checked, n, device, argparse.Namespace(**settings), set(), skip, where)
        for bk in checked:
            if bk.name not in samples:
                continue
            total = statistics.median(samples[bk.name])
            rows.append({
                "backend": bk.name, "batch": batch, "steps": n, "total_ms": _common.finite_or_none(total),
                "total_ms_min": _common.finite_or_none(min(samples[bk.name])),
                "us_per_step": _common.finite_or_none(total / n * 1e3),
                "us_per_step_min": _common.finite_or_none(min(samples[bk.name]) / n * 1e3),
                "cpu_us_per_step": (
                    _common.finite_or_none(statistics.median(cpu[bk.name]) / n * 1e3) if cpu else None
                ),
                f"max_abs_diff_vs_pd_ref_at_{CHECK_STEPS}_steps": _common.finite_or_none(diffs[bk.name], 3),
                "repeats": len(samples[bk.name]),
            })  # fmt: skip
            print(f"  {bk.name:>13} batch {batch}: {total / n * 1e3:.3g} us/step", flush=True)
    return rows


OVERHEAD_COLUMNS = [
    ("backend", "backend", "s"), ("batch", "batch", "d"), ("steps", "N", "d"),
    ("total_ms", "median ms", ".4g"), ("total_ms_min", "min ms", ".4g"), ("us_per_step", "us/step", ".4g"),
    ("us_per_step_min", "min us/step", ".4g"),
    (f"max_abs_diff_vs_pd_ref_at_{CHECK_STEPS}_steps", "vs pd_ref", ".1e"), ("repeats", "runs", "d"),
]  # fmt: skip


def overhead_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`us_per_step`: {backend: {batch: us}} (wall clock); `vs_diffusers`: {backend: {batch:
    diffusers' us over the backend's}} (above 1: faster than the diffusers loop), where diffusers
    ran; the same from the thread's CPU time (`cpu_us_per_step`, `cpu_vs_diffusers`) where measured."""
    table: dict[str, Any] = {}
    for key, ratio_key in (("us_per_step", "vs_diffusers"), ("cpu_us_per_step", "cpu_vs_diffusers")):
        us: dict[str, dict[str, float | None]] = {}
        for r in rows:
            if r.get(key) is not None:
                us.setdefault(r["backend"], {})[str(r["batch"])] = r[key]
        base = us.get("diffusers", {})
        table[key] = us
        table[ratio_key] = {
            name: {b: _common.finite_or_none(base[b] / v, 4) for b, v in per.items() if base.get(b) and v}
            for name, per in us.items()
        } if base else {}  # fmt: skip
    return table


def overhead_summary(overhead: dict[str, Any]) -> str:
    """Markdown: microseconds per step per backend (rows) and batch (columns), with diffusers' time
    over the backend's in parentheses; wall clock, then the thread's CPU time where measured."""
    blocks = []
    for key, ratio_key, what in (("us_per_step", "vs_diffusers", "wall clock"),
                                 ("cpu_us_per_step", "cpu_vs_diffusers", "thread CPU time")):  # fmt: skip
        us, vs = overhead[key], overhead[ratio_key]
        if not us:
            continue
        batches = sorted({int(b) for per in us.values() for b in per})
        lines = [
            f"overhead, us per step ({what}; in parentheses: diffusers' time / the backend's)",
            "",
            "| backend | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---:|" * len(batches),
        ]
        for name in [b for b in BACKENDS if b in us]:
            cells = []
            for b in map(str, batches):
                value, ratio = us[name].get(b), vs.get(name, {}).get(b)
                cells.append("-" if value is None else f"{value:.3g}" + (f" ({ratio:.2f}x)" if ratio else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with torch on `--threads` threads (restored afterwards); returns what it
    writes to `steps_vs_latency.json`."""
    args = settle(build_parser().parse_args(argv))
    previous = torch.get_num_threads()
    threads = _common.set_threads(args.threads)
    try:
        return run(args, threads)
    finally:
        torch.set_num_threads(previous)


def run(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """The benchmark itself: latency mode, overhead mode, tables, JSON and plot."""
    wall_start = time.perf_counter()
    device = _common.pick_device(args.device)
    load_start, date = _common.loadavg(), _common.now_utc()
    machine = _common.machine(device)
    print(
        f"# steps_vs_latency on {machine['gpu_name'] or machine['cpu_model']} ({device.type}, "
        f"{threads} torch threads), torch {machine['torch']}, triton {machine['triton']}; {date}, "
        f"load average {load_start}"
    )
    notes = [n for n in [_common.load_note(threads)] if n]
    for note in notes:
        print(f"note: {note}")
    rows: list[dict[str, Any]] = []
    backends: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    models: dict[str, Any] = {}

    def skip(name: str, err: Exception, where: str) -> None:
        if isinstance(err, Unavailable):
            if not any(s["backend"] == name and "model" not in s for s in skipped):
                print(f"skip {name}: {err}")
                skipped.append({"backend": name, "reason": str(err)})
            return
        reason = f"failed on {where}: {type(err).__name__}: {err}"  # reported, never fatal
        print(f"\nskip {name}: {reason}")
        skipped.append({"backend": name, "model": where, "reason": reason})

    with torch.inference_mode():
        for kind in args.models if args.mode != "overhead" else []:
            model, z = build(kind, args, device)
            models[kind] = model_summary(model, z)
            reference = make_pd_ref(model, z).prepare(CHECK_STEPS)()
            calibrated = []
            for name in args.backends:
                try:
                    bk = make_backend(name, model, z)
                    info = calibrate(bk, kind, model, z, reference)
                except Exception as err:
                    skip(name, err, f"model {kind}")
                    continue
                calibrated.append((bk, info))
                backends[f"{name}/{kind}"] = info
            rows += latency_rows(calibrated, kind, z, args, skip)
        overhead_rows = []
        if args.mode != "latency":
            overhead_rows = run_overhead(args, device, skip)
    if rows:
        print()
        print(_common.table(rows, COLUMNS))
        print(summary(rows))
    overhead = overhead_table(overhead_rows)
    if overhead_rows:
        print()
        print(_common.table(overhead_rows, OVERHEAD_COLUMNS))
        print()
        print(overhead_summary(overhead))
    wall = time.perf_counter() - wall_start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(
        device=str(device),
        dtype="float32 (pd_ref: float64)",
        param=PARAM,
        sampler="ddim, eta=0",
        schedule="cosine (logsnr -20..20)",
    )
    payload = {
        "benchmark": "steps_vs_latency",
        "machine": machine,
        "date": date,
        "loadavg_start": load_start,
        "loadavg_end": _common.loadavg(),
        "wall_s": round(wall, 1),
        "settings": settings,
        "torch_threads": threads,
        "timing": "per point: warm-up runs, then repeats within a time budget; median (total_ms, "
        "per_step_ms, us_per_step) and minimum (the same with _min) reported "
        + ("(CUDA events)" if device.type == "cuda" else "(time.perf_counter)"),
        "models": models,
        "backends": backends,
        "notes": notes,
        "skipped": skipped,
        "rows": rows,
        "overhead": {
            "network": f"out = {OVERHEAD_SCALE}*z (NumPy for pd_ref)",
            "data_shape": list(OVERHEAD_SHAPE),
            "steps": args.overhead_steps if args.mode != "latency" else None,
            "method": "median (and minimum) total time of N-step sampling / N, the network's multiply "
            "included",
            "rows": overhead_rows,
        },
        "overhead_us_per_step": overhead["us_per_step"],
        "overhead_vs_diffusers": overhead["vs_diffusers"],
        "overhead_cpu_us_per_step": overhead["cpu_us_per_step"],
        "overhead_cpu_vs_diffusers": overhead["cpu_vs_diffusers"],
    }
    title = f"{machine['gpu_name'] or machine['cpu_model']}, {threads} threads, batch {args.batch}"
    _common.write_results(
        args.out, "steps_vs_latency", payload, lambda path: plot(rows, overhead_rows, path, title), wall
    )
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
