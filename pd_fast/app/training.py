"""Teacher training and progressive distillation ([PD] Algorithm 2, docs/spec.md sections 5-6).

API (all arguments after `data` / `end_steps` are keyword-only):

    train_teacher(model, data, *, schedule=None, param="v", weighting="snr_trunc", iters=2000,
                  batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, grad_clip=1.0, seed=0,
                  out_dir=None, ckpt_every=0, resume=False, progress=True, log_every=10)
        -> nn.Module   # a new module holding the EMA weights, in eval mode
    progressive_distill(teacher, data, start_steps, end_steps=1, *, schedule=None, param="v",
                        weighting="snr_trunc", iters=1000, last_rounds_factor=1.0, batch_size=128,
                        lr=1e-4, grad_clip=1.0, seed=0, out_dir=None, ckpt_every=0, resume=False,
                        progress=True, log_every=10, on_round_end=None)
        -> dict[int, nn.Module]   # {student steps: student}, e.g. {4: ..., 2: ..., 1: ...}, eval mode
    check_data(data, name="data") -> Tensor   # ValueError unless finite, in [-1, 1], ndim >= 2, N >= 1
    load_model_checkpoint(path, model) -> dict   # from pd_fast.checkpoint: weights into model, returns
                                                 # {"steps", "schedule", "param", "weighting", ...}
    schedule_from_dict(info["schedule"]) -> schedule   # rebuild the schedule of a checkpoint
    save_model_checkpoint(path, model, info) -> Path   # <stem>.safetensors + <stem>.json
    schedule_to_dict(schedule) -> dict                 # {"kind": "cosine", ...} / {"kind": "discrete", ...}

All of these are importable from `pd_fast`; the lower-level helpers from `pd_fast.checkpoint`.

- `model` / `teacher`: any `nn.Module` called as `model(z, t)`, t of shape (B,) in z's dtype; its
  output is z's shape (2C channels on axis 1 for param 'both'). Training runs on the device of its
  parameters; `data` (a tensor or array (N, ...) in [-1, 1]) is moved there once.
- `schedule`: a `pd_fast.CosineSchedule` (default) or `pd_fast.DiscreteSchedule`.
- `train_teacher` trains `model` in place (t ~ U(0, 1], docs/spec.md section 5 loss with x_tilde = x) with
  Adam, a linear LR warm-up over `warmup` iterations, clipping at `grad_clip` (None: off), and an
  EMA of the weights with decay `min(ema_decay, (1 + k) / (10 + k))` after update k (the
  warm-up keeps short runs from averaging in the random init); it returns the EMA copy.
- `progressive_distill` distills a teacher of `start_steps` steps down to `end_steps`
  (`start_steps = end_steps * 2**k`, k >= 1) in k rounds: student = deepcopy(teacher), fresh Adam,
  LR annealed linearly from `lr` to 0 over the round, gradient norm clipped at `grad_clip`,
  targets from `pd_fast.teacher_two_step` under no_grad, loss `pd_fast.fused_distill_loss`
  (Triton kernels on CUDA, torch elsewhere), t = i/N with i uniform in 1..N, no EMA.
  The last two rounds run `round(iters * last_rounds_factor)` iterations (the paper: 2).
  `on_round_end(steps, student)` is called on every rank after each round.
- `out_dir`: when given, the run writes `out_dir/checkpoints/` (see `pd_fast.checkpoint`):
  `teacher.safetensors|json` (EMA weights), `student_<N>.safetensors|json` after each round, and
  the training state every `ckpt_every` iterations (0: only at stage/round ends), plus
  `out_dir/log.jsonl` (one JSON object per `log_every` iterations: phase, round, steps,
  iteration, loss, lr, grad_norm, time). A stage that already has a state in `out_dir` raises
  ValueError unless `resume=True`, which continues from the last checkpoint (mid-teacher or
  mid-round) with the same settings; the log is cut back to that checkpoint and continues.
- Randomness comes only from explicit `torch.Generator`s (data/t on CPU, noise on the device)
  seeded from (seed, rank, stage), plus torch's global RNG for any dropout; all of them are
  checkpointed. With `torch.use_deterministic_algorithms(True)` and a fixed thread count, a run
  killed with SIGKILL and resumed ends bitwise equal to an uninterrupted one on CPU.
- Under `torchrun` (when `torch.distributed.is_initialized()`), the trained model is wrapped in
  DistributedDataParallel, each rank samples from its own shard `data[rank::world_size]` with
  its own generators, rank 0 writes checkpoints and the log (barrier after), and resume works
  with the same world size. The caller initialises the process group (and on CUDA calls
  `torch.cuda.set_device(local_rank)` and moves the model there) before calling.
- Speed on CPU: tiny models train several times faster with `torch.set_num_threads(1)` than with
  the default thread count on a busy 2-core machine (measured in tests/app/test_training.py's
  distillation test: ~40 s with 2 threads vs ~6 s with 1 while other jobs shared the cores).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..distillation import fused_distill_loss, teacher_two_step
from ..schedules import CosineSchedule
from . import checkpoint as ckpt
from .checkpoint import load_model_checkpoint, schedule_from_dict

__all__ = [
    "train_teacher",
    "progressive_distill",
    "check_data",
    "load_model_checkpoint",
    "schedule_from_dict",
]

PARAMS = ("eps", "x", "v", "both")
WEIGHTINGS = ("constant", "snr", "snr_trunc", "snr+1")


# ----- input checks ----------------------------------------------------------------------------


def check_data(data: Any, name: str = "data") -> Tensor:
    """`data` as a floating tensor (N, ...), N >= 1, at least 2 dims, finite, in [-1, 1];
    ValueError naming `name` otherwise."""
    if not isinstance(data, Tensor):
        try:
            data = torch.as_tensor(np.asarray(data))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{name} must be a tensor or array of floats (N, ...), got {type(data)!r}"
            ) from err
    if not data.is_floating_point():
        raise ValueError(f"{name} must be floating point (N, ...) in [-1, 1], got dtype {data.dtype}")
    if data.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, ...) with at least 2 dims (N examples of >= 1 feature), "
            f"got shape {tuple(data.shape)}"
        )
    if data.shape[0] < 1 or data.numel() == 0:
        raise ValueError(f"{name} must hold at least one non-empty example, got shape {tuple(data.shape)}")
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        bad = int((~finite).reshape(data.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or infinite values (first in example {bad})")
    lo, hi = float(data.min()), float(data.max())
    if lo < -1.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:.6g}, {hi:.6g}]")
    return data


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _common_checks(param: str, weighting: str, schedule: Any) -> Any:
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if schedule is None:
        return CosineSchedule()
    if type(schedule).__name__ not in ("CosineSchedule", "DiscreteSchedule"):
        raise ValueError(f"schedule must be a CosineSchedule or a DiscreteSchedule, got {type(schedule)!r}")
    return schedule


def _model_device(model: nn.Module, name: str) -> tuple[torch.device, torch.dtype]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module called as {name}(z, t), got {type(model)!r}")
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ValueError(f"{name} has no parameters to train")
    return p.device, (p.dtype if p.is_floating_point() else torch.float32)


def _trainable(model: nn.Module, name: str) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name} has no parameters with requires_grad=True")
    return params


# ----- distributed context, generators, log ----------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _dist_context() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    return _Dist()


def _stream_seed(seed: int, rank: int, stream: str) -> int:
    """A 63-bit seed for one random stream, derived from (seed, rank, stream) by NumPy's SeedSequence."""
    tag = int.from_bytes(stream.encode(), "little")
    words = np.random.SeedSequence([seed, rank, tag]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


@dataclass
class _Generators:
    """`data`: CPU generator for example indices and t; `noise`: generator on the training device."""

    data: torch.Generator
    noise: torch.Generator
    device: torch.device

    @classmethod
    def seeded(cls, seed: int, rank: int, stage: str, device: torch.device) -> _Generators:
        data = torch.Generator().manual_seed(_stream_seed(seed, rank, stage + "/data"))
        noise = torch.Generator(device=device).manual_seed(_stream_seed(seed, rank, stage + "/noise"))
        return cls(data, noise, device)

    def states(self) -> dict[str, Tensor]:
        states = {
            "data": self.data.get_state(),
            "noise": self.noise.get_state().cpu(),
            "torch_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            states["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def restore(self, tensors: dict[str, Tensor], rank: int) -> None:
        prefix = f"rng/{rank}/"
        self.data.set_state(tensors[prefix + "data"])
        self.noise.set_state(tensors[prefix + "noise"])
        torch.set_rng_state(tensors[prefix + "torch_cpu"])
        if self.device.type == "cuda" and prefix + "torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors[prefix + "torch_cuda"], self.device)


def _gather_rng(gens: _Generators, ctx: _Dist) -> dict[str, Tensor]:
    """Every rank's generator states as `rng/<rank>/<name>` (a collective call under DDP)."""
    mine = gens.states()
    if ctx.active:
        everyone: list[Any] = [None] * ctx.world
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    return {f"rng/{r}/{k}": v for r, states in enumerate(everyone) for k, v in states.items()}


class _Log:
    """Append-only JSON-lines log, flushed after every record; written by rank 0 only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def truncate(self, size: int) -> None:
        """Drop what was logged after the checkpoint we resume from, so the log continues."""
        if self.file is not None and os.path.getsize(self.path) > size:
            self.file.flush()
            os.truncate(self.path, size)
            self.file.seek(0, os.SEEK_END)

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def size(self) -> int:
        if self.file is None:
            return 0
        self.file.flush()
        os.fsync(self.file.fileno())
        return os.path.getsize(self.path)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class _Run:
    """Where a run writes (None: nowhere) and who writes it."""

    ctx: _Dist
    ckpt_dir: Path | None
    log: _Log

    @classmethod
    def open(cls, out_dir: str | os.PathLike | None, ctx: _Dist) -> _Run:
        if out_dir is None:
            return cls(ctx, None, _Log(None))
        out = Path(out_dir)
        if ctx.main:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        return cls(ctx, out / "checkpoints", _Log(out / "log.jsonl" if ctx.main else None))

    def load_state(self, stage: str, resume: bool, config: dict[str, Any]) -> tuple[dict, dict] | None:
        """The committed state of `stage` if resuming; ValueError if one exists and resume is False,
        or if it was written with other settings."""
        if self.ckpt_dir is None:
            return None
        if not resume:
            if (self.ckpt_dir / f"{stage}_state.json").is_file():
                self.log.close()
                raise ValueError(
                    f"out_dir {self.ckpt_dir.parent} already holds a {stage} checkpoint: pass "
                    "resume=True to continue it, or choose another out_dir"
                )
            return None
        state = ckpt.load_training_state(self.ckpt_dir, stage)
        if state is None:
            return None
        saved = state[0].get("config", {})
        for key, value in config.items():
            if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(value)):
                self.log.close()
                raise ValueError(
                    f"resume: out_dir holds a {stage} run with {key}={saved.get(key)!r}, "
                    f"this call has {key}={value!r}"
                )
        return state


# ----- one training step -----------------------------------------------------------------------


def _column(c: Tensor, like: Tensor) -> Tensor:
    return c.reshape((-1,) + (1,) * (like.ndim - 1))


def _batch(x_local: Tensor, gens: _Generators, batch_size: int) -> Tensor:
    idx = torch.randint(0, x_local.shape[0], (batch_size,), generator=gens.data)
    return x_local[idx.to(x_local.device)]


def _diffuse(x: Tensor, t: Tensor, schedule: Any, gens: _Generators) -> tuple[Tensor, Tensor, Tensor]:
    """`z_t = alpha_t x + sigma_t eps` (docs/spec.md section 1), coefficients in float64 from the schedule."""
    eps = torch.randn(x.shape, generator=gens.noise, device=x.device, dtype=x.dtype)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    z_t = (_column(alpha_t, x) * x.double() + _column(sigma_t, x) * eps.double()).to(x.dtype)
    return z_t, alpha_t, sigma_t


def _update(
    params: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    loss: Tensor,
    lr: float,
    grad_clip: float | None,
) -> Tensor:
    """Backward, global-norm clipping, one Adam step at learning rate `lr`; returns the pre-clip norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return grad_norm


def _wrap(model: nn.Module, ctx: _Dist, device: torch.device) -> nn.Module:
    if not ctx.active:
        return model
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])


def _take(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors stored under `prefix/`, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def _put(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def _shard(data: Tensor, ctx: _Dist, device: torch.device, dtype: torch.dtype) -> Tensor:
    local = data[ctx.rank :: ctx.world] if ctx.world > 1 else data
    if local.shape[0] == 0:
        raise ValueError(f"data has {data.shape[0]} examples, fewer than the {ctx.world} ranks")
    return local.to(device=device, dtype=dtype).contiguous()


# ----- teacher training ------------------------------------------------------------------------


def train_teacher(
    model: nn.Module,
    data: Any,
    *,
    schedule: Any = None,
    param: str = "v",
    weighting: str = "snr_trunc",
    iters: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    ckpt_every: int = 0,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 10,
) -> nn.Module:
    """Train a continuous-time diffusion model (the base teacher of [PD] Section 4 / docs/spec.md section 5).

    Each iteration: x from `data`, t ~ U(0, 1], eps ~ N(0, I), z_t = alpha_t x + sigma_t eps, and
    the loss `w(lambda_t) * mean((x_hat(z_t, model(z_t, t)) - x)^2)` (docs/spec.md section 5 with
    x_tilde = x, through `pd_fast.fused_distill_loss` with z_tpp = x, alpha_tpp = 1, sigma_tpp = 0).
    Adam with a linear warm-up over `warmup` iterations, then constant `lr`.

    Trains `model` in place and returns a new module with the EMA of its weights, in eval mode.
    See the module docstring for checkpoints, resume and DDP.
    """
    data = check_data(data)
    schedule = _common_checks(param, weighting, schedule)
    iters = _positive_int("iters", iters)
    batch_size = _positive_int("batch_size", batch_size)
    lr = _positive_float("lr", lr)
    warmup = _positive_int("warmup", warmup, 0)
    seed = _positive_int("seed", seed, 0)
    ckpt_every = _positive_int("ckpt_every", ckpt_every, 0)
    log_every = _positive_int("log_every", log_every)
    if isinstance(ema_decay, bool) or not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay!r}")
    if grad_clip is not None:
        grad_clip = _positive_float("grad_clip", grad_clip)
    device, dtype = _model_device(model, "model")
    params = _trainable(model, "model")
    ctx = _dist_context()
    x_local = _shard(data, ctx, device, dtype)
    run = _Run.open(out_dir, ctx)
    config = {
        "param": param,
        "weighting": weighting,
        "schedule": ckpt.schedule_to_dict(schedule),
        "iters": iters,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "ema_decay": ema_decay,
        "grad_clip": grad_clip,
        "seed": seed,
        "world_size": ctx.world,
        "data_shape": list(data.shape),
    }

    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(params, lr=lr)
    gens = _Generators.seeded(seed, ctx.rank, "teacher", device)
    start, elapsed = 0, 0.0
    state = run.load_state("teacher", resume, config)
    if state is not None:
        info, tensors = state
        model.load_state_dict(_take("model", tensors))
        ema.load_state_dict(_take("ema", tensors))
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        gens.restore(tensors, ctx.rank)
        start, elapsed = int(info["iteration"]), float(info["elapsed"])
        if start < iters:
            run.log.truncate(int(info["log_bytes"]))

    def save_state(iteration: int, elapsed: float) -> None:
        rng = _gather_rng(gens, ctx)
        if ctx.main and run.ckpt_dir is not None:
            opt_tensors, opt_scalars = ckpt.optimizer_to_tensors(opt)
            tensors = {
                **_put("model", model.state_dict()),
                **_put("ema", ema.state_dict()),
                **opt_tensors,
                **rng,
            }
            info = {
                "config": config,
                "iteration": iteration,
                "round": 0,
                "elapsed": elapsed,
                "optimizer": opt_scalars,
                "log_bytes": run.log.size(),
                "complete": iteration == iters,
            }
            ckpt.save_training_state(run.ckpt_dir, "teacher", tensors, info)
        ctx.barrier()

    net = _wrap(model, ctx, device)
    model.train()
    ema_params = list(ema.parameters())
    bar = tqdm(total=iters, initial=start, desc="teacher", disable=not (progress and ctx.main), leave=False)
    t0 = time.perf_counter() - elapsed
    try:
        for it in range(start, iters):
            x = _batch(x_local, gens, batch_size)
            t = (1.0 - torch.rand(batch_size, generator=gens.data, dtype=torch.float64)).to(device)
            z_t, alpha_t, sigma_t = _diffuse(x, t, schedule, gens)
            out = net(z_t, t.to(dtype))
            loss = fused_distill_loss(
                out,
                z_t,
                x,
                alpha_t,
                sigma_t,
                torch.ones_like(alpha_t),
                torch.zeros_like(sigma_t),
                param,
                weighting=weighting,
            ).mean()
            lr_it = lr * min(1.0, (it + 1) / warmup) if warmup else lr
            grad_norm = _update(params, opt, loss, lr_it, grad_clip)
            with torch.no_grad():
                decay = min(ema_decay, (1.0 + it) / (10.0 + it))
                torch._foreach_lerp_(ema_params, list(model.parameters()), 1.0 - decay)
                for e_buf, m_buf in zip(ema.buffers(), model.buffers(), strict=True):
                    e_buf.copy_(m_buf)
            bar.update(1)
            done = it + 1
            if done % log_every == 0 or done == iters:
                record = {
                    "phase": "teacher",
                    "round": 0,
                    "steps": None,
                    "iteration": done,
                    "loss": loss.item(),
                    "lr": lr_it,
                    "grad_norm": grad_norm.item(),
                    "time": time.perf_counter() - t0,
                }
                run.log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            if done == iters or (ckpt_every and done % ckpt_every == 0):
                if done == iters and ctx.main and run.ckpt_dir is not None:
                    ckpt.save_model_checkpoint(
                        run.ckpt_dir / "teacher", ema, _model_info(config, None, 0, done)
                    )
                save_state(done, time.perf_counter() - t0)
    finally:
        bar.close()
        run.log.close()
    if ctx.main and run.ckpt_dir is not None and not (run.ckpt_dir / "teacher.safetensors").is_file():
        ckpt.save_model_checkpoint(run.ckpt_dir / "teacher", ema, _model_info(config, None, 0, iters))
    ctx.barrier()
    return ema.eval()


def _model_info(config: dict[str, Any], steps: int | None, round_: int, iteration: int) -> dict[str, Any]:
    return {
        "steps": steps,
        "schedule": config["schedule"],
        "param": config["param"],
        "weighting": config["weighting"],
        "round": round_,
        "iteration": iteration,
    }


# ----- progressive distillation ----------------------------------------------------------------


def _round_steps(start_steps: Any, end_steps: Any) -> list[int]:
    start_steps = _positive_int("start_steps", start_steps, 2)
    end_steps = _positive_int("end_steps", end_steps)
    ratio = start_steps // end_steps
    if start_steps % end_steps or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"start_steps must be end_steps times a power of two >= 2, got start_steps={start_steps}, "
            f"end_steps={end_steps}"
        )
    steps, out = start_steps, []
    while steps > end_steps:
        steps //= 2
        out.append(steps)
    return out


def progressive_distill(
    teacher: nn.Module,
    data: Any,
    start_steps: int,
    end_steps: int = 1,
    *,
    schedule: Any = None,
    param: str = "v",
    weighting: str = "snr_trunc",
    iters: int = 1000,
    last_rounds_factor: float = 1.0,
    batch_size: int = 128,
    lr: float = 1e-4,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    ckpt_every: int = 0,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 10,
    on_round_end: Callable[[int, nn.Module], None] | None = None,
) -> dict[int, nn.Module]:
    """Progressive distillation ([PD] Algorithm 2; official settings in docs/spec.md section 6).

    Round k distills the current teacher of 2N steps into a student of N steps
    (N = start_steps / 2, ..., end_steps): student = deepcopy(teacher), fresh Adam, LR annealed
    linearly from `lr` to 0, gradient norm clipped at `grad_clip`; each iteration draws x, i
    uniform in 1..N, t = i/N, z_t = alpha_t x + sigma_t eps, builds the two-DDIM-step target of
    the teacher (`pd_fast.teacher_two_step`, no grad; lines 6-9) and minimises
    `pd_fast.fused_distill_loss` (line 10, docs/spec.md section 5). The student then becomes the teacher.

    Returns {N: student} for every round, each in eval mode. `teacher` is not modified (it is
    put in eval mode while it makes targets, and its mode is restored at the end).
    """
    data = check_data(data)
    schedule = _common_checks(param, weighting, schedule)
    round_steps = _round_steps(start_steps, end_steps)
    iters = _positive_int("iters", iters)
    if isinstance(last_rounds_factor, bool) or not (
        isinstance(last_rounds_factor, (int, float))
        and math.isfinite(last_rounds_factor)
        and last_rounds_factor > 0
    ):
        raise ValueError(f"last_rounds_factor must be a positive number, got {last_rounds_factor!r}")
    batch_size = _positive_int("batch_size", batch_size)
    lr = _positive_float("lr", lr)
    seed = _positive_int("seed", seed, 0)
    ckpt_every = _positive_int("ckpt_every", ckpt_every, 0)
    log_every = _positive_int("log_every", log_every)
    if grad_clip is not None:
        grad_clip = _positive_float("grad_clip", grad_clip)
    if on_round_end is not None and not callable(on_round_end):
        raise ValueError("on_round_end must be callable(steps, student) or None")
    device, dtype = _model_device(teacher, "teacher")
    _trainable(teacher, "teacher")
    ctx = _dist_context()
    x_local = _shard(data, ctx, device, dtype)
    run = _Run.open(out_dir, ctx)
    n_rounds = len(round_steps)
    round_iters = [
        max(1, round(iters * last_rounds_factor)) if r >= n_rounds - 2 else iters for r in range(n_rounds)
    ]
    config = {
        "param": param,
        "weighting": weighting,
        "schedule": ckpt.schedule_to_dict(schedule),
        "start_steps": int(start_steps),
        "end_steps": int(end_steps),
        "round_iters": round_iters,
        "batch_size": batch_size,
        "lr": lr,
        "grad_clip": grad_clip,
        "seed": seed,
        "world_size": ctx.world,
        "data_shape": list(data.shape),
        "teacher": ckpt.model_fingerprint(teacher) if run.ckpt_dir is not None else None,
    }

    gens = _Generators.seeded(seed, ctx.rank, "distill", device)
    students: dict[int, nn.Module] = {}
    first_round, first_iter, elapsed = 0, 0, 0.0
    state = run.load_state("distill", resume, config)
    if state is not None:
        info, tensors = state
        first_round, first_iter, elapsed = int(info["round"]), int(info["iteration"]), float(info["elapsed"])
        for steps in round_steps[:first_round]:
            done = copy.deepcopy(teacher)
            load_model_checkpoint(run.ckpt_dir / f"student_{steps}", done)
            students[steps] = done.eval()
        gens.restore(tensors, ctx.rank)
        if first_round < n_rounds:
            run.log.truncate(int(info["log_bytes"]))

    teacher_was_training = teacher.training
    current = students[round_steps[first_round - 1]] if first_round > 0 else teacher
    t0 = time.perf_counter() - elapsed

    def save_state(round_: int, iteration: int, student: nn.Module | None, opt: Any) -> None:
        """Commit the distillation state; `student` and `opt` are None at a round boundary."""
        rng = _gather_rng(gens, ctx)
        if ctx.main and run.ckpt_dir is not None:
            tensors, scalars = dict(rng), None
            if student is not None:
                opt_tensors, scalars = ckpt.optimizer_to_tensors(opt)
                tensors.update(_put("student", student.state_dict()), **opt_tensors)
            info = {
                "config": config,
                "round": round_,
                "iteration": iteration,
                "optimizer": scalars,
                "elapsed": time.perf_counter() - t0,
                "log_bytes": run.log.size(),
                "completed": {str(s): f"student_{s}" for s in round_steps[:round_]},
            }
            ckpt.save_training_state(run.ckpt_dir, "distill", tensors, info)
        ctx.barrier()

    try:
        for r in range(first_round, n_rounds):
            steps, n_iters = round_steps[r], round_iters[r]
            current.eval()
            student = copy.deepcopy(current)
            params = _trainable(student, "teacher")
            opt = torch.optim.Adam(params, lr=lr)
            start = 0
            if state is not None and r == first_round and first_iter > 0:
                info, tensors = state
                student.load_state_dict(_take("student", tensors))
                ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
                start = first_iter
            student.train()
            net = _wrap(student, ctx, device)

            desc = f"round {r + 1}/{n_rounds}: {2 * steps}->{steps} steps"
            bar = tqdm(
                total=n_iters, initial=start, desc=desc, disable=not (progress and ctx.main), leave=False
            )
            try:
                for it in range(start, n_iters):
                    x = _batch(x_local, gens, batch_size)
                    i = torch.randint(1, steps + 1, (batch_size,), generator=gens.data)
                    t_cpu = i.to(torch.float64) / steps
                    t = t_cpu.to(device)
                    z_t, alpha_t, sigma_t = _diffuse(x, t, schedule, gens)
                    with torch.no_grad():  # teacher_two_step wants t on the CPU: no device sync
                        z_tpp, alpha_tpp, sigma_tpp = teacher_two_step(
                            current, z_t, t_cpu, steps, schedule, param
                        )
                    out = net(z_t, t.to(dtype))
                    loss = fused_distill_loss(
                        out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, param, weighting=weighting
                    ).mean()
                    lr_it = lr * (1.0 - it / n_iters)
                    grad_norm = _update(params, opt, loss, lr_it, grad_clip)
                    bar.update(1)
                    done = it + 1
                    if done % log_every == 0 or done == n_iters:
                        record = {
                            "phase": "distill",
                            "round": r,
                            "steps": steps,
                            "iteration": done,
                            "loss": loss.item(),
                            "lr": lr_it,
                            "grad_norm": grad_norm.item(),
                            "time": time.perf_counter() - t0,
                        }
                        run.log.write(record)
                        bar.set_postfix(loss=f"{record['loss']:.4g}")
                    if ckpt_every and done % ckpt_every == 0 and done < n_iters:
                        save_state(r, done, student, opt)
            finally:
                bar.close()
            student.eval()
            students[steps] = student
            if ctx.main and run.ckpt_dir is not None:
                ckpt.save_model_checkpoint(
                    run.ckpt_dir / f"student_{steps}", student, _model_info(config, steps, r + 1, n_iters)
                )
            save_state(r + 1, 0, None, None)
            if on_round_end is not None:
                on_round_end(steps, student)
            current = student
    finally:
        run.log.close()
        teacher.train(teacher_was_training)
    return students
