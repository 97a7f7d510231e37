"""The steps that more than one job takes: the run in progress, distillation with the run's
settings, the evaluation set-up, the figures, and the report fields every job shares."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..config import RunConfig


@dataclass
class Run:
    """A run in progress: where it writes, on which device, whether it resumes, and how long each
    of its steps took (`timings`, in seconds, for the report)."""

    out: str
    device: torch.device
    resume: bool
    progress: bool
    rank: int = 0
    world: int = 1
    t_start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, out: str, device: torch.device, resume: bool, progress: bool) -> Run:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return cls(out, device, resume, progress, rank, world)

    @property
    def main(self) -> bool:
        """Rank 0: the rank that writes, evaluates and reports."""
        return self.rank == 0

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Time the block into `timings[key]`."""
        t0 = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - t0

    def total(self) -> None:
        self.timings["total_seconds"] = time.perf_counter() - self.t_start

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def say(self, text: str) -> None:
        """Print on rank 0 only."""
        if self.main:
            print(text)

    def training(self) -> dict[str, Any]:
        """The keyword arguments every training stage takes from the run."""
        return dict(out_dir=self.out, resume=self.resume, progress=self.progress)


def parameters(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()):,} parameters"


def save_model_json(run: Run, info: dict[str, Any]) -> None:
    """`model.json`: the teacher's network config (rank 0)."""
    from ..checkpoint import save_json

    if run.main:
        save_json(run.path("model.json"), info)


def distill(
    teacher: nn.Module, x: torch.Tensor, start: int, schedule: Any, param: str, cfg: RunConfig, run: Run
) -> dict[int, nn.Module]:
    """`progressive_distill` from `start` steps down to `cfg.end_steps` with the run's settings."""
    from ..training import progressive_distill

    return progressive_distill(
        teacher, x, start, cfg.end_steps, schedule=schedule, param=param, iters=cfg.iters,
        last_rounds_factor=cfg.last_rounds_factor, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
        ckpt_every=cfg.ckpt_every, precision=cfg.precision, **run.training(),
    )  # fmt: skip


def finish_training(run: Run, models: dict[str, nn.Module]) -> list[dict[str, str]] | None:
    """Training is over: under torchrun, every rank's fingerprints of `models` (for the report),
    then the ranks part together and rank 0 alone goes on."""
    from ..training import part_ranks, rank_fingerprints

    fingerprints = rank_fingerprints(models) if run.world > 1 else None
    part_ranks()
    return fingerprints


def evaluation_setup(
    data: Any, cfg: RunConfig, start: int, students: dict[int, Any], run: Run
) -> tuple[Any, list[int], torch.Tensor]:
    """The evaluator, the teacher's step counts to score (powers of 2 up to the larger of
    `eval_max_steps` and `start`, and every student's N) and the shared starting noise z."""
    from ..evaluation import make_evaluator

    evaluator = make_evaluator(data.x, data.labels, seed=cfg.seed, cache_dir=run.out)
    n_max = max(cfg.eval_max_steps, start)
    teacher_steps = sorted({2**k for k in range(n_max.bit_length()) if 2**k <= n_max} | set(students))
    z = eval_noise(cfg.seed, (evaluator.n_samples,) + data.shape, run.device)
    return evaluator, teacher_steps, z


def eval_noise(seed: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The starting noise every evaluated model shares (drawn on the CPU from `seed + 1`)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(shape, generator=gen).to(device)


def write_figures(
    report: dict[str, Any], samples: dict[str, dict[int, torch.Tensor]], students: dict, data: Any, run: Run
) -> None:
    """`quality_vs_steps.png`, and `samples.png`: the teacher at each student's N and at its largest
    N, and the students."""
    from ..report import plot_quality, plot_samples

    plot_quality(report, run.path("quality_vs_steps.png"))
    grid_steps = [n for n in sorted(samples["teacher"]) if n in students or n == max(samples["teacher"])]
    shown = {"teacher": {n: samples["teacher"][n] for n in grid_steps}, "student": samples["student"]}
    plot_samples(shown, run.path("samples.png"), data=data.x)


def report_head(evaluator: Any, rows: list[dict], data: Any, cfg: RunConfig, run: Run) -> dict:
    """The report fields every job shares: the metric, its floor, the rows, the data and the run."""
    return {
        "metric": f"frechet_{evaluator.metric}",
        "floor": evaluator.floor[evaluator.metric],
        "rows": rows,
        "space": evaluator.metric,
        "floors": evaluator.floor,
        "spaces": list(evaluator.floor),
        "data": data.name,
        "eval_samples": evaluator.n_samples,
        "settings": cfg.to_dict(),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
    }


def check_data_size(data: Any) -> None:
    if len(data) < 4:
        raise ValueError(f"--data needs at least 4 examples (evaluation splits it in two), got {len(data)}")
