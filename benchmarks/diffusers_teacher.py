"""Distilling a diffusers teacher that this project did not train. Usage:
`python benchmarks/diffusers_teacher.py [--quick] [--threads 1] [--out DIR]` (needs `.[diffusers]`).

1. **Teacher**, trained with diffusers' own recipe (its example
   `examples/unconditional_image_generation/train_unconditional.py`, scaled down for a CPU): a small
   `UNet2DModel` (no attention) on scikit-learn's 8x8 digits in [-1, 1]; `DDPMScheduler(1000,
   "linear")`; per batch `timesteps ~ U{0 .. T-1}`, `noisy = scheduler.add_noise(x, noise, timesteps)`,
   loss `MSE(unet(noisy, timesteps).sample, noise)` (eps prediction); AdamW (betas 0.95/0.999, weight
   decay 1e-6), cosine LR with warm-up, gradient clipping at 1, `EMAModel` (warm-up power 3/4).
   Saved with `DDPMPipeline.save_pretrained`, as a diffusers user would.
2. **Distillation** by the command a user runs, `python -m pd_fast --teacher DIR --data digits`
   (`pd_fast.app.cli.main`): the eps teacher gets a v student that learns its own start-steps DDIM,
   then the rounds halve the steps to `--end-steps`. With `--compare-eps` (default) the same run is
   repeated with `--param eps` (eps students, no change of param), the choice the paper warns against.
3. **Quality**: the Fréchet distance to the data in the feature space of the digits classifier
   (and in pixel space), as the main job reports it, of 898 samples from one fixed noise, without
   clipping (what the exported `DDIMPipeline`s and the teacher's DDIM give). The teacher's DDIM at
   256 steps calls it at fractional timesteps (t*T - 1, T = 1000); DDIM at 250 steps (on diffusers'
   integer grid) is reported beside it.
4. **Export check**: every exported `DDIMPipeline` is loaded with `from_pretrained` and called as
   a user would; its images must equal `pd_fast.sample` of the student mapped to `(x/2+0.5).clip(0, 1)`
   (largest difference recorded).

Writes `diffusers_teacher.json` into `--results` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch
from torch.nn import functional as F

from pd_fast.app.checkpoint import save_json

STEPS_SHOWN = (8, 4, 2, 1)


def build_unet(channels: tuple[int, ...], layers: int, seed: int) -> Any:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
        add_attention=False,
    )


def train_teacher(x: torch.Tensor, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """diffusers' unconditional training recipe (module docstring) on `x` (N, 1, 8, 8) in [-1, 1]."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    channels = tuple(int(c) for c in args.unet_channels.split(","))
    unet = build_unet(channels, args.unet_layers, args.seed)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(unet.parameters(), lr=args.teacher_lr, betas=(0.95, 0.999), weight_decay=1e-6)
    warmup = min(500, args.teacher_iters // 10)
    lr_schedule = get_cosine_schedule_with_warmup(opt, warmup, args.teacher_iters)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    gen = torch.Generator().manual_seed(args.seed)
    T = scheduler.config.num_train_timesteps
    losses = []
    t0 = time.perf_counter()
    unet.train()
    for _ in range(args.teacher_iters):
        clean = x[torch.randint(0, x.shape[0], (args.teacher_batch,), generator=gen)]
        noise = torch.randn(clean.shape, generator=gen)
        timesteps = torch.randint(0, T, (args.teacher_batch,), generator=gen)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    ema.copy_to(unet.parameters())
    info = {
        "unet": {"block_out_channels": list(channels), "layers_per_block": args.unet_layers},
        "parameters": sum(p.numel() for p in unet.parameters()),
        "scheduler": dict(scheduler.config),
        "iters": args.teacher_iters,
        "batch_size": args.teacher_batch,
        "lr": args.teacher_lr,
        "warmup": warmup,
        "loss_last_100": float(np.mean(losses[-100:])),
        "train_seconds": round(seconds, 1),
    }
    return unet.eval(), scheduler, info


def distill(teacher_dir: Path, out: Path, param: str, args: argparse.Namespace) -> dict[str, Any]:
    """`python -m pd_fast --teacher DIR --data digits ...` through `pd_fast.app.cli.main`."""
    import json

    from pd_fast.app.cli import main

    argv = ["--teacher", str(teacher_dir), "--data", "digits", "--out", str(out), "--param", param]
    argv += ["--iters", str(args.iters), "--end-steps", str(args.end_steps), "--no-progress"]
    argv += ["--eval-max-steps", str(args.eval_max_steps), "--seed", str(args.seed)]
    argv += ["--threads", str(torch.get_num_threads())]
    if args.start_steps is not None:
        argv += ["--start-steps", str(args.start_steps)]
    if args.quick:
        argv += ["--quick"]
    if main(argv) != 0:
        raise RuntimeError(f"python -m pd_fast {' '.join(argv)} failed")
    return json.loads((out / "report.json").read_text())


def export_check(run: Path, batch: int = 16, seed: int = 7) -> dict[str, float]:
    """Largest |DDIMPipeline image - (pd_fast.sample / 2 + 0.5).clip(0, 1)| per exported student."""
    from diffusers import DDIMPipeline

    import pd_fast
    from pd_fast.integrations.diffusers import from_diffusers

    out = {}
    for folder in sorted((run / "diffusers").glob("student_*")):
        n = int(folder.name.split("_")[1])
        pipe = DDIMPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            batch_size=batch,
            num_inference_steps=n,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
        model, schedule, param = from_diffusers(folder)
        z = torch.randn((batch, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
        x = pd_fast.sample(model, z, n, schedule, param, clip=False)
        ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        out[str(n)] = float(np.abs(images - ours).max())
    return out


def teacher_at(run: Path, teacher_dir: Path, steps: int, seed: int) -> float:
    """The teacher's DDIM Fréchet distance (classifier features) at `steps`, with the run's evaluator
    and evaluation noise (as `pd_fast.app.cli` draws it)."""
    import pd_fast
    from pd_fast.app.data import load_data
    from pd_fast.app.evaluation import make_evaluator
    from pd_fast.integrations.diffusers import from_diffusers

    data = load_data("digits", seed=seed)
    evaluator = make_evaluator(data.x, data.labels, seed=seed, cache_dir=str(run))
    z = torch.randn((evaluator.n_samples,) + data.shape, generator=torch.Generator().manual_seed(seed + 1))
    model, schedule, param = from_diffusers(teacher_dir)
    x = pd_fast.sample(model, z, steps, schedule, param, clip=False)
    return evaluator.distances(x)[evaluator.metric]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (tests)")
    p.add_argument("--teacher-iters", type=int, default=3000)
    p.add_argument("--teacher-batch", type=int, default=128)
    p.add_argument("--teacher-lr", type=float, default=2e-3)
    p.add_argument("--unet-channels", default="16,32", help="block_out_channels, comma separated")
    p.add_argument("--unet-layers", type=int, default=1, help="layers_per_block")
    p.add_argument("--iters", type=int, default=400, help="distillation iterations per round")
    p.add_argument("--start-steps", type=int, default=None, help="default: the CLI's (128 for T = 1000)")
    p.add_argument("--end-steps", type=int, default=1)
    p.add_argument("--eval-max-steps", type=int, default=256)
    p.add_argument("--compare-eps", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="work folder (default runs/diffusers_teacher-<time>)")
    p.add_argument("--results", default=str(_common.RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.teacher_iters, args.unet_channels, args.iters = 20, "8,16", 4
        args.end_steps, args.eval_max_steps, args.compare_eps = 2, 8, False
        args.start_steps = 8
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import diffusers
    from diffusers import DDPMPipeline

    from pd_fast.app.data import digits

    args = parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    threads = _common.set_threads(args.threads)
    work = Path(args.out or os.path.join("runs", time.strftime("diffusers_teacher-%Y%m%d-%H%M%S")))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = _common.loadavg()
    x = digits().x
    unet, scheduler, teacher_info = train_teacher(x, args)
    teacher_dir = work / "teacher"
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(teacher_dir))

    runs = {"v": distill(teacher_dir, work / "v", "v", args)}
    if args.compare_eps:
        runs["eps"] = distill(teacher_dir, work / "eps", "eps", args)
    main_report = runs["v"]
    by_steps = {param: {r["steps"]: r for r in rep["rows"]} for param, rep in runs.items()}
    ref_steps = max(r["steps"] for r in main_report["rows"])
    ref = by_steps["v"][ref_steps]["teacher_ddim"]
    integer_grid = 250 if ref_steps == 256 else None
    teacher_250 = teacher_at(work / "v", teacher_dir, 250, args.seed) if integer_grid else None
    table = []
    for n in STEPS_SHOWN:
        row = by_steps["v"].get(n)
        if row is None or row["student"] is None:
            continue
        entry = {"steps": n, "teacher_ddim": row["teacher_ddim"], "v_student": row["student"]}
        if "eps" in by_steps and n in by_steps["eps"]:
            entry["eps_student"] = by_steps["eps"][n]["student"]
        entry["v_student_vs_teacher_ref"] = None if row["student"] is None else row["student"] / ref
        table.append(entry)
    payload = {
        "benchmark": "diffusers_teacher",
        "date": _common.now_utc(),
        "machine": _common.machine(torch.device("cpu")),
        "threads": threads,
        "loadavg_start": load_start,
        "loadavg_end": _common.loadavg(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "teacher": teacher_info,
        "metric": main_report["metric"],
        "floor": main_report["floor"],
        "reference": {"teacher_ddim_steps": ref_steps, "frechet": ref, "teacher_ddim_250": teacher_250},
        "table": table,
        "runs": {
            param: {
                "start_steps": rep["settings"]["start_steps"],
                "iters": rep["settings"]["iters"],
                "reparam": rep["reparam"],
                "rows": rep["rows"],
                "exports": sorted(int(n) for n in rep["diffusers_exports"]),
                "seconds": {k: v for k, v in rep.items() if k.endswith("_seconds")},
            }
            for param, rep in runs.items()
        },
        "export_max_abs_diff": export_check(work / "v"),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    results = Path(args.results)
    save_json(results / "diffusers_teacher.json", payload)
    cols = [
        ("steps", "steps", "d"),
        ("teacher_ddim", "teacher DDIM", ".4g"),
        ("v_student", "v student", ".4g"),
        ("eps_student", "eps student", ".4g"),
        ("v_student_vs_teacher_ref", f"v / DDIM-{ref_steps}", ".3f"),
    ]
    print(f"teacher: {teacher_info}")
    print(
        f"reference: teacher DDIM-{ref_steps} {ref:.4g}"
        + (f", DDIM-250 {teacher_250:.4g}" if teacher_250 else "")
    )
    print(_common.table(table, cols))
    print(f"export check (max |DDIMPipeline - pd_fast.sample|): {payload['export_max_abs_diff']}")
    print(f"wrote {results / 'diffusers_teacher.json'} ({payload['wall_s']:.0f} s)")
    if not all(math.isfinite(v) and v <= 1e-4 for v in payload["export_max_abs_diff"].values()):
        raise RuntimeError("an exported DDIMPipeline does not reproduce pd_fast.sample to 1e-4")
    return payload


if __name__ == "__main__":
    main()
