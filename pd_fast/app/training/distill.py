"""Progressive distillation ([PD] Algorithm 2, docs/spec.md section 6): rounds that each halve the
sampling steps, the target two DDIM steps of the previous round's student; guided with labels."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...distillation import teacher_two_step
from .. import checkpoint as ckpt
from ..checkpoint import load_model_checkpoint
from .checks import _labels_fingerprint, _model_device, _trainable, check_data, conditions, data_fingerprint
from .conditioning import _labels_and_w, _with_cond
from .configs import _DistillConfig
from .distributed import _dist_context, _wrap
from .loop import _iterate
from .precision import _adam, _check_master_weights, _frozen, _load_scaler, _scaler
from .stage import _Stage, _Step
from .state import _load_module, _load_state, _save_model, _save_state


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
    bounded: bool = True,
    on_round_end: Callable[[int, nn.Module], None] | None = None,
    labels: Any = None,
    w_min: float = 0.0,
    w_max: float = 4.0,
    cond: Any = None,
    precision: str = "fp32",
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
    `student(z_t, t, c, w)`: one network call per step for every w in the range. `cond` (a float
    tensor (N, ...), e.g. prompt embeddings) takes the place of `labels` for a model conditioned on
    tensors (docs/spec.md section 10).

    `precision` "bf16" or "fp16": each student trains under autocast with fp32 weights and Adam
    states (fp16 with a loss scaler), and the previous round's model makes the targets as a copy with
    half parameters (module docstring); "fp32" (default) runs everything in fp32.

    Returns {N: student} for every round, each in eval mode. `teacher` is not modified (it is
    put in eval mode while it makes targets, and its mode is restored at the end).
    `on_round_end(N, student)` is called on every rank after each round.
    """
    data = check_data(data, bounded=bounded)
    labels = conditions(labels, cond, data.shape[0])
    if labels is not None:
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
        labels=_labels_fingerprint(labels, out_dir), w_min=w_min, w_max=w_max, precision=precision,
    )  # fmt: skip
    _check_master_weights(teacher, cfg.precision, "teacher")
    stage = _Stage.open(
        "distill", cfg, ctx, data, device, dtype, out_dir, ckpt_every, log_every, progress, labels
    )
    state = _load_state(stage, resume)
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
    opt, scaler = _adam(params, cfg.lr, cfg.precision), _scaler(cfg.precision, stage.device)
    start = 0
    if state is not None:
        info, tensors = state
        _load_module(student, "student", info, tensors)
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        _load_scaler(scaler, info)
        start = int(info["iteration"])
    student.train()
    frozen = _frozen(current, cfg.precision)

    def target(x: Tensor, z_t: Tensor, t: Tensor, alpha_t: Tensor, sigma_t: Tensor, cond: tuple) -> tuple:
        # the previous student at the example's label and w: `lambda z, t: current(z, t, c, w)`
        model = frozen if not cond else functools.partial(_with_cond, frozen, cond)
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
        scaler=scaler,
    )  # fmt: skip
    _iterate(stage, step, start)
    student.eval()
    _save_model(stage, f"student_{steps}", student, steps, r + 1, iters)
    _save_state(stage, r + 1, 0, {}, None)
    return student
