"""Models sampled from one noise z and scored (`evaluate_models`), and the report's sections built
from their samples (`sample_statistics`): intervals, paired comparisons, k-NN precision/recall and
the memorisation check."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .classifier import Evaluator
from .knn import knn_precision_recall, knn_radii
from .memorisation import memorisation_check
from .metrics import (
    _check_level,
    _resampled_indices,
    bootstrap_frechet,
    bootstrap_interval,
    frechet_distance,
    gaussian_stats,
    ratio_interval,
)


def timed_sample(sample_fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    """Run `sample_fn()` under no_grad and return (samples, wall seconds)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample_fn()
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    return out, time.perf_counter() - t0


def evaluate_models(
    teacher: nn.Module,
    students: dict[int, nn.Module],
    evaluator: Evaluator,
    schedule: object,
    param: str,
    teacher_steps: list[int],
    z: Tensor,
    clip: bool = True,
) -> tuple[list[dict], dict[str, dict[int, Tensor]]]:
    """Fréchet distances and sampling times: the teacher with DDIM at every N in `teacher_steps`
    and every student `students[N]` at its own N, all from the same starting noise `z` (n, ...).

    Returns the report rows (sorted by steps; report fields `teacher_ddim`, `student`,
    `sample_seconds` in the main metric, plus per-space and per-model extras) and the samples.
    """
    from ...sampling import sample

    def run(model: nn.Module, n: int) -> tuple[Tensor, float]:
        return timed_sample(lambda: sample(model, z, n, schedule, param, clip=clip))

    # One untimed call first, so that no timed call includes one-off work: on CUDA, Triton compiles
    # the step kernel's variant on its first use. DDIM draws no noise, so nothing else changes.
    with torch.no_grad():
        sample(teacher, z[:1], 1, schedule, param, clip=clip)
    metric = evaluator.metric
    rows: dict[int, dict] = {}
    samples: dict[str, dict[int, Tensor]] = {"teacher": {}, "student": {}}
    for n in sorted(set(teacher_steps) | set(students)):
        row: dict = {"steps": int(n), "teacher_ddim": None, "student": None}
        if n in teacher_steps:
            s, sec = run(teacher, n)
            d = evaluator.distances(s)
            row.update(teacher_ddim=d[metric], teacher_sample_seconds=sec)
            row.update({f"teacher_ddim_{k}": v for k, v in d.items()})
            samples["teacher"][n] = s.cpu()
        if n in students:
            s, sec = run(students[n], n)
            d = evaluator.distances(s)
            row.update(student=d[metric], student_sample_seconds=sec)
            row.update({f"student_{k}": v for k, v in d.items()})
            samples["student"][n] = s.cpu()
        row["sample_seconds"] = row.get("student_sample_seconds", row.get("teacher_sample_seconds"))
        row["samples"] = int(z.shape[0])
        rows[n] = row
    return [rows[n] for n in sorted(rows)], samples


# ----- the report's statistics -------------------------------------------------------------------

#: the report's name of each model in `evaluate_models`' samples
MODEL_FIELDS = {"teacher": "teacher_ddim", "student": "student"}


def sample_statistics(
    evaluator: Evaluator,
    samples: dict[str, dict[int, Tensor]],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    k: int = 3,
    rows: list[dict] | None = None,
) -> dict:
    """Intervals, paired comparisons, precision/recall and the memorisation check of the samples
    that `evaluate_models` scored (`samples["teacher"][N]`, `samples["student"][N]`, all drawn
    from the same noise), as report sections. The distances are taken from `rows` (the report
    rows `evaluate_models` returned with these samples) where given, else computed the same way.

    - `intervals`: a `level` interval of every Fréchet distance in the rows and of the floors
      (`bootstrap_interval`; `resamples` resamplings of the rows of z, seeded by `seed`, shared by
      every model; the floor resamples the held-out half). The reference half is held fixed: its
      own noise shifts every row alike and is not part of the intervals.
    - `comparisons`: per space, the ratio of each model's distance to the teacher's at the most
      steps (`reference_steps`, 256 in the default job) and of each student's to the teacher's at
      its own N, with its interval (`ratio_interval`) and `significant` (the interval excludes 1).
    - `precision_recall`: `knn_precision_recall` in the main metric's space against the reference
      half, and the held-out half's values as the data-vs-data reference.
    - `memorisation`: in pixel space, each sample's distance to its nearest training example
      (`evaluator.data`) against the held-out reference, `leave_one_out_distances`: the median
      ratio, and the fraction of samples closer than the held-out distances' 1st percentile
      (about 0.01 for a model that does not copy its training set).
    """
    level = _check_level(level)
    if not isinstance(resamples, int) or resamples < 2:
        raise ValueError(f"resamples must be an integer >= 2, got {resamples!r}")
    models, n_rows = _paired_models(samples)
    steps = sorted({n for _, n in models})
    by_steps = _rows_by_steps(rows, steps)
    features = {m: evaluator.features(samples[m[0]][m[1]]) for m in models}

    # one resampling of the rows of z for every model and space (paired), one for the held-out half
    idx = _resampled_indices(np.random.default_rng([seed, 0]), resamples, n_rows)
    points, reps = _model_replicates(evaluator, features, by_steps, idx)
    floors = _floor_intervals(evaluator, resamples, seed, level)

    teacher_steps = sorted(samples.get("teacher", {}))
    ref_steps = teacher_steps[-1] if teacher_steps else None
    pairs = _comparison_pairs(features, steps, ref_steps)
    return dict(
        intervals=dict(
            level=level,
            method="paired bootstrap over the samples (rows of z), replicates shifted to the point "
            "estimate; reference half fixed",
            resamples=resamples,
            seed=seed,
            floor=floors[evaluator.metric],
            floors=floors,
            rows=_interval_rows(evaluator, features, points, reps, steps, level),
        ),
        comparisons=dict(
            reference_steps=ref_steps,
            level=level,
            rows=_comparison_rows(evaluator, points, reps, pairs, level),
        ),
        precision_recall=_precision_recall_section(evaluator, features, steps, k),
        memorisation=_memorisation_section(evaluator, samples, steps),
    )


def _paired_models(samples: dict[str, dict[int, Tensor]]) -> tuple[list[tuple[str, int]], int]:
    """The models `(key, N)` in `samples` (teachers first, then students, by N) and their common
    number of samples (rows of z); a ValueError where there are none or the counts differ."""
    models = [(key, n) for key in MODEL_FIELDS for n in sorted(samples.get(key, {}))]
    if not models:
        raise ValueError("samples holds no teacher or student samples")
    sizes = {int(samples[key][n].shape[0]) for key, n in models}
    if len(sizes) != 1:
        raise ValueError(f"samples must all come from the same noise (same count), got sizes {sorted(sizes)}")
    return models, sizes.pop()


def _rows_by_steps(rows: list[dict] | None, steps: list[int]) -> dict[int, dict]:
    """The report rows by N ({} without rows); a ValueError where a sampled N has no row."""
    by_steps = {r["steps"]: r for r in rows} if rows is not None else {}
    if rows is not None and not set(steps) <= set(by_steps):
        raise ValueError(f"rows: no row for steps {sorted(set(steps) - set(by_steps))}")
    return by_steps


def _model_replicates(
    evaluator: Evaluator,
    features: dict[tuple[str, int], dict[str, np.ndarray]],
    by_steps: dict[int, dict],
    idx: np.ndarray,
) -> tuple[dict[tuple[str, int, str], float], dict[tuple[str, int, str], np.ndarray]]:
    """Per `(key, N, space)`: the model's Fréchet distance (its report row's where given, else
    computed) and its bootstrap replicates over the resampled rows `idx` (B, n), paired across
    models."""
    points: dict[tuple[str, int, str], float] = {}
    reps: dict[tuple[str, int, str], np.ndarray] = {}
    for space, ref in evaluator.reference.items():
        boot = bootstrap_frechet({m: f[space] for m, f in features.items()}, ref, idx)
        for key, n in features:
            point = by_steps.get(n, {}).get(f"{MODEL_FIELDS[key]}_{space}")
            if point is None:
                point = frechet_distance(*gaussian_stats(features[key, n][space]), *ref)
            points[key, n, space], reps[key, n, space] = point, boot[key, n]
    return points, reps


def _floor_intervals(evaluator: Evaluator, resamples: int, seed: int, level: float) -> dict[str, list[float]]:
    """The `level` interval of the floor in every space, resampling the held-out half."""
    held = next(iter(evaluator.held_out_features.values()))
    idx_held = _resampled_indices(np.random.default_rng([seed, 1]), resamples, held.shape[0])
    floors = {}
    for space, ref in evaluator.reference.items():
        floor_reps = bootstrap_frechet({"floor": evaluator.held_out_features[space]}, ref, idx_held)["floor"]
        floors[space] = list(bootstrap_interval(evaluator.floor[space], floor_reps, level))
    return floors


def _interval_rows(
    evaluator: Evaluator,
    features: dict[tuple[str, int], dict[str, np.ndarray]],
    points: dict[tuple[str, int, str], float],
    reps: dict[tuple[str, int, str], np.ndarray],
    steps: list[int],
    level: float,
) -> list[dict]:
    """The `intervals` rows: per N, each model's interval in every space (`<name>_<space>`) and in
    the main metric (`<name>`); None for a model not sampled at N."""
    ci_rows = []
    for n in steps:
        row = {"steps": n}
        for key, name in MODEL_FIELDS.items():
            row[name] = None
            if (key, n) in features:
                for space in evaluator.spaces:
                    ci = list(bootstrap_interval(points[key, n, space], reps[key, n, space], level))
                    row[f"{name}_{space}"] = ci
                    row[name] = ci if space == evaluator.metric else row[name]
        ci_rows.append(row)
    return ci_rows


def _comparison_pairs(
    features: dict[tuple[str, int], dict[str, np.ndarray]], steps: list[int], ref_steps: int | None
) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """The (numerator, denominator) models of the comparisons: per N, the teacher and the student
    to the teacher at `ref_steps`, and the student to the teacher at its own N."""
    pairs = []
    for n in steps:
        if ref_steps is not None and n != ref_steps and ("teacher", n) in features:
            pairs.append((("teacher", n), ("teacher", ref_steps)))
        if ref_steps is not None and ("student", n) in features:
            pairs.append((("student", n), ("teacher", ref_steps)))
        if ("student", n) in features and ("teacher", n) in features:
            pairs.append((("student", n), ("teacher", n)))
    return pairs


def _comparison_rows(
    evaluator: Evaluator,
    points: dict[tuple[str, int, str], float],
    reps: dict[tuple[str, int, str], np.ndarray],
    pairs: list[tuple[tuple[str, int], tuple[str, int]]],
    level: float,
) -> list[dict]:
    """The `comparisons` rows: each pair's `ratio_row` in every space where the denominator's
    distance is positive."""
    comparisons = []
    for a, b in pairs:
        for space in evaluator.spaces:
            if not points[(*b, space)] > 0:
                continue
            name = f"{MODEL_FIELDS[a[0]]}_{a[1]}_vs_{MODEL_FIELDS[b[0]]}_{b[1]}"
            a_stats, b_stats = ((points[(*m, space)], reps[(*m, space)]) for m in (a, b))
            comparisons.append(ratio_row(name, space, a[1], a_stats, b_stats, level))
    return comparisons


def ratio_row(
    name: str, space: str, steps: int, a: tuple[float, np.ndarray], b: tuple[float, np.ndarray], level: float
) -> dict:
    """A comparison row of the report: the ratio of two Fréchet distances `a` and `b`, each given as
    `(point, replicates)` with paired replicates, its `level` interval (`ratio_interval`; an
    unbounded end is None) and `significant` (the interval excludes 1)."""
    r, lo, hi = ratio_interval(*a, *b, level)
    return dict(
        name=name,
        space=space,
        steps=steps,
        ratio=r,
        interval=[lo, hi if math.isfinite(hi) else None],  # None: unbounded
        significant=bool(lo > 1.0 or hi < 1.0),
    )


def reference_precision_recall(evaluator: Evaluator, k: int = 3) -> Callable[[np.ndarray], dict | None]:
    """A function of features (n, d) in the main space: their `knn_precision_recall` against the
    reference half as `{"precision", "recall"}` (the reference's k-NN radii computed once), or None
    where either set has k rows or fewer."""
    real = evaluator.reference_features[evaluator.metric]
    radii = knn_radii(real, k) if 1 <= k < real.shape[0] else None

    def pr(fake: np.ndarray) -> dict | None:
        if radii is None or not k < fake.shape[0]:
            return None
        p, r = knn_precision_recall(real, fake, k, real_radii=radii)
        return dict(precision=p, recall=r)

    return pr


def _precision_recall_section(
    evaluator: Evaluator, features: dict[tuple[str, int], dict[str, np.ndarray]], steps: list[int], k: int
) -> dict:
    """`knn_precision_recall` of every model against the reference half in the main space, and
    of the held-out half (data vs data); None where a set has k rows or fewer."""
    space = evaluator.metric
    pr = reference_precision_recall(evaluator, k)
    held = evaluator.held_out_features[space]
    rows = [
        {
            "steps": n,
            **{
                name: pr(features[key, n][space]) if (key, n) in features else None
                for key, name in MODEL_FIELDS.items()
            },
        }
        for n in steps
    ]
    return dict(space=space, k=k, data=pr(held), rows=rows)


def _memorisation_section(
    evaluator: Evaluator, samples: dict[str, dict[int, Tensor]], steps: list[int]
) -> dict | None:
    """`memorisation_check` of every model's samples at each N; None without training data."""
    memo = memorisation_check(evaluator)
    if memo is None:
        return None
    check, reference = memo

    def checked(s: Tensor | None) -> dict | None:
        return None if s is None else check(s)

    rows = [
        {"steps": n, **{name: checked(samples.get(key, {}).get(n)) for key, name in MODEL_FIELDS.items()}}
        for n in steps
    ]
    return dict(**reference, rows=rows)
