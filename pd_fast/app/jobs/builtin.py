"""The built-in job (`python -m pd_fast`): teacher -> progressive distillation -> evaluation.

A built-in network (`--model`) is trained as the teacher on built-in or user data (the digits by
default; `--teacher CKPT` loads one instead), distilled from `--start-steps` down to `--end-steps`
([PD] Algorithm 2), and evaluated: the teacher with DDIM at every power of 2 up to
`--eval-max-steps` and each student at its N, all from the same noise, by the Fréchet distance to
the data in a classifier's features and in pixel space, with bootstrap intervals, paired ratios,
k-NN precision / recall and the memorisation check; beside them the teacher with the training-free
solvers DPM-Solver++(2M) and UniPC. Writes into the run folder:

- `report.json`: `rows` (`steps`, `teacher_ddim`, `student`, ...), `intervals`, `comparisons`,
  `precision_recall`, `memorisation`, `baselines`, `targets` and the run's settings and timings;
- `samples.npz`: every scored sample set (`x_teacher_ddim_N<N>`, `x_student_ddim_N<N>`,
  `x_teacher_dpmpp_N<N>`, `x_teacher_unipc_N<N>`, float32 in [-1, 1], all from the same noise);
- `quality_vs_steps.png`, `samples.png`, `model.json`, and the training stages' `checkpoints/`
  and `log.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import BuiltinConfig
from .common import (
    Run,
    check_data_size,
    distill,
    evaluation_setup,
    finish_training,
    parameters,
    report_head,
    save_model_json,
    write_figures,
)


@dataclass
class Inputs:
    """What the checks loaded: the data, the untrained network, and a `--teacher` checkpoint."""

    data: Any  # pd_fast.app.data.Dataset
    model: nn.Module
    teacher: tuple[nn.Module, dict[str, Any]] | None


def prepare(cfg: BuiltinConfig, run: Run, conditional: bool = False) -> Inputs:
    """Every check before the run writes: the data, the network (`conditional`: on the data's
    classes, for a guided run), the teacher file, that a batch fits the device's memory, and that
    a resume fits its run."""
    from ..data import load_data
    from ..models import build_model, w_conditioned_from
    from .checks import check_memory, check_resume, checked_teacher, guided_classes

    data = load_data(cfg.data, seed=cfg.seed, resolution=cfg.resolution)
    check_data_size(data)
    extra = {"num_classes": guided_classes(data.labels, cfg.data)} if conditional else {}
    model = build_model(
        cfg.model, data.shape, param=cfg.param, seed=cfg.seed, **cfg.network_options(), **extra
    )
    teacher = checked_teacher(cfg, model, data) if cfg.teacher else None
    check_memory(cfg, data.shape, run.device)
    if run.resume:
        base = teacher[0] if teacher is not None else model
        check_resume(run.out, data.x, base, w_conditioned_from(base) if conditional else None)
    return Inputs(data, model, teacher)


def run(cfg: BuiltinConfig, run: Run, inputs: Inputs) -> dict:
    """The job; returns the report (also written to `report.json`; under torchrun, rank 0 alone
    evaluates and reports, the other ranks return {})."""
    from ..evaluation import evaluate_models, sample_statistics

    data, x = inputs.data, inputs.data.x.to(run.device)
    run.say(
        f"data: {data.name}, {len(data)} examples of shape {data.shape}; model: {cfg.model} "
        f"({parameters(inputs.model)}), param={cfg.param}; device {run.device}; out {run.out}"
    )
    with run.timed("teacher_train_seconds"):
        teacher, schedule, param = train_or_load_teacher(cfg, run, inputs, x)
    with run.timed("distill_train_seconds"):
        students = distill(teacher, x, cfg.start_steps, schedule, param, cfg, run)
    fingerprints = finish_training(
        run, {"teacher": teacher, **{f"student_{n}": s for n, s in students.items()}}
    )
    if not run.main:
        return {}
    with run.timed("eval_seconds"):
        evaluator, teacher_steps, z = evaluation_setup(data, cfg, cfg.start_steps, students, run)
        rows, samples = evaluate_models(teacher, students, evaluator, schedule, param, teacher_steps, z)
    with run.timed("statistics_seconds"):
        statistics = sample_statistics(evaluator, samples, seed=cfg.seed, rows=rows)
    with run.timed("baseline_seconds"):
        baselines, baseline_samples = run_baselines(
            teacher, evaluator, schedule, param, teacher_steps, z, cfg, samples, rows
        )
    run.total()
    report = build_report(evaluator, rows, data, cfg, run, statistics, baselines, fingerprints)
    write_outputs(report, {**samples, **baseline_samples}, samples, students, data, run)
    print_report(report, run)
    return report


def train_or_load_teacher(cfg: BuiltinConfig, run: Run, inputs: Inputs, x: Any) -> tuple[nn.Module, Any, str]:
    """The teacher, its schedule and param: the `--teacher` checkpoint (its own schedule and param
    where it records them), or the network trained on `x` (`train_teacher`); writes `model.json`."""
    from ...schedules import CosineSchedule
    from ..checkpoint import schedule_from_dict
    from ..training import train_teacher

    param, schedule = cfg.param, CosineSchedule()
    if inputs.teacher is not None:
        model, info = inputs.teacher
        param = info.get("param", param)
        if "schedule" in info:
            schedule = schedule_from_dict(info["schedule"])
        teacher = model.to(run.device).eval()
        run.say(f"teacher: loaded {cfg.teacher} (param={param})")
    else:
        teacher = train_teacher(
            inputs.model.to(run.device), x, schedule=schedule, param=param, iters=cfg.teacher_iters,
            batch_size=cfg.teacher_batch_size, lr=cfg.teacher_lr, seed=cfg.seed, ckpt_every=cfg.ckpt_every,
            precision=cfg.precision,
            **run.training(),
        )  # fmt: skip
    save_model_json(run, {"model": teacher.config, "param": param, "data": inputs.data.name})
    return teacher, schedule, param


def run_baselines(
    teacher: nn.Module, evaluator: Any, schedule: Any, param: str, teacher_steps: list[int], z: Any,
    cfg: BuiltinConfig, samples: dict, rows: list[dict],
) -> tuple[dict, dict]:  # fmt: skip
    """The teacher with the training-free solvers at every N, from the same noise, scored and
    compared with the students: the report's `baselines` and their samples."""
    from ..evaluation import BASELINES, UNIPC_TRAIN_STEPS, baseline_statistics, evaluate_baselines

    baseline_rows, baseline_samples = evaluate_baselines(
        teacher, evaluator, schedule, param, teacher_steps, z
    )
    baselines = dict(
        solvers={k: v.format(T=UNIPC_TRAIN_STEPS) for k, v in BASELINES.items()},
        unipc=None if not baseline_samples["teacher_unipc"] else "diffusers",
        rows=baseline_rows,
        **baseline_statistics(evaluator, samples, rows, baseline_samples, baseline_rows, seed=cfg.seed),
    )
    if not baseline_samples["teacher_unipc"]:
        baselines["solvers"]["teacher_unipc"] = "skipped: diffusers is not installed"
    return baselines, baseline_samples


def build_report(
    evaluator: Any, rows: list[dict], data: Any, cfg: BuiltinConfig, run: Run, statistics: dict,
    baselines: dict, fingerprints: list | None,
) -> dict[str, Any]:  # fmt: skip
    from ..evaluation.targets import main_targets

    report: dict[str, Any] = {
        **report_head(evaluator, rows, data, cfg, run),
        "world_size": run.world,
        **evaluator.info,
        **run.timings,
    }
    report["targets"] = main_targets(
        rows, statistics["comparisons"], evaluator.metric, statistics.get("precision_recall")
    )
    report.update(statistics)
    report["baselines"] = baselines
    if fingerprints is not None:
        report["rank_fingerprints"] = fingerprints
    return report


def write_outputs(report: dict, scored: dict, samples: dict, students: dict, data: Any, run: Run) -> None:
    """`report.json`, `samples.npz` (every scored sample set) and the figures."""
    from ..checkpoint import save_json
    from ..report import write_samples

    save_json(run.path("report.json"), report)
    write_samples(run.path("samples.npz"), scored)
    write_figures(report, samples, students, data, run)


def print_report(report: dict, run: Run) -> None:
    from ..report import format_baselines, format_comparisons, format_quality_checks, format_table

    print(format_table(report))
    print(format_comparisons(report))
    print(format_quality_checks(report))
    print(format_baselines(report))
    for line in report["targets"]:
        print(line["text"] + (f"; {line['interval_text']}" if "interval_text" in line else ""))
    t = run.timings
    print(
        f"time: teacher {t['teacher_train_seconds']:.1f}s, distillation {t['distill_train_seconds']:.1f}s, "
        f"evaluation {t['eval_seconds']:.1f}s (+ intervals and checks {t['statistics_seconds']:.1f}s, "
        f"baselines {t['baseline_seconds']:.1f}s), total {t['total_seconds']:.1f}s"
    )
    print(f"wrote {run.out}/report.json, samples.npz, quality_vs_steps.png, samples.png, checkpoints/")
