"""The diffusers-teacher job (`python -m pd_fast --teacher DIR`): distill a diffusers `UNet2DModel`.

`DIR` is a pixel-space pipeline folder (`model_index.json` naming a `unet` and a `scheduler` only;
needs `pip install -e .[diffusers]`); a latent pipeline (an LDM's `vqvae`, Stable Diffusion's `vae`)
is refused. The data is fitted to the UNet's channels and `sample_size` (`--resolution`, N or HxW,
must equal it), and one example goes through the UNet before anything is written. `--start-steps`
defaults to 128 (16 with `--quick`, which also uses batches of 64) lowered to the largest power of
two <= T, and may not exceed T; the students are v models (`--param`), and an eps or x teacher
first gets a student of that param that learns its own start-steps DDIM (`pd_fast.app.reparam`;
`--reparam-iters`, default 2 x `--iters`). Everything is evaluated as the exported pipelines
sample (no clipping; the scored samples go to `samples.npz` as in the built-in job); the teacher's
DDIM is scored at powers of two up to `--eval-max-steps` clipped to T (more steps than T would
step between its timesteps). Every student whose N divides T is written to
`OUT/diffusers/student_<N>/` (a `DDIMPipeline` folder); which ones is said before training, and a
run in which no distilled student could be exported is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DiffusersConfig, resolution_text
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

    parent = os.path.dirname(os.path.normpath(path)) or "."
    inside = os.path.isfile(os.path.join(parent, "model_index.json"))
    if inside and not os.path.isfile(os.path.join(path, "model_index.json")):
        name = os.path.basename(os.path.normpath(path))
        raise ValueError(
            f"--teacher: {path} is the {name}/ folder of the pipeline in {parent} (its model_index.json); "
            f"pass the pipeline folder itself: --teacher {parent}"
        )
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
    exported: list[int] = field(default_factory=list)  # the students' N that divide T
    kept: list[int] = field(default_factory=list)  # those that stay checkpoints


def prepare(cfg: DiffusersConfig, run: Run) -> Inputs:
    """The teacher, its step counts and the data, checked to fit each other (the pipeline's
    components and weights, then `--start-steps` against T and which students can be exported,
    then one example of the fitted data through the UNet); ValueError with a one-line message
    otherwise (before anything is written)."""
    from ...integrations.diffusers import PREDICTION_TYPES, from_diffusers
    from ..data import load_data
    from .checks import check_memory

    if cfg.param not in PREDICTION_TYPES.values():
        raise ValueError(
            f"--param {cfg.param}: a diffusers UNet predicts one of {sorted(PREDICTION_TYPES.values())} "
            "(its output has the input's channels)"
        )
    check_pipeline_folder(cfg.teacher)
    teacher, schedule, teacher_param = from_diffusers(cfg.teacher)
    if teacher.conditional:
        raise ValueError(
            f"--teacher: {cfg.teacher} holds a class-conditional UNet; the distillation loop is unconditional"
        )
    exported, kept = check_steps(cfg, teacher.num_train_timesteps, teacher_param)
    unet = teacher.unet.config
    size = fitted_size(cfg, unet.sample_size)
    data = load_data(cfg.data, seed=cfg.seed, resolution=size, channels=unet.in_channels)
    if data.shape != (unet.in_channels, *size):
        raise ValueError(
            f"--data: examples of shape {data.shape}, the teacher's UNet takes {(unet.in_channels, *size)}"
        )
    check_data_size(data)
    check_forward(teacher, data.x, cfg.teacher)
    check_memory(cfg, (1,), run.device)
    return Inputs(teacher, schedule, teacher_param, data, exported, kept)


#: components whose presence makes a pipeline latent (LDMPipeline's, Stable Diffusion's autoencoder)
LATENT_COMPONENTS = ("vqvae", "vae")
#: what the UNet's weights may be called in `unet/` (diffusers' names, sharded or not)
WEIGHT_FILES = tuple(
    f"diffusion_pytorch_model.{ext}"
    for ext in ("safetensors", "bin", "safetensors.index.json", "bin.index.json")
)


def check_pipeline_folder(path: str) -> None:
    """From `model_index.json` and file names only (before diffusers loads anything): the pipeline
    has a unet and a scheduler and nothing else (a `vqvae`/`vae` is a latent pipeline, which this
    job does not distill), and `unet/` holds its weights."""
    index_file = Path(path) / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--teacher: cannot read {index_file}: {err}") from err
    if not isinstance(index, dict):
        raise ValueError(f"--teacher: {index_file} does not hold a JSON object")
    parts = {
        k: v[1] for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1] is not None
    }  # fmt: skip
    pipeline = index.get("_class_name", "pipeline")
    latent = [k for k in parts if k in LATENT_COMPONENTS]
    if latent:
        raise ValueError(
            f"--teacher {path} is a latent pipeline ({pipeline}: {parts.get('unet', 'no unet')} + "
            f"{parts[latent[0]]}); this job distills pixel-space UNet2DModel pipelines (a unet and a "
            "scheduler, as DDPMPipeline saves them)"
        )
    extra = [k for k in parts if k not in ("unet", "scheduler")]
    if extra:
        raise ValueError(
            f"--teacher {path}: its {pipeline} has components beyond unet and scheduler "
            f"({', '.join(extra)}); this job distills pixel-space pipelines of a UNet2DModel and a "
            "scheduler only (DDPMPipeline, DDIMPipeline)"
        )
    unet = Path(path) / "unet"
    if unet.is_dir() and not any((unet / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(
            f"--teacher {path}: the UNet's weights ({WEIGHT_FILES[0]}) are missing in {unet}{os.sep}"
        )


def fitted_size(cfg: DiffusersConfig, sample_size: Any) -> tuple[int, int]:
    """The (height, width) the data is fitted to: the UNet's `sample_size`, which `--resolution`
    (N or HxW), if given, must equal (the exported pipelines sample at sample_size)."""
    size = (sample_size,) * 2 if isinstance(sample_size, int) else tuple(sample_size)
    res = cfg.resolution
    if res is not None and ((res, res) if isinstance(res, int) else tuple(res)) != size:
        fits = resolution_text(size[0] if size[0] == size[1] else size)
        raise ValueError(
            f"--resolution {resolution_text(res)} differs from the teacher's sample_size "
            f"{resolution_text(sample_size)} (its pipelines sample at sample_size): leave it out or pass "
            f"--resolution {fits}"
        )
    return size[0], size[1]


def check_forward(teacher: nn.Module, x: torch.Tensor, path: str) -> None:
    """One example of the fitted data through the teacher at t = 1/2 (no_grad): a UNet that cannot
    take its own sample_size fails here, in one line naming why, not after the run folder exists."""
    try:
        with torch.no_grad():
            out = teacher(x[:1], torch.full((1,), 0.5))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(forward_failure(teacher.unet.config, path, tuple(x.shape[1:]), err)) from err
    if out.shape != x[:1].shape:
        raise ValueError(
            f"--teacher {path}: its UNet maps an example of shape {tuple(x.shape[1:])} to "
            f"{tuple(out.shape[1:])}; the students need a prediction of the input's shape"
        )


def forward_failure(unet: Any, path: str, shape: tuple[int, ...], err: BaseException) -> str:
    """Why one example did not go through the UNet: a side that its down blocks cannot halve as
    often as they do (each block but the last halves the image), else diffusers' own first line."""
    blocks = len(unet.down_block_types)
    factor = 2 ** (blocks - 1)
    if any(side % factor for side in shape[-2:]):
        return (
            f"--teacher {path}: sample_size {resolution_text(unet.sample_size)} does not fit the UNet: its "
            f"{blocks} down blocks halve the image {blocks - 1} times, so each side must be a multiple of "
            f"{factor}"
        )
    lines = str(err).strip().splitlines()
    return f"--teacher {path}: its UNet fails on one example of shape {shape}: " + (
        lines[0] if lines else type(err).__name__
    )


def student_steps(cfg: DiffusersConfig) -> list[int]:
    """The N of the distilled students: start/2, start/4, ..., end."""
    steps, n = [], cfg.start_steps // 2
    while n >= cfg.end_steps:
        steps.append(n)
        n //= 2
    return steps


def check_steps(cfg: DiffusersConfig, T: int, teacher_param: str) -> tuple[list[int], list[int]]:
    """`--start-steps` is at most T (the teacher's DDIM has at most T steps), and at least one
    distilled student's N divides T (diffusers' DDIMScheduler runs no other N). Returns the N of
    the students that will be exported and of those that stay checkpoints (the start-steps
    student of another param than the teacher's included)."""
    from ...integrations.diffusers import default_start_steps, exportable_steps

    start, end = cfg.start_steps, cfg.end_steps
    if start > T:
        ratio = start // end
        while ratio > 2 and end * ratio > T:
            ratio //= 2
        fits = f"--start-steps {end * ratio}"
        hint = fits if end * ratio <= T else f"--start-steps {default_start_steps(T, start)} --end-steps 1"
        raise ValueError(
            f"--start-steps {start} is more than the teacher's T = {T} timesteps (num_train_timesteps): "
            f"its DDIM has at most T steps; pass {hint} or fewer"
        )
    students = student_steps(cfg)
    if not exportable_steps(students, T):
        divisors = ", ".join(str(d) for d in range(1, start) if T % d == 0)
        raise ValueError(
            f"--start-steps {start} --end-steps {end}: none of the students ({', '.join(map(str, students))} "
            f"steps) could be exported: diffusers' DDIMScheduler runs only N dividing T = {T} "
            f"(num_train_timesteps), and below {start} those are {divisors}; e.g. "
            + ", or ".join(step_hints(start, end, T))
        )
    trained = students + ([start] if cfg.param != teacher_param else [])
    exported = exportable_steps(trained, T)
    return sorted(exported, reverse=True), sorted(set(trained) - set(exported), reverse=True)


def export_plan(exported: list[int], kept: list[int], T: int) -> str:
    """The line said before training: which students become DDIMPipelines, which stay checkpoints."""

    def students(steps: list[int]) -> str:
        return f"the {', '.join(map(str, steps))}-step student" + ("s" if len(steps) > 1 else "")

    line = f"export as DDIMPipelines (diffusers/student_<N>/): {students(exported)}"
    return line + (f"; checkpoints only (N does not divide T = {T}): {students(kept)}" if kept else "")


def step_hints(start: int, end: int, T: int) -> list[str]:
    """Flags with which some student's N divides T: a lower --end-steps (the same start), and the
    same number of rounds ending at the divisor of T (above 1 where one fits) nearest --end-steps."""
    hints, n = [], end
    while n % 2 == 0:
        n //= 2
        if T % n == 0:
            hints.append(f"--end-steps {n}")
            break
    ratio = start // end
    ends = [d for d in range(2, T // ratio + 1) if T % d == 0] or [1]
    d = min(ends, key=lambda d: (abs(d - end), d))
    hints.append(f"--start-steps {d * ratio} --end-steps {d}")
    return hints


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
    T = teacher.num_train_timesteps
    with run.timed("eval_seconds"):
        # clip=False: what the exported DDIMPipelines (clip_sample=False) and the teacher's DDIM give
        evaluator, steps, z = evaluation_setup(data, cfg, cfg.start_steps, students, run)
        steps = [n for n in steps if n <= T]  # --eval-max-steps clipped to T (module docstring)
        t_rows, t_samples = evaluate_models(
            teacher, {}, evaluator, schedule, teacher_param, steps, z, clip=False
        )
        s_rows, s_samples = evaluate_models(
            teacher, students, evaluator, schedule, cfg.param, [], z, clip=False
        )
        rows = merge_rows(t_rows, s_rows)
    with run.timed("export_seconds"):
        exports, skipped = export(students, schedule, cfg.param, run, T)
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
    run.say(export_plan(inputs.exported, inputs.kept, T))
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
    students: dict[int, nn.Module], schedule: Any, param: str, run: Run, T: int, pipeline: Any = None
) -> tuple[dict[str, str], list[int]]:
    """Every student whose N divides T as a pipeline folder `diffusers/student_<N>/` (`to_diffusers`:
    a `DDIMPipeline`, or with the teacher's latent `pipeline` a `StableDiffusionPipeline` or an
    `LDMPipeline`): the folders by N, and the N left out."""
    from ...integrations.diffusers import to_diffusers

    exports, skipped = {}, []
    for n in sorted(students):
        if T % n:
            skipped.append(n)
            continue
        folder = os.path.join(run.out, "diffusers", f"student_{n}")
        to_diffusers(students[n], schedule, param, folder, n, pipeline=pipeline)
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
