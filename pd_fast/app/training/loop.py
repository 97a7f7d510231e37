"""The one loop of every stage ([PD] Algorithm 2, docs/spec.md section 5): draw a batch, t and the
condition, the loss against the stage's target, one clipped Adam update, then the finiteness
checks, the log and the checkpoints; plus the teacher's target and EMA."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..._checks import remember_host_copy, to_device
from ..._engine import on_cpu
from ...distillation import fused_distill_loss
from ...schedules import diffuse
from .configs import _StageConfig
from .guards import CHECK_EVERY, _Guard
from .precision import _autocast
from .stage import _Stage, _Step
from .state import _save_state


def _iterate(stage: _Stage, step: _Step, start: int) -> None:
    """Updates start..step.iters - 1 of the stage, with the log and the checkpoints in between
    (the caller commits the stage's end)."""
    cfg, gens = stage.cfg, stage.gens
    guard = _Guard(stage, step)
    bar = tqdm(
        total=step.iters,
        initial=start,
        desc=step.desc,
        disable=not (stage.progress and stage.ctx.main),
        leave=False,
    )
    try:
        for k in range(start, step.iters):
            x, idx = _batch(stage.x_local, gens.data, cfg.batch_size)
            t = step.draw_t(gens.data)
            cond = () if step.draw_cond is None else step.draw_cond(idx, gens.data)
            loss = _loss(step.net, x, t, gens.noise, cfg, step.target, cond)
            lr = step.lr_at(k)
            grad_norm = _update(step.params, step.opt, loss, lr, cfg.grad_clip, step.scaler)
            if step.after_update is not None:
                step.after_update(k)
            guard.record(loss, grad_norm)
            bar.update(1)
            done = k + 1
            logs = done % stage.log_every == 0 or done == step.iters
            saves = done == step.iters or (stage.ckpt_every and done % stage.ckpt_every == 0)
            if saves or logs or done % CHECK_EVERY == 0:
                guard.check(done, weights=bool(saves))
            if logs:
                record = {
                    "phase": stage.name,
                    "round": step.round,
                    "steps": step.steps,
                    "iteration": done,
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": grad_norm.item(),
                    "time": time.perf_counter() - stage.t0,
                }
                stage.log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}")
            if stage.ckpt_every and done % stage.ckpt_every == 0 and done < step.iters:
                _save_state(stage, step.round, done, step.modules, step.opt, step.scaler)
    finally:
        bar.close()


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
    the network is called `net(z_t, t, *cond)`, under autocast for `cfg.precision` bf16 or fp16, and
    its output goes into the loss in z_t's dtype (fp32), as the loss wants it."""
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
    with _autocast(cfg.precision, x.device):
        out = net(z_t, t_dev.to(x.dtype), *cond)
    out = out.to(z_t.dtype)  # autocast's half output: the loss takes out in z_t's dtype
    return fused_distill_loss(
        out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, cfg.param, weighting=cfg.weighting
    ).mean()


def _update(
    params: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    loss: Tensor,
    lr: float,
    grad_clip: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> Tensor:
    """Backward, global-norm clipping, one Adam step at learning rate `lr`; returns the pre-clip norm.
    With fp16's loss `scaler`: backward of the scaled loss, the gradients unscaled before the clipping,
    and the step skipped if one of them is inf or NaN (the scaler then lowers its scale)."""
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    for group in opt.param_groups:
        group["lr"] = lr
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    return grad_norm


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


def _ema_update(ema: nn.Module, model: nn.Module, ema_decay: float, k: int) -> None:
    """The EMA after update k, decay `min(ema_decay, (1 + k) / (10 + k))` (docs/spec.md section 6);
    buffers are copied."""
    with torch.no_grad():
        decay = min(ema_decay, (1.0 + k) / (10.0 + k))
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        for e_buf, m_buf in zip(ema.buffers(), model.buffers(), strict=True):
            e_buf.copy_(m_buf)
