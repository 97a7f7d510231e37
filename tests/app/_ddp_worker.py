"""Worker of tests/app/test_ddp.py: one rank of a 2-process CPU (gloo) job that trains a tiny teacher
and distills it 4 -> 1 steps under DistributedDataParallel, twice:

- into `out/a` without interruption;
- into `out/b` with a crash (an exception raised by the model on every rank at the same call)
  mid teacher training and mid round 2, each followed by a resume from the checkpoints.

Each rank then writes its final weights to `out/<a|b>/rank<r>.safetensors`. Last, into `out/c`, a
teacher whose output turns NaN on rank 1 alone at its 7th call: every rank must stop, and each
writes where it stopped to `out/c/rank<r>.json`.
"""

from __future__ import annotations

import gc
import json
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from pd_fast.app.training import progressive_distill, train_teacher
from tests._tiny import TinyMLP, eight_gaussians

TEACHER = dict(iters=15, batch_size=16, lr=3e-3, warmup=3, ema_decay=0.8, ckpt_every=5, log_every=2)
DISTILL = dict(iters=8, batch_size=16, lr=1e-3, ckpt_every=3, log_every=2)


class _Crash(RuntimeError):
    pass


class NaNOnRank1(TinyMLP):
    """Outputs NaN at its `nan_at`-th call on rank 1 (a fault the other rank does not see)."""

    nan_at = 7

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = super().forward(z, t)
        if dist.get_rank() == 1 and TinyMLP.calls == NaNOnRank1.nan_at:
            out = out * float("nan")
        return out


class CrashingMLP(TinyMLP):
    """Raises `_Crash` at the `crash_at`-th forward call counted over all instances."""

    crash_at = 0

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if TinyMLP.calls + 1 == CrashingMLP.crash_at:
            TinyMLP.calls += 1
            raise _Crash(f"injected crash at call {TinyMLP.calls}")
        return super().forward(z, t)


def _save(models: dict[str, torch.nn.Module], path: Path) -> None:
    tensors = {
        f"{name}/{k}": v.detach().clone() for name, m in models.items() for k, v in m.state_dict().items()
    }
    save_file(tensors, str(path))


def run(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        data = eight_gaussians(256, seed=1)
        common = dict(progress=False, seed=3)

        # a: uninterrupted
        a = Path(out) / "a"
        ema = train_teacher(CrashingMLP(seed=2), data, out_dir=a, **TEACHER, **common)
        students = progressive_distill(ema, data, 4, 1, out_dir=a, **DISTILL, **common)
        _save(
            {"teacher": ema, **{f"student_{n}": s for n, s in students.items()}},
            a / f"rank{rank}.safetensors",
        )

        # b: crash at the 12th teacher call (iteration 12 of 15, checkpoint at 10), resume
        b = Path(out) / "b"
        TinyMLP.calls, CrashingMLP.crash_at = 0, 12
        try:
            train_teacher(CrashingMLP(seed=2), data, out_dir=b, **TEACHER, **common)
            raise AssertionError("the teacher crash was not injected")
        except _Crash:
            gc.collect()  # drop the crashed DDP wrapper and its hooks
        ema = train_teacher(CrashingMLP(seed=2), data, out_dir=b, resume=True, **TEACHER, **common)
        # round 1 takes 8 * 3 calls; call 40 is the first of iteration 6 of round 2 (checkpoint at 3)
        TinyMLP.calls, CrashingMLP.crash_at = 0, 40
        try:
            progressive_distill(ema, data, 4, 1, out_dir=b, **DISTILL, **common)
            raise AssertionError("the distillation crash was not injected")
        except _Crash:
            gc.collect()
        students = progressive_distill(ema, data, 4, 1, out_dir=b, resume=True, **DISTILL, **common)
        _save(
            {"teacher": ema, **{f"student_{n}": s for n, s in students.items()}},
            b / f"rank{rank}.safetensors",
        )

        # c: a NaN on rank 1 alone stops every rank at the same place
        c = Path(out) / "c"
        TinyMLP.calls = 0
        try:
            train_teacher(NaNOnRank1(seed=2), data, out_dir=c, **TEACHER, **common)
            stopped = None
        except FloatingPointError as err:
            stopped = {"stage": err.stage, "round": err.round, "iteration": err.iteration}
        (c / f"rank{rank}.json").write_text(json.dumps(stopped))
    finally:
        dist.destroy_process_group()
