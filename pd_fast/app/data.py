"""Built-in data sets that need no download, and the user's own arrays.

Every set is a float32 tensor `x` of shape (N, ...) with values in [-1, 1] (the range the sampler's
`clip=True` assumes), plus integer labels where the set has them:

- `digits` (default): scikit-learn's 8x8 handwritten digits (1797 images, shipped with
  scikit-learn), pixel values 0..16 scaled to [-1, 1], shape (N, 1, 8, 8), labels 0..9.
- `moons`, `eight_gaussians`: 2-D toy sets (N, 2) drawn from `seed`.
- a path to a `.npy` or `.npz` file holding an array (N, D), (N, H, W) or (N, C, H, W) in [-1, 1]
  (a `.npz` with one array, or with keys `x` and optionally `y`/`labels`).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BUILTIN = ("digits", "moons", "eight_gaussians")


@dataclass
class Dataset:
    """`x`: float32 (N, ...) in [-1, 1]; `labels`: int64 (N,) or None; `name`: where it came from."""

    x: Tensor
    labels: Tensor | None
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels (1797, 64) and labels, read from the CSV that ships inside scikit-learn
    (what `sklearn.datasets.load_digits` reads) without importing scikit-learn, whose import
    costs seconds; `load_digits` is the fallback if the file is not where it is expected."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            if table.shape == (1797, 65):
                return table[:, :64], table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target.astype(np.int64)


def digits() -> Dataset:
    """scikit-learn's 8x8 digits: `x = pixel / 8 - 1` in [-1, 1], shape (1797, 1, 8, 8), labels 0..9."""
    pixels, labels = _digits_arrays()
    x = torch.from_numpy(pixels.astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8)
    return Dataset(x.contiguous(), torch.from_numpy(labels), "digits")


def moons(n: int = 4096, seed: int = 0, noise: float = 0.06) -> Dataset:
    """Two interleaving half circles (scikit-learn's `make_moons`), affinely mapped into [-1, 1]^2.

    Raw moons span x in [-1, 2], y in [-0.5, 1]; `(x - 0.5) / 1.7`, `(y - 0.25) / 1.7` keeps
    them inside [-1, 1] with margin for the noise (points outside are clipped). Labels: the moon.
    """
    from sklearn.datasets import make_moons

    _check_count(n)
    pts, lab = make_moons(n_samples=n, noise=noise, random_state=seed)
    pts = np.stack([(pts[:, 0] - 0.5) / 1.7, (pts[:, 1] - 0.25) / 1.7], axis=1)
    x = torch.from_numpy(np.clip(pts, -1.0, 1.0).astype(np.float32))
    return Dataset(x, torch.from_numpy(lab.astype(np.int64)), "moons")


def eight_gaussians(n: int = 4096, seed: int = 0, radius: float = 0.7, std: float = 0.06) -> Dataset:
    """Eight Gaussians of std `std` centred on a circle of radius `radius` (angles k*pi/4),
    clipped to [-1, 1]. Labels: the component k."""
    _check_count(n)
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, size=n)
    centers = radius * np.stack([np.cos(k * math.pi / 4), np.sin(k * math.pi / 4)], axis=1)
    pts = centers + std * rng.standard_normal((n, 2))
    x = torch.from_numpy(np.clip(pts, -1.0, 1.0).astype(np.float32))
    return Dataset(x, torch.from_numpy(k.astype(np.int64)), "eight_gaussians")


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")


def validate_array(x: np.ndarray, name: str = "data") -> np.ndarray:
    """Check user data and return it as float32 (N, D) or (N, C, H, W).

    Raises ValueError (naming `name`) for a non-numeric dtype, fewer than 2 examples, a shape other
    than (N, D), (N, H, W) or (N, C, H, W) ((N, H, W) gets a channel axis), NaN or inf, or values
    outside [-1, 1].
    """
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if x.ndim < 2 or x.ndim > 4:
        raise ValueError(
            f"{name} must have shape (N, D), (N, H, W) or (N, C, H, W), got shape {x.shape} "
            "(reshape it first)"
        )
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 examples, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 or hi > 1.0:
        raise ValueError(
            f"{name} values must lie in [-1, 1], got range [{lo:g}, {hi:g}] "
            "(scale it, e.g. x / 127.5 - 1 for 8-bit images)"
        )
    if x.ndim == 3:
        x = x[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def load_array(path: str) -> Dataset:
    """A user data set from a `.npy` file, or a `.npz` with one array or keys `x` [+ `y`/`labels`]."""
    if not os.path.isfile(path):
        raise ValueError(f"data: no such file {path!r} (built-in sets: {', '.join(BUILTIN)})")
    labels = None
    if not (path.endswith(".npy") or path.endswith(".npz")):
        raise ValueError(f"data must be a built-in name {BUILTIN} or a .npy/.npz path, got {path!r}")
    with open(path, "rb") as f:
        head = f.read(6)
    if path.endswith(".npy") and head != b"\x93NUMPY":
        raise ValueError(f"data: {path} is not a .npy file ({'empty' if not head else 'no NumPy header'})")
    if path.endswith(".npz") and not zipfile.is_zipfile(path):
        raise ValueError(f"data: {path} is not a .npz file ({'empty' if not head else 'not a zip archive'})")
    try:
        if path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                if "x" in keys:
                    arr = f["x"]
                    for key in ("y", "labels"):
                        if key in keys:
                            labels = np.asarray(f[key])
                elif len(keys) == 1:
                    arr = f[keys[0]]
                else:
                    raise ValueError(f"data: {path} holds arrays {keys}; name the data 'x' (labels 'y')")
    except (EOFError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"data: {path} is damaged or truncated ({err})") from err
    except ValueError as err:
        if str(err).startswith("data:"):
            raise
        raise ValueError(f"data: {path} cannot be read ({' '.join(str(err).split())})") from err
    x = validate_array(arr, name=f"data ({os.path.basename(path)})")
    lab = None
    if labels is not None:
        if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"data labels must be integers of shape ({x.shape[0]},), got {labels.shape}")
        lab = torch.from_numpy(labels.astype(np.int64))
    return Dataset(torch.from_numpy(x), lab, os.path.basename(path))


def load_data(name_or_path: str = "digits", n: int = 4096, seed: int = 0) -> Dataset:
    """The data set `name_or_path`: 'digits' (default), 'moons', 'eight_gaussians' (`n` points drawn
    from `seed`), or a `.npy`/`.npz` path (see `validate_array` for what is accepted)."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"data must be a name or a path, got {name_or_path!r}")
    key = name_or_path.lower().replace("-", "_")
    if key == "digits":
        return digits()
    if key in ("moons", "two_moons"):
        return moons(n=n, seed=seed)
    if key in ("eight_gaussians", "8gaussians", "8_gaussians"):
        return eight_gaussians(n=n, seed=seed)
    return load_array(name_or_path)
