"""Sample quality: the Fréchet distance to the data, its data-vs-data floor, and sampling time.

The Fréchet distance between Gaussians fitted to two sets of features ([FID] Heusel et al. 2017,
arXiv 1706.08500, Eq. 6; Dowson & Landau 1982):

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

computed in float64, in pixel space and, where the data has labels, in the penultimate-layer
feature space of a small classifier trained on the data (the FID idea with a network that fits
8x8 digits). The floor is the same distance between two disjoint halves of the data: a model
is compared on as many samples as the held-out half has, so the floor is what a perfect model
would score with the same estimator bias.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
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
    from safetensors.torch import load_file, save_file

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
        os.makedirs(cache_dir, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, wpath + ".tmp")
        os.replace(wpath + ".tmp", wpath)
        with open(jpath + ".tmp", "w") as f:
            json.dump(dict(key=key, accuracy=acc), f)
        os.replace(jpath + ".tmp", jpath)
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

    def distances(self, samples: Tensor) -> dict[str, float]:
        """Fréchet distance of `samples` (n, ...) to the reference half, in every space."""
        out = {}
        with torch.no_grad():
            for name, fn in self.spaces.items():
                mu, s = gaussian_stats(fn(samples.detach().cpu().float()))
                out[name] = frechet_distance(mu, s, *self.reference[name])
        return out


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
    reference, floor = {}, {}
    with torch.no_grad():
        for name, fn in spaces.items():
            reference[name] = gaussian_stats(fn(x[ref_idx]))
            floor[name] = frechet_distance(*gaussian_stats(fn(x[held_idx])), *reference[name])
    metric = "classifier" if "classifier" in spaces else "pixel"
    return Evaluator(spaces, reference, floor, int(half), metric, info)


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
