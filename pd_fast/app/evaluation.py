"""Sample quality: the Fréchet distance to the data, its data-vs-data floor, and sampling time.

The Fréchet distance between Gaussians fitted to two sets of features ([FID] Heusel et al. 2017,
arXiv 1706.08500, Eq. 6; Dowson & Landau 1982):

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

computed in float64, in pixel space and, where the data has labels, in the penultimate-layer
feature space of a small classifier trained on the data (the FID idea with a network that fits
8x8 digits). The floor is the same distance between two disjoint halves of the data: a model
is compared on as many samples as the held-out half has, so the floor is what a perfect model
would score with the same estimator bias.

Beside the Fréchet distance (`sample_statistics`):

- **95% intervals** by a paired bootstrap over the model's samples (`bootstrap_frechet`,
  `bootstrap_interval`, `ratio_interval`): every model is sampled from the same noise z, so one
  resampling of the indices of z serves every model, and a ratio of two models' distances is
  resampled with its numerator and denominator together.
- **k-NN precision and recall** ([PR] Kynkäänniemi et al. 2019, arXiv 1904.06991, Sec. 3,
  `knn_precision_recall`), with the data-vs-data values as their reference.
- **a memorisation check** (`memorisation_check`, `nearest_distances`): each sample's
  nearest-neighbour distance to the training set against a held-out example's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F


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


class Classifier(nn.Module):
    """A small MLP classifier on flattened inputs; `features` is its penultimate layer."""

    def __init__(self, dim: int, classes: int, hidden: int = 256, feat: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.config = dict(dim=dim, classes=classes, hidden=hidden, feat=feat)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, feat), nn.SiLU()
            )
            self.head = nn.Linear(feat, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _fingerprint(x: Tensor, labels: Tensor) -> str:
    h = hashlib.sha256()
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_classifier(
    x: Tensor, labels: Tensor, seed: int = 0, iters: int = 600, cache_dir: str | None = None
) -> tuple[Classifier, float]:
    """Train (or load from `cache_dir/classifier.safetensors`) a `Classifier` on (x, labels).

    Trained with Adam on 80% of the data with light Gaussian input noise (so that its features
    respond smoothly to imperfect samples); returns the network (in eval mode) and its accuracy
    on the other 20%. The cache is keyed by a hash of the data and the settings.
    """
    from safetensors.torch import load_file

    from .checkpoint import save_json, save_tensors

    x = x.detach().cpu().float()
    labels = labels.detach().cpu().long()
    classes = int(labels.max().item()) + 1
    net = Classifier(int(np.prod(x.shape[1:])), classes, seed=seed)
    key = dict(config=net.config, seed=seed, iters=iters, data=_fingerprint(x, labels))
    if cache_dir is not None:
        wpath, jpath = (
            os.path.join(cache_dir, "classifier.safetensors"),
            os.path.join(cache_dir, "classifier.json"),
        )
        if os.path.isfile(wpath) and os.path.isfile(jpath):
            with open(jpath) as f:
                meta = json.load(f)
            if meta.get("key") == key:
                net.load_state_dict(load_file(wpath))
                return net.eval(), float(meta["accuracy"])
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_train = int(0.8 * x.shape[0])
    tr, te = perm[:n_train], perm[n_train:]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    net.train()
    for _ in range(iters):
        idx = tr[torch.randint(0, n_train, (128,), generator=gen)]
        xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=gen)
        loss = F.cross_entropy(net(xb), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[te]).argmax(1) == labels[te]).float().mean()) if len(te) else float("nan")
    if cache_dir is not None:
        save_tensors(wpath, net.state_dict())
        save_json(jpath, dict(key=key, accuracy=acc))
    return net, acc


@dataclass
class Evaluator:
    """Reference statistics of the data and the floor, per feature space.

    The data is split (seeded) into two disjoint halves: `reference` (the statistics models are
    compared with) and `held_out` (used only for the floor). `n_samples` = len(held_out) is how many
    samples a model should be evaluated on, so that model and floor share the estimator's bias.
    Spaces: 'pixel' always; 'classifier' where labels exist.
    """

    spaces: dict[str, Callable[[Tensor], Tensor]]
    reference: dict[str, tuple[np.ndarray, np.ndarray]]
    floor: dict[str, float]
    n_samples: int
    metric: str
    info: dict = field(default_factory=dict)
    #: per space, the features (float32) of the reference half and of the held-out half
    reference_features: dict[str, np.ndarray] = field(default_factory=dict)
    held_out_features: dict[str, np.ndarray] = field(default_factory=dict)
    #: the whole data set (the training set of a model trained on it), float32 (N, ...)
    data: Tensor | None = None

    def features(self, samples: Tensor) -> dict[str, np.ndarray]:
        """The features (n, d) of `samples` (n, ...) in every space."""
        with torch.no_grad():
            x = samples.detach().cpu().float()
            return {name: fn(x).numpy() for name, fn in self.spaces.items()}

    def distances(self, samples: Tensor) -> dict[str, float]:
        """Fréchet distance of `samples` (n, ...) to the reference half, in every space."""
        return {
            name: frechet_distance(*gaussian_stats(f), *self.reference[name])
            for name, f in self.features(samples).items()
        }


def make_evaluator(
    x: Tensor,
    labels: Tensor | None,
    seed: int = 0,
    cache_dir: str | None = None,
    classifier_iters: int = 600,
) -> Evaluator:
    """Build the `Evaluator` for data x (N, ...) with optional labels (N,).

    The main metric is 'classifier' (Fréchet distance in the classifier's penultimate features)
    where labels exist, else 'pixel'.
    """
    if x.shape[0] < 4:
        raise ValueError(f"data needs at least 4 examples to evaluate (two halves), got {x.shape[0]}")
    x = x.detach().cpu().float()
    gen = torch.Generator().manual_seed(seed + 12345)
    perm = torch.randperm(x.shape[0], generator=gen)
    half = x.shape[0] // 2
    ref_idx, held_idx = perm[:half], perm[half : 2 * half]
    spaces: dict[str, Callable[[Tensor], Tensor]] = {"pixel": lambda v: v.reshape(v.shape[0], -1)}
    info: dict = {}
    if labels is not None:
        net, acc = train_classifier(x, labels, seed=seed, iters=classifier_iters, cache_dir=cache_dir)
        spaces["classifier"] = net.features
        info["classifier_accuracy"] = acc
    reference, floor, ref_features, held_features = {}, {}, {}, {}
    with torch.no_grad():
        for name, fn in spaces.items():
            ref_features[name], held_features[name] = fn(x[ref_idx]).numpy(), fn(x[held_idx]).numpy()
            reference[name] = gaussian_stats(ref_features[name])
            floor[name] = frechet_distance(*gaussian_stats(held_features[name]), *reference[name])
    metric = "classifier" if "classifier" in spaces else "pixel"
    return Evaluator(spaces, reference, floor, int(half), metric, info, ref_features, held_features, x)


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
    from ..sampling import sample

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


# ----- k-NN precision and recall, nearest-neighbour distances --------------------------------------


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
    models = [(key, n) for key in MODEL_FIELDS for n in sorted(samples.get(key, {}))]
    if not models:
        raise ValueError("samples holds no teacher or student samples")
    sizes = {int(samples[key][n].shape[0]) for key, n in models}
    if len(sizes) != 1:
        raise ValueError(f"samples must all come from the same noise (same count), got sizes {sorted(sizes)}")
    steps = sorted({n for _, n in models})
    by_steps = {r["steps"]: r for r in rows} if rows is not None else {}
    if rows is not None and not set(steps) <= set(by_steps):
        raise ValueError(f"rows: no row for steps {sorted(set(steps) - set(by_steps))}")
    features = {m: evaluator.features(samples[m[0]][m[1]]) for m in models}

    # one resampling of the rows of z for every model and space (paired), one for the held-out half
    idx = _resampled_indices(np.random.default_rng([seed, 0]), resamples, sizes.pop())
    held = next(iter(evaluator.held_out_features.values()))
    idx_held = _resampled_indices(np.random.default_rng([seed, 1]), resamples, held.shape[0])
    points: dict[tuple[str, int, str], float] = {}
    reps: dict[tuple[str, int, str], np.ndarray] = {}
    floors = {}
    for space, ref in evaluator.reference.items():
        boot = bootstrap_frechet({m: features[m][space] for m in models}, ref, idx)
        for key, n in models:
            point = by_steps.get(n, {}).get(f"{MODEL_FIELDS[key]}_{space}")
            if point is None:
                point = frechet_distance(*gaussian_stats(features[key, n][space]), *ref)
            points[key, n, space], reps[key, n, space] = point, boot[key, n]
        floor_reps = bootstrap_frechet({"floor": evaluator.held_out_features[space]}, ref, idx_held)["floor"]
        floors[space] = list(bootstrap_interval(evaluator.floor[space], floor_reps, level))

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

    teacher_steps = sorted(samples.get("teacher", {}))
    ref_steps = teacher_steps[-1] if teacher_steps else None
    pairs = []
    for n in steps:
        if ref_steps is not None and n != ref_steps and ("teacher", n) in features:
            pairs.append((("teacher", n), ("teacher", ref_steps)))
        if ref_steps is not None and ("student", n) in features:
            pairs.append((("student", n), ("teacher", ref_steps)))
        if ("student", n) in features and ("teacher", n) in features:
            pairs.append((("student", n), ("teacher", n)))
    comparisons = []
    for a, b in pairs:
        for space in evaluator.spaces:
            if not points[(*b, space)] > 0:
                continue
            r, lo, hi = ratio_interval(
                points[(*a, space)], reps[(*a, space)], points[(*b, space)], reps[(*b, space)], level
            )
            comparisons.append(
                dict(
                    name=f"{MODEL_FIELDS[a[0]]}_{a[1]}_vs_{MODEL_FIELDS[b[0]]}_{b[1]}",
                    space=space,
                    steps=a[1],
                    ratio=r,
                    interval=[lo, hi if math.isfinite(hi) else None],  # None: unbounded
                    significant=bool(lo > 1.0 or hi < 1.0),
                )
            )

    return dict(
        intervals=dict(
            level=level,
            method="paired bootstrap over the samples (rows of z), replicates shifted to the point "
            "estimate; reference half fixed",
            resamples=resamples,
            seed=seed,
            floor=floors[evaluator.metric],
            floors=floors,
            rows=ci_rows,
        ),
        comparisons=dict(reference_steps=ref_steps, level=level, rows=comparisons),
        precision_recall=_precision_recall_section(evaluator, features, steps, k),
        memorisation=_memorisation_section(evaluator, samples, steps),
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


def memorisation_check(evaluator: Evaluator) -> tuple[Callable[[Tensor], dict], dict] | None:
    """The memorisation check in pixel space: a function of samples (n, ...) giving their median
    nearest-training-example distance, that median over the held-out one (`median_ratio`; about 1
    for fresh draws, 0 for copies) and the fraction closer than held-out's 1st percentile
    (`below_held_out_p01`; about 0.01 if nothing is copied), with the reference it uses
    (`space`, `training_examples`, `held_out`, `held_out_median`, `held_out_p01`). Held-out
    distances are leave-one-out over the training set. None without training data."""
    if evaluator.data is None or evaluator.data.shape[0] < 2:
        return None
    train = evaluator.data.reshape(evaluator.data.shape[0], -1)
    held = leave_one_out_distances(train)
    median_held, p01 = float(np.median(held)), float(np.quantile(held, 0.01))

    def check(s: Tensor) -> dict:
        d = nearest_distances(s.reshape(s.shape[0], -1), train)
        return dict(
            median_distance=float(np.median(d)),
            median_ratio=float(np.median(d)) / median_held if median_held > 0 else None,
            below_held_out_p01=float(np.mean(d < p01)),
        )

    reference = dict(
        space="pixel",
        training_examples=int(train.shape[0]),
        held_out="leave-one-out: each training example's distance to its nearest other one",
        held_out_median=median_held,
        held_out_p01=p01,
    )
    return check, reference


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


# ----- baselines: the teacher with training-free high-order solvers ------------------------------

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
    from ..parameterizations import predict_x_eps

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
    from ..sampling import sample

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
    features = {m: evaluator.features(s) for m, s in models.items()}
    n_rows = next(iter(models.values())).shape[0]
    idx = _resampled_indices(np.random.default_rng([seed, 0]), resamples, n_rows)
    reps = {}
    for space, ref in evaluator.reference.items():
        boot = bootstrap_frechet({m: f[space] for m, f in features.items()}, ref, idx)
        reps.update({(*m, space): v for m, v in boot.items()})

    def ci(m: tuple[str, int], space: str) -> list[float]:
        return list(bootstrap_interval(points[m][space], reps[(*m, space)], level))

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
    comparisons = []
    for a, b in pairs:
        for space in evaluator.spaces:
            if not points[b][space] > 0:
                continue
            r, lo, hi = ratio_interval(
                points[a][space], reps[(*a, space)], points[b][space], reps[(*b, space)], level
            )
            entry = dict(
                name=f"{a[0]}_{a[1]}_vs_{b[0]}_{b[1]}",
                space=space,
                steps=a[1],
                ratio=r,
                interval=[lo, hi if math.isfinite(hi) else None],
                significant=bool(lo > 1.0 or hi < 1.0),
            )
            if a[0] == "student":
                (a_lo, a_hi), (b_lo, b_hi) = ci(a, space), ci(b, space)
                entry["frechet_intervals_overlap"] = bool(a_lo <= b_hi and b_lo <= a_hi)
            comparisons.append(entry)

    space = evaluator.metric
    pr = reference_precision_recall(evaluator, k)
    pr_rows = []
    for r in baseline_rows:
        row = {"steps": r["steps"]}
        for name in BASELINES:
            f = features.get((name, r["steps"]))
            row[name] = None if f is None else pr(f[space])
        pr_rows.append(row)
    return dict(
        intervals=dict(level=level, resamples=resamples, seed=seed, rows=ci_rows),
        comparisons=dict(
            reference_steps=teacher_steps[-1] if teacher_steps else None, level=level, rows=comparisons
        ),
        precision_recall=dict(space=space, k=k, rows=pr_rows),
    )
