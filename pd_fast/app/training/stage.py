"""One stage of a run, "teacher", "distill" (all rounds) or "guidance": what the loop runs on, its
data shard, generators and where it writes (`_Stage`), and what its iterations do (`_Step`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..run_dir import RunLog
from .checks import _positive_int
from .configs import _DistillConfig, _GuidanceConfig, _TeacherConfig
from .distributed import _Dist, _shard
from .rng import _Generators


@dataclass(frozen=True)
class _Step:
    """What a stage's iterations do beyond the shared loss and update: `draw_t(data generator)`
    -> t (B,) float64 on the CPU; `draw_cond(idx, data generator)` (conditional stages) -> the
    network's extra inputs `cond`, (c,) or (c, w), for the examples `idx` of the stage's labels,
    drawn after t; `target(x, z_t, t, alpha_t, sigma_t, cond)` -> x_tilde as (z_tpp, alpha_tpp,
    sigma_tpp) (docs/spec.md section 4); `lr_at(k)`, the LR of update k; `after_update(k)` (the
    teacher's EMA). `modules` go into the training state by name, with `opt` and fp16's loss `scaler`."""

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
    scaler: torch.amp.GradScaler | None = None


@dataclass
class _Stage:
    """One stage of a run, "teacher", "distill" (all rounds) or "guidance": its config, data shard
    and generators, and where it writes (`ckpt_dir` None: nowhere; the log is rank 0's only).
    `t0` and `last_commit` follow its training state (`state.py`)."""

    name: str
    cfg: _TeacherConfig | _DistillConfig | _GuidanceConfig
    ctx: _Dist
    x_local: Tensor
    gens: _Generators
    ckpt_dir: Path | None
    log: RunLog
    ckpt_every: int
    log_every: int
    progress: bool
    t0: float
    last_commit: tuple[int, int] | None = None  # (round, iteration) of the last committed state
    # the conditions of x_local in a conditional stage (CPU): labels (int64) or tensors (float32)
    c_local: Tensor | None = None

    @classmethod
    def open(
        cls,
        name: str,
        cfg: _TeacherConfig | _DistillConfig | _GuidanceConfig,
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
        c_local = None if labels is None else _shard(labels, ctx, torch.device("cpu"), labels.dtype)
        ckpt_dir, log = None, RunLog(None)
        if out_dir is not None:
            ckpt_dir = Path(out_dir) / "checkpoints"
            if ctx.main:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            ctx.barrier()
            log = RunLog(Path(out_dir) / "log.jsonl" if ctx.main else None)
        gens = _Generators.seeded(cfg.seed, ctx.rank, name, device)
        stage = cls(name, cfg, ctx, x_local, gens, ckpt_dir, log, ckpt_every, log_every, progress, 0.0)
        stage.c_local = c_local
        return stage

    @property
    def device(self) -> torch.device:
        return self.gens.device

    def where(self, step: _Step) -> str:
        """The stage and round of `step`, for messages."""
        if step.steps is None:
            return self.name
        n_rounds = len(self.cfg.round_steps)
        return f"{self.name} round {step.round + 1}/{n_rounds} ({2 * step.steps}->{step.steps} steps)"
