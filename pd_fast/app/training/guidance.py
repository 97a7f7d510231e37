"""Guided distillation, stage 1 ([GD], docs/spec.md section 8): a w-conditioned student learns the
conditional teacher's classifier-free guided prediction for every w in [w_min, w_max]."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..._checks import to_device
from ...parameterizations import NULL_LABEL, guided_x_eps
from .. import checkpoint as ckpt
from .checks import (
    _labels_fingerprint,
    _model_device,
    _trainable,
    check_data,
    check_null_cond,
    conditions,
    data_fingerprint,
)
from .conditioning import _labels_and_w
from .configs import _GuidanceConfig
from .distributed import _dist_context, _wrap
from .loop import _iterate, _x_endpoint
from .precision import _adam, _check_master_weights, _frozen, _load_scaler, _scaler
from .stage import _Stage, _Step
from .state import _intact, _load_module, _load_state, _save_model, _save_state


def distill_guidance(
    teacher: nn.Module,
    data: Any,
    labels: Any = None,
    *,
    cond: Any = None,
    null_cond: Any = None,
    student: nn.Module | None = None,
    teacher_param: str | None = None,
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
    bounded: bool = True,
    precision: str = "fp32",
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

    Tensor conditions (docs/spec.md section 10): `cond` (a float tensor (N, ...), e.g. prompt
    embeddings) in place of `labels`, with `null_cond` (the empty prompt's, (...) or (1, ...)) as
    the unconditional input; `student`, a w-conditioned model `student(z, t, c, w)` that starts as
    the teacher (e.g. a diffusers UNet with `time_cond_proj_dim`), built by the caller (default:
    `w_conditioned_from(teacher, seed)`, for the built-in networks). `teacher_param`: the teacher's
    output where it is not the student's `param` (an eps teacher of v students, as in
    `pd_fast.app.reparam`): the target is read in it, the student's loss in `param`.

    Returns the student in eval mode; `teacher` is not modified (its mode is restored). Checkpoints
    (`guided` model, `guidance` training state), resume, DDP and `precision` (the student under
    autocast, the teacher as a copy with half parameters) as the other stages (module docstring).
    """
    from ..models import w_conditioned_from

    data = check_data(data, bounded=bounded)
    labels = conditions(labels, cond, data.shape[0])
    if labels is None:
        raise ValueError(
            "distill_guidance needs labels or cond: guidance combines the conditional model with the null"
        )
    null = None
    if cond is not None:
        null = check_null_cond(null_cond, labels)
    elif null_cond is not None:
        raise ValueError("null_cond goes with cond (labels have NULL_LABEL)")
    device, dtype = _model_device(teacher, "teacher")
    student = w_conditioned_from(teacher, seed=seed) if student is None else student
    if not isinstance(student, nn.Module):
        raise ValueError(
            f"student must be a torch.nn.Module called as student(z, t, c, w), got {type(student)!r}"
        )
    ctx = _dist_context()
    cfg = _GuidanceConfig(
        param=param, weighting=weighting, schedule=schedule, iters=iters, batch_size=batch_size, lr=lr,
        grad_clip=grad_clip, seed=seed, world_size=ctx.world, data_shape=tuple(data.shape),
        data=data_fingerprint(data) if out_dir is not None else None,
        labels=_labels_fingerprint(labels if null is None else torch.cat([labels, null]), out_dir),
        w_min=w_min, w_max=w_max,
        teacher=ckpt.model_fingerprint(teacher) if out_dir is not None else None, teacher_param=teacher_param,
        precision=precision,
    )  # fmt: skip
    params = _trainable(student, "student")
    _check_master_weights(student, cfg.precision, "student")
    stage = _Stage.open(
        "guidance", cfg, ctx, data, device, dtype, out_dir, ckpt_every, log_every, progress, labels
    )
    opt, scaler = _adam(params, cfg.lr, cfg.precision), _scaler(cfg.precision, device)
    start, state = 0, _load_state(stage, resume)
    if state is not None:
        info, tensors = state
        _load_module(student, "student", info, tensors)
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        _load_scaler(scaler, info)
        start = int(info["iteration"])
    teacher_was_training = teacher.training
    teacher.eval()
    student.train()
    step = _Step(
        round=0, steps=None, iters=cfg.iters, desc="guidance (stage 1)",
        net=_wrap(student, ctx, device), params=params, opt=opt, modules={"student": student},
        draw_t=lambda gen: 1.0 - torch.rand(cfg.batch_size, generator=gen, dtype=torch.float64),
        target=functools.partial(
            _guided_target, _frozen(teacher, cfg.precision), cfg.teacher_param or cfg.param,
            None if null is None else to_device(null, device, torch.float32),  # once, not every update
        ),
        lr_at=lambda k: cfg.lr * (1.0 - k / cfg.iters),
        draw_cond=functools.partial(_labels_and_w, stage.c_local, cfg.w_min, cfg.w_max, device),
        scaler=scaler,
    )  # fmt: skip
    try:
        _iterate(stage, step, start)
        if start < cfg.iters:
            student.eval()
            _save_model(stage, "guided", student, None, 0, cfg.iters)
            _save_state(stage, 0, cfg.iters, step.modules, opt, scaler)
    finally:
        stage.log.close()
        teacher.train(teacher_was_training)
    if stage.ctx.main and stage.ckpt_dir is not None and not _intact(stage.ckpt_dir / "guided"):
        _save_model(stage, "guided", student, None, 0, cfg.iters)
    ctx.barrier()
    return student.eval()


def _guided_target(
    teacher: nn.Module,
    param: str,
    null_cond: Tensor | None,
    x: Tensor,
    z_t: Tensor,
    t: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    cond: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Stage 1's x_tilde: the teacher's guided x_hat_w at (z_t, t, c) ([GD] Eq. 3-4, docs/spec.md
    section 8), as (z_tpp, alpha_tpp, sigma_tpp) = (x_hat_w, 1, 0). The conditional and the
    unconditional outputs come from one call on the doubled batch; the null input is `NULL_LABEL`
    for labels, `null_cond` (1, ...) for tensor conditions."""
    c, w = cond
    with torch.no_grad():
        t_in = to_device(t, z_t.device, z_t.dtype)
        if null_cond is None:
            null = torch.full_like(c, NULL_LABEL)
        else:
            null = to_device(null_cond, c.device, c.dtype).expand_as(c)
        both = teacher(torch.cat([z_t, z_t]), torch.cat([t_in, t_in]), torch.cat([c, null]))
        out_c, out_u = both.chunk(2)
        x_hat, _ = guided_x_eps(z_t, out_c, out_u, alpha_t, sigma_t, param, w=w)
    return (x_hat, *_x_endpoint(x_hat.shape[0], x_hat.device))
