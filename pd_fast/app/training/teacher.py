"""Teacher training ([PD] Section 4, docs/spec.md section 5): the data as the target, a linear
warm-up, and an EMA of the weights."""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import torch
from torch import nn

from .. import checkpoint as ckpt
from .checks import _labels_fingerprint, _model_device, _trainable, check_data, check_labels, data_fingerprint
from .conditioning import _dropped_labels
from .configs import _TeacherConfig
from .distributed import _dist_context, _wrap
from .loop import _data_target, _ema_update, _iterate
from .precision import _adam, _check_master_weights, _load_scaler, _scaler
from .stage import _Stage, _Step
from .state import _intact, _load_module, _load_state, _save_model, _save_state


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
    bounded: bool = True,
    labels: Any = None,
    p_uncond: float = 0.1,
    precision: str = "fp32",
) -> nn.Module:
    """Train a continuous-time diffusion model (the base teacher of [PD] Section 4 / docs/spec.md section 5).

    Each iteration: x from `data`, t ~ U(0, 1], eps ~ N(0, I), z_t = alpha_t x + sigma_t eps, and
    the loss `w(lambda_t) * mean((x_hat(z_t, model(z_t, t)) - x)^2)` (docs/spec.md section 5 with
    x_tilde = x, through `pd_fast.fused_distill_loss` with z_tpp = x, alpha_tpp = 1, sigma_tpp = 0).
    Adam with a linear warm-up over `warmup` iterations, then constant `lr`. `precision` "bf16" or
    "fp16" runs the model's forward under `torch.autocast` in that dtype, its weights and Adam's
    states staying fp32 (fp16 with a loss scaler); "fp32" (default) runs everything in fp32.

    Conditional teacher (classifier-free guidance, [GD] Section 2, docs/spec.md section 8): with
    `labels` (integers (N,) >= 0, one per example of `data`) the model is called `model(z_t, t, c)`
    with c the example's label, replaced by `NULL_LABEL` (-1) with probability `p_uncond`; the drop
    is drawn from the data generator after t, so runs stay deterministic and resumable. Without
    labels (`p_uncond` unused) training is unconditional, with the same random streams as ever.

    Trains `model` in place and returns a new module with the EMA of its weights, in eval mode.
    See the module docstring for checkpoints, resume and DDP.
    """
    data = check_data(data, bounded=bounded)
    if labels is not None:
        labels = check_labels(labels, data.shape[0])
    ctx = _dist_context()
    cfg = _TeacherConfig(
        param=param, weighting=weighting, schedule=schedule, iters=iters, batch_size=batch_size, lr=lr,
        warmup=warmup, ema_decay=ema_decay, grad_clip=grad_clip, seed=seed, world_size=ctx.world,
        data_shape=tuple(data.shape), data=data_fingerprint(data) if out_dir is not None else None,
        labels=_labels_fingerprint(labels, out_dir), p_uncond=p_uncond, precision=precision,
    )  # fmt: skip
    device, dtype = _model_device(model, "model")
    params = _trainable(model, "model")
    _check_master_weights(model, cfg.precision, "model")
    stage = _Stage.open(
        "teacher", cfg, ctx, data, device, dtype, out_dir, ckpt_every, log_every, progress, labels
    )
    ema = copy.deepcopy(model).eval()
    opt, scaler = _adam(params, cfg.lr, cfg.precision), _scaler(cfg.precision, device)
    start, state = 0, _load_state(stage, resume)
    if state is not None:
        info, tensors = state
        _load_module(model, "model", info, tensors)
        _load_module(ema, "ema", info, tensors)
        ckpt.optimizer_from_tensors(opt, tensors, info["optimizer"])
        _load_scaler(scaler, info)
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
        scaler=scaler,
    )  # fmt: skip
    try:
        _iterate(stage, step, start)
        if start < cfg.iters:
            _save_model(stage, "teacher", ema, None, 0, cfg.iters)
            _save_state(stage, 0, cfg.iters, step.modules, opt, scaler)
    finally:
        stage.log.close()
    if stage.ctx.main and stage.ckpt_dir is not None and not _intact(stage.ckpt_dir / "teacher"):
        _save_model(stage, "teacher", ema, None, 0, cfg.iters)
    ctx.barrier()
    return ema.eval()
