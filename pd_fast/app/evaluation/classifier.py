"""The feature spaces of the evaluation: a small classifier trained on the data (the FID idea with
a network that fits 8x8 digits), and the `Evaluator` that holds the data's reference statistics
and floor in every space."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .metrics import frechet_distance, gaussian_stats


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

    from ..checkpoint import save_json, save_tensors

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
