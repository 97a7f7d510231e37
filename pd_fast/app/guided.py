"""`python -m pd_fast --guided`: guided distillation ([GD], docs/spec.md section 8) end to end.

A conditional teacher (labels dropped with probability `p_uncond`, `train_teacher`), [GD] stage 1
(`distill_guidance`: a w-conditioned student of the guided teacher, w ~ U[w_min, w_max]), then
stage 2 (`progressive_distill` with labels: N = start_steps / 2 ... end_steps, one network call
per step for every w). Then, for every w of `--eval-w` and N in {1, 2, 4, 8}, the samples of

- the guided teacher with DDIM at 256 steps (2 calls a step: with the label and with the null one),
- the guided teacher with DDIM at N steps,
- the N-step student with DDIM (`sampler="ddim"`) and with [GD]'s stochastic sampler,

all from the same noise and the same balanced labels (`i % classes`), are scored by their
Fréchet distance to the data in the evaluation classifier's features (`pd_fast.app.evaluation`)
and by their class accuracy (the fraction the classifier assigns to the requested label).

Writes into the run folder: `report.json` (`rows`: one per model, sampler, N and w, with `frechet`,
`frechet_pixel`, `accuracy`, `precision`, `recall`, `memorisation` (the memorisation check of
`pd_fast.app.evaluation.memorisation_check`; its reference is the report's `memorisation`),
`sample_seconds`, and `interval`, the 95% paired bootstrap interval
of `frechet`; `targets`, the Fréchet ratios with their paired intervals), `samples.npz` (the scored samples,
`x_<model>_<sampler>_N<N>_w<w>` float32 in [-1, 1], their labels `y_<same suffix>`; w written as
in the flag), `grid_w<w>.png` (rows: classes; columns: the student at each N, then the teacher at
256 steps), and the checkpoints (`teacher`, `guided`, `student_<N>`) and log of the stages.
"""

from __future__ import annotations

import io
import math
import os
import re
import time
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

# The settings the guided job adds to the main job's (pd_fast.app.cli.DEFAULTS); saved in config.json.
GUIDED_DEFAULTS: dict[str, Any] = dict(
    p_uncond=0.1,
    w_min=0.0,
    w_max=4.0,
    # stage 1: 6000 iterations at 1e-3 bring the 8-step student at w = 0 from 1.27 to 1.16 of the
    # teacher's 256-step distance (2000 at 3e-4 before; README, conditional models)
    guidance_iters=6000,
    guidance_lr=1e-3,
    eval_w="0,1,2,4",
)
GUIDED_QUICK: dict[str, Any] = dict(guidance_iters=200)
# Stage 2 of a full --guided run: 1000 iterations a round, 4x for the last two rounds (the 2- and
# 1-step students). On the default stage 1, 500 a round (2x) left the 8-step student at w = 0 at
# 1.155 and the 1-step one at 1.021 of their targets' references; 1000 (4x) brings them to 1.141 and
# 0.970 (README, conditional models).
GUIDED_STAGE2: dict[str, Any] = dict(iters=1000, last_rounds_factor=4.0)
GUIDED_KEYS = tuple(GUIDED_DEFAULTS) + ("guided",)
EVAL_STEPS = (1, 2, 4, 8)
PR_K = 3  # the k of the k-NN precision and recall, as in the main job's report
TEACHER_STEPS = 256


def eval_ws(text: Any) -> list[tuple[str, float]]:
    """`--eval-w` ("0,1,2,4") as (name as written, value) pairs; ValueError unless each is a
    finite number >= 0 written with digits and at most one '.', without repeats."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--eval-w must be a comma-separated list of guidance weights, got {text!r}")
    out: list[tuple[str, float]] = []
    for token in (s.strip() for s in text.split(",")):
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", token):
            raise ValueError(f"--eval-w: each weight must be a number >= 0 such as 2 or 0.5, got {token!r}")
        value = float(token)
        if not math.isfinite(value) or any(value == v for _, v in out):
            raise ValueError(f"--eval-w: {token!r} is not finite or given twice")
        out.append((token, value))
    return out


def guided_classes(labels: Tensor, name: str) -> int:
    """The number of classes K of a guided job's labels (integers >= 0); ValueError unless they are
    0..K-1 with every class present and K >= 2 (evaluation asks the students for every class)."""
    present = torch.unique(labels.to(torch.int64))
    if present.numel() < 2:
        raise ValueError(
            f"--guided needs at least 2 classes, and the labels of --data {name} hold only {present.tolist()}"
        )
    expected = torch.arange(present.numel())
    gap = (present != expected).nonzero()
    if gap.numel():
        first = int(gap[0, 0])
        raise ValueError(
            f"--guided needs the labels of --data {name} to be the classes 0..K-1, each present; "
            f"class {first} is missing (labels run from {int(present[0])} to {int(present[-1])})"
        )
    return int(present.numel())


def check_guided_settings(s: dict[str, Any]) -> None:
    """ValueError with a one-line message naming the flag for a bad guided setting."""
    for key in ("p_uncond", "w_min", "w_max", "guidance_lr"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {v!r}")
    if not 0.0 <= s["p_uncond"] < 1.0:
        raise ValueError(f"--p-uncond must lie in [0, 1), got {s['p_uncond']!r}")
    if s["w_min"] < 0 or s["w_max"] < s["w_min"]:
        raise ValueError(
            f"--w-min and --w-max must satisfy 0 <= w-min <= w-max, got {s['w_min']}, {s['w_max']}"
        )
    for key in ("w_min", "w_max"):
        if abs(s[key]) > torch.finfo(torch.float32).max:
            raise ValueError(
                f"--{key.replace('_', '-')} must be finite in float32 (at most 3.4e38), got {s[key]!r}"
            )
    if s["guidance_lr"] <= 0:
        raise ValueError(f"--guidance-lr must be positive, got {s['guidance_lr']!r}")
    g = s["guidance_iters"]
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f"--guidance-iters must be a positive integer, got {g!r}")
    eval_ws(s["eval_w"])


def _with_cond(model: nn.Module, c: Tensor, w: Tensor, z: Tensor, t: Tensor) -> Tensor:
    return model(z, t, c, w)


def run_guided(
    settings: dict[str, Any],
    out: str,
    device: torch.device,
    resume: bool,
    progress: bool,
    *,
    data: Any = None,
    teacher: tuple[nn.Module, dict[str, Any]] | None = None,
) -> dict:
    """The guided job (module docstring); returns the report (also written to `out/report.json`)."""
    from ..schedules import CosineSchedule
    from .checkpoint import save_json
    from .data import load_data
    from .evaluation import make_evaluator, memorisation_check, train_classifier
    from .models import build_model
    from .training import distill_guidance, part_ranks, progressive_distill, rank_fingerprints, train_teacher

    t_start, timings = time.perf_counter(), {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if data is None:
        data = load_data(settings["data"], seed=settings["seed"])
    if data.labels is None:
        raise ValueError(f"--guided needs a labelled data set, and {data.name} has no labels")
    classes = guided_classes(data.labels, data.name)
    kwargs = (
        dict(hidden=settings["hidden"], depth=settings["depth"])
        if settings["model"] == "mlp"
        else dict(ch=settings["ch"])
    )
    model = build_model(
        settings["model"], data.shape, param=settings["param"], seed=settings["seed"],
        num_classes=classes, **kwargs,
    )  # fmt: skip
    param, schedule = settings["param"], CosineSchedule()
    x, labels = data.x.to(device), data.labels
    common = dict(
        schedule=schedule, param=param, seed=settings["seed"], out_dir=out,
        ckpt_every=settings["ckpt_every"], resume=resume, progress=progress,
    )  # fmt: skip
    if rank == 0:
        print(
            f"data: {data.name}, {len(data)} examples of shape {data.shape}, {classes} classes; model: "
            f"{settings['model']} ({sum(p.numel() for p in model.parameters()):,} parameters), "
            f"param={param}; device {device}; out {out}"
        )
    t0 = time.perf_counter()
    if teacher is not None:
        teacher_model = teacher[0].to(device).eval()
    else:
        teacher_model = train_teacher(
            model.to(device), x, labels=labels, p_uncond=settings["p_uncond"],
            iters=settings["teacher_iters"], batch_size=settings["teacher_batch_size"],
            lr=settings["teacher_lr"], **common,
        )  # fmt: skip
    if rank == 0:
        save_json(
            os.path.join(out, "model.json"),
            {"model": teacher_model.config, "param": param, "data": data.name},
        )
    timings["teacher_train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    guided = distill_guidance(
        teacher_model, x, labels, w_min=settings["w_min"], w_max=settings["w_max"],
        iters=settings["guidance_iters"], batch_size=settings["batch_size"], lr=settings["guidance_lr"],
        **common,
    )  # fmt: skip
    timings["guidance_train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    students = progressive_distill(
        guided, x, settings["start_steps"], settings["end_steps"], labels=labels,
        w_min=settings["w_min"], w_max=settings["w_max"], iters=settings["iters"],
        last_rounds_factor=settings["last_rounds_factor"], batch_size=settings["batch_size"],
        lr=settings["lr"], **common,
    )  # fmt: skip
    timings["distill_train_seconds"] = time.perf_counter() - t0
    models = {"teacher": teacher_model, "guided": guided, **{f"student_{n}": m for n, m in students.items()}}
    fingerprints = rank_fingerprints(models) if world > 1 else None
    part_ranks()  # training is over: the ranks part together, and rank 0 alone evaluates
    if rank != 0:
        return {}

    t0 = time.perf_counter()
    evaluator = make_evaluator(data.x, data.labels, seed=settings["seed"], cache_dir=out)
    classifier, _ = train_classifier(data.x, data.labels, seed=settings["seed"], cache_dir=out)
    n = evaluator.n_samples
    y = torch.arange(n) % classes
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    z = torch.randn((n,) + data.shape, generator=gen).to(device)
    memo = memorisation_check(evaluator)
    rows, samples = evaluate_guided(
        teacher_model, students, evaluator, classifier, schedule, param, z, y, eval_ws(settings["eval_w"]),
        seed=settings["seed"] + 2, memorisation=memo,
    )  # fmt: skip
    replicates = add_intervals(rows, samples, evaluator, seed=settings["seed"])
    timings["eval_seconds"] = time.perf_counter() - t0
    timings["total_seconds"] = time.perf_counter() - t_start
    report: dict[str, Any] = {
        "metric": f"frechet_{evaluator.metric}",
        "floor": evaluator.floor[evaluator.metric],
        "floors": evaluator.floor,
        "rows": rows,
        "ws": [name for name, _ in eval_ws(settings["eval_w"])],
        "data": data.name,
        "classes": classes,
        "eval_samples": n,
        "world_size": world,
        "precision_recall_data": _data_precision_recall(evaluator),
        "memorisation": None if memo is None else memo[1],
        "settings": settings,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        **evaluator.info,
        **timings,
    }
    if fingerprints is not None:
        report["rank_fingerprints"] = fingerprints
    report["targets"] = guided_targets(rows, replicates)
    save_json(os.path.join(out, "report.json"), report)
    write_guided_samples(os.path.join(out, "samples.npz"), samples)
    for name, _ in eval_ws(settings["eval_w"]):
        plot_grid(samples, name, classes, os.path.join(out, f"grid_w{name}.png"))
    print(format_guided_table(report))
    memo_table = format_guided_memorisation(report)
    if memo_table is not None:
        print(memo_table)
    for line in report["targets"]:
        print(line["text"])
    print(
        f"time: teacher {timings['teacher_train_seconds']:.1f}s, "
        f"stage 1 {timings['guidance_train_seconds']:.1f}s, "
        f"stage 2 {timings['distill_train_seconds']:.1f}s, evaluation {timings['eval_seconds']:.1f}s, "
        f"total {timings['total_seconds']:.1f}s"
    )
    print(f"wrote {out}/report.json, samples.npz, grid_w*.png, checkpoints/")
    return report


def evaluate_guided(
    teacher: nn.Module,
    students: dict[int, nn.Module],
    evaluator: Any,
    classifier: nn.Module,
    schedule: Any,
    param: str,
    z: Tensor,
    y: Tensor,
    ws: list[tuple[str, float]],
    seed: int = 0,
    clip: bool = True,
    memorisation: tuple | None = None,
) -> tuple[list[dict], dict[str, tuple[Tensor, Tensor]]]:
    """Score the guided teacher (DDIM at 256 and at each N of `EVAL_STEPS`) and each student of those
    N (DDIM and the stochastic sampler) at every w, all from the noise `z` (n, ...) and labels `y`
    (n,): Fréchet distances, class accuracy, k-NN precision / recall and the memorisation check
    (`memorisation`: what `evaluation.memorisation_check(evaluator)` returns, computed here if None).
    Returns the rows and the samples `{"<model>_<sampler>_N<N>_w<w>": (x, y)}` (CPU)."""
    from ..sampling import sample
    from .evaluation import memorisation_check, reference_precision_recall, timed_sample

    metric = evaluator.metric
    rows: list[dict] = []
    samples: dict[str, tuple[Tensor, Tensor]] = {}
    y_dev = y.to(z.device)
    pr = reference_precision_recall(evaluator, PR_K)  # k-NN precision and recall (Kynkaanniemi et al.)
    memo = memorisation_check(evaluator) if memorisation is None else memorisation

    def score(name: str, sampler: str, steps: int, w_name: str, model: Any, **kw: Any) -> None:
        s, sec = timed_sample(
            lambda: sample(model, z, steps, schedule, param, clip=clip, sampler=sampler, **kw)
        )
        d = evaluator.distances(s)
        with torch.no_grad():
            pred = classifier(s.detach().cpu().float()).argmax(1)
        got = pr(evaluator.features(s)[metric]) or dict(precision=None, recall=None)
        rows.append(
            dict(
                model=name, sampler=sampler, steps=steps, w=w_name, frechet=d[metric],
                **{f"frechet_{k}": v for k, v in d.items()}, accuracy=int((pred == y).sum()) / len(y),
                **got, memorisation=None if memo is None else memo[0](s.detach().cpu().float()),
                sample_seconds=sec,
            )
        )  # fmt: skip
        samples[f"{name}_{sampler}_N{steps}_w{w_name}"] = (s.detach().cpu().float(), y)

    for w_name, w in ws:
        w_dev = torch.full((z.shape[0],), w, dtype=torch.float32, device=z.device)
        for steps in (TEACHER_STEPS,) + EVAL_STEPS:
            score("teacher", "ddim", steps, w_name, teacher, labels=y_dev, w=w)
        for steps in EVAL_STEPS:
            if steps in students:
                model = partial(_with_cond, students[steps], y_dev, w_dev)
                score("student", "ddim", steps, w_name, model)
                score("student", "stochastic", steps, w_name, model, seed=seed)
    return rows, samples


def _key(row: dict) -> str:
    return f"{row['model']}_{row['sampler']}_N{row['steps']}_w{row['w']}"


def add_intervals(
    rows: list[dict],
    samples: dict[str, tuple[Tensor, Tensor]],
    evaluator: Any,
    seed: int = 0,
    resamples: int = 200,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """Add to each row the `level` bootstrap interval of its Fréchet distance (`interval`), from
    paired resamples of the rows of every sample set (they share the noise and the labels row by
    row; `pd_fast.app.evaluation.bootstrap_frechet`); returns the replicates by sample key."""
    from .evaluation import bootstrap_frechet, bootstrap_interval

    space = evaluator.metric
    features = {key: evaluator.features(x)[space] for key, (x, _) in samples.items()}
    n = next(iter(features.values())).shape[0]
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    replicates = bootstrap_frechet(features, evaluator.reference[space], indices)
    for row in rows:
        row["interval"] = list(bootstrap_interval(row["frechet"], replicates[_key(row)], level))
    return replicates


def _find(rows: list[dict], model: str, sampler: str, steps: int, w: str) -> dict | None:
    return next(
        (r for r in rows if (r["model"], r["sampler"], r["steps"], r["w"]) == (model, sampler, steps, w)),
        None,
    )


def guided_targets(rows: list[dict], replicates: dict[str, np.ndarray] | None = None) -> list[dict]:
    """[GD]'s targets, per w and student sampler: the 4-step student within 2 accuracy points and
    1.3x the Fréchet distance of the teacher's 256-step DDIM, the 8-step student within 1.15x, and
    the 1-step student below the teacher's 4-step DDIM; with `replicates` (of `add_intervals`),
    each Fréchet ratio's text also gives its 95% paired interval (`ratio_interval`)."""
    from .evaluation import ratio_interval

    def interval(a: dict, b: dict) -> str:
        if replicates is None:
            return ""
        _, lo, hi = ratio_interval(a["frechet"], replicates[_key(a)], b["frechet"], replicates[_key(b)])
        return f" [95% {lo:.3f}, {hi:.3f}]"

    out = []
    for w in sorted({r["w"] for r in rows}, key=float):
        ref = _find(rows, "teacher", "ddim", TEACHER_STEPS, w)
        t4 = _find(rows, "teacher", "ddim", 4, w)
        for sampler in ("ddim", "stochastic"):
            s4, s8, s1 = (_find(rows, "student", sampler, n, w) for n in (4, 8, 1))
            checks = []
            if s4 is not None and ref is not None:
                gap = ref["accuracy"] - s4["accuracy"]
                checks.append(
                    (
                        "student_4_accuracy",
                        gap <= 0.02,
                        f"4-step accuracy {s4['accuracy']:.3f} vs "
                        f"teacher-256 {ref['accuracy']:.3f} (gap {100 * gap:.1f} points, <= 2)",
                    )
                )
                ratio = s4["frechet"] / ref["frechet"]
                checks.append(
                    (
                        "student_4_frechet",
                        ratio <= 1.3,
                        f"4-step FD / teacher-256 = {ratio:.3f}{interval(s4, ref)} (<= 1.3)",
                    )
                )
            if s8 is not None and ref is not None:
                ratio = s8["frechet"] / ref["frechet"]
                checks.append(
                    (
                        "student_8_frechet",
                        ratio <= 1.15,
                        f"8-step FD / teacher-256 = {ratio:.3f}{interval(s8, ref)} (<= 1.15)",
                    )
                )
            if s1 is not None and t4 is not None:
                checks.append(
                    (
                        "student_1_vs_teacher_4",
                        s1["frechet"] < t4["frechet"],
                        f"1-step FD {s1['frechet']:.4g} < teacher 4-step DDIM {t4['frechet']:.4g}"
                        f" (ratio {s1['frechet'] / t4['frechet']:.3f}{interval(s1, t4)})",
                    )
                )
            for name, met, text in checks:
                verdict = "met" if met else "MISSED"
                text = f"target w={w} student {sampler}: {text}: {verdict}"
                out.append(dict(name=name, w=w, sampler=sampler, met=bool(met), text=text))
    return out


def _data_precision_recall(evaluator: Any) -> dict | None:
    """k-NN precision and recall of the held-out half against the reference half (data vs data)."""
    from .evaluation import reference_precision_recall

    space = evaluator.metric
    got = reference_precision_recall(evaluator, PR_K)(evaluator.held_out_features[space])
    return None if got is None else dict(k=PR_K, space=space, **got)


def format_guided_table(report: dict[str, Any]) -> str:
    """One line per (model, sampler, N), one column group (FD, accuracy, precision / recall) per w."""
    rows, ws = report["rows"], report["ws"]
    keys = sorted({(r["model"], r["sampler"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    head = f"{'model':<22}" + "".join(f" | w={w:<4} FD     acc    P / R    " for w in ws)
    data = report.get("precision_recall_data")
    title = f"{report['metric']} (floor {report['floor']:.4g}), class accuracy, k-NN precision / recall"
    if data:
        title += f" (k = {data['k']}; data vs data {data['precision']:.2f} / {data['recall']:.2f})"
    lines = [title, head, "-" * len(head)]
    for model, sampler, steps in keys:
        cells = []
        for w in ws:
            r = _find(rows, model, sampler, steps, w)
            pr = "-" if r is None or r.get("recall") is None else f"{r['precision']:.2f}/{r['recall']:.2f}"
            cells.append(f" | {r['frechet']:9.4g} {r['accuracy']:6.3f} {pr:>9} " if r else " | " + " " * 27)
        lines.append(f"{f'{model} {sampler} N={steps}':<22}" + "".join(cells))
    return "\n".join(lines)


def format_guided_memorisation(report: dict[str, Any]) -> str | None:
    """The memorisation check of every row, one line per (model, sampler, N), a column per w; None
    when the report has none."""
    ref, rows, ws = report.get("memorisation"), report["rows"], report["ws"]
    if ref is None:
        return None
    keys = sorted({(r["model"], r["sampler"], r["steps"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    lines = [
        f"memorisation ({ref['space']}): median nearest-training-example distance / held-out's "
        f"({ref['held_out_median']:.3g}, leave-one-out over {ref['training_examples']} examples), and the "
        "fraction of samples closer than held-out's 1st percentile (about 0.01 if nothing is copied)",
        f"{'model':<22}" + "".join(f" | w={w:<10}" for w in ws),
    ]
    lines.append("-" * len(lines[1]))
    for model, sampler, steps in keys:
        cells = []
        for w in ws:
            m = (_find(rows, model, sampler, steps, w) or {}).get("memorisation")
            ok = m is not None and m["median_ratio"] is not None
            cells.append(
                f" | {m['median_ratio']:.3f}, {m['below_held_out_p01']:.3f}" if ok else " | -" + " " * 11
            )
        lines.append(f"{f'{model} {sampler} N={steps}':<22}" + "".join(cells))
    return "\n".join(lines)


def write_guided_samples(path: str, samples: dict[str, tuple[Tensor, Tensor]]) -> None:
    """The scored samples as `x_<key>` (float32 (n, ...) in [-1, 1]) and their labels `y_<key>`
    (int64 (n,)), written atomically."""
    from .checkpoint import atomic_write_bytes

    arrays = {}
    for key, (x, y) in samples.items():
        arrays[f"x_{key}"] = x.numpy().astype(np.float32)
        arrays[f"y_{key}"] = y.numpy().astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def plot_grid(samples: dict[str, tuple[Tensor, Tensor]], w: str, classes: int, path: str) -> bool:
    """A grid for one w: rows are classes, columns the student (DDIM) at each N, then the teacher's
    256-step DDIM; each cell the first sample of that class. False (nothing written) for non-images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(f"student N={n}", f"student_ddim_N{n}_w{w}") for n in EVAL_STEPS]
    cols.append((f"teacher N={TEACHER_STEPS}", f"teacher_ddim_N{TEACHER_STEPS}_w{w}"))
    cols = [(title, key) for title, key in cols if key in samples]
    if not cols or samples[cols[0][1]][0].ndim != 4 or samples[cols[0][1]][0].shape[1] not in (1, 3):
        return False
    fig, axes = plt.subplots(
        classes, len(cols), figsize=(1.1 * len(cols) + 0.6, 1.0 * classes), squeeze=False
    )
    for j, (title, key) in enumerate(cols):
        x, y = samples[key]
        for c in range(classes):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            hit = (y == c).nonzero()
            if len(hit):
                img = ((x[int(hit[0, 0])].clamp(-1, 1) + 1) / 2).numpy()
                ax.imshow(
                    img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray_r", vmin=0, vmax=1
                )
            if c == 0:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"w = {w}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
