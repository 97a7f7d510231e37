"""The diffusers-teacher job (`python -m pd_fast --teacher DIR`): distill a diffusers `UNet2DModel`.

`DIR` is a pipeline folder (`model_index.json`, `unet/`, `scheduler/`; needs `pip install -e
.[diffusers]`). The data is fitted to the UNet's channels and `sample_size`; `--start-steps`
defaults to 128 (16 with `--quick`, which also uses batches of 64) lowered to the largest power of
two <= T; the students are v models (`--param`), and an eps or x teacher first gets a student of
that param that learns its own start-steps DDIM (`pd_fast.app.reparam`; `--reparam-iters`,
default 2 x `--iters`). Everything is evaluated as the exported pipelines sample (no clipping; the
scored samples go to `samples.npz` as in the built-in job), and every student whose N divides T
is written to `OUT/diffusers/student_<N>/` (a `DDIMPipeline` folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import DiffusersConfig
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


def is_diffusers_teacher(path: str | None) -> bool:
    """Whether `--teacher` names a diffusers folder (JSON only: diffusers is not imported here)."""
    if not path or not os.path.isdir(path):
        return False
    from ...integrations.diffusers import is_diffusers_folder

    if not is_diffusers_folder(path):
        return False
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise ValueError(
            f"--teacher: {path} is a bare UNet2DModel folder without a schedule; give the pipeline folder "
            "that save_pretrained writes (model_index.json, unet/, scheduler/)"
        )
    return True


@dataclass
class Inputs:
    """The diffusers teacher (wrapped), its schedule and param, and the data fitted to its UNet."""

    teacher: nn.Module
    schedule: Any
    teacher_param: str
    data: Any  # pd_fast.app.data.Dataset


def prepare(cfg: DiffusersConfig, run: Run) -> Inputs:
    """The teacher and the data, checked to fit each other; ValueError with a one-line message
    otherwise (before anything is written)."""
    from ...integrations.diffusers import PREDICTION_TYPES, from_diffusers
    from ...integrations.latent import latent_pipeline_kind
    from ..data import load_data
    from .checks import check_memory

    if cfg.param not in PREDICTION_TYPES.values():
        raise ValueError(
            f"--param {cfg.param}: a diffusers UNet predicts one of {sorted(PREDICTION_TYPES.values())} "
            "(its output has the input's channels)"
        )
    kind = latent_pipeline_kind(cfg.teacher)
    if kind is not None:
        raise ValueError(
            f"--teacher: {cfg.teacher} is a latent ({kind}) pipeline; this job distills pixel-space "
            "UNet2DModel pipelines on images (latent pipelines: pd_fast.integrations.latent)"
        )
    teacher, schedule, teacher_param = from_diffusers(cfg.teacher)
    if teacher.conditional:
        raise ValueError(
            f"--teacher: {cfg.teacher} holds a class-conditional UNet; the distillation loop is unconditional"
        )
    unet = teacher.unet.config
    size = (unet.sample_size,) * 2 if isinstance(unet.sample_size, int) else tuple(unet.sample_size)
    resolution = cfg.resolution
    if resolution is not None and (resolution, resolution) != size:
        raise ValueError(
            f"--resolution {resolution} differs from the teacher's sample_size {unet.sample_size} "
            "(its pipelines sample at sample_size)"
        )
    if size[0] == size[1]:
        resolution = size[0]
    data = load_data(cfg.data, seed=cfg.seed, resolution=resolution, channels=unet.in_channels)
    if data.shape != (unet.in_channels, *size):
        raise ValueError(
            f"--data: examples of shape {data.shape}, the teacher's UNet takes {(unet.in_channels, *size)}"
        )
    check_data_size(data)
    check_memory(cfg, (1,), run.device)
    return Inputs(teacher, schedule, teacher_param, data)


def run(cfg: DiffusersConfig, run: Run, inputs: Inputs) -> dict:
    """The job (module docstring); returns the report (also written to `report.json`)."""
    from ..evaluation import evaluate_models

    data, schedule, teacher_param = inputs.data, inputs.schedule, inputs.teacher_param
    teacher, x = inputs.teacher.to(run.device).eval(), data.x.to(run.device)
    announce(cfg, run, inputs, teacher)
    with run.timed("reparam_seconds"):
        first, reparam_info = reparameterize_teacher(teacher, x, schedule, teacher_param, cfg, run)
    with run.timed("distill_train_seconds"):
        current = first.get(cfg.start_steps, teacher)
        students = {**first, **distill(current, x, cfg.start_steps, schedule, cfg.param, cfg, run)}
    finish_training(run, {})
    if not run.main:
        return {}
    with run.timed("eval_seconds"):
        # clip=False: what the exported DDIMPipelines (clip_sample=False) and the teacher's DDIM give
        evaluator, steps, z = evaluation_setup(data, cfg, cfg.start_steps, students, run)
        t_rows, t_samples = evaluate_models(
            teacher, {}, evaluator, schedule, teacher_param, steps, z, clip=False
        )
        s_rows, s_samples = evaluate_models(
            teacher, students, evaluator, schedule, cfg.param, [], z, clip=False
        )
        rows = merge_rows(t_rows, s_rows)
    T = teacher.num_train_timesteps
    with run.timed("export_seconds"):
        exports, skipped = export(students, schedule, cfg, run, T)
    run.total()
    report = build_report(cfg, run, evaluator, rows, data, teacher_param, T, reparam_info, exports, skipped)
    samples = {"teacher": t_samples["teacher"], "student": s_samples["student"]}
    write_outputs(report, samples, students, data, run)
    print_report(report, run, exports, skipped, teacher_param, cfg.param)
    return report


def announce(cfg: DiffusersConfig, run: Run, inputs: Inputs, teacher: nn.Module) -> None:
    """Print what the run distills, and write `model.json`."""
    data, T = inputs.data, teacher.num_train_timesteps
    run.say(
        f"data: {data.name}, {len(data)} examples of shape {data.shape}; teacher: diffusers UNet2DModel "
        f"{cfg.teacher} ({parameters(teacher)}), param={inputs.teacher_param}, T={T}; students "
        f"param={cfg.param}; device {run.device}; out {run.out}"
    )
    model_info = {"kind": "diffusers", "path": os.path.abspath(cfg.teacher), "num_train_timesteps": T}
    save_model_json(
        run,
        {"model": model_info, "param": cfg.param, "teacher_param": inputs.teacher_param, "data": data.name},
    )


def reparameterize_teacher(
    teacher: nn.Module, x: Any, schedule: Any, teacher_param: str, cfg: DiffusersConfig, run: Run
) -> tuple[dict[int, nn.Module], dict | None]:
    """A teacher of another param than `--param` first gets a `--param` student of its own
    start-steps DDIM (`pd_fast.app.reparam`), saved as `checkpoints/reparam_<N>` (a resume loads
    it): `({start_steps: student}, its info)`; `({}, None)` for a teacher of the students' param."""
    import copy

    from ..checkpoint import load_model_checkpoint, save_model_checkpoint, schedule_to_dict
    from ..reparam import reparameterize

    if cfg.param == teacher_param:
        return {}, None
    start, iters = cfg.start_steps, getattr(cfg, "reparam_iters", None) or 2 * cfg.iters
    stem = Path(run.out) / "checkpoints" / f"reparam_{start}"
    if run.resume and stem.with_suffix(".safetensors").is_file():
        student = copy.deepcopy(teacher)
        info = load_model_checkpoint(stem, student)
        student.eval()
    else:
        student, losses = reparameterize(
            teacher, x, start, schedule=schedule, teacher_param=teacher_param, param=cfg.param, iters=iters,
            batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=run.progress,
        )  # fmt: skip
        info = {
            "steps": start, "schedule": schedule_to_dict(schedule), "param": cfg.param,
            "teacher_param": teacher_param, "iters": iters,
            "loss_first_10": sum(losses[:10]) / len(losses[:10]),
            "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
        }  # fmt: skip
        save_model_checkpoint(stem, student, info)
    print(
        f"{teacher_param} -> {cfg.param}: a {cfg.param} student learned the teacher's {start}-step DDIM "
        f"(loss {info['loss_first_10']:.4g} -> {info['loss_last_10']:.4g})"
    )
    return {start: student}, info


def merge_rows(teacher_rows: list[dict], student_rows: list[dict]) -> list[dict]:
    """One row per step count: the teacher's columns from `teacher_rows`, the students' from
    `student_rows` (the two are evaluated with different params)."""
    rows = {r["steps"]: dict(r) for r in teacher_rows}
    for r in student_rows:
        row = rows.setdefault(r["steps"], dict(r))
        row.update({k: v for k, v in r.items() if k.startswith("student")})
        row["sample_seconds"] = r["sample_seconds"]
    return [rows[n] for n in sorted(rows)]


def export(
    students: dict[int, nn.Module], schedule: Any, cfg: DiffusersConfig, run: Run, T: int
) -> tuple[dict[str, str], list[int]]:
    """Every student whose N divides T as a `DDIMPipeline` folder `diffusers/student_<N>/`: the
    folders by N, and the N left out."""
    from ...integrations.diffusers import to_diffusers

    exports, skipped = {}, []
    for n in sorted(students):
        if T % n:
            skipped.append(n)
            continue
        folder = os.path.join(run.out, "diffusers", f"student_{n}")
        to_diffusers(students[n], schedule, cfg.param, folder, n)
        exports[str(n)] = folder
    return exports, skipped


def build_report(
    cfg: DiffusersConfig, run: Run, evaluator: Any, rows: list[dict], data: Any, teacher_param: str, T: int,
    reparam_info: dict | None, exports: dict[str, str], skipped: list[int],
) -> dict[str, Any]:  # fmt: skip
    from ..evaluation.targets import main_targets

    report: dict[str, Any] = {
        **report_head(evaluator, rows, data, cfg, run),
        "clip": False,
        "teacher_param": teacher_param,
        "param": cfg.param,
        "num_train_timesteps": T,
        "reparam": reparam_info,
        "diffusers_exports": exports,
        "not_exported_steps": skipped,
        **evaluator.info,
        **run.timings,
    }
    report["targets"] = main_targets(rows)
    return report


def write_outputs(report: dict, samples: dict, students: dict, data: Any, run: Run) -> None:
    from ..checkpoint import save_json
    from ..report import write_samples

    save_json(run.path("report.json"), report)
    write_samples(run.path("samples.npz"), samples)
    write_figures(report, samples, students, data, run)


def print_report(
    report: dict, run: Run, exports: dict[str, str], skipped: list[int], teacher_param: str, param: str
) -> None:
    from ..report import format_table

    print(format_table(report))
    for line in report["targets"]:
        print(line["text"])
    t = run.timings
    print(
        f"time: {teacher_param} -> {param} {t['reparam_seconds']:.1f}s, "
        f"distillation {t['distill_train_seconds']:.1f}s, evaluation {t['eval_seconds']:.1f}s, "
        f"export {t['export_seconds']:.1f}s, total {t['total_seconds']:.1f}s"
    )
    if skipped:
        print(
            f"not exported (N does not divide T = {report['num_train_timesteps']}): "
            f"{', '.join(map(str, skipped))} steps"
        )
    print(
        f"wrote {run.out}/report.json, samples.npz, quality_vs_steps.png, samples.png, checkpoints/, "
        "diffusers/"
    )
    for n, folder in exports.items():
        print(f"  DDIMPipeline.from_pretrained({folder!r})(num_inference_steps={n})")
