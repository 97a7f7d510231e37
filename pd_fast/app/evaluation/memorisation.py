"""The memorisation check: each sample's nearest-neighbour distance to the training set against a
held-out example's (leave-one-out over the training set)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor

from .classifier import Evaluator
from .knn import leave_one_out_distances, nearest_distances


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
