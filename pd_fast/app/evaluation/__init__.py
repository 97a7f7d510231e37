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

One module per idea, each importing only those above it:

- `metrics`: the Fréchet distance and Gaussian statistics; the bootstrap (replicates, intervals,
  ratio intervals).
- `knn`: k-NN radii, precision and recall, nearest-neighbour distances.
- `classifier`: the feature classifier (trained, cached), the `Evaluator` and `make_evaluator`.
- `memorisation`: the memorisation check.
- `scoring`: models sampled and scored (`timed_sample`, `evaluate_models`) and the report's
  sections built from their samples (`sample_statistics`).
- `baselines`: the teacher with training-free solvers (DPM-Solver++(2M), UniPC via diffusers)
  and their report section.
- `guided`: the guided job's evaluation (every w and N, with class accuracy and intervals).
- `targets`: the quality targets a report checks, with their verdicts.
"""

from __future__ import annotations

from .baselines import (
    BASELINES,
    UNIPC_TRAIN_STEPS,
    baseline_statistics,
    evaluate_baselines,
    unipc_sample,
)
from .classifier import Classifier, Evaluator, make_evaluator, train_classifier
from .knn import (
    knn_precision_recall,
    knn_radii,
    leave_one_out_distances,
    nearest_distances,
)
from .memorisation import memorisation_check
from .metrics import (
    bootstrap_frechet,
    bootstrap_interval,
    frechet_distance,
    frechet_distance_samples,
    gaussian_stats,
    ratio_interval,
)
from .scoring import (
    MODEL_FIELDS,
    evaluate_models,
    reference_precision_recall,
    sample_statistics,
    timed_sample,
)

__all__ = [
    # metrics
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_samples",
    "bootstrap_frechet",
    "bootstrap_interval",
    "ratio_interval",
    # knn
    "knn_radii",
    "knn_precision_recall",
    "nearest_distances",
    "leave_one_out_distances",
    # classifier
    "Classifier",
    "train_classifier",
    "Evaluator",
    "make_evaluator",
    # memorisation
    "memorisation_check",
    # scoring
    "MODEL_FIELDS",
    "timed_sample",
    "evaluate_models",
    "sample_statistics",
    "reference_precision_recall",
    # baselines
    "BASELINES",
    "UNIPC_TRAIN_STEPS",
    "unipc_sample",
    "evaluate_baselines",
    "baseline_statistics",
]
