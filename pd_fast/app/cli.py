"""`python -m pd_fast` (console script `pd-distill`): the main job.

Teacher training -> progressive distillation ([PD] Algorithm 2) -> evaluation, on scikit-learn's
8x8 digits by default. Writes into `--out DIR` (default `runs/<timestamp>`):

- `report.json`: `{"metric", "floor", "rows": [{"steps", "teacher_ddim", "student",
  "sample_seconds", ...}], ...}` (Fréchet distances; see `pd_fast.evaluation`),
- `quality_vs_steps.png`, `samples.png`,
- `checkpoints/` (teacher, one student per round, training state) and `log.jsonl`, written by
  `pd_fast.training`; `config.json` (this run's settings) and `model.json` (the network's config).

A killed run continues with the same command plus `--resume` (or `--resume --out DIR`; `--resume`
alone picks the newest run under `runs/`): the run's saved settings are reused and training
continues from its last checkpoint.

`--teacher DIR` with a diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`; needs
`pip install -e .[diffusers]`) distills that `UNet2DModel` instead (`_run_diffusers`): the data is
fitted to the UNet's channels and `sample_size`; `--start-steps` defaults to 128 (16 with
`--quick`, which also uses batches of 64) lowered to the largest power of two <= T; the students
are v models (`--param`), and an eps or x teacher first gets a student of that param that learns
its own start-steps DDIM (`pd_fast.app.reparam`; `--reparam-iters`, default 2 x `--iters`);
everything is evaluated as the exported pipelines sample (no clipping), and every student whose
N divides T is written to `OUT/diffusers/student_<N>/` (a `DDIMPipeline` folder).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

# Tuned on the digits with this machine's 2 CPU cores: a teacher of 6000
# iterations, distilled from 128 steps (its DDIM quality there equals 256 steps) to 1 in 7 rounds.
DEFAULTS: dict[str, Any] = dict(
    data="digits",
    model="mlp",
    param="v",
    hidden=256,
    depth=3,
    ch=32,
    teacher_iters=6000,
    teacher_lr=1e-3,
    teacher_batch_size=256,
    start_steps=128,
    end_steps=1,
    iters=500,
    last_rounds_factor=2.0,
    lr=6e-4,
    batch_size=256,
    ckpt_every=250,
    eval_max_steps=256,
    seed=0,
)
# --quick: a smoke-sized run of the same pipeline (about a minute on 2 CPU cores).
QUICK: dict[str, Any] = dict(
    hidden=128, teacher_iters=800, start_steps=16, iters=100, eval_max_steps=16, ckpt_every=100
)
# --quick with a diffusers teacher: a UNet costs more per example than the MLP, so smaller batches.
QUICK_DIFFUSERS: dict[str, Any] = dict(batch_size=64)
# Settings that define a run (saved in config.json, reused by --resume).
RUN_KEYS = tuple(DEFAULTS) + ("teacher", "quick", "resolution", "reparam_iters")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pd-distill",
        description="Progressive distillation (Salimans & Ho, 2022) end to end: train a teacher, distill it "
        "down to a few sampling steps, and evaluate every step count against the data.",
    )
    p.add_argument(
        "--data",
        help="'digits' (default), 'moons', 'eight_gaussians', a .npy/.npz path "
        "holding (N, D), (N, H, W) or (N, C, H, W) in [-1, 1], a folder of PNG/JPEG images, or "
        "cifar10:PATH (the CIFAR-10 python archive cifar-10-python.tar.gz)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        help="center-crop and resize every image to this many pixels a side (default: keep the size; "
        "for a diffusers teacher, its sample_size)",
    )
    p.add_argument("--out", help="output folder (default runs/<timestamp>)")
    p.add_argument("--quick", action="store_true", help="a small, fast run (start 16 steps, short training)")
    p.add_argument(
        "--start-steps", type=int, help="teacher sampling steps at the start of distillation (default 128)"
    )
    p.add_argument("--end-steps", type=int, help="steps of the last student (default 1)")
    p.add_argument(
        "--iters",
        type=int,
        help="distillation iterations per round (default 500; the last "
        "two rounds run --last-rounds-factor times as many)",
    )
    p.add_argument(
        "--last-rounds-factor",
        type=float,
        help="iteration multiplier of the last two rounds (default 2, as in the paper)",
    )
    p.add_argument("--lr", type=float, help="distillation learning rate (annealed linearly to 0 each round)")
    p.add_argument("--batch-size", type=int, help="distillation batch size")
    p.add_argument(
        "--teacher",
        metavar="CKPT|DIR",
        help="teacher checkpoint (.safetensors), or a diffusers pipeline folder (model_index.json, unet/, "
        "scheduler/: a UNet2DModel); skips teacher training",
    )
    p.add_argument(
        "--reparam-iters",
        type=int,
        help="diffusers teacher of another param than --param: iterations of the stage in which the "
        "student learns the teacher's own start-steps DDIM (default 2 x --iters)",
    )
    p.add_argument("--teacher-iters", type=int, help="teacher training iterations (default 6000)")
    p.add_argument("--teacher-lr", type=float, help="teacher learning rate")
    p.add_argument("--teacher-batch-size", type=int, help="teacher batch size")
    p.add_argument(
        "--model",
        choices=("mlp", "unet"),
        help="network: residual MLP (default; flattens images) or a small UNet for images",
    )
    p.add_argument("--param", choices=("eps", "x", "v", "both"), help="network output (default v)")
    p.add_argument("--hidden", type=int, help="MLP width")
    p.add_argument("--depth", type=int, help="MLP residual blocks")
    p.add_argument("--ch", type=int, help="UNet base channels")
    p.add_argument(
        "--eval-max-steps",
        type=int,
        help="evaluate the teacher with DDIM up to this many steps (default 256; never below --start-steps)",
    )
    p.add_argument("--ckpt-every", type=int, help="save the training state every this many iterations")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default 1 on CPU: these "
        "small networks run fastest single-threaded, and many times faster when the cores are shared)",
    )
    p.add_argument("--seed", type=int, help="seed of the weights, the data order and the noise")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run in --out (or the newest under runs/) from its last checkpoint",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _latest_run() -> str | None:
    runs = sorted(
        d for d in glob.glob(os.path.join("runs", "*")) if os.path.isfile(os.path.join(d, "config.json"))
    )
    return runs[-1] if runs else None


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The run's settings (defaults, then --quick, then flags; with --resume, the saved ones) and
    its output folder."""
    given = {k: v for k, v in vars(args).items() if k in RUN_KEYS and v not in (None, False)}
    out = args.out
    if args.resume:
        out = out or _latest_run()
        if out is None:
            raise ValueError("--resume: no --out given and no run under runs/ to resume")
        cfg_path = os.path.join(out, "config.json")
        if not os.path.isfile(cfg_path):
            raise ValueError(f"--resume: {out} holds no config.json (not a pd_fast run)")
        with open(cfg_path) as f:
            saved = json.load(f)
        for k, v in given.items():
            if k in saved and saved[k] != v:
                raise ValueError(f"--resume: the run in {out} has {k}={saved[k]!r}, this command has {v!r}")
        return saved, out
    settings = dict(DEFAULTS)
    if args.quick:
        settings.update(QUICK)
    settings.update(given)
    settings.setdefault("teacher", None)
    settings.setdefault("resolution", None)
    settings.setdefault("reparam_iters", None)
    settings["quick"] = bool(args.quick)
    if _diffusers_teacher(settings["teacher"]):
        from ..integrations.diffusers import default_start_steps, read_num_train_timesteps

        if args.quick:
            settings.update({k: v for k, v in QUICK_DIFFUSERS.items() if k not in given})
        if "start_steps" not in given:
            T = read_num_train_timesteps(settings["teacher"])
            settings["start_steps"] = default_start_steps(T, settings["start_steps"])
    if out is None:
        out = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if glob.glob(os.path.join(out, "checkpoints", "*_state.json")):
        raise ValueError(
            f"--out {out} already holds a run: add --resume to continue it, or choose another --out"
        )
    return settings, out


def _check_settings(s: dict[str, Any]) -> None:
    for key in (
        "teacher_iters",
        "iters",
        "batch_size",
        "teacher_batch_size",
        "start_steps",
        "end_steps",
        "hidden",
        "depth",
        "ch",
        "eval_max_steps",
    ):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {s[key]!r}")
    ratio = s["start_steps"] // s["end_steps"]
    if s["start_steps"] % s["end_steps"] or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"--start-steps must be --end-steps times a power of 2 (>= 2), got {s['start_steps']} and "
            f"{s['end_steps']}"
        )
    if s.get("reparam_iters") is not None and (
        isinstance(s["reparam_iters"], bool)
        or not isinstance(s["reparam_iters"], int)
        or s["reparam_iters"] < 1
    ):
        raise ValueError(f"--reparam-iters must be a positive integer, got {s['reparam_iters']!r}")
    resolution = s.get("resolution")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2
    ):
        raise ValueError(f"--resolution must be an integer >= 2, got {resolution!r}")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return dev


def _load_teacher(
    path: str, model_cfg: dict[str, Any], settings: dict[str, Any]
) -> tuple[torch.nn.Module, dict]:
    """A teacher from a checkpoint: the network's config from `model.json` of the run that wrote it
    (two folders up) if there is one, else from this run's flags."""
    from .checkpoint import load_model_checkpoint
    from .models import model_from_config

    run_model = Path(path).resolve().parent.parent / "model.json"
    if run_model.is_file():
        model_cfg = json.loads(run_model.read_text())["model"]
    model = model_from_config(model_cfg, seed=settings["seed"])
    info = load_model_checkpoint(path, model)
    return model, info


def run(settings: dict[str, Any], out: str, device: torch.device, resume: bool, progress: bool) -> dict:
    """The main job; returns the report (also written to `out/report.json`)."""
    from ..schedules import CosineSchedule
    from .checkpoint import schedule_from_dict
    from .data import load_data
    from .evaluation import evaluate_models, make_evaluator
    from .models import build_model
    from .report import format_table, plot_quality, plot_samples, write_json
    from .training import progressive_distill, train_teacher

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "config.json"), settings)
    if _diffusers_teacher(settings["teacher"]):
        return _run_diffusers(settings, out, device, resume, progress)
    data = load_data(settings["data"], seed=settings["seed"], resolution=settings.get("resolution"))
    if len(data) < 4:
        raise ValueError(f"--data needs at least 4 examples (evaluation splits it in two), got {len(data)}")
    kwargs = (
        dict(hidden=settings["hidden"], depth=settings["depth"])
        if settings["model"] == "mlp"
        else dict(ch=settings["ch"])
    )
    model = build_model(
        settings["model"], data.shape, param=settings["param"], seed=settings["seed"], **kwargs
    )
    param, schedule = settings["param"], CosineSchedule()
    x = data.x.to(device)
    print(
        f"data: {data.name}, {len(data)} examples of shape {data.shape}; model: {settings['model']} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters), param={param}; "
        f"device {device}; out {out}"
    )

    t0 = time.perf_counter()
    if settings["teacher"]:
        model, info = _load_teacher(settings["teacher"], model.config, settings)
        param = info.get("param", param)
        if "schedule" in info:
            schedule = schedule_from_dict(info["schedule"])
        teacher = model.to(device).eval()
        print(f"teacher: loaded {settings['teacher']} (param={param})")
    else:
        teacher = train_teacher(
            model.to(device),
            x,
            schedule=schedule,
            param=param,
            iters=settings["teacher_iters"],
            batch_size=settings["teacher_batch_size"],
            lr=settings["teacher_lr"],
            seed=settings["seed"],
            out_dir=out,
            ckpt_every=settings["ckpt_every"],
            resume=resume,
            progress=progress,
        )
    write_json(os.path.join(out, "model.json"), {"model": teacher.config, "param": param, "data": data.name})
    timings["teacher_train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    students = progressive_distill(
        teacher,
        x,
        settings["start_steps"],
        settings["end_steps"],
        schedule=schedule,
        param=param,
        iters=settings["iters"],
        last_rounds_factor=settings["last_rounds_factor"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=settings["seed"],
        out_dir=out,
        ckpt_every=settings["ckpt_every"],
        resume=resume,
        progress=progress,
    )
    timings["distill_train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluator = make_evaluator(data.x, data.labels, seed=settings["seed"], cache_dir=out)
    n_max = max(settings["eval_max_steps"], settings["start_steps"])
    teacher_steps = sorted({2**k for k in range(n_max.bit_length()) if 2**k <= n_max} | set(students))
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    z = torch.randn((evaluator.n_samples,) + data.shape, generator=gen).to(device)
    rows, samples = evaluate_models(teacher, students, evaluator, schedule, param, teacher_steps, z)
    timings["eval_seconds"] = time.perf_counter() - t0
    timings["total_seconds"] = time.perf_counter() - t_start

    report: dict[str, Any] = {
        "metric": f"frechet_{evaluator.metric}",
        "floor": evaluator.floor[evaluator.metric],
        "rows": rows,
        "space": evaluator.metric,
        "floors": evaluator.floor,
        "spaces": list(evaluator.floor),
        "data": data.name,
        "eval_samples": evaluator.n_samples,
        "settings": settings,
        "device": str(device),
        "threads": torch.get_num_threads(),
        **evaluator.info,
        **timings,
    }
    report["targets"] = _targets(rows)
    write_json(os.path.join(out, "report.json"), report)
    plot_quality(report, os.path.join(out, "quality_vs_steps.png"))
    grid_steps = [n for n in sorted(samples["teacher"]) if n in students or n == max(samples["teacher"])]
    shown = {"teacher": {n: samples["teacher"][n] for n in grid_steps}, "student": samples["student"]}
    plot_samples(shown, os.path.join(out, "samples.png"), data=data.x)
    print(format_table(report))
    for line in report["targets"]:
        print(line["text"])
    print(
        f"time: teacher {timings['teacher_train_seconds']:.1f}s, "
        f"distillation {timings['distill_train_seconds']:.1f}s, "
        f"evaluation {timings['eval_seconds']:.1f}s, total {timings['total_seconds']:.1f}s"
    )
    print(f"wrote {out}/report.json, quality_vs_steps.png, samples.png, checkpoints/")
    return report


def _diffusers_teacher(path: str | None) -> bool:
    """Whether `--teacher` names a diffusers folder (JSON only: diffusers is not imported here)."""
    if not path or not os.path.isdir(path):
        return False
    from ..integrations.diffusers import is_diffusers_folder

    if not is_diffusers_folder(path):
        return False
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise ValueError(
            f"--teacher: {path} is a bare UNet2DModel folder without a schedule; give the pipeline folder "
            "that save_pretrained writes (model_index.json, unet/, scheduler/)"
        )
    return True


def _merge_rows(teacher_rows: list[dict], student_rows: list[dict]) -> list[dict]:
    """One row per step count: the teacher's columns from `teacher_rows`, the students' from
    `student_rows` (the two are evaluated with different params)."""
    rows = {r["steps"]: dict(r) for r in teacher_rows}
    for r in student_rows:
        row = rows.setdefault(r["steps"], dict(r))
        row.update({k: v for k, v in r.items() if k.startswith("student")})
        row["sample_seconds"] = r["sample_seconds"]
    return [rows[n] for n in sorted(rows)]


def _run_diffusers(
    settings: dict[str, Any], out: str, device: torch.device, resume: bool, progress: bool
) -> dict:
    """The main job for a diffusers teacher (module docstring); returns the report."""
    import copy

    from ..integrations.diffusers import PREDICTION_TYPES, from_diffusers, to_diffusers
    from .checkpoint import load_model_checkpoint, save_model_checkpoint, schedule_to_dict
    from .data import load_data
    from .evaluation import evaluate_models, make_evaluator
    from .reparam import reparameterize
    from .report import format_table, plot_quality, plot_samples, write_json
    from .training import progressive_distill

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    path, param = settings["teacher"], settings["param"]
    if param not in PREDICTION_TYPES.values():
        raise ValueError(
            f"--param {param}: a diffusers UNet predicts one of {sorted(PREDICTION_TYPES.values())} "
            "(its output has the input's channels)"
        )
    teacher, schedule, teacher_param = from_diffusers(path)
    if teacher.conditional:
        raise ValueError(
            f"--teacher: {path} holds a class-conditional UNet; the distillation loop is unconditional"
        )
    cfg = teacher.unet.config
    size = (cfg.sample_size,) * 2 if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    resolution = settings.get("resolution")
    if resolution is not None and (resolution, resolution) != size:
        raise ValueError(
            f"--resolution {resolution} differs from the teacher's sample_size {cfg.sample_size} "
            "(its pipelines sample at sample_size)"
        )
    if size[0] == size[1]:
        resolution = size[0]
    data = load_data(settings["data"], seed=settings["seed"], resolution=resolution, channels=cfg.in_channels)
    if data.shape != (cfg.in_channels, *size):
        raise ValueError(
            f"--data: examples of shape {data.shape}, the teacher's UNet takes {(cfg.in_channels, *size)}"
        )
    if len(data) < 4:
        raise ValueError(f"--data needs at least 4 examples (evaluation splits it in two), got {len(data)}")
    T = teacher.num_train_timesteps
    start, end = settings["start_steps"], settings["end_steps"]
    teacher = teacher.to(device).eval()
    x = data.x.to(device)
    print(
        f"data: {data.name}, {len(data)} examples of shape {data.shape}; teacher: diffusers UNet2DModel "
        f"{path} ({sum(p.numel() for p in teacher.parameters()):,} parameters), param={teacher_param}, "
        f"T={T}; students param={param}; device {device}; out {out}"
    )
    model_info = {"kind": "diffusers", "path": os.path.abspath(path), "num_train_timesteps": T}
    write_json(
        os.path.join(out, "model.json"),
        {"model": model_info, "param": param, "teacher_param": teacher_param, "data": data.name},
    )

    t0 = time.perf_counter()
    current, first_students, reparam_info = teacher, {}, None
    if param != teacher_param:
        reparam_iters = settings.get("reparam_iters") or 2 * settings["iters"]
        stem = Path(out) / "checkpoints" / f"reparam_{start}"
        if resume and stem.with_suffix(".safetensors").is_file():
            current = copy.deepcopy(teacher)
            reparam_info = load_model_checkpoint(stem, current)
            current.eval()
        else:
            current, losses = reparameterize(
                teacher,
                x,
                start,
                schedule=schedule,
                teacher_param=teacher_param,
                param=param,
                iters=reparam_iters,
                batch_size=settings["batch_size"],
                lr=settings["lr"],
                seed=settings["seed"],
                progress=progress,
            )
            reparam_info = {
                "steps": start,
                "schedule": schedule_to_dict(schedule),
                "param": param,
                "teacher_param": teacher_param,
                "iters": reparam_iters,
                "loss_first_10": sum(losses[:10]) / len(losses[:10]),
                "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
            }
            save_model_checkpoint(stem, current, reparam_info)
        first_students[start] = current
        print(
            f"{teacher_param} -> {param}: a {param} student learned the teacher's {start}-step DDIM "
            f"(loss {reparam_info['loss_first_10']:.4g} -> {reparam_info['loss_last_10']:.4g})"
        )
    timings["reparam_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    students = progressive_distill(
        current,
        x,
        start,
        end,
        schedule=schedule,
        param=param,
        iters=settings["iters"],
        last_rounds_factor=settings["last_rounds_factor"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=settings["seed"],
        out_dir=out,
        ckpt_every=settings["ckpt_every"],
        resume=resume,
        progress=progress,
    )
    students = {**first_students, **students}
    timings["distill_train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluator = make_evaluator(data.x, data.labels, seed=settings["seed"], cache_dir=out)
    n_max = max(settings["eval_max_steps"], start)
    teacher_steps = sorted({2**k for k in range(n_max.bit_length()) if 2**k <= n_max} | set(students))
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    z = torch.randn((evaluator.n_samples,) + data.shape, generator=gen).to(device)
    # clip=False: what the exported DDIMPipelines (clip_sample=False) and the teacher's DDIM give
    t_rows, t_samples = evaluate_models(
        teacher, {}, evaluator, schedule, teacher_param, teacher_steps, z, clip=False
    )
    s_rows, s_samples = evaluate_models(teacher, students, evaluator, schedule, param, [], z, clip=False)
    rows = _merge_rows(t_rows, s_rows)
    timings["eval_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exports, skipped = {}, []
    for n in sorted(students):
        if T % n:
            skipped.append(n)
            continue
        folder = os.path.join(out, "diffusers", f"student_{n}")
        to_diffusers(students[n], schedule, param, folder, n)
        exports[str(n)] = folder
    timings["export_seconds"] = time.perf_counter() - t0
    timings["total_seconds"] = time.perf_counter() - t_start

    report: dict[str, Any] = {
        "metric": f"frechet_{evaluator.metric}",
        "floor": evaluator.floor[evaluator.metric],
        "rows": rows,
        "space": evaluator.metric,
        "floors": evaluator.floor,
        "spaces": list(evaluator.floor),
        "data": data.name,
        "eval_samples": evaluator.n_samples,
        "clip": False,
        "settings": settings,
        "teacher_param": teacher_param,
        "param": param,
        "num_train_timesteps": T,
        "reparam": reparam_info,
        "diffusers_exports": exports,
        "not_exported_steps": skipped,
        "device": str(device),
        "threads": torch.get_num_threads(),
        **evaluator.info,
        **timings,
    }
    report["targets"] = _targets(rows)
    write_json(os.path.join(out, "report.json"), report)
    plot_quality(report, os.path.join(out, "quality_vs_steps.png"))
    samples = {"teacher": t_samples["teacher"], "student": s_samples["student"]}
    grid_steps = [n for n in sorted(samples["teacher"]) if n in students or n == max(samples["teacher"])]
    shown = {"teacher": {n: samples["teacher"][n] for n in grid_steps}, "student": samples["student"]}
    plot_samples(shown, os.path.join(out, "samples.png"), data=data.x)
    print(format_table(report))
    for line in report["targets"]:
        print(line["text"])
    print(
        f"time: {teacher_param} -> {param} {timings['reparam_seconds']:.1f}s, "
        f"distillation {timings['distill_train_seconds']:.1f}s, evaluation {timings['eval_seconds']:.1f}s, "
        f"export {timings['export_seconds']:.1f}s, total {timings['total_seconds']:.1f}s"
    )
    if skipped:
        print(f"not exported (N does not divide T = {T}): {', '.join(map(str, skipped))} steps")
    print(f"wrote {out}/report.json, quality_vs_steps.png, samples.png, checkpoints/, diffusers/")
    for n, folder in exports.items():
        print(f"  DDIMPipeline.from_pretrained({folder!r})(num_inference_steps={n})")
    return report


def _targets(rows: list[dict]) -> list[dict]:
    """The issue's quality targets, where the rows allow them: student(8) <= 1.1 x teacher(256),
    student(4) <= 1.3 x teacher(256), student(1) < teacher(4)."""
    by = {r["steps"]: r for r in rows}
    out = []
    ref = by.get(256, {}).get("teacher_ddim")
    for n, factor in ((8, 1.1), (4, 1.3)):
        s = by.get(n, {}).get("student")
        if s is not None and ref is not None:
            ratio = s / ref
            out.append(
                dict(
                    name=f"student_{n}_vs_teacher_256",
                    ratio=ratio,
                    limit=factor,
                    met=ratio <= factor,
                    text=f"target: {n}-step student / teacher 256-step DDIM = {ratio:.3f} "
                    f"(<= {factor}: {'met' if ratio <= factor else 'MISSED'})",
                )
            )
    s1, t4 = by.get(1, {}).get("student"), by.get(4, {}).get("teacher_ddim")
    if s1 is not None and t4 is not None:
        out.append(
            dict(
                name="student_1_vs_teacher_4",
                ratio=s1 / t4,
                limit=1.0,
                met=s1 < t4,
                text=f"target: 1-step student {s1:.4g} < teacher 4-step DDIM {t4:.4g}: "
                f"{'met' if s1 < t4 else 'MISSED'}",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.out
    try:
        settings, out = resolve_settings(args)
        _check_settings(settings)
        device = _device(args.device)
        threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            run(
                settings,
                out,
                device,
                resume=args.resume,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
        finally:
            torch.set_num_threads(previous)
    except ValueError as err:
        print(f"pd-distill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m pd_fast --resume --out {out}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
