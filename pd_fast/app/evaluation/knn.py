"""k-NN precision and recall ([PR] Kynkäänniemi et al. 2019, arXiv 1904.06991, Sec. 3) and
nearest-neighbour distances (the memorisation check's), on rows of features in float64."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def _as_rows(name: str, x: np.ndarray | Tensor) -> Tensor:
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    t = t.reshape(t.shape[0], -1).to(torch.float64)
    if t.shape[0] < 1 or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be a non-empty (n, ...) array of finite values")
    return t


def _distances(a: Tensor, b: Tensor, chunk_bytes: int = 1 << 25) -> Tensor:
    """Euclidean distances (n, m) in float64, as differences (not |a|^2 + |b|^2 - 2ab), so that a
    point's distance to itself is exactly 0."""
    rows = max(1, chunk_bytes // (8 * max(1, b.shape[0])))
    return torch.cat([torch.cdist(p, b, compute_mode="donot_use_mm_for_euclid_dist") for p in a.split(rows)])


def knn_radii(x: np.ndarray | Tensor, k: int = 3) -> np.ndarray:
    """The distance of each row of x (n, d) to its k-th nearest other row ([PR] Eq. 2's
    `NN_k(phi')`), in float64."""
    t = _as_rows("x", x)
    if not 1 <= k < t.shape[0]:
        raise ValueError(f"k must be in [1, {t.shape[0] - 1}] for {t.shape[0]} rows, got {k}")
    # the (k+1)-th smallest distance in a row counts the row itself (distance 0) as the first
    return torch.kthvalue(_distances(t, t), k + 1, dim=1).values.numpy()


def knn_precision_recall(
    real: np.ndarray | Tensor, fake: np.ndarray | Tensor, k: int = 3, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """k-NN precision and recall ([PR] Kynkäänniemi et al. 2019, Eqs. 1-3).

    The manifold of a set is the union of balls around its points, each with the radius of the
    point's k-th nearest neighbour in the set. Precision = the fraction of `fake` rows inside the
    manifold of `real`; recall = the fraction of `real` rows inside the manifold of `fake`
    (inside: distance <= radius). real (n, ...), fake (m, ...), compared in float64;
    `real_radii`: `knn_radii(real, k)` where already computed (one real set, many models).
    """
    r, f = _as_rows("real", real), _as_rows("fake", fake)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake must have the same feature size, got {r.shape[1]} and {f.shape[1]}")
    radius_r = torch.from_numpy(np.asarray(knn_radii(r, k) if real_radii is None else real_radii, np.float64))
    if radius_r.shape != (r.shape[0],):
        raise ValueError(f"real_radii must be ({r.shape[0]},), got {tuple(radius_r.shape)}")
    radius_f = torch.from_numpy(knn_radii(f, k))
    d = _distances(f, r)  # (m, n)
    precision = (d <= radius_r[None, :]).any(dim=1).double().mean()
    recall = (d <= radius_f[:, None]).any(dim=0).double().mean()
    return float(precision), float(recall)


def nearest_distances(queries: np.ndarray | Tensor, train: np.ndarray | Tensor) -> np.ndarray:
    """The distance of each query row (n, ...) to its nearest row of `train` (m, ...), float64."""
    q, t = _as_rows("queries", queries), _as_rows("train", train)
    if q.shape[1] != t.shape[1]:
        raise ValueError(f"queries and train must have the same feature size, got {q.shape[1]}, {t.shape[1]}")
    return torch.cat([_distances(p, t).min(dim=1).values for p in q.split(1024)]).numpy()


def leave_one_out_distances(train: np.ndarray | Tensor) -> np.ndarray:
    """The distance of each row of `train` (m, ...) to its nearest *other* row: what a fresh draw
    from the same distribution would score against a training set of m - 1 examples (a training
    example is independent of the others), so it serves as held-out data when none is left out."""
    t = _as_rows("train", train)
    if t.shape[0] < 2:
        raise ValueError(f"train needs at least 2 rows, got {t.shape[0]}")
    out = []
    for start, p in zip(range(0, t.shape[0], 1024), t.split(1024), strict=True):
        d = _distances(p, t)
        d[torch.arange(p.shape[0]), torch.arange(start, start + p.shape[0])] = math.inf
        out.append(d.min(dim=1).values)
    return torch.cat(out).numpy()
