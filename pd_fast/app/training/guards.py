"""Finiteness of training: a non-finite loss, gradient norm or weight raises `TrainingDiverged`,
found with one host sync every `CHECK_EVERY` updates."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .stage import _Stage, _Step

# Updates between two finiteness checks of the loss and gradient norm (each check is one host sync).
CHECK_EVERY = 10


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
