"""`python -m pd_fast` (console script `pd-distill`): the main job.

Teacher training -> progressive distillation ([PD] Algorithm 2) -> evaluation, on scikit-learn's
8x8 digits by default. Writes into `--out DIR` (default `runs/<timestamp>`):

- `report.json`: `{"metric", "floor", "rows": [{"steps", "teacher_ddim", "student",
  "sample_seconds", ...}], ...}` (Fréchet distances; see `pd_fast.app.evaluation`), and beside
  them `intervals` (95% intervals mirroring `rows`), `comparisons` (ratios to the teacher with
  their intervals and `significant`), `precision_recall` and `memorisation`
  (`pd_fast.app.evaluation.sample_statistics`),
- `samples.npz`: the scored samples, `x_teacher_ddim_N<N>` and `x_student_ddim_N<N>` (float32
  in [-1, 1], all from the same noise),
- `quality_vs_steps.png` (with error bars), `samples.png`,
- `checkpoints/` (teacher, one student per round, training state) and `log.jsonl`, written by
  `pd_fast.training`; `config.json` (this run's settings) and `model.json` (the network's config).

A killed run continues with the same command plus `--resume` (or `--resume --out DIR`; `--resume`
alone picks the newest run under `runs/`): the run's saved settings are reused and training
continues from its last checkpoint.
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
# Settings that define a run (saved in config.json, reused by --resume).
RUN_KEYS = tuple(DEFAULTS) + ("teacher", "quick")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pd-distill",
        description="Progressive distillation (Salimans & Ho, 2022) end to end: train a teacher, distill it "
        "down to a few sampling steps, and evaluate every step count against the data.",
    )
    p.add_argument(
        "--data",
        help="'digits' (default), 'moons', 'eight_gaussians', or a .npy/.npz path "
        "holding (N, D), (N, H, W) or (N, C, H, W) in [-1, 1]",
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
        "--teacher", metavar="CKPT", help="teacher checkpoint (.safetensors); skips teacher training"
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
    settings["quick"] = bool(args.quick)
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
    from .checkpoint import save_json, schedule_from_dict
    from .data import load_data
    from .evaluation import evaluate_models, make_evaluator, sample_statistics
    from .models import build_model
    from .report import (
        format_comparisons,
        format_quality_checks,
        format_table,
        plot_quality,
        plot_samples,
        write_samples,
    )
    from .training import progressive_distill, train_teacher

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    os.makedirs(out, exist_ok=True)
    save_json(os.path.join(out, "config.json"), settings)
    data = load_data(settings["data"], seed=settings["seed"])
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
    save_json(os.path.join(out, "model.json"), {"model": teacher.config, "param": param, "data": data.name})
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
    t0 = time.perf_counter()
    statistics = sample_statistics(evaluator, samples, seed=settings["seed"], rows=rows)
    timings["statistics_seconds"] = time.perf_counter() - t0
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
    report["targets"] = _targets(rows, statistics["comparisons"], evaluator.metric)
    report.update(statistics)
    save_json(os.path.join(out, "report.json"), report)
    write_samples(os.path.join(out, "samples.npz"), samples)
    plot_quality(report, os.path.join(out, "quality_vs_steps.png"))
    grid_steps = [n for n in sorted(samples["teacher"]) if n in students or n == max(samples["teacher"])]
    shown = {"teacher": {n: samples["teacher"][n] for n in grid_steps}, "student": samples["student"]}
    plot_samples(shown, os.path.join(out, "samples.png"), data=data.x)
    print(format_table(report))
    print(format_comparisons(report))
    print(format_quality_checks(report))
    for line in report["targets"]:
        print(line["text"] + (f"; {line['interval_text']}" if "interval_text" in line else ""))
    print(
        f"time: teacher {timings['teacher_train_seconds']:.1f}s, "
        f"distillation {timings['distill_train_seconds']:.1f}s, "
        f"evaluation {timings['eval_seconds']:.1f}s (+ intervals and checks "
        f"{timings['statistics_seconds']:.1f}s), total {timings['total_seconds']:.1f}s"
    )
    print(f"wrote {out}/report.json, samples.npz, quality_vs_steps.png, samples.png, checkpoints/")
    return report


def _add_interval(target: dict, comparison: dict | None) -> None:
    """Add a comparison's interval to a target: `interval`, and `met_by_interval` (the whole
    interval within the limit: below it for a strict target)."""
    if comparison is None:
        return
    lo, hi = comparison["interval"]
    strict = target["name"] == "student_1_vs_teacher_4"
    met = hi is not None and (hi < target["limit"] if strict else hi <= target["limit"])
    target.update(interval=[lo, hi], met_by_interval=met)
    target["interval_text"] = (
        f"ratio {target['ratio']:.3f}, 95% interval [{lo:.3f}, {'inf' if hi is None else f'{hi:.3f}'}]: "
        f"{'all' if met else 'not all'} {'<' if strict else '<='} {target['limit']}"
    )


def _targets(rows: list[dict], comparisons: dict | None = None, space: str | None = None) -> list[dict]:
    """The issue's quality targets, where the rows allow them: student(8) <= 1.1 x teacher(256),
    student(4) <= 1.3 x teacher(256), student(1) < teacher(4); each with the interval of its
    ratio in the main metric's `space` where `comparisons` (of `sample_statistics`) holds it."""
    by = {r["steps"]: r for r in rows}
    main = {c["name"]: c for c in (comparisons or {}).get("rows", []) if c["space"] == space}
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
            _add_interval(out[-1], main.get(f"student_{n}_vs_teacher_ddim_256"))
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
        _add_interval(out[-1], main.get("student_1_vs_teacher_ddim_4"))
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
