"""The teacher with training-free high-order solvers (`BASELINES`: DPM-Solver++(2M), and UniPC via
diffusers, imported lazily), scored like the students (`evaluate_baselines`), and their report
section (`baseline_statistics`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .classifier import Evaluator
from .metrics import _check_level, _resampled_indices, bootstrap_frechet, bootstrap_interval
from .scoring import MODEL_FIELDS, ratio_row, reference_precision_recall

#: the report's name of each baseline, and how it samples
BASELINES = {
    "teacher_dpmpp": "DPM-Solver++(2M) ([DPM++] Algorithm 2), this project's sampler 'dpmpp_2m' on the "
    "grid t_i = i/N (N network calls, the last returning x_hat)",
    "teacher_unipc": "UniPC (diffusers' UniPCMultistepScheduler: bh2, order 2, predict_x0, "
    "lower_order_final, trailing timesteps, final_sigmas_type='zero'; N network calls) on the cosine "
    "schedule discretised as T = {T} trained_betas with cumprod(1 - beta)[k] = alpha_bar((k + 1)/T) "
    "(docs/spec.md section 9), so that its timesteps T*i/N - 1 are the grid t_i = i/N",
}

#: diffusers' discretisation of the schedule for UniPC: every N of the default job (powers of 2 up
#: to 256) divides it
UNIPC_TRAIN_STEPS = 1024


def _unipc_scheduler(schedule: object, steps: int, train_steps: int = UNIPC_TRAIN_STEPS):
    """diffusers' `UniPCMultistepScheduler` on `schedule` discretised as `train_steps` betas with
    `cumprod(1 - beta)[k] = alpha_bar((k + 1)/T)` (docs/spec.md section 9), set to `steps` trailing
    timesteps; None where diffusers is not installed. A private helper of the evaluation: the
    diffusers bridge (pd_fast/integrations) may later export the same betas."""
    try:
        from diffusers import UniPCMultistepScheduler
    except ImportError:
        return None
    if train_steps % steps:
        raise ValueError(f"steps must divide {train_steps} for UniPC on the grid t_i = i/N, got {steps}")
    k = torch.arange(1, train_steps + 1, dtype=torch.float64) / train_steps
    alpha, _ = (torch.as_tensor(c, dtype=torch.float64) for c in schedule.alpha_sigma(k))
    alpha_bar = alpha**2
    betas = 1.0 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=train_steps,
        trained_betas=betas.tolist(),
        solver_order=2,
        prediction_type="sample",
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(steps)
    return scheduler


def unipc_sample(
    model: nn.Module, z: Tensor, steps: int, schedule: object, param: str, clip: bool = True
) -> Tensor | None:
    """The teacher sampled with diffusers' UniPC (`_unipc_scheduler`) from `z` with `steps` network
    calls; the model's x_hat (docs/spec.md section 2, clipped to [-1, 1] if `clip`, as the project's
    samplers do) is passed as the "sample" prediction. None where diffusers is not installed."""
    from ...parameterizations import predict_x_eps

    scheduler = _unipc_scheduler(schedule, steps)
    if scheduler is None:
        return None
    train_steps = scheduler.config.num_train_timesteps
    x = z
    with torch.no_grad():
        for step in scheduler.timesteps:
            t = torch.full((z.shape[0],), (int(step) + 1) / train_steps, dtype=torch.float64)
            alpha, sigma = (torch.as_tensor(c).to(z.device, torch.float32) for c in schedule.alpha_sigma(t))
            out = model(x, t.to(z.device, z.dtype))
            x_hat, _ = predict_x_eps(x, out, alpha, sigma, param, clip=clip)
            x = scheduler.step(x_hat, step, x).prev_sample.to(z.dtype)
    return x


def evaluate_baselines(
    teacher: nn.Module,
    evaluator: Evaluator,
    schedule: object,
    param: str,
    steps: list[int],
    z: Tensor,
    clip: bool = True,
) -> tuple[list[dict], dict[str, dict[int, Tensor]]]:
    """The teacher sampled with DPM-Solver++(2M) and with UniPC (`BASELINES`) at every N in `steps`,
    from the same noise `z` as `evaluate_models`, scored the same way: rows
    `{"steps", "teacher_dpmpp", "teacher_unipc", <name>_<space>, <name>_sample_seconds}` (None where
    UniPC cannot run: diffusers absent) and the samples by name and N."""
    from ...sampling import sample

    metric = evaluator.metric
    rows, samples = [], {name: {} for name in BASELINES}
    for n in sorted(steps):
        row: dict = {"steps": int(n), "teacher_dpmpp": None, "teacher_unipc": None}
        runs = {
            "teacher_dpmpp": lambda n=n: sample(
                teacher, z, n, schedule, param, clip=clip, sampler="dpmpp_2m"
            ),
            "teacher_unipc": lambda n=n: unipc_sample(teacher, z, n, schedule, param, clip=clip),
        }
        for name, fn in runs.items():
            t0 = time.perf_counter()
            s = fn()
            if s is None:
                continue
            sec = time.perf_counter() - t0
            d = evaluator.distances(s)
            row.update({name: d[metric], f"{name}_sample_seconds": sec})
            row.update({f"{name}_{k}": v for k, v in d.items()})
            samples[name][n] = s.cpu()
        rows.append(row)
    return rows, samples


def baseline_statistics(
    evaluator: Evaluator,
    samples: dict[str, dict[int, Tensor]],
    rows: list[dict],
    baseline_samples: dict[str, dict[int, Tensor]],
    baseline_rows: list[dict],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    k: int = 3,
) -> dict:
    """The baselines' report section: their intervals, k-NN precision/recall, and paired ratios
    (the same resampling of the rows of z as `sample_statistics`, so the replicates of the students
    and of the teacher's DDIM are those of its sections): each student to each baseline at its N,
    and each baseline to the teacher's DDIM at the most steps. A student-vs-baseline row says
    whether the two Fréchet intervals overlap."""
    level = _check_level(level)
    teacher_steps = sorted(samples.get("teacher", {}))
    models, points = _compared_models(
        evaluator, samples, teacher_steps, rows, baseline_samples, baseline_rows
    )
    features = {m: evaluator.features(s) for m, s in models.items()}
    n_rows = next(iter(models.values())).shape[0]
    idx = _resampled_indices(np.random.default_rng([seed, 0]), resamples, n_rows)
    reps = {}
    for space, ref in evaluator.reference.items():
        boot = bootstrap_frechet({m: f[space] for m, f in features.items()}, ref, idx)
        reps.update({(*m, space): v for m, v in boot.items()})

    def ci(m: tuple[str, int], space: str) -> list[float]:
        return list(bootstrap_interval(points[m][space], reps[(*m, space)], level))

    pairs = _baseline_pairs(models, baseline_rows, teacher_steps)
    return dict(
        intervals=dict(
            level=level,
            resamples=resamples,
            seed=seed,
            rows=_baseline_interval_rows(evaluator, models, baseline_rows, ci),
        ),
        comparisons=dict(
            reference_steps=teacher_steps[-1] if teacher_steps else None,
            level=level,
            rows=_baseline_comparisons(evaluator, points, reps, pairs, ci, level),
        ),
        precision_recall=dict(
            space=evaluator.metric,
            k=k,
            rows=_baseline_precision_recall(evaluator, features, baseline_rows, k),
        ),
    )


def _compared_models(
    evaluator: Evaluator,
    samples: dict[str, dict[int, Tensor]],
    teacher_steps: list[int],
    rows: list[dict],
    baseline_samples: dict[str, dict[int, Tensor]],
    baseline_rows: list[dict],
) -> tuple[dict[tuple[str, int], Tensor], dict[tuple[str, int], dict[str, float]]]:
    """The samples and the Fréchet distance per space (from the report rows) of every model the
    section compares, by `(report name, N)`: each student, the teacher's DDIM at the most steps,
    and each baseline that ran (`teacher_steps`: the teacher's, sorted)."""
    models: dict[tuple[str, int], Tensor] = {}
    points: dict[tuple[str, int], dict[str, float]] = {}
    by_steps = {r["steps"]: r for r in rows}
    for key, field_name in MODEL_FIELDS.items():
        for n, s in samples.get(key, {}).items():
            if key == "student" or n == teacher_steps[-1]:
                models[field_name, n] = s
                points[field_name, n] = {sp: by_steps[n][f"{field_name}_{sp}"] for sp in evaluator.spaces}
    for r in baseline_rows:
        for name in BASELINES:
            if r["steps"] in baseline_samples.get(name, {}):
                models[name, r["steps"]] = baseline_samples[name][r["steps"]]
                points[name, r["steps"]] = {sp: r[f"{name}_{sp}"] for sp in evaluator.spaces}
    return models, points


def _baseline_interval_rows(
    evaluator: Evaluator,
    models: dict[tuple[str, int], Tensor],
    baseline_rows: list[dict],
    ci: Callable[[tuple[str, int], str], list[float]],
) -> list[dict]:
    """The `intervals` rows: per N, each baseline's interval `ci` in every space (`<name>_<space>`)
    and in the main metric (`<name>`); None for a baseline that did not run."""
    ci_rows = []
    for r in baseline_rows:
        n, row = r["steps"], {"steps": r["steps"]}
        for name in BASELINES:
            row[name] = None
            if (name, n) in models:
                for space in evaluator.spaces:
                    row[f"{name}_{space}"] = ci((name, n), space)
                row[name] = row[f"{name}_{evaluator.metric}"]
        ci_rows.append(row)
    return ci_rows


def _baseline_pairs(
    models: dict[tuple[str, int], Tensor], baseline_rows: list[dict], teacher_steps: list[int]
) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """The (numerator, denominator) models of the comparisons: per N and baseline, the student to
    the baseline, and the baseline to the teacher's DDIM at the most steps."""
    pairs = []
    for r in baseline_rows:
        n = r["steps"]
        for name in BASELINES:
            if (name, n) not in models:
                continue
            if ("student", n) in models:
                pairs.append((("student", n), (name, n)))
            if teacher_steps:
                pairs.append(((name, n), ("teacher_ddim", teacher_steps[-1])))
    return pairs


def _baseline_comparisons(
    evaluator: Evaluator,
    points: dict[tuple[str, int], dict[str, float]],
    reps: dict[tuple[str, int, str], np.ndarray],
    pairs: list[tuple[tuple[str, int], tuple[str, int]]],
    ci: Callable[[tuple[str, int], str], list[float]],
    level: float,
) -> list[dict]:
    """The `comparisons` rows: each pair's `ratio_row` in every space where the denominator's
    distance is positive; a student's row also says whether the two Fréchet intervals `ci`
    overlap."""
    comparisons = []
    for a, b in pairs:
        for space in evaluator.spaces:
            if not points[b][space] > 0:
                continue
            a_stats, b_stats = ((points[m][space], reps[(*m, space)]) for m in (a, b))
            entry = ratio_row(f"{a[0]}_{a[1]}_vs_{b[0]}_{b[1]}", space, a[1], a_stats, b_stats, level)
            if a[0] == "student":
                (a_lo, a_hi), (b_lo, b_hi) = ci(a, space), ci(b, space)
                entry["frechet_intervals_overlap"] = bool(a_lo <= b_hi and b_lo <= a_hi)
            comparisons.append(entry)
    return comparisons


def _baseline_precision_recall(
    evaluator: Evaluator,
    features: dict[tuple[str, int], dict[str, np.ndarray]],
    baseline_rows: list[dict],
    k: int,
) -> list[dict]:
    """The `precision_recall` rows: per N, each baseline's `reference_precision_recall` in the
    main space; None for a baseline that did not run."""
    space = evaluator.metric
    pr = reference_precision_recall(evaluator, k)
    pr_rows = []
    for r in baseline_rows:
        row = {"steps": r["steps"]}
        for name in BASELINES:
            f = features.get((name, r["steps"]))
            row[name] = None if f is None else pr(f[space])
        pr_rows.append(row)
    return pr_rows
