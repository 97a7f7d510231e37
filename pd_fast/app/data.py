"""Built-in data sets that need no download, and the user's own arrays.

Every set is a float32 tensor `x` of shape (N, ...) with values in [-1, 1] (the range the sampler's
`clip=True` assumes), plus integer labels where the set has them:

- `digits` (default): scikit-learn's 8x8 handwritten digits (1797 images, shipped with
  scikit-learn), pixel values 0..16 scaled to [-1, 1], shape (N, 1, 8, 8), labels 0..9.
- `moons`, `eight_gaussians`: 2-D toy sets (N, 2) drawn from `seed`.
- a path to a `.npy` or `.npz` file holding an array (N, D), (N, H, W) or (N, C, H, W) in [-1, 1]
  (a `.npz` with one array, or with keys `x` and optionally `y`/`labels`).
- a folder of PNG/JPEG images (read with Pillow, searched recursively, hidden files skipped), no labels.
- `cifar10:PATH`: the CIFAR-10 python archive (`cifar-10-python.tar.gz`), its 50000 training
  images (N, 3, 32, 32) and labels; nothing is downloaded.

Images become `pixel / 255 * 2 - 1` (16-bit grayscale: `/ 65535`). `resolution` (N, or (H, W))
center-crops every image to the largest region of that aspect ratio and resizes it (antialiased
bicubic, as Pillow's resize) to N x N (H x W) pixels; images smaller than that are upscaled, with
one warning per data set saying how many and their size. `channels` (1 or 3) converts color to
grayscale (ITU-R 601-2 luma, as Pillow's "L") or grayscale to RGB. Without `channels`, a folder
gives 1 channel when every image is grayscale, else 3 (an alpha channel is dropped).
"""

from __future__ import annotations

import math
import os
import pickle
import tarfile
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BUILTIN = ("digits", "moons", "eight_gaussians")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CIFAR10_PREFIX = "cifar10:"
#: the training batches inside the CIFAR-10 python archive
CIFAR10_MEMBERS = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
#: ITU-R 601-2 luma, the weights of Pillow's RGB -> "L"
LUMA = (0.299, 0.587, 0.114)
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N")
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


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
                    if "y" in keys and "labels" in keys:
                        raise ValueError(f"data: {path} holds both 'y' and 'labels'; keep one of them")
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
            raise ValueError(
                f"data labels must be integers of shape ({x.shape[0]},), got {labels.dtype} of shape "
                f"{labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int64).max):
            raise ValueError(
                f"data labels must be class indices >= 0, got range [{labels.min()}, {labels.max()}]"
            )
        lab = torch.from_numpy(labels.astype(np.int64))
    return Dataset(torch.from_numpy(x), lab, os.path.basename(path))


# ----- images ----------------------------------------------------------------------------------


Resolution = int | tuple[int, int]


def _check_resolution(resolution: Resolution | None) -> tuple[int, int] | None:
    """`resolution` (N, or (H, W)) as (H, W); None stays None."""
    if resolution is None:
        return None
    sides = tuple(resolution) if isinstance(resolution, (tuple, list)) else (resolution, resolution)
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in sides):
        raise ValueError(
            f"resolution must be an integer >= 2 (pixels a side) or a pair (height, width) of them, "
            f"got {resolution!r}"
        )
    return sides[0], sides[1]


def _check_channels(channels: int | None) -> int | None:
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return channels


def match_channels(x: Tensor, channels: int | None, name: str = "data") -> Tensor:
    """Images (N, C, H, W) with `channels` channels: RGB -> grayscale by the luma weights `LUMA`
    (which sum to 1, so this is the same map on [-1, 1] as on [0, 1]), grayscale -> RGB by
    repetition. None keeps C."""
    channels = _check_channels(channels)
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=x.dtype).reshape(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(
        f"{name} has {x.shape[1]} channels; only 1 (grayscale) and 3 (RGB) convert to {channels}"
    )


def crop_size(h: int, w: int, resolution: Resolution) -> tuple[int, int]:
    """The largest (height, width) inside an h x w image with the aspect ratio of `resolution`
    (N: a square of side min(h, w))."""
    rh, rw = _check_resolution(resolution)
    if h * rw >= w * rh:  # taller than the target: keep the width
        return max(1, min(h, round(w * rh / rw))), w
    return h, max(1, min(w, round(h * rw / rh)))


def center_crop_resize(x: Tensor, resolution: Resolution) -> Tensor:
    """Images (N, C, H, W) center-cropped to `crop_size` (the aspect ratio of `resolution`: N, a
    square; (H, W)) and resized to it by antialiased bicubic interpolation, clamped into [-1, 1]."""
    size = _check_resolution(resolution)
    h, w = x.shape[-2:]
    ch, cw = crop_size(h, w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[..., top : top + ch, left : left + cw]
    if (ch, cw) == size:
        return x.contiguous()
    out = torch.nn.functional.interpolate(
        x.float(), size=size, mode="bicubic", antialias=True, align_corners=False
    )
    return out.clamp(-1.0, 1.0).to(x.dtype)


def upscaled(h: int, w: int, resolution: Resolution) -> bool:
    """Whether an h x w image is smaller than `resolution` (its crop is upscaled in some side)."""
    ch, cw = crop_size(h, w, resolution)
    rh, rw = _check_resolution(resolution)
    return ch < rh or cw < rw


def warn_upscaled(sizes: Counter, total: int, resolution: Resolution, name: str) -> None:
    """One warning for the images of a data set that are smaller than `resolution`: `sizes` counts
    them by (height, width); nothing when it is empty."""
    count = sum(sizes.values())
    if not count:
        return
    rh, rw = _check_resolution(resolution)
    shown = ", ".join(f"{h}x{w}" for (h, w), _ in sizes.most_common(3)) + (", ..." if len(sizes) > 3 else "")
    warnings.warn(
        f"data {name}: {count} of {total} images ({shown}, height x width) are smaller than the resolution "
        f"{rh}x{rw} and are upscaled to it (blurred)",
        stacklevel=3,
    )


def fit_images(x: Tensor, resolution: Resolution | None, channels: int | None, name: str = "data") -> Tensor:
    """`match_channels` then, with a `resolution`, `center_crop_resize` (warning once if the images
    are smaller, `warn_upscaled`); flat data (N, D) only passes when neither is asked for."""
    if resolution is None and channels is None:
        return x
    if x.ndim != 4:
        raise ValueError(
            f"{name} has examples of shape {tuple(x.shape[1:])}, not images (C, H, W): "
            "resolution and channels apply to images only"
        )
    x = match_channels(x, channels, name)
    if resolution is None:
        return x
    h, w = x.shape[-2:]
    if upscaled(h, w, resolution):
        warn_upscaled(Counter({(h, w): len(x)}), len(x), resolution, name)
    return center_crop_resize(x, resolution)


def _image_files(folder: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(root, n))
    return files


def _open_image(path: str):  # noqa: ANN202 (a PIL image; Pillow is imported lazily)
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"data: cannot read image {path}: {err}") from err
    return image


def _image_array(image, channels: int) -> np.ndarray:  # noqa: ANN001
    """A PIL image as float32 (channels, H, W) in [0, 1]."""
    if image.mode in _WIDE_MODES:  # 16-bit grayscale
        arr = np.asarray(image, dtype=np.float32)[None] / 65535.0
        return np.repeat(arr, channels, axis=0) if channels == 3 else arr
    arr = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_image_folder(
    folder: str, resolution: Resolution | None = None, channels: int | None = None
) -> Dataset:
    """The PNG/JPEG images under `folder` (recursively, sorted, hidden files skipped) as (N, C, H, W)
    in [-1, 1] (see the module docstring for `resolution` and `channels`), no labels.

    ValueError naming the file: an image Pillow cannot read; images of different sizes when no
    `resolution` is given; a folder without images.
    """
    resolution, channels = _check_resolution(resolution), _check_channels(channels)
    if not os.path.isdir(folder):
        raise ValueError(f"data: {folder} is not a folder")
    files = _image_files(folder)
    if not files:
        raise ValueError(f"data: folder {folder} holds no PNG or JPEG images ({', '.join(IMAGE_EXTENSIONS)})")
    if channels is None:
        gray = True
        for f in files:
            with _open_image(f) as image:
                gray = gray and image.mode in _GRAY_MODES
        channels = 1 if gray else 3
    images, first, small = [], None, Counter()
    for f in files:
        with _open_image(f) as image:
            arr = _image_array(image, channels)
        x = torch.from_numpy(arr * 2.0 - 1.0)[None]
        if resolution is not None:
            small.update([tuple(x.shape[-2:])] if upscaled(*x.shape[-2:], resolution) else [])
            x = center_crop_resize(x, resolution)
        elif first is None:
            first = (f, x.shape[-2:])
        elif x.shape[-2:] != first[1]:
            (h0, w0), (h, w) = first[1], x.shape[-2:]
            raise ValueError(
                f"data: images differ in size: {first[0]} is {w0}x{h0}, {f} is {w}x{h}; pass --resolution "
                "to center-crop and resize them all"
            )
        images.append(x)
    if resolution is not None:
        warn_upscaled(small, len(files), resolution, folder)
    x = torch.cat(images).clamp(-1.0, 1.0).contiguous()
    return Dataset(x, None, os.path.basename(os.path.normpath(folder)))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays only: a CIFAR batch needs nothing else, and
    nothing else can run code while it loads. Arrays come as `_reconstruct` (pickle protocols <= 4;
    protocol 2 from Python 3 wraps their bytes in `_codecs.encode`) or `_frombuffer` (protocol 5);
    NumPy 2 names its core `numpy._core`, NumPy 1 `numpy.core`."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core") :]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _cifar_batch(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        f = tar.extractfile(member)
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, tarfile.TarError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"data: cannot read {where}: {err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"data: {where} is not a CIFAR-10 batch (a dict with data and labels)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = (data.dtype, data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"data: {where} has no 'data' array of uint8 (n, 3072), got {got}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"data: {where} has no 'labels' list of {data.shape[0]} classes in 0..9")
    return data, labels


def load_cifar10(archive: str, resolution: Resolution | None = None, channels: int | None = None) -> Dataset:
    """CIFAR-10's training set from the python archive (`cifar-10-python.tar.gz`, as distributed):
    the batches `cifar-10-batches-py/data_batch_1..5`, images (N, 3, 32, 32) in [-1, 1], labels 0..9.
    ValueError naming the archive (and the member) for a missing file, another layout, or a batch
    that is not CIFAR's."""
    resolution, channels = _check_resolution(resolution), _check_channels(channels)
    if not os.path.isfile(archive):
        raise ValueError(
            f"data: cifar10:{archive}: no such file (give the CIFAR-10 python archive, "
            "cifar-10-python.tar.gz)"
        )
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"data: {archive} is not a tar archive (cifar-10-python.tar.gz): {err}") from err
    with tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        missing = [m for m in CIFAR10_MEMBERS if m not in members]
        if missing:
            raise ValueError(
                f"data: {archive} is not the CIFAR-10 python archive: it lacks {missing[0]} (expected "
                f"{', '.join(CIFAR10_MEMBERS)})"
            )
        batches = [_cifar_batch(tar, members[m], f"{archive}:{m}") for m in CIFAR10_MEMBERS]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 127.5 - 1.0)
    x = fit_images(x, resolution, channels, name=f"cifar10:{archive}")
    return Dataset(x.contiguous(), torch.from_numpy(labels), "cifar10")


def load_data(
    name_or_path: str = "digits",
    n: int = 4096,
    seed: int = 0,
    resolution: Resolution | None = None,
    channels: int | None = None,
) -> Dataset:
    """The data set `name_or_path`: 'digits' (default), 'moons', 'eight_gaussians' (`n` points drawn
    from `seed`), a `.npy`/`.npz` path (see `validate_array` for what is accepted), a folder of
    images, or `cifar10:PATH`. `resolution` and `channels` (images only) as in the module docstring."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"data must be a name or a path, got {name_or_path!r}")
    _check_resolution(resolution)
    _check_channels(channels)
    if name_or_path.lower().startswith(CIFAR10_PREFIX):
        return load_cifar10(name_or_path[len(CIFAR10_PREFIX) :], resolution, channels)
    if os.path.isdir(name_or_path):
        return load_image_folder(name_or_path, resolution, channels)
    key = name_or_path.lower().replace("-", "_")
    if key == "digits":
        data = digits()
    elif key in ("moons", "two_moons"):
        data = moons(n=n, seed=seed)
    elif key in ("eight_gaussians", "8gaussians", "8_gaussians"):
        data = eight_gaussians(n=n, seed=seed)
    else:
        data = load_array(name_or_path)
    if resolution is None and channels is None:
        return data
    return Dataset(
        fit_images(data.x, resolution, channels, name=data.name).contiguous(), data.labels, data.name
    )
