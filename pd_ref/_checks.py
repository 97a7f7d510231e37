"""Input validation shared by the pd_ref modules: every bad input is a ValueError naming its argument."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

PARAMS = ("eps", "x", "v", "both")
WEIGHTINGS = ("constant", "snr", "snr_trunc", "snr+1")


def as_array(name: str, value: Any, min_ndim: int = 1) -> np.ndarray:
    """A float64 copy of `value`, which must be a finite real array with at least `min_ndim` dims."""
    arr = np.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def coef(name: str, value: Any, batch: int, ndim: int, positive: bool = False) -> np.ndarray:
    """A coefficient (float, 0-d or 1-D of length `batch`) shaped to broadcast over an
    array of `ndim` dims whose first axis is the batch."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a float or an array of floats") from err
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elif arr.ndim != 1 or arr.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} must be a float, 0-d, or 1-D of length {batch} (the batch), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got min {arr.min()}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got min {arr.min()}")
    return arr.reshape((-1,) + (1,) * (ndim - 1))


def param_name(param: str) -> str:
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    return param


def weighting_name(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting


def out_matches(out: np.ndarray, z: np.ndarray, param: str, name: str = "out") -> None:
    """The network output has z's shape, or twice its channels (axis 1) for param='both'."""
    if param == "both":
        if z.ndim < 2:
            raise ValueError(f"param='both' needs z with a channel axis (ndim >= 2), got {z.shape}")
        expected = (z.shape[0], 2 * z.shape[1]) + z.shape[2:]
    else:
        expected = z.shape
    if out.shape != expected:
        raise ValueError(f"{name} must have shape {expected} for param={param!r}, got {out.shape}")


def same_shape(name: str, arr: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if arr.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}, got {arr.shape}")


def before(name_s: str, sigma_s: np.ndarray, name_t: str, sigma_t: np.ndarray) -> None:
    """s < t, seen through sigma (strictly increasing in t for a variance-preserving schedule)."""
    if np.any(sigma_s >= sigma_t):
        raise ValueError(f"the step must go back in time (s < t), but {name_s} >= {name_t} somewhere")


def times(name: str, t: Any) -> np.ndarray:
    """Times as a float64 array, each in [0, 1]."""
    arr = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"{name} must lie in [0, 1], got range [{arr.min()}, {arr.max()}]")
    return arr


def steps_count(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def check_takes_labels(model: Any, name: str = "labels") -> None:
    """ValueError when `model` visibly cannot be called `model(z, t, labels)` (or `model(z, t,
    cond)`, `name="cond"`: its signature binds no third argument); models whose signature cannot
    be read are let through."""
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, None)
    except TypeError:
        what = "labels" if name == "labels" else "condition"
        raise ValueError(
            f"{name} given, but the model takes no {what}: a conditional model is called model(z, t, {name})"
        ) from None


def model_classes(model: Any) -> int | None:
    """The number of classes a model declares (`model.config["num_classes"]`), or None."""
    config = getattr(model, "config", None)
    classes = config.get("num_classes") if isinstance(config, dict) else None
    return classes if isinstance(classes, int) and not isinstance(classes, bool) else None


def labels_array(labels: Any, batch: int, classes: int | None = None) -> np.ndarray:
    """Class labels as an int64 (B,) array: an int (shared by the batch) or an integer array of
    shape () or (B,); -1 is the null label (docs/spec.md section 8), and with `classes` every other
    label lies below it."""
    arr = np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers (-1 for the null label), got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(batch, arr.item())
    elif arr.shape != (batch,):
        raise ValueError(f"labels must be an int or of shape ({batch},) (the batch), got shape {arr.shape}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"labels must fit in int64, got max {arr.max()}")
    if np.any(arr < -1):
        raise ValueError(f"labels must be >= -1 (-1 is the null label), got min {arr.min()}")
    if classes is not None and np.any(arr >= classes):
        raise ValueError(f"labels must be < {classes} (the model's classes) or -1, got max {arr.max()}")
    return arr.astype(np.int64)


def cond_arrays(cond: Any, null_cond: Any, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A tensor condition (docs/spec.md section 8) as float64 arrays: `cond` of shape (B, ...), and
    `null_cond` (or None) of cond's trailing shape with first dim 1 or B, broadcast to cond's shape."""
    cond = _cond_array("cond", cond)
    if cond.ndim < 1 or cond.shape[0] != batch:
        raise ValueError(f"cond must have shape (B, ...) with B = {batch} (z's batch), got {cond.shape}")
    if null_cond is None:
        return cond, None
    null_cond = _cond_array("null_cond", null_cond)
    if null_cond.shape[1:] != cond.shape[1:] or null_cond.ndim < 1 or null_cond.shape[0] not in (1, batch):
        want = ", ".join([f"1 or {batch}", *map(str, cond.shape[1:])])
        raise ValueError(f"null_cond must have shape ({want}) (cond's trailing shape), got {null_cond.shape}")
    return cond, np.broadcast_to(null_cond, cond.shape).copy()


def _cond_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # a ragged list
        arr = np.asarray(None)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must have a floating dtype, got {arr.dtype}")
    return as_array(name, arr, min_ndim=0)
