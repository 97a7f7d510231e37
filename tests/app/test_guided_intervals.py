"""The bootstrap intervals of the guided report (`pd_fast.app.evaluation.guided.add_intervals`):
each set's replicates are Fréchet distances of rows resampled *with replacement* (the same rows for
every set: paired), recomputed here with SciPy's matrix square root, and each interval has a real
width, as a resample without replacement (every replicate the point itself) would not give."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from pd_fast.app.evaluation.guided import add_intervals


class _Evaluator:
    """The part of an evaluator `add_intervals` reads: the metric, features and reference stats."""

    metric = "pixel"

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = {"pixel": (reference.mean(axis=0), np.cov(reference, rowvar=False))}

    def features(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        return {"pixel": x.double().numpy().reshape(x.shape[0], -1)}


def _frechet(f: np.ndarray, mu_r: np.ndarray, s_r: np.ndarray) -> float:
    """[FID] Eq. 6 between the Gaussian fit of `f` (unbiased covariance) and (mu_r, s_r)."""
    mu, s = f.mean(axis=0), np.cov(f, rowvar=False)
    root = scipy.linalg.sqrtm(s @ s_r).real
    return float(((mu - mu_r) ** 2).sum() + np.trace(s + s_r - 2.0 * root))


def test_intervals_come_from_paired_resamples_with_replacement_and_have_width() -> None:
    n, resamples, seed = 40, 200, 5
    gen = np.random.default_rng(0)
    reference = gen.normal(size=(500, 3))
    sets = {
        "student_ddim_N1_w0": gen.normal(0.3, 1.2, (n, 3)),
        "teacher_ddim_N1_w0": gen.normal(0, 0.8, (n, 3)),
    }
    ev = _Evaluator(reference)
    mu_r, s_r = ev.reference["pixel"]
    samples = {key: (torch.from_numpy(f), torch.zeros(n, dtype=torch.long)) for key, f in sets.items()}
    rows = [
        dict(
            model=model,
            sampler="ddim",
            steps=1,
            w="0",
            frechet=_frechet(sets[f"{model}_ddim_N1_w0"], mu_r, s_r),
        )
        for model in ("student", "teacher")
    ]
    replicates = add_intervals(rows, samples, ev, seed=seed, resamples=resamples)
    for row in rows:  # a real width: resamples without replacement would all be the point itself
        lo, hi = row["interval"]
        assert hi - lo > 0.05 * row["frechet"] and lo <= row["frechet"] <= hi, row
    # resampling with replacement: rows drawn uniformly from 0..n-1 (NumPy's generator seeded with
    # `seed`, one (resamples, n) draw), the same draw for both sets
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    assert all(len(set(draw)) < n for draw in indices)  # each resample repeats some rows
    for row in rows:
        key = f"{row['model']}_ddim_N1_w0"
        expected = np.array([_frechet(sets[key][b], mu_r, s_r) for b in indices])
        np.testing.assert_allclose(replicates[key], expected, rtol=1e-8)
        shifted = expected - (expected.mean() - row["frechet"])
        lo, hi = np.quantile(shifted, [0.025, 0.975])
        assert row["interval"] == pytest.approx([max(lo, 0.0), hi], rel=1e-8)
