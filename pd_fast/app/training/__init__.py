"""Teacher training and progressive distillation ([PD] Algorithm 2, docs/spec.md sections 5-6).

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
    data_fingerprint(data) -> str             # SHA-256 of the data's dtype, shape and values
    TrainingDiverged                          # FloatingPointError: a non-finite loss, gradient or weight

(`load_model_checkpoint` and `schedule_from_dict` are re-exported from `pd_fast.app.checkpoint`.)

One loop serves both stages, as in the official PD code: each iteration draws x from `data`, t,
eps ~ N(0, I), `z_t = diffuse(x, t, schedule, eps)` (docs/spec.md section 1), and takes one Adam
step on the loss of docs/spec.md section 5 (`fused_distill_loss`: Triton on CUDA, torch
elsewhere), its gradient clipped to global norm `grad_clip` (None: off). A stage is its step:

- teacher: t ~ U(0, 1], `x_tilde = x` (z_tpp = x, alpha_tpp = 1, sigma_tpp = 0), a linear LR
  warm-up over `warmup` iterations, then an EMA of the weights with decay
  `min(ema_decay, (1 + k) / (10 + k))` after update k (short runs do not average in the init);
- distillation round to N steps (N = start_steps / 2, ..., end_steps): student = copy of the
  previous round's student (of `teacher` in round 1), fresh Adam, t = i/N with i uniform in
  1..N, `x_tilde` from `teacher_two_step` (no grad), LR annealed linearly from `lr` to 0, no
  EMA. The last two rounds run `round(iters * last_rounds_factor)` iterations (the paper: 2).

`model(z, t)` takes t of shape (B,) in z's dtype; training runs on the device of its parameters,
and `data` (a tensor or array (N, ...) in [-1, 1]) is moved there once. `schedule`: a
`CosineSchedule` (default) or a `DiscreteSchedule` of `pd_fast.schedules`.

- `out_dir`: the run writes `out_dir/checkpoints/` (see `pd_fast.app.checkpoint`): `teacher`
  (EMA weights) and `student_<N>` model checkpoints, and each stage's training state every
  `ckpt_every` iterations (0: only at stage/round ends); plus `out_dir/log.jsonl`, one JSON
  record (phase, round, steps, iteration, loss, lr, grad_norm, time) per `log_every` iterations.
  A stage with a state in `out_dir` raises ValueError unless `resume=True`, which continues from
  its last checkpoint with the same settings and data (`to_dict()` of the stage's config, which
  holds the data's fingerprint) and cuts the log back to that checkpoint; a stage starting afresh
  cuts the log back to the stages before it. Checkpoint files are verified against their SHA-256
  (`pd_fast.app.checkpoint`): a damaged last state falls back to the one before it, with a warning.
- Finiteness: every update's loss and gradient norm go into a small device buffer, read (one host
  sync) every `CHECK_EVERY` updates, before every log record and before every checkpoint, which
  also checks the weights. A non-finite value raises `TrainingDiverged` naming the stage, round and
  iteration; nothing is written after the last finite checkpoint, so a resume continues from it.
- Randomness comes only from `torch.Generator`s seeded from (seed, rank, stage) (data and t on
  the CPU, noise on the device) and torch's global RNG (dropout); all are checkpointed. With
  `torch.use_deterministic_algorithms(True)` and a fixed thread count, a run killed with SIGKILL
  and resumed ends bitwise equal to an uninterrupted one on CPU.
- Under `torchrun` (`torch.distributed.is_initialized()`) the trained model is wrapped in
  DistributedDataParallel, rank r samples from `data[r::world_size]` with its own generators,
  rank 0 writes checkpoints and log, and resume needs the same world size. The caller sets up
  the process group (and the CUDA device) first.
- Speed on CPU: tiny models train several times faster with `torch.set_num_threads(1)` on a busy
  2-core machine (tests/app/test_training.py's distillation test: ~40 s with 2 threads, ~6 s with 1).
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..._checks import param_name, remember_host_copy, to_device, weighting_name
from ..._engine import on_cpu
from ...distillation import fused_distill_loss, teacher_two_step
from ...parameterizations import NULL_LABEL, guided_x_eps
from ...schedules import CosineSchedule, DiscreteSchedule, diffuse
from .. import checkpoint as ckpt
from ..checkpoint import load_model_checkpoint, schedule_from_dict

__all__ = [
    "train_teacher",
    "progressive_distill",
    "distill_guidance",
    "check_data",
    "check_labels",
    "data_fingerprint",
    "TrainingDiverged",
    "CHECK_EVERY",
    "load_model_checkpoint",
    "schedule_from_dict",
]


# Updates between two finiteness checks of the loss and gradient norm (each check is one host sync).
CHECK_EVERY = 10


# ----- input checks and stage configs ----------------------------------------------------------


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


def data_fingerprint(data: Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and values (read on the CPU), to recognise a run's data."""
    x = data.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{x.dtype}|{tuple(x.shape)}|".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().data if x.numel() else b"")
    return h.hexdigest()


def check_labels(labels: Any, n: int, name: str = "labels") -> Tensor:
    """`labels` as an int64 CPU tensor (n,) of class labels >= 0, one per example of the data;
    ValueError naming `name` otherwise."""
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{name} must be a tensor or array of integers ({n},), got {type(labels)!r}"
            ) from err
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class labels, got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one label per example), got {tuple(labels.shape)}")
    labels = labels.detach().to("cpu", torch.int64).contiguous()
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class labels >= 0, got min {int(labels.min())}")
    return labels


def _unit_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def _w_range(w_min: Any, w_max: Any) -> tuple[float, float]:
    for name, v in (("w_min", w_min), ("w_max", w_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if float(w_max) < float(w_min):
        raise ValueError(f"w_max must be >= w_min, got w_min={w_min!r}, w_max={w_max!r}")
    return float(w_min), float(w_max)


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


def _schedule(schedule: Any) -> CosineSchedule | DiscreteSchedule:
    if schedule is None:
        return CosineSchedule()
    if not isinstance(schedule, (CosineSchedule, DiscreteSchedule)):
        raise ValueError(f"schedule must be a CosineSchedule or a DiscreteSchedule, got {type(schedule)!r}")
    return schedule


def _round_steps(start_steps: Any, end_steps: Any) -> tuple[int, ...]:
    """The student step counts of the rounds: start_steps / 2, start_steps / 4, ..., end_steps."""
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
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class _StageConfig:
    """The settings of one stage that a resumed run must share, validated on construction and
    stored as `to_dict()` in the stage's training state (key "config")."""

    param: str
    weighting: str
    schedule: Any
    batch_size: int
    lr: float
    grad_clip: float | None
    seed: int
    world_size: int
    data_shape: tuple[int, ...]
    data: str | None = None  # `data_fingerprint` of the data when the run writes checkpoints
    # conditional stages: the labels' `data_fingerprint` when the run writes checkpoints ("" if not)
    labels: str | None = None

    def __post_init__(self) -> None:
        param_name(self.param)
        weighting_name(self.weighting)
        self._set("schedule", _schedule(self.schedule))
        self._set("batch_size", _positive_int("batch_size", self.batch_size))
        self._set("lr", _positive_float("lr", self.lr))
        if self.grad_clip is not None:
            self._set("grad_clip", _positive_float("grad_clip", self.grad_clip))
        self._set("seed", _positive_int("seed", self.seed, 0))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # how a frozen dataclass normalises its own fields

    def to_dict(self) -> dict[str, Any]:
        return {
            "param": self.param,
            "weighting": self.weighting,
            "schedule": ckpt.schedule_to_dict(self.schedule),
            "batch_size": self.batch_size,
            "lr": self.lr,
            "grad_clip": self.grad_clip,
            "seed": self.seed,
            "world_size": self.world_size,
            "data_shape": list(self.data_shape),
            "data": self.data,
        } | ({} if self.labels is None else {"labels": self.labels})


@dataclass(frozen=True, kw_only=True)
class _TeacherConfig(_StageConfig):
    iters: int
    warmup: int
    ema_decay: float
    p_uncond: float = 0.0  # conditional teachers: the probability of dropping a label

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("p_uncond", _unit_float("p_uncond", self.p_uncond))
        self._set("iters", _positive_int("iters", self.iters))
        self._set("warmup", _positive_int("warmup", self.warmup, 0))
        d = self.ema_decay
        if isinstance(d, bool) or not (isinstance(d, (int, float)) and 0.0 <= d < 1.0):
            raise ValueError(f"ema_decay must lie in [0, 1), got {d!r}")

    def to_dict(self) -> dict[str, Any]:
        cond = {} if self.labels is None else {"p_uncond": self.p_uncond}
        return dict(super().to_dict(), iters=self.iters, warmup=self.warmup, ema_decay=self.ema_decay) | cond

    @property
    def end(self) -> tuple[int, int]:
        """(round, iteration) of the finished stage."""
        return 0, self.iters

    def progress_info(self, round_: int, iteration: int) -> dict[str, Any]:
        """What the training state records besides (round, iteration): whether training is done."""
        return {"complete": iteration == self.iters}

    def lr_at(self, k: int) -> float:
        """The LR of update k: linear warm-up over `warmup` updates, then `lr`."""
        return self.lr * min(1.0, (k + 1) / self.warmup) if self.warmup else self.lr


@dataclass(frozen=True, kw_only=True)
class _DistillConfig(_StageConfig):
    start_steps: int
    end_steps: int
    iters: int
    last_rounds_factor: float
    teacher: str | None  # the teacher's model_fingerprint when the run writes checkpoints
    w_min: float = 0.0  # guided distillation (labels given): w ~ U[w_min, w_max] per example
    w_max: float = 0.0
    round_steps: tuple[int, ...] = field(init=False)  # student steps per round
    round_iters: tuple[int, ...] = field(init=False)  # iterations per round

    def __post_init__(self) -> None:
        super().__post_init__()
        steps = _round_steps(self.start_steps, self.end_steps)
        iters = _positive_int("iters", self.iters)
        f = self.last_rounds_factor
        if isinstance(f, bool) or not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise ValueError(f"last_rounds_factor must be a positive number, got {f!r}")
        n = len(steps)
        self._set("w_min", _w_range(self.w_min, self.w_max)[0])
        self._set("w_max", float(self.w_max))
        self._set("start_steps", int(self.start_steps))
        self._set("end_steps", int(self.end_steps))
        self._set("iters", iters)
        self._set("round_steps", steps)
        self._set("round_iters", tuple(max(1, round(iters * f)) if r >= n - 2 else iters for r in range(n)))

    def to_dict(self) -> dict[str, Any]:
        return dict(
            super().to_dict(),
            start_steps=self.start_steps,
            end_steps=self.end_steps,
            round_iters=list(self.round_iters),
            teacher=self.teacher,
        ) | ({} if self.labels is None else {"w_min": self.w_min, "w_max": self.w_max})

    @property
    def end(self) -> tuple[int, int]:
        """(round, iteration) of the finished stage: every round done."""
        return len(self.round_steps), 0

    def progress_info(self, round_: int, iteration: int) -> dict[str, Any]:
        """What the training state records besides (round, iteration): the finished students."""
        return {"completed": {str(s): f"student_{s}" for s in self.round_steps[:round_]}}


@dataclass(frozen=True, kw_only=True)
class _GuidanceConfig(_StageConfig):
    """[GD] stage 1: the w-conditioned student's settings."""

    iters: int
    w_min: float
    w_max: float
    teacher: str | None  # the teacher's model_fingerprint when the run writes checkpoints

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("iters", _positive_int("iters", self.iters))
        w_min, w_max = _w_range(self.w_min, self.w_max)
        self._set("w_min", w_min)
        self._set("w_max", w_max)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            super().to_dict(), iters=self.iters, w_min=self.w_min, w_max=self.w_max, teacher=self.teacher
        )

    @property
    def end(self) -> tuple[int, int]:
        """(round, iteration) of the finished stage."""
        return 0, self.iters

    def progress_info(self, round_: int, iteration: int) -> dict[str, Any]:
        """What the training state records besides (round, iteration): whether training is done."""
        return {"complete": iteration == self.iters}


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
        if not self.active:
            return
        if dist.get_backend() == "nccl":  # NCCL needs the rank's own device, set by the launcher
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _dist_context() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    return _Dist()


def part_ranks() -> None:
    """End the process group on every rank together: collect garbage that may still hold it (a DDP
    wrapper in a reference cycle), meet at a barrier (no collective in flight), then
    `destroy_process_group`. A no-op outside torchrun.

    A group still alive when the interpreter exits is torn down in the interpreter's teardown,
    where gloo can abort the process (`terminate called without an active exception`; a 25-line
    DDP script that skips this does so in about one exit in three on a loaded machine). Even after
    it, torch 2.13 rarely aborts at exit, so the CLI leaves a torchrun rank through `os._exit`.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        _dist_context().barrier()
        dist.destroy_process_group()


def rank_fingerprints(models: dict[str, nn.Module]) -> list[dict[str, str]]:
    """Every rank's `model_fingerprint` of each named model, rank by rank (a collective call under
    torchrun, where the ranks must end identical; one entry otherwise)."""
    mine = {name: ckpt.model_fingerprint(m) for name, m in models.items()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


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

    def drop_phase(self, phase: str) -> None:
        """Cut the log before its first record of `phase` (or its first partial line): a stage
        starting afresh continues the records of the stages before it."""
        if self.file is None:
            return
        self.file.flush()
        size = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break
                if not line.endswith(b"\n") or not isinstance(record, dict) or record.get("phase") == phase:
                    break
                size += len(line)
        self.truncate(size)

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


# ----- one stage: its data, generators, checkpoints and log, and the loop ----------------------


@dataclass(frozen=True)
class _Step:
    """What a stage's iterations do beyond the shared loss and update: `draw_t(data generator)`
    -> t (B,) float64 on the CPU; `draw_cond(idx, data generator)` (conditional stages) -> the
    network's extra inputs `cond`, (c,) or (c, w), for the examples `idx` of the stage's labels,
    drawn after t; `target(x, z_t, t, alpha_t, sigma_t, cond)` -> x_tilde as (z_tpp, alpha_tpp,
    sigma_tpp) (docs/spec.md section 4); `lr_at(k)`, the LR of update k; `after_update(k)` (the
    teacher's EMA). `modules` go into the training state by name."""

    round: int
    steps: int | None
    iters: int
    desc: str
    net: nn.Module
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    modules: dict[str, nn.Module]
    draw_t: Callable[[torch.Generator], Tensor]
    target: Callable[..., tuple[Tensor, Tensor, Tensor]]
    lr_at: Callable[[int], float]
    after_update: Callable[[int], None] | None = None
    draw_cond: Callable[[Tensor, torch.Generator], tuple[Tensor, ...]] | None = None


@dataclass
class _Stage:
    """One stage of a run, "teacher" or "distill" (all rounds): its config, data shard and
    generators, and where it writes (`ckpt_dir` None: nowhere; the log is rank 0's only)."""

    name: str
    cfg: _TeacherConfig | _DistillConfig
    ctx: _Dist
    x_local: Tensor
    gens: _Generators
    ckpt_dir: Path | None
    log: _Log
    ckpt_every: int
    log_every: int
    progress: bool
    t0: float
    last_commit: tuple[int, int] | None = None  # (round, iteration) of the last committed state
    c_local: Tensor | None = None  # the labels of x_local (int64, CPU) in a conditional stage

    @classmethod
    def open(
        cls,
        name: str,
        cfg: _TeacherConfig | _DistillConfig,
        ctx: _Dist,
        data: Tensor,
        device: torch.device,
        dtype: torch.dtype,
        out_dir: str | os.PathLike | None,
        ckpt_every: Any,
        log_every: Any,
        progress: bool,
        labels: Tensor | None = None,
    ) -> _Stage:
        ckpt_every = _positive_int("ckpt_every", ckpt_every, 0)
        log_every = _positive_int("log_every", log_every)
        x_local = _shard(data, ctx, device, dtype)
        c_local = None if labels is None else _shard(labels, ctx, torch.device("cpu"), torch.int64)
        ckpt_dir, log = None, _Log(None)
        if out_dir is not None:
            ckpt_dir = Path(out_dir) / "checkpoints"
            if ctx.main:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            ctx.barrier()
            log = _Log(Path(out_dir) / "log.jsonl" if ctx.main else None)
        gens = _Generators.seeded(cfg.seed, ctx.rank, name, device)
        stage = cls(name, cfg, ctx, x_local, gens, ckpt_dir, log, ckpt_every, log_every, progress, 0.0)
        stage.c_local = c_local
        return stage

    @property
    def device(self) -> torch.device:
        return self.gens.device

    def load_state(self, resume: bool) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        """The committed state of this stage if resuming, with the generators, the clock and the
        log set back to it; ValueError if one exists and resume is False, or if it was written
        with other settings. Starts the stage's clock."""
        state = self._committed(resume)
        elapsed = 0.0
        if state is not None:
            info, tensors = state
            self.gens.restore(tensors, self.ctx.rank)
            elapsed = float(info["elapsed"])
            self.last_commit = (int(info["round"]), int(info["iteration"]))
            if self.last_commit < self.cfg.end:
                self.log.truncate(int(info["log_bytes"]))
        else:
            self.log.drop_phase(self.name)
        self.t0 = time.perf_counter() - elapsed
        return state

    def _committed(self, resume: bool) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        if self.ckpt_dir is None:
            return None
        if not resume:
            if (self.ckpt_dir / f"{self.name}_state.json").is_file():
                self.log.close()
                raise ValueError(
                    f"out_dir {self.ckpt_dir.parent} already holds a {self.name} checkpoint: pass "
                    "resume=True to continue it, or choose another out_dir"
                )
            return None
        try:
            state = ckpt.load_training_state(self.ckpt_dir, self.name)
        except ValueError:
            self.log.close()
            raise
        if state is None:
            return None
        saved = state[0].get("config", {})
        for key, value in self.cfg.to_dict().items():
            if key == "data" and key not in saved:
                continue  # a state written before the data's fingerprint was recorded
            if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(value)):
                self.log.close()
                if key == "data":
                    raise ValueError(
                        f"resume: out_dir holds a {self.name} run on other data: same shape "
                        f"{tuple(self.cfg.data_shape)}, different values (fingerprint "
                        f"{str(saved[key])[:12]}... when it was written, {str(value)[:12]}... now)"
                    )
                raise ValueError(
                    f"resume: out_dir holds a {self.name} run with {key}={saved.get(key)!r}, "
                    f"this call has {key}={value!r}"
                )
        return state

    def save_state(
        self, round_: int, iteration: int, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None
    ) -> None:
        """Commit the training state (a collective call under DDP: every rank's generators)."""
        rng = _gather_rng(self.gens, self.ctx)
        if self.ctx.main and self.ckpt_dir is not None:
            tensors, scalars = dict(rng), None
            for prefix, module in modules.items():
                tensors.update(_put(prefix, module.state_dict()))
            if opt is not None:
                opt_tensors, scalars = ckpt.optimizer_to_tensors(opt)
                tensors.update(opt_tensors)
            info = {
                "config": self.cfg.to_dict(),
                "round": round_,
                "iteration": iteration,
                "optimizer": scalars,
                "elapsed": time.perf_counter() - self.t0,
                "log_bytes": self.log.size(),
                **self.cfg.progress_info(round_, iteration),
            }
            ckpt.save_training_state(self.ckpt_dir, self.name, tensors, info)
        self.last_commit = (round_, iteration)
        self.ctx.barrier()

    def save_model(self, stem: str, model: nn.Module, steps: int | None, round_: int, iteration: int) -> None:
        """Write the model checkpoint `<stem>.safetensors|json` (rank 0, when there is an out_dir)."""
        if self.ctx.main and self.ckpt_dir is not None:
            cfg = self.cfg
            info = {
                "steps": steps,
                "schedule": ckpt.schedule_to_dict(cfg.schedule),
                "param": cfg.param,
                "weighting": cfg.weighting,
                "round": round_,
                "iteration": iteration,
            }
            ckpt.save_model_checkpoint(self.ckpt_dir / stem, model, info)

    def iterate(self, step: _Step, start: int) -> None:
        """Updates start..step.iters - 1 of the stage, with the log and the checkpoints in between
        (the caller commits the stage's end)."""
        cfg, gens = self.cfg, self.gens
        guard = _Guard(self, step)
        bar = tqdm(
            total=step.iters,
            initial=start,
            desc=step.desc,
            disable=not (self.progress and self.ctx.main),
            leave=False,
        )
        try:
            for k in range(start, step.iters):
                x, idx = _batch(self.x_local, gens.data, cfg.batch_size)
                t = step.draw_t(gens.data)
                cond = () if step.draw_cond is None else step.draw_cond(idx, gens.data)
                loss = _loss(step.net, x, t, gens.noise, cfg, step.target, cond)
                lr = step.lr_at(k)
                grad_norm = _update(step.params, step.opt, loss, lr, cfg.grad_clip)
                if step.after_update is not None:
                    step.after_update(k)
                guard.record(loss, grad_norm)
                bar.update(1)
                done = k + 1
                logs = done % self.log_every == 0 or done == step.iters
                saves = done == step.iters or (self.ckpt_every and done % self.ckpt_every == 0)
                if saves or logs or done % CHECK_EVERY == 0:
                    guard.check(done, weights=bool(saves))
                if logs:
                    record = {
                        "phase": self.name,
                        "round": step.round,
                        "steps": step.steps,
                        "iteration": done,
                        "loss": loss.item(),
                        "lr": lr,
                        "grad_norm": grad_norm.item(),
                        "time": time.perf_counter() - self.t0,
                    }
                    self.log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                if self.ckpt_every and done % self.ckpt_every == 0 and done < step.iters:
                    self.save_state(step.round, done, step.modules, step.opt)
        finally:
            bar.close()

    def where(self, step: _Step) -> str:
        """The stage and round of `step`, for messages."""
        if step.steps is None:
            return self.name
        n_rounds = len(self.cfg.round_steps)
        return f"{self.name} round {step.round + 1}/{n_rounds} ({2 * step.steps}->{step.steps} steps)"


class TrainingDiverged(FloatingPointError):
    """A non-finite loss, gradient norm or weight stopped training; `stage`, `round` and `iteration`
    say where, and nothing was written after the last finite checkpoint."""

    def __init__(self, message: str, stage: str, round_: int, iteration: int) -> None:
        super().__init__(message)
        self.stage, self.round, self.iteration = stage, round_, iteration


class _Guard:
    """Finiteness of training without a host sync per update: `record` puts each update's loss and
    gradient norm into a device buffer (one small op); `check` reads the rows since the last check
    (and, before a checkpoint, whether the weights are finite) in one host sync, agreed over the
    ranks, and raises `TrainingDiverged` at the first non-finite one."""

    def __init__(self, stage: _Stage, step: _Step) -> None:
        self.stage, self.step = stage, step
        self.values = torch.zeros(CHECK_EVERY, 2, device=stage.device, dtype=torch.float32)
        self.n = 0

    def record(self, loss: Tensor, grad_norm: Tensor) -> None:
        torch.stack((loss.detach().float(), grad_norm.float()), out=self.values[self.n])
        self.n += 1

    def check(self, done: int, weights: bool) -> None:
        """Raise `TrainingDiverged` if a value recorded since the last check, or with `weights` a
        weight of the stage's modules, is not finite; `done`: updates done so far."""
        n, stage, step = self.n, self.stage, self.step
        flags = [torch.isfinite(self.values[:n]).all(dim=1)]
        if weights:
            params = [p for m in step.modules.values() for p in m.parameters() if p.is_floating_point()]
            flags.append(torch.stack([torch.isfinite(p).all() for p in params]).all().reshape(1))
        ok = torch.cat(flags).to(torch.int32)
        if stage.ctx.active:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        ok_list = ok.tolist()  # the one host sync
        self.n = 0
        if all(ok_list):
            return
        where, last = stage.where(step), stage.last_commit
        saved = (
            f"the last checkpoint (round {last[0]}, iteration {last[1]})"
            if last is not None
            else "the start of the stage (no checkpoint of it was written)"
        )
        bad = next((j for j in range(n) if not ok_list[j]), None)
        if bad is not None:
            iteration = done - n + bad + 1
            loss, grad_norm = self.values[bad].tolist()
            what = f"the loss is {loss:.6g} and the gradient norm {grad_norm:.6g}"
        else:
            iteration = done
            what = "the weights are no longer finite"
        raise TrainingDiverged(
            f"training diverged in {where} at iteration {iteration}: {what}. Nothing was saved after "
            f"{saved}; fix the cause and resume from there",
            stage.name,
            step.round,
            iteration,
        )


def _batch(x_local: Tensor, gen: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor]:
    """A batch of examples drawn uniformly with replacement, and their indices (CPU)."""
    idx = torch.randint(0, x_local.shape[0], (batch_size,), generator=gen)
    return x_local[to_device(idx, x_local.device, torch.int64)], idx


def _loss(
    net: nn.Module,
    x: Tensor,
    t: Tensor,
    noise_gen: torch.Generator,
    cfg: _StageConfig,
    target: Callable[..., tuple[Tensor, Tensor, Tensor]],
    cond: tuple[Tensor, ...] = (),
) -> Tensor:
    """The batch loss of docs/spec.md section 5 ([PD] Algorithm 2, lines 4-10): x (B, ...) on the
    device, t (B,) float64 on the CPU; z_t = diffuse(x, t, schedule, eps), x_tilde from `target`;
    the network is called `net(z_t, t, *cond)`."""
    # t and its coefficients go to the device in one copy that does not block the host; their CPU
    # copies serve the checks of diffuse and of the loss, so that no call here syncs with the device
    alpha_t, sigma_t = on_cpu(cfg.schedule.alpha_sigma(t))
    host = torch.stack((t, alpha_t, sigma_t))
    t_dev, alpha_t, sigma_t = to_device(host, x.device, torch.float64).unbind(0)
    for value, row in zip((t_dev, alpha_t, sigma_t), host, strict=True):
        remember_host_copy(value, row)
    eps = torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype)
    z_t = diffuse(x, t_dev, cfg.schedule, eps)
    z_tpp, alpha_tpp, sigma_tpp = target(x, z_t, t, alpha_t, sigma_t, cond)
    out = net(z_t, t_dev.to(x.dtype), *cond)
    return fused_distill_loss(
        out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, cfg.param, weighting=cfg.weighting
    ).mean()


def _data_target(
    x: Tensor, z_t: Tensor, t: Tensor, alpha_t: Tensor, sigma_t: Tensor, cond: tuple
) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's target: the data x itself, as (z_tpp, alpha_tpp, sigma_tpp) = (x, 1, 0)."""
    return (x, *_x_endpoint(x.shape[0], x.device))


def _x_endpoint(batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(alpha'', sigma'') = (1, 0) per example on `device`, the coefficients of a target that is an
    x itself (x_tilde = z'' there), sent in one copy with their host copies, so that the loss checks
    them without a device sync."""
    host = torch.stack((torch.ones(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)))
    ones, zeros = to_device(host, device, torch.float64).unbind(0)
    remember_host_copy(ones, host[0])
    remember_host_copy(zeros, host[1])
    return ones, zeros


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


def _load_module(module: nn.Module, prefix: str, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Load the `prefix/` tensors of a training state into `module`; ValueError if they do not fit."""
    try:
        module.load_state_dict(_take(prefix, tensors))
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(
            f"resume: the {prefix} weights in {info.get('tensors_file')} do not fit this model "
            f"(was the model or its settings changed?): {detail[:300]}"
        ) from err


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
    labels: Any = None,
    p_uncond: float = 0.1,
) -> nn.Module:
    """Train a continuous-time diffusion model (the base teacher of [PD] Section 4 / docs/spec.md section 5).

    Each iteration: x from `data`, t ~ U(0, 1], eps ~ N(0, I), z_t = alpha_t x + sigma_t eps, and
    the loss `w(lambda_t) * mean((x_hat(z_t, model(z_t, t)) - x)^2)` (docs/spec.md section 5 with
    x_tilde = x, through `pd_fast.fused_distill_loss` with z_tpp = x, alpha_tpp = 1, sigma_tpp = 0).
    Adam with a linear warm-up over `warmup` iterations, then constant `lr`.

    Conditional teacher (classifier-free guidance, [GD] Section 2, docs/spec.md section 8): with
    `labels` (integers (N,) >= 0, one per example of `data`) the model is called `model(z_t, t, c)`
    with c the example's label, replaced by `NULL_LABEL` (-1) with probability `p_uncond`; the drop
    is drawn from the data generator after t, so runs stay deterministic and resumable. Without
    labels (`p_uncond` unused) training is unconditional, with the same random streams as ever.

    Trains `model` in place and returns a new module with the EMA of its weights, in eval mode.
    See the module docstring for checkpoints, resume and DDP.
    """
    data = check_data(data)
    if labels is not None:
        labels = check_labels(labels, data.shape[0])
    ctx = _dist_context()
    cfg = _TeacherConfig(
        param=param, weighting=weighting, schedule=schedule, iters=iters, batch_size=batch_size, lr=lr,
        warmup=warmup, ema_decay=ema_decay, grad_clip=grad_clip, seed=seed, world_size=ctx.world,
        data_shape=tuple(data.shape), data=data_fingerprint(data) if out_dir is not None else None,
        labels=_labels_fingerprint(labels, out_dir), p_uncond=p_uncond,
    )  # fmt: skip
    device, dtype = _model_device(model, "model")
    params = _trainable(model, "model")
    stage = _Stage.open(
        "teacher", cfg, ctx, data, device, dtype, out_dir, ckpt_every, log_every, progress, labels
    )
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(params, lr=cfg.lr)
    start, state = 0, stage.load_state(resume)
    if state is not None:
        info, tensors = state
        _load_module(model, "model", info, tensors)
        _load_module(ema, "ema", info, tensors)
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        start = int(info["iteration"])
    net = _wrap(model, ctx, device)
    model.train()
    step = _Step(
        round=0, steps=None, iters=cfg.iters, desc="teacher", net=net, params=params, opt=opt,
        modules={"model": model, "ema": ema},
        draw_t=lambda gen: 1.0 - torch.rand(cfg.batch_size, generator=gen, dtype=torch.float64),
        target=_data_target,
        lr_at=cfg.lr_at, after_update=functools.partial(_ema_update, ema, model, cfg.ema_decay),
        draw_cond=None if labels is None else functools.partial(
            _dropped_labels, stage.c_local, cfg.p_uncond, device
        ),
    )  # fmt: skip
    try:
        stage.iterate(step, start)
        if start < cfg.iters:
            stage.save_model("teacher", ema, None, 0, cfg.iters)
            stage.save_state(0, cfg.iters, step.modules, opt)
    finally:
        stage.log.close()
    if stage.ctx.main and stage.ckpt_dir is not None and not _intact(stage.ckpt_dir / "teacher"):
        stage.save_model("teacher", ema, None, 0, cfg.iters)
    ctx.barrier()
    return ema.eval()


def _labels_fingerprint(labels: Tensor | None, out_dir: Any) -> str | None:
    """What a conditional stage's config records of its labels: their fingerprint when the run
    writes checkpoints, "" when it does not; None for an unconditional stage."""
    if labels is None:
        return None
    return data_fingerprint(labels) if out_dir is not None else ""


def _dropped_labels(
    c_local: Tensor, p_uncond: float, device: torch.device, idx: Tensor, gen: torch.Generator
) -> tuple[Tensor]:
    """The labels of the examples `idx`, each replaced by `NULL_LABEL` with probability `p_uncond`
    (one uniform draw per example from the data generator), on `device`."""
    drop = torch.rand(idx.shape[0], generator=gen, dtype=torch.float64) < p_uncond
    return (to_device(c_local[idx].masked_fill(drop, NULL_LABEL), device, torch.int64),)


def _labels_and_w(
    c_local: Tensor, w_min: float, w_max: float, device: torch.device, idx: Tensor, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The labels of the examples `idx` and w ~ U[w_min, w_max] per example (from the data
    generator), on `device`; w in float32, as the networks embed it."""
    w = (w_min + (w_max - w_min) * torch.rand(idx.shape[0], generator=gen, dtype=torch.float64)).float()
    w_dev = to_device(w, device, torch.float32)
    remember_host_copy(w_dev, w.double())  # the guided target checks w >= 0 on this copy: no sync
    return to_device(c_local[idx], device, torch.int64), w_dev


def _with_cond(model: nn.Module, cond: tuple[Tensor, ...], z: Tensor, t: Tensor) -> Tensor:
    """`model(z, t, *cond)`: a conditional model as the samplers call a model, `model(z, t)`."""
    return model(z, t, *cond)


def _intact(stem: Path) -> bool:
    """Whether the model checkpoint `stem` exists and passes its SHA-256 check (warns if damaged)."""
    if not stem.with_suffix(".safetensors").is_file():
        return False
    try:
        ckpt.verify_model_checkpoint(stem)
    except ckpt.CheckpointError as err:
        message = f"{err}; writing it again from the training state"
        warnings.warn(message, ckpt.CheckpointFallbackWarning, stacklevel=3)
        return False
    return True


def _ema_update(ema: nn.Module, model: nn.Module, ema_decay: float, k: int) -> None:
    """The EMA after update k, decay `min(ema_decay, (1 + k) / (10 + k))` (docs/spec.md section 6);
    buffers are copied."""
    with torch.no_grad():
        decay = min(ema_decay, (1.0 + k) / (10.0 + k))
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        for e_buf, m_buf in zip(ema.buffers(), model.buffers(), strict=True):
            e_buf.copy_(m_buf)


# ----- progressive distillation ----------------------------------------------------------------


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
    labels: Any = None,
    w_min: float = 0.0,
    w_max: float = 4.0,
) -> dict[int, nn.Module]:
    """Progressive distillation ([PD] Algorithm 2; official settings in docs/spec.md section 6).

    Round k distills the current teacher of 2N steps into a student of N steps
    (N = start_steps / 2, ..., end_steps): student = deepcopy(teacher), fresh Adam, LR annealed
    linearly from `lr` to 0, gradient norm clipped at `grad_clip`; each iteration draws x, i
    uniform in 1..N, t = i/N, z_t = alpha_t x + sigma_t eps, builds the two-DDIM-step target of
    the teacher (`pd_fast.teacher_two_step`, no grad; lines 6-9) and minimises
    `pd_fast.fused_distill_loss` (line 10, docs/spec.md section 5). The student then becomes the teacher.

    Guided distillation ([GD] stage 2, docs/spec.md section 8): with `labels` (integers (N,) >= 0,
    one per example) `teacher` is a w-conditioned model `teacher(z, t, c, w)` (the student of
    `distill_guidance`); each example gets its label c and w ~ U[w_min, w_max] (drawn from the data
    generator after t), the target is two DDIM steps of the previous model at that c and w
    (`teacher_two_step` of `lambda z, t: model(z, t, c, w)`), and the student is called
    `student(z_t, t, c, w)`: one network call per step for every w in the range.

    Returns {N: student} for every round, each in eval mode. `teacher` is not modified (it is
    put in eval mode while it makes targets, and its mode is restored at the end).
    `on_round_end(N, student)` is called on every rank after each round.
    """
    data = check_data(data)
    if labels is not None:
        labels = check_labels(labels, data.shape[0])
        if getattr(teacher, "config", {}).get("w_conditioned") is False or (
            "num_classes" in getattr(teacher, "config", {}) and not teacher.config.get("w_conditioned")
        ):
            raise ValueError(
                "teacher must be w-conditioned (teacher(z, t, c, w)) for guided distillation: "
                "pass the student of distill_guidance"
            )
    if on_round_end is not None and not callable(on_round_end):
        raise ValueError("on_round_end must be callable(steps, student) or None")
    device, dtype = _model_device(teacher, "teacher")
    _trainable(teacher, "teacher")
    ctx = _dist_context()
    cfg = _DistillConfig(
        param=param, weighting=weighting, schedule=schedule, start_steps=start_steps, end_steps=end_steps,
        iters=iters, last_rounds_factor=last_rounds_factor, batch_size=batch_size, lr=lr,
        grad_clip=grad_clip, seed=seed, world_size=ctx.world, data_shape=tuple(data.shape),
        data=data_fingerprint(data) if out_dir is not None else None,
        teacher=ckpt.model_fingerprint(teacher) if out_dir is not None else None,
        labels=_labels_fingerprint(labels, out_dir), w_min=w_min, w_max=w_max,
    )  # fmt: skip
    stage = _Stage.open(
        "distill", cfg, ctx, data, device, dtype, out_dir, ckpt_every, log_every, progress, labels
    )
    state = stage.load_state(resume)
    first_round, first_iter = (int(state[0]["round"]), int(state[0]["iteration"])) if state else (0, 0)
    students: dict[int, nn.Module] = {}
    for steps in cfg.round_steps[:first_round]:  # finished before the resume
        students[steps] = copy.deepcopy(teacher)
        load_model_checkpoint(stage.ckpt_dir / f"student_{steps}", students[steps])
        students[steps].eval()
    teacher_was_training = teacher.training
    current = students[cfg.round_steps[first_round - 1]] if first_round > 0 else teacher
    try:
        for r in range(first_round, len(cfg.round_steps)):
            current = _distill_round(
                stage, current, r, state if r == first_round and first_iter > 0 else None
            )
            students[cfg.round_steps[r]] = current
            if on_round_end is not None:
                on_round_end(cfg.round_steps[r], current)
    finally:
        stage.log.close()
        teacher.train(teacher_was_training)
    return students


def _distill_round(
    stage: _Stage, current: nn.Module, r: int, state: tuple[dict[str, Any], dict[str, Tensor]] | None
) -> nn.Module:
    """Round r ([PD] Algorithm 2, lines 2-13): a copy of `current` (2N steps) learns to match two
    of its DDIM steps in one (N steps); `state`: the mid-round state to resume from. Commits the
    student and the end of the round, and returns the student in eval mode."""
    cfg = stage.cfg
    steps, iters = cfg.round_steps[r], cfg.round_iters[r]
    current.eval()
    student = copy.deepcopy(current)
    params = _trainable(student, "teacher")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    start = 0
    if state is not None:
        info, tensors = state
        _load_module(student, "student", info, tensors)
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        start = int(info["iteration"])
    student.train()

    def target(x: Tensor, z_t: Tensor, t: Tensor, alpha_t: Tensor, sigma_t: Tensor, cond: tuple) -> tuple:
        # the previous student at the example's label and w: `lambda z, t: current(z, t, c, w)`
        model = current if not cond else functools.partial(_with_cond, current, cond)
        with torch.no_grad():  # teacher_two_step wants t on the CPU: no device sync
            return teacher_two_step(model, z_t, t, steps, cfg.schedule, cfg.param)

    n_rounds, batch = len(cfg.round_steps), cfg.batch_size
    step = _Step(
        round=r, steps=steps, iters=iters, desc=f"round {r + 1}/{n_rounds}: {2 * steps}->{steps} steps",
        net=_wrap(student, stage.ctx, stage.device), params=params, opt=opt, modules={"student": student},
        draw_t=lambda gen: torch.randint(1, steps + 1, (batch,), generator=gen).to(torch.float64) / steps,
        target=target, lr_at=lambda k: cfg.lr * (1.0 - k / iters),
        draw_cond=None if stage.c_local is None else functools.partial(
            _labels_and_w, stage.c_local, cfg.w_min, cfg.w_max, stage.device
        ),
    )  # fmt: skip
    stage.iterate(step, start)
    student.eval()
    stage.save_model(f"student_{steps}", student, steps, r + 1, iters)
    stage.save_state(r + 1, 0, {}, None)
    return student


# ----- guided distillation, stage 1 ------------------------------------------------------------


def distill_guidance(
    teacher: nn.Module,
    data: Any,
    labels: Any,
    *,
    w_min: float = 0.0,
    w_max: float = 4.0,
    schedule: Any = None,
    param: str = "v",
    weighting: str = "snr_trunc",
    iters: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-4,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    ckpt_every: int = 0,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 10,
) -> nn.Module:
    """[GD] stage 1 (docs/spec.md section 8): a w-conditioned student `student(z, t, c, w)`
    (`pd_fast.app.models.w_conditioned_from(teacher, seed)`, which starts as the conditional
    `teacher`) learns the teacher's guided prediction for every w in [w_min, w_max].

    Each iteration: x and its label c from `data` and `labels` (integers (N,) >= 0), t ~ U(0, 1],
    w ~ U[w_min, w_max] per example (drawn after t from the data generator), eps ~ N(0, I),
    z_t = alpha_t x + sigma_t eps, and the loss of docs/spec.md section 5 with x_tilde the guided
    `x_hat_w = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null)` (`pd_fast.guided_x_eps` of the teacher's
    outputs with the label and with `NULL_LABEL`, unclipped, no grad), weighted by `weighting`.
    Adam, LR annealed linearly from `lr` to 0, gradient norm clipped at `grad_clip`; no EMA.

    Returns the student in eval mode; `teacher` is not modified (its mode is restored). Checkpoints
    (`guided` model, `guidance` training state), resume and DDP as the other stages (module docstring).
    """
    from ..models import w_conditioned_from

    data = check_data(data)
    labels = check_labels(labels, data.shape[0])
    device, dtype = _model_device(teacher, "teacher")
    student = w_conditioned_from(teacher, seed=seed)
    ctx = _dist_context()
    cfg = _GuidanceConfig(
        param=param, weighting=weighting, schedule=schedule, iters=iters, batch_size=batch_size, lr=lr,
        grad_clip=grad_clip, seed=seed, world_size=ctx.world, data_shape=tuple(data.shape),
        data=data_fingerprint(data) if out_dir is not None else None,
        labels=_labels_fingerprint(labels, out_dir), w_min=w_min, w_max=w_max,
        teacher=ckpt.model_fingerprint(teacher) if out_dir is not None else None,
    )  # fmt: skip
    params = _trainable(student, "student")
    stage = _Stage.open(
        "guidance", cfg, ctx, data, device, dtype, out_dir, ckpt_every, log_every, progress, labels
    )
    opt = torch.optim.Adam(params, lr=cfg.lr)
    start, state = 0, stage.load_state(resume)
    if state is not None:
        info, tensors = state
        _load_module(student, "student", info, tensors)
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        start = int(info["iteration"])
    teacher_was_training = teacher.training
    teacher.eval()
    student.train()
    step = _Step(
        round=0, steps=None, iters=cfg.iters, desc="guidance (stage 1)",
        net=_wrap(student, ctx, device), params=params, opt=opt, modules={"student": student},
        draw_t=lambda gen: 1.0 - torch.rand(cfg.batch_size, generator=gen, dtype=torch.float64),
        target=functools.partial(_guided_target, teacher, cfg.param),
        lr_at=lambda k: cfg.lr * (1.0 - k / cfg.iters),
        draw_cond=functools.partial(_labels_and_w, stage.c_local, cfg.w_min, cfg.w_max, device),
    )  # fmt: skip
    try:
        stage.iterate(step, start)
        if start < cfg.iters:
            student.eval()
            stage.save_model("guided", student, None, 0, cfg.iters)
            stage.save_state(0, cfg.iters, step.modules, opt)
    finally:
        stage.log.close()
        teacher.train(teacher_was_training)
    if stage.ctx.main and stage.ckpt_dir is not None and not _intact(stage.ckpt_dir / "guided"):
        stage.save_model("guided", student, None, 0, cfg.iters)
    ctx.barrier()
    return student.eval()


def _guided_target(
    teacher: nn.Module,
    param: str,
    x: Tensor,
    z_t: Tensor,
    t: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    cond: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Stage 1's x_tilde: the teacher's guided x_hat_w at (z_t, t, c) ([GD] Eq. 3-4, docs/spec.md
    section 8), as (z_tpp, alpha_tpp, sigma_tpp) = (x_hat_w, 1, 0). The conditional and the
    unconditional outputs come from one call on the doubled batch."""
    c, w = cond
    with torch.no_grad():
        t_in = to_device(t, z_t.device, z_t.dtype)
        both = teacher(
            torch.cat([z_t, z_t]), torch.cat([t_in, t_in]), torch.cat([c, torch.full_like(c, NULL_LABEL)])
        )
        out_c, out_u = both.chunk(2)
        x_hat, _ = guided_x_eps(z_t, out_c, out_u, alpha_t, sigma_t, param, w=w)
    return (x_hat, *_x_endpoint(x_hat.shape[0], x_hat.device))
