"""Finiteness of training: a non-finite loss, gradient norm or weight raises `TrainingDiverged`,
found with one host sync every `CHECK_EVERY` updates; fp16 tells updates its loss scaler skipped
from divergence."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .stage import _Stage, _Step

# Updates between two finiteness checks of the loss and gradient norm (each check is one host sync).
CHECK_EVERY = 10
# Updates in a row that fp16's loss scaler may skip for inf/NaN gradients, halving its scale each
# time, before the guard calls it divergence: from the default initial scale 2^16, 40 halvings reach
# 2^-24, fp16's smallest subnormal, so what is still inf or NaN there is no overflow that scaling cures.
MAX_SKIPPED = 40


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
    ranks, and raises `TrainingDiverged` at the first non-finite one.

    With fp16's loss scaler, an update whose gradient norm is not finite but whose loss is was
    skipped by the scaler (it skips exactly when a gradient is inf or NaN, and lowers its scale): not
    divergence, unless `MAX_SKIPPED` updates in a row are skipped. A non-finite loss or weight always
    stops training."""

    def __init__(self, stage: _Stage, step: _Step) -> None:
        self.stage, self.step = stage, step
        self.values = torch.zeros(CHECK_EVERY, 2, device=stage.device, dtype=torch.float32)
        self.n = 0
        self.scaled = step.scaler is not None
        self.skipped = 0  # updates skipped in a row by the loss scaler, up to the last check

    def record(self, loss: Tensor, grad_norm: Tensor) -> None:
        torch.stack((loss.detach().float(), grad_norm.float()), out=self.values[self.n])
        self.n += 1

    def check(self, done: int, weights: bool) -> None:
        """Raise `TrainingDiverged` if a value recorded since the last check, or with `weights` a
        weight of the stage's modules, is not finite (fp16: or the scaler skipped too many updates
        in a row); `done`: updates done so far."""
        n, step = self.n, self.step
        finite = torch.isfinite(self.values[:n])
        # per update 2: finite, 1: skipped by the loss scaler, 0: diverged (MIN over the ranks)
        codes = [finite[:, 0] * (1 + finite[:, 1]) if self.scaled else 2 * finite.all(dim=1)]
        if weights:
            params = [p for m in step.modules.values() for p in m.parameters() if p.is_floating_point()]
            codes.append(2 * torch.stack([torch.isfinite(p).all() for p in params]).all().reshape(1))
        code = torch.cat(codes).to(torch.int32)
        if self.stage.ctx.active:
            dist.all_reduce(code, op=dist.ReduceOp.MIN)
        code_list = code.tolist()  # the one host sync
        self.n = 0
        first = done - n + 1  # the iteration of the first row
        for j, c in enumerate(code_list[:n]):
            self.skipped = self.skipped + 1 if c == 1 else 0
            if c == 0:
                loss, grad_norm = self.values[j].tolist()
                self._diverged(first + j, f"the loss is {loss:.6g} and the gradient norm {grad_norm:.6g}")
            if self.skipped == MAX_SKIPPED:
                self._diverged(
                    first + j,
                    f"the loss scaler skipped {MAX_SKIPPED} updates in a row (iterations "
                    f"{first + j - MAX_SKIPPED + 1} to {first + j}), their gradients inf or NaN at "
                    "every scale it tried",
                )
        if min(code_list, default=2) == 0:
            self._diverged(done, "the weights are no longer finite")

    def _diverged(self, iteration: int, what: str) -> None:
        stage, step = self.stage, self.step
        where, last = stage.where(step), stage.last_commit
        saved = (
            f"the last checkpoint (round {last[0]}, iteration {last[1]})"
            if last is not None
            else "the start of the stage (no checkpoint of it was written)"
        )
        raise TrainingDiverged(
            f"training diverged in {where} at iteration {iteration}: {what}. Nothing was saved after "
            f"{saved}; fix the cause and resume from there",
            stage.name,
            step.round,
            iteration,
        )
