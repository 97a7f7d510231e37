"""The Fréchet distance ([FID] Heusel et al. 2017, arXiv 1706.08500, Eq. 6) between Gaussians
fitted to two sets of features, and its paired bootstrap: replicates, intervals, ratio intervals.

Everything here is float64 on arrays; the feature spaces and the data live in `classifier`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
import torch
from torch import Tensor


def gaussian_stats(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, S)`: the mean and (unbiased, N - 1) covariance of features (N, d) (or (N, ...) flattened),
    in float64."""
    f = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    f = f.reshape(f.shape[0], -1).astype(np.float64)
    if f.shape[0] < 2:
        raise ValueError(f"features need at least 2 rows for a covariance, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric matrix (negative eigenvalues, numerical noise
    of a PSD input, are clipped to 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """`|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))` ([FID] Eq. 6), in float64.

    `tr (S1 S2)^(1/2)` by the eigen approach: `S1 S2` is similar to the symmetric PSD matrix
    `M = S1^(1/2) S2 S1^(1/2)`, so it is the sum of the square roots of M's eigenvalues
    (`eigvalsh`, real by construction, tiny negative ones from rounding clipped to 0). Unlike
    `scipy.linalg.sqrtm(S1 @ S2)` this has no imaginary part to drop and stays accurate when the
    covariances are singular (e.g. pixels that are 0 in every digit).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"mu1, mu2 must be (d,) and s1, s2 (d, d); got {mu1.shape}, {mu2.shape}, {s1.shape}, {s2.shape}"
        )
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("s1", s1), ("s2", s2)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    root1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_samples(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sample sets (N, ...) and (M, ...)."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ----- intervals: the paired bootstrap -----------------------------------------------------------


def _resampled_indices(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """(resamples, n) row indices drawn uniformly with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_frechet(
    features: dict[Hashable, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    indices: np.ndarray,
    chunk_bytes: int = 1 << 25,
) -> dict[Hashable, np.ndarray]:
    """Bootstrap replicates of the Fréchet distance ([FID] Eq. 6) of each feature set to fixed
    reference statistics `(mu_r, S_r)`.

    `features`: name -> (n, d) features whose rows are paired (row i of every set comes from the
    same noise z_i); `indices`: (B, n) resampled row indices, the same for every set. Returns
    name -> (B,) distances: replicate b is `frechet_distance(*gaussian_stats(f[indices[b]]),
    *reference)` up to rounding, in float64.

    How: with `S_r = V diag(l) V^T` and `W = V diag(l)^(1/2)`, the covariance of the features
    mapped to `f W` is `W^T S W`, whose eigenvalues are those of `S_r^(1/2) S S_r^(1/2)`; so each
    replicate needs one weighted covariance (weights = how often each row was drawn: one matmul
    for all replicates) and one `eigvalsh`, both in torch (they follow `torch.set_num_threads`).
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.shape[1] < 2:
        raise ValueError(f"indices must be (B, n) with n >= 2, got shape {indices.shape}")
    resamples, n = indices.shape
    mu_r, s_r = (np.atleast_1d(np.asarray(a, np.float64)) for a in reference)
    s_r = np.atleast_2d(0.5 * (s_r + s_r.T))
    lam, vec = np.linalg.eigh(s_r)
    whiten = torch.from_numpy(vec * np.sqrt(np.clip(lam, 0.0, None)))
    tr_r = float(np.trace(s_r))
    counts = np.bincount((indices + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    weights = torch.from_numpy(counts.reshape(resamples, n).astype(np.float64)) / n
    unbias = n / (n - 1)
    out = {}
    for name, f in features.items():
        f = np.asarray(f, np.float64)
        f = f.reshape(f.shape[0], -1)
        if f.shape != (n, mu_r.shape[0]):
            raise ValueError(f"features[{name!r}]: expected ({n}, {mu_r.shape[0]}), got {f.shape}")
        d = f.shape[1]
        # covariances are shift-invariant: centring first keeps the float64 sums well conditioned
        centre = f.mean(axis=0)
        fc, offset = torch.from_numpy(f - centre), torch.from_numpy(centre - mu_r)
        g = fc @ whiten
        lower = torch.tril_indices(d, d)
        flat = lower[0] * d + lower[1]
        outer = g[:, lower[0]] * g[:, lower[1]]  # (n, d (d + 1) / 2): eigvalsh reads the lower triangle
        chunk = max(1, min(resamples, chunk_bytes // (8 * max(outer.shape[1], d * d))))
        values = []
        for w in weights.split(chunk):
            mu_f, mu_g = w @ fc, w @ g
            tr_s = ((w @ (fc * fc)) - mu_f * mu_f).sum(1) * unbias
            cov_g = g.new_zeros((w.shape[0], d * d))
            cov_g.index_copy_(1, flat, (w @ outer - mu_g[:, lower[0]] * mu_g[:, lower[1]]) * unbias)
            eig = torch.linalg.eigvalsh(cov_g.view(-1, d, d))
            diff = mu_f + offset
            values.append((diff * diff).sum(1) + tr_s + tr_r - 2.0 * eig.clamp(min=0.0).sqrt().sum(1))
        out[name] = torch.cat(values).numpy()
    return out


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def bootstrap_interval(point: float, replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The `level` interval of a Fréchet distance `point` from its bootstrap `replicates` (B,):
    the percentile interval of the replicates shifted so that their mean is `point`.

    Why the shift: a resample repeats rows, and the Fréchet distance grows with sampling noise
    (the finite-sample bias that the floor measures), so the raw replicates sit above `point` by
    about the bias of n samples, and their plain percentile interval would miss the distance's
    expected value most of the time. The shift keeps their spread and removes that offset.
    """
    level = _check_level(level)
    reps = np.asarray(replicates, np.float64)
    shifted = reps - (reps.mean() - point)
    lo, hi = np.quantile(shifted, [(1 - level) / 2, (1 + level) / 2])
    return max(float(lo), 0.0), float(hi)


def ratio_interval(
    point_a: float, replicates_a: np.ndarray, point_b: float, replicates_b: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """`(a / b, low, high)`: the ratio of two Fréchet distances and its `level` interval from
    paired replicates (replicate i of both drawn from the same resampled rows).

    The interval inverts the paired test of the difference (Fieller's construction): it holds the
    ratios x for which the `bootstrap_interval` of `a - x b` (replicates of both shifted to their
    point estimates) contains 0. So it excludes 1 exactly when the paired difference `a - b` is
    significant, it is `[c, c]` when a = c b in every replicate, and `high` is `inf` when b itself
    cannot be told apart from 0 (a ratio to noise). `low` is at least 0.
    """
    level = _check_level(level)
    if not point_b > 0:
        raise ValueError(f"point_b must be > 0 for a ratio, got {point_b!r}")
    a, b = np.asarray(replicates_a, np.float64), np.asarray(replicates_b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(
            f"replicates_a and replicates_b must be paired (same shape (B,)), got {a.shape}, {b.shape}"
        )
    a, b = a - (a.mean() - point_a), b - (b.mean() - point_b)
    q = [(1 - level) / 2, (1 + level) / 2]

    def inside(x: float) -> bool:
        lo, hi = np.quantile(a - x * b, q)
        return bool(lo <= 0.0 <= hi)

    r = point_a / point_b
    scale = r if r > 0 else 1.0

    def edge(direction: int) -> float:
        """The end of the interval above (+1) or below (-1) r: the first x where `inside` fails,
        bracketed by doubling steps and then bisected."""
        t_in, t = 0.0, 1e-6 * scale
        while inside(r + direction * t):
            t_in, t = t, 2.0 * t
            if direction < 0 and r - t <= 0.0:
                if inside(0.0):
                    return 0.0
                t = r
                break
            if t > 1e9 * scale:
                return math.inf
        for _ in range(60):
            mid = 0.5 * (t_in + t)
            t_in, t = (mid, t) if inside(r + direction * mid) else (t_in, mid)
        return r + direction * t_in

    if not inside(r):  # only if nearly every replicate of a - r b has one sign
        return float(r), float(r), float(r)
    return float(r), edge(-1), edge(+1)
