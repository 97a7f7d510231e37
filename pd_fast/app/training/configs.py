"""The stage configs: the settings of the teacher, distillation and guidance stages that a resumed
run must share, validated on construction and round-tripped as `to_dict()` into the training state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..._checks import param_name, weighting_name
from .. import checkpoint as ckpt
from .checks import _positive_float, _positive_int, _round_steps, _schedule, _unit_float, _w_range
from .precision import _precision


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
    precision: str = "fp32"  # the trained network's autocast dtype: "fp32", "bf16" or "fp16"

    def __post_init__(self) -> None:
        param_name(self.param)
        _precision(self.precision)
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
        } | self._optional()

    def _optional(self) -> dict[str, str]:
        """What the config records only where it applies: the labels' fingerprint (conditional
        stages), and a precision other than fp32 (states from before `precision` still resume)."""
        labels = {} if self.labels is None else {"labels": self.labels}
        return labels | ({} if self.precision == "fp32" else {"precision": self.precision})


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
    teacher_param: str | None = None  # the teacher's output, where it is not the student's

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("iters", _positive_int("iters", self.iters))
        if self.teacher_param is not None:
            self._set("teacher_param", param_name(self.teacher_param))
        w_min, w_max = _w_range(self.w_min, self.w_max)
        self._set("w_min", w_min)
        self._set("w_max", w_max)

    def to_dict(self) -> dict[str, Any]:
        other = {} if self.teacher_param in (None, self.param) else {"teacher_param": self.teacher_param}
        return dict(
            super().to_dict(),
            iters=self.iters,
            w_min=self.w_min,
            w_max=self.w_max,
            teacher=self.teacher,
            **other,
        )

    @property
    def end(self) -> tuple[int, int]:
        """(round, iteration) of the finished stage."""
        return 0, self.iters

    def progress_info(self, round_: int, iteration: int) -> dict[str, Any]:
        """What the training state records besides (round, iteration): whether training is done."""
        return {"complete": iteration == self.iters}
