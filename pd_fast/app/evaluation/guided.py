"""The guided job's evaluation ([GD], docs/spec.md section 8): every w of `--eval-w` and N in
{1, 2, 4, 8}, the samples of the guided teacher (DDIM at 256 and at N steps, 2 calls a step) and
of the N-step student (DDIM and [GD]'s stochastic sampler), all from the same noise and balanced
labels, scored by their Fréchet distance, class accuracy, k-NN precision / recall and the
memorisation check, with paired bootstrap intervals.

    evaluate_guided(teacher, students, evaluator, classifier, schedule, param, z, y, ws, ...)
        -> (rows, samples)
    add_intervals(rows, samples, evaluator, seed) -> replicates   (adds `interval` to each row)
    data_precision_recall(evaluator) -> the data-vs-data k-NN precision and recall
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .memorisation import memorisation_check
from .metrics import bootstrap_frechet, bootstrap_interval
from .scoring import reference_precision_recall, timed_sample
from .targets import EVAL_STEPS, TEACHER_STEPS, sample_key

PR_K = 3  # the k of the k-NN precision and recall, as in the built-in job's report


def _with_cond(model: nn.Module, c: Tensor, w: Tensor, z: Tensor, t: Tensor) -> Tensor:
    return model(z, t, c, w)


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
    from ...sampling import sample

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
    space = evaluator.metric
    features = {key: evaluator.features(x)[space] for key, (x, _) in samples.items()}
    n = next(iter(features.values())).shape[0]
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    replicates = bootstrap_frechet(features, evaluator.reference[space], indices)
    for row in rows:
        row["interval"] = list(bootstrap_interval(row["frechet"], replicates[sample_key(row)], level))
    return replicates


def data_precision_recall(evaluator: Any) -> dict | None:
    """k-NN precision and recall of the held-out half against the reference half (data vs data)."""
    space = evaluator.metric
    got = reference_precision_recall(evaluator, PR_K)(evaluator.held_out_features[space])
    return None if got is None else dict(k=PR_K, space=space, **got)
