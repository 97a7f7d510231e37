"""The guided job (`python -m pd_fast --guided`): guided distillation ([GD], docs/spec.md section 8).

A conditional teacher (labels dropped with probability `p_uncond`, `train_teacher`), [GD] stage 1
(`distill_guidance`: a w-conditioned student of the guided teacher, w ~ U[w_min, w_max]), then
stage 2 (`progressive_distill` with labels: N = start_steps / 2 ... end_steps, one network call
per step for every w). Then, for every w of `--eval-w` and N in {1, 2, 4, 8}, the samples of

- the guided teacher with DDIM at 256 steps (2 calls a step: with the label and with the null one),
- the guided teacher with DDIM at N steps,
- the N-step student with DDIM (`sampler="ddim"`) and with [GD]'s stochastic sampler,

all from the same noise and the same balanced labels (`i % classes`), are scored by their
Fréchet distance to the data in the evaluation classifier's features and by their class accuracy
(the fraction the classifier assigns to the requested label); `pd_fast.app.evaluation.guided`.

Writes into the run folder: `report.json` (`rows`: one per model, sampler, N and w, with `frechet`,
`frechet_pixel`, `accuracy`, `precision`, `recall`, `memorisation`, `sample_seconds` and
`interval`, the 95% paired bootstrap interval of `frechet`; `targets`, the Fréchet ratios with
their paired intervals), `samples.npz` (`x_<model>_<sampler>_N<N>_w<w>` float32 in [-1, 1], their
labels `y_<same suffix>`; w written as in the flag), `grid_w<w>.png` (rows: classes; columns: the
student at each N, then the teacher at 256 steps), and the stages' checkpoints (`teacher`,
`guided`, `student_<N>`) and log.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ...schedules import CosineSchedule
from ..config import GuidedConfig
from .builtin import Inputs
from .builtin import prepare as prepare_builtin
from .common import Run, eval_noise, finish_training, parameters, save_model_json


def prepare(cfg: GuidedConfig, run: Run) -> Inputs:
    """The built-in job's checks (`jobs.builtin.prepare`) for a network conditional on the data's
    classes."""
    return prepare_builtin(cfg, run, conditional=True)


def run(cfg: GuidedConfig, run: Run, inputs: Inputs) -> dict:
    """The job (module docstring); returns the report (also written to `report.json`)."""
    from ..evaluation import make_evaluator, memorisation_check, train_classifier
    from ..evaluation.guided import add_intervals, evaluate_guided

    data, x, classes = inputs.data, inputs.data.x.to(run.device), inputs.model.config["num_classes"]
    run.say(
        f"data: {data.name}, {len(data)} examples of shape {data.shape}, {classes} classes; model: "
        f"{cfg.model} ({parameters(inputs.model)}), param={cfg.param}; device {run.device}; out {run.out}"
    )
    with run.timed("teacher_train_seconds"):
        teacher = train_or_load_teacher(cfg, run, inputs, x)
    with run.timed("guidance_train_seconds"):
        guided = stage_1(teacher, x, data.labels, cfg, run)
    with run.timed("distill_train_seconds"):
        students = stage_2(guided, x, data.labels, cfg, run)
    models = {"teacher": teacher, "guided": guided, **{f"student_{n}": m for n, m in students.items()}}
    fingerprints = finish_training(run, models)
    if not run.main:
        return {}
    with run.timed("eval_seconds"):
        evaluator = make_evaluator(data.x, data.labels, seed=cfg.seed, cache_dir=run.out)
        classifier, _ = train_classifier(data.x, data.labels, seed=cfg.seed, cache_dir=run.out)
        y = torch.arange(evaluator.n_samples) % classes
        z = eval_noise(cfg.seed, (evaluator.n_samples,) + data.shape, run.device)
        memo = memorisation_check(evaluator)
        rows, samples = evaluate_guided(
            teacher, students, evaluator, classifier, CosineSchedule(), cfg.param, z, y, cfg.ws(),
            seed=cfg.seed + 2, memorisation=memo,
        )  # fmt: skip
        replicates = add_intervals(rows, samples, evaluator, seed=cfg.seed)
    run.total()
    report = build_report(cfg, run, evaluator, rows, data, classes, memo, fingerprints, replicates)
    write_outputs(report, samples, classes, cfg, run)
    print_report(report, run)
    return report


def _common(cfg: GuidedConfig, run: Run) -> dict[str, Any]:
    return dict(
        schedule=CosineSchedule(),
        param=cfg.param,
        seed=cfg.seed,
        ckpt_every=cfg.ckpt_every,
        precision=cfg.precision,
        **run.training(),
    )


def train_or_load_teacher(cfg: GuidedConfig, run: Run, inputs: Inputs, x: Tensor) -> nn.Module:
    """The conditional teacher: the `--teacher` checkpoint, or the network trained on `x` with its
    labels dropped with probability `p_uncond`; writes `model.json`."""
    from ..training import train_teacher

    if inputs.teacher is not None:
        teacher = inputs.teacher[0].to(run.device).eval()
    else:
        teacher = train_teacher(
            inputs.model.to(run.device), x, labels=inputs.data.labels, p_uncond=cfg.p_uncond,
            iters=cfg.teacher_iters, batch_size=cfg.teacher_batch_size, lr=cfg.teacher_lr,
            **_common(cfg, run),
        )  # fmt: skip
    save_model_json(run, {"model": teacher.config, "param": cfg.param, "data": inputs.data.name})
    return teacher


def stage_1(teacher: nn.Module, x: Tensor, labels: Tensor, cfg: GuidedConfig, run: Run) -> nn.Module:
    """[GD] stage 1: a w-conditioned student of the guided teacher, w ~ U[w_min, w_max]."""
    from ..training import distill_guidance

    return distill_guidance(
        teacher, x, labels, w_min=cfg.w_min, w_max=cfg.w_max, iters=cfg.guidance_iters,
        batch_size=cfg.batch_size, lr=cfg.guidance_lr, **_common(cfg, run),
    )  # fmt: skip


def stage_2(
    guided: nn.Module, x: Tensor, labels: Tensor, cfg: GuidedConfig, run: Run
) -> dict[int, nn.Module]:
    """[GD] stage 2: progressive distillation of the w-conditioned student, w per example."""
    from ..training import progressive_distill

    return progressive_distill(
        guided, x, cfg.start_steps, cfg.end_steps, labels=labels, w_min=cfg.w_min, w_max=cfg.w_max,
        iters=cfg.iters, last_rounds_factor=cfg.last_rounds_factor, batch_size=cfg.batch_size, lr=cfg.lr,
        **_common(cfg, run),
    )  # fmt: skip


def build_report(
    cfg: GuidedConfig, run: Run, evaluator: Any, rows: list[dict], data: Any, classes: int, memo: Any,
    fingerprints: list | None, replicates: dict,
) -> dict[str, Any]:  # fmt: skip
    from ..evaluation.guided import data_precision_recall
    from ..evaluation.targets import guided_targets

    report: dict[str, Any] = {
        "metric": f"frechet_{evaluator.metric}",
        "floor": evaluator.floor[evaluator.metric],
        "floors": evaluator.floor,
        "rows": rows,
        "ws": [name for name, _ in cfg.ws()],
        "data": data.name,
        "classes": classes,
        "eval_samples": evaluator.n_samples,
        "world_size": run.world,
        "precision_recall_data": data_precision_recall(evaluator),
        "memorisation": None if memo is None else memo[1],
        "settings": cfg.to_dict(),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        **evaluator.info,
        **run.timings,
    }
    if fingerprints is not None:
        report["rank_fingerprints"] = fingerprints
    report["targets"] = guided_targets(rows, replicates)
    return report


def write_outputs(report: dict, samples: dict, classes: int, cfg: GuidedConfig, run: Run) -> None:
    """`report.json`, `samples.npz` and a grid of samples per w."""
    from ..checkpoint import save_json
    from ..report import plot_grid, write_guided_samples

    save_json(run.path("report.json"), report)
    write_guided_samples(run.path("samples.npz"), samples)
    for name, _ in cfg.ws():
        plot_grid(samples, name, classes, run.path(f"grid_w{name}.png"))


def print_report(report: dict, run: Run) -> None:
    from ..report import format_guided_memorisation, format_guided_table

    print(format_guided_table(report))
    memo_table = format_guided_memorisation(report)
    if memo_table is not None:
        print(memo_table)
    for line in report["targets"]:
        print(line["text"])
    t = run.timings
    print(
        f"time: teacher {t['teacher_train_seconds']:.1f}s, stage 1 {t['guidance_train_seconds']:.1f}s, "
        f"stage 2 {t['distill_train_seconds']:.1f}s, evaluation {t['eval_seconds']:.1f}s, "
        f"total {t['total_seconds']:.1f}s"
    )
    print(f"wrote {run.out}/report.json, samples.npz, grid_w*.png, checkpoints/")
