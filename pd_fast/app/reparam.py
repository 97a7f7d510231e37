"""A change of parameterization before distillation: a student of another `param` (e.g. v) learns
its teacher's own N-step DDIM sampler (e.g. of an eps model).

Why: an eps network predicts `x_hat = (z - sigma*eps_hat) / alpha`, which amplifies its error by
`1/alpha` at low SNR; [PD] Section 4 shows that eps students fail at few steps and recommends x,
v or both. Teachers trained elsewhere (most diffusers models) are eps models, and
`progressive_distill` keeps the teacher's `param`. This stage starts the student as a copy of the
teacher, reads its output as `param`, and trains it on the N-step grid only (`t = i/N`: the times
at which the N-step sampler and the next round, N -> N/2, query it) to reproduce the teacher's
`x_hat` there:

    L = w(lambda_t) * mean((x_hat_student(z_t, t) - x_hat_teacher(z_t, t))^2),  z_t = alpha_t x + sigma_t eps

(docs/spec.md section 5 with `x_tilde` the teacher's `x_hat`). A student with zero loss takes
exactly the teacher's DDIM steps on that grid: a DDIM step (docs/spec.md section 3) from t is
determined by `x_hat` alone, since `eps_hat = (z_t - alpha_t*x_hat) / sigma_t`.

The weighting `w` defaults to the teacher's own output space (`TEACHER_WEIGHTING`: eps-MSE for an
eps teacher, x-MSE for x, v-MSE for v): there the teacher's errors are what its training left,
while in x space an eps teacher's error is amplified by `1/alpha_t` at low SNR, and an x-space loss
spends the student on reproducing it. Measured on a diffusers UNet2DModel trained on the 8x8
digits (eps, T = 1000; `benchmarks/diffusers_teacher.py`'s teacher; Fréchet distance in classifier
features, 128-step DDIM; the teacher's own: 3.40): the v student scores 3.70 with eps-MSE
(`snr`) and 5.65 with `snr_trunc` (1600 iterations, LR 1e-3 each); 4.14 and 7.46 after 400
iterations at LR 6e-4.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import PARAMS
from ..distillation import fused_distill_loss
from ..parameterizations import predict_x_eps
from ..schedules import diffuse

#: the loss weighting of the teacher's own output space (docs/spec.md section 5)
TEACHER_WEIGHTING = {"eps": "snr", "x": "constant", "v": "snr+1", "both": "snr_trunc"}


def reparameterize(
    teacher: nn.Module,
    data: torch.Tensor,
    steps: int,
    *,
    schedule: Any,
    teacher_param: str,
    param: str = "v",
    weighting: str | None = None,
    iters: int = 500,
    batch_size: int = 128,
    lr: float = 1e-4,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """Train a `param` student (a copy of `teacher`) to match the teacher's `x_hat` on the grid
    `t = i/steps` (module docstring), weighted by `weighting` (None: `TEACHER_WEIGHTING` of the
    teacher's param). Adam, LR annealed linearly from `lr` to 0, gradient norm
    clipped at `grad_clip`, i uniform in 1..steps, one `torch.Generator` seeded with `seed` for
    the data, t and noise (on the CPU, so a run is reproducible on any device).

    data: (N, ...) in [-1, 1] (moved to the teacher's device). Returns the student (eval mode) and
    the loss of every iteration. The teacher is left unchanged (its mode is restored).
    """
    for name, value in (("teacher_param", teacher_param), ("param", param)):
        if value not in PARAMS:
            raise ValueError(f"{name} must be one of {PARAMS}, got {value!r}")
    for name, value in (("steps", steps), ("iters", iters), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weighting is None:
        weighting = TEACHER_WEIGHTING[teacher_param]
    p = next(iter(teacher.parameters()), None)
    if p is None:
        raise ValueError("teacher has no parameters to copy into a student")
    device, dtype = p.device, p.dtype
    x_all = data.to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    was_training = teacher.training
    teacher.eval()
    student = copy.deepcopy(teacher).train()
    params = [q for q in student.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    try:
        for it in tqdm(
            range(iters), desc=f"{teacher_param} -> {param} at {steps} steps", disable=not progress
        ):
            idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=gen)
            x = x_all[idx.to(device)]
            i = torch.randint(1, steps + 1, (batch_size,), generator=gen)
            t = i.to(torch.float64) / steps
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
            alpha_t, sigma_t = (c.to(device) for c in schedule.alpha_sigma(t))
            z_t = diffuse(x, t, schedule, noise)
            t_model = t.to(device=device, dtype=dtype)
            with torch.no_grad():
                x_teacher, _ = predict_x_eps(z_t, teacher(z_t, t_model), alpha_t, sigma_t, teacher_param)
            out = student(z_t, t_model)
            ones, zeros = torch.ones_like(alpha_t), torch.zeros_like(sigma_t)
            loss = fused_distill_loss(
                out, z_t, x_teacher.float(), alpha_t, sigma_t, ones, zeros, param, weighting=weighting
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            for group in opt.param_groups:
                group["lr"] = lr * (1.0 - it / iters)
            opt.step()
            losses.append(loss.item())
    finally:
        teacher.train(was_training)
    return student.eval(), losses
