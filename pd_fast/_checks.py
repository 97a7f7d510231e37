"""Input validation shared by the pd_fast modules (every bad input is a ValueError naming its
argument), the names of the parameterizations and weightings, and the one broadcast helper.

The same checks as `pd_ref/_checks.py`, on torch tensors, plus device and dtype agreement. What
is checked, and what it costs:
- shapes, dtypes and devices of the big tensors: metadata only, no device work;
- the values of the per-example coefficients (floats, 0-d or (B,) tensors) and of `t`: one
  min/max reduction and one host read per call (`check_coefs`, `times`), never a per-element
  `.item()`. Coefficients given on the CPU (or made by this package, which keeps their CPU copy:
  `remember_host_copy`) are checked on the CPU: no device sync;
- not checked (pd_ref checks it): finiteness of the big tensors `z`, `out`, `noise`, ... That would
  be a full extra pass over memory on the hot path; non-finite inputs give non-finite outputs.
"""

from __future__ import annotations

import inspect
import math
import operator
import weakref
from typing import Any

import numpy as np
import torch

PARAMS = ("eps", "x", "v", "both")
WEIGHTINGS = ("constant", "snr", "snr_trunc", "snr+1")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tensor(name: str, value: Any, min_ndim: int = 1) -> torch.Tensor:
    """`value` itself, which must be an fp32/fp16/bf16 tensor with at least `min_ndim` dims."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")
    return value


def like(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """`value` lives on `ref`'s device and has `ref`'s dtype."""
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}: use one device")
    if value.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {value.dtype} but {ref_name} has {ref.dtype}: use one dtype")


def same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}"
        )


def out_matches(out: torch.Tensor, z: torch.Tensor, param: str, name: str = "out") -> None:
    """The network output has z's shape, or twice its channels (axis 1) for param='both'."""
    if param == "both":
        if z.ndim < 2:
            raise ValueError(f"param='both' needs z with a channel axis (ndim >= 2), got {tuple(z.shape)}")
        expected = (z.shape[0], 2 * z.shape[1]) + tuple(z.shape[2:])
    else:
        expected = tuple(z.shape)
    if tuple(out.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} for param={param!r}, got {tuple(out.shape)}")


def coef(name: str, value: Any, batch: int, device: torch.device) -> torch.Tensor:
    """A coefficient (float, 0-d or 1-D of length 1 or `batch`) as a float64 (B,) tensor on `device`.

    Tensors may live on `device` or on the CPU (schedules evaluated at float times return CPU
    tensors); values are checked later, all at once, by `check_coefs`.
    """
    if isinstance(value, torch.Tensor) and value.dtype == torch.float64 and value.shape == (batch,):
        if value.device == device:
            return value.detach()  # already what the rest makes of it
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be real, got dtype {value.dtype}")
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{name} is on {value.device} but the data is on {device}: use one device")
        arr = value.detach()
    else:
        try:
            arr = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a float or a tensor of floats") from err
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elif arr.ndim != 1 or arr.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} must be a float, 0-d, or 1-D of length {batch} (the batch), got shape {tuple(arr.shape)}"
        )
    return arr.to(device=device, dtype=torch.float64).expand(batch)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_coefs(
    positive: dict[str, torch.Tensor],
    nonnegative: dict[str, torch.Tensor] | None = None,
    before: tuple[str, str] | None = None,
) -> None:
    """Finite (in float32) and > 0 (`positive`) or >= 0 (`nonnegative`), and, for `before = (name_s, name_t)`,
    sigma_s < sigma_t (s < t, seen through sigma, strictly increasing in t). The coefficients are
    (B,) float64 tensors on one device; one min/max reduction over all of them (NaN propagates to
    both) and one host read."""
    nonnegative = nonnegative or {}
    named = {**positive, **nonnegative}
    rows = list(named.values())
    if before is not None:  # sigma_t - sigma_s > 0 exactly when sigma_s < sigma_t (finite floats)
        rows.append(named[before[1]] - named[before[0]])
    stacked = torch.stack(rows)  # (k, B)
    if stacked.shape[1] == 0:
        return
    low, high = torch.stack(torch.aminmax(stacked, dim=1)).tolist()
    names = list(named)
    for k, name in enumerate(names):
        if not (math.isfinite(low[k]) and math.isfinite(high[k])):
            raise ValueError(f"{name} must be finite, got {named[name].tolist()}")
        size = max(-low[k], high[k])
        if size > FLOAT32_MAX:  # the kernels and the guide compute in fp32
            raise ValueError(
                f"{name} must be finite in float32 (|{name}| <= {FLOAT32_MAX:.4g}), got {size:.4g}"
            )
    for k, name in enumerate(names):
        if low[k] <= 0 if name in positive else low[k] < 0:
            relation = "> 0" if name in positive else ">= 0"
            raise ValueError(f"{name} must be {relation}, got min {low[k]}")
    if before is not None and not low[-1] > 0:
        raise ValueError(f"the step must go back in time (s < t), but {before[0]} >= {before[1]} somewhere")


#: CPU copies of coefficient tensors that this package sent to a device: id -> (weak reference,
#: version counter at the time, float64 CPU copy)
_HOST_COPIES: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


def remember_host_copy(value: torch.Tensor, host: torch.Tensor) -> None:
    """Record that the device tensor `value` holds the float64 CPU tensor `host`, so that a later
    check of `value` (`host_copy`) reads the CPU copy instead of syncing with the device. The entry
    dies with `value` and is ignored once `value` is modified in place."""
    if value.is_inference() or value.device.type == "cpu":
        return  # inference tensors have no version counter; CPU tensors need no copy
    key = id(value)

    def forget(ref: weakref.ref, key: int = key) -> None:
        if _HOST_COPIES.get(key, (None,))[0] is ref:
            del _HOST_COPIES[key]

    _HOST_COPIES[key] = (weakref.ref(value, forget), value._version, host)


def host_copy(value: Any) -> torch.Tensor | None:
    """The CPU copy recorded by `remember_host_copy` for `value` (unchanged since), else None."""
    entry = _HOST_COPIES.get(id(value))
    if entry is None or entry[0]() is not value or value._version != entry[1]:
        return None
    return entry[2]


def coefs_for(values: dict[str, Any], batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """`coef` of each named value, as float64 (B,) tensors that all live on the CPU when every
    value is a float, a CPU tensor or a device tensor with a host copy (so that their checks and
    their arithmetic need no device sync), and all on `device` otherwise."""
    host = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            value = host_copy(value) if value.device == device else None
            if value is None:
                return {name: coef(name, v, batch, device) for name, v in values.items()}
        host[name] = value
    cpu = torch.device("cpu")
    return {name: coef(name, value, batch, cpu) for name, value in host.items()}


def to_device(host: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor (the per-example coefficients of a call, stacked) cast to `dtype` on `device`:
    one copy (from pinned memory on CUDA, not blocking the host) rather than one blocking copy
    per coefficient. A tensor already on `device` is only cast."""
    block = host.to(dtype)
    if block.device == device or device.type == "cpu" or block.device.type != "cpu":
        return block.to(device)
    if device.type == "cuda":
        block = block.pin_memory()
    return block.to(device, non_blocking=True)


def per_example(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (B,) per-example coefficient shaped (B, 1, ..., 1) to broadcast over a batch of `ndim`
    dims (its dtype unchanged)."""
    return c.reshape((-1,) + (1,) * (ndim - 1))


def param_name(param: str) -> str:
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    return param


def weighting_name(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting


def times(name: str, t: Any) -> torch.Tensor:
    """Times as a float64 tensor (on t's device; CPU for floats), each in [0, 1]."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
        # float64 without grad is returned as it is, so that its host copy still applies downstream
        arr = t if t.dtype == torch.float64 and not t.requires_grad else t.detach().to(torch.float64)
    else:
        try:
            arr = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a float or a tensor of floats") from err
    if arr.numel():
        # a device tensor with a host copy (`remember_host_copy`) is checked on that copy: no sync
        host = host_copy(t) if arr.device.type != "cpu" else None
        if arr.device.type == "cpu" or host is not None:  # NumPy's min and max of a few floats
            values = (arr if host is None else host).numpy()  # cost a fraction of torch's
            low, high = float(values.min()), float(values.max())  # NaN propagates to both
        else:
            low, high = torch.stack(torch.aminmax(arr)).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name} must be finite")
        if low < 0 or high > 1:
            raise ValueError(f"{name} must lie in [0, 1], got range [{low}, {high}]")
    return arr


def batch_times(t: Any, batch: int) -> torch.Tensor:
    """`times("t", t)`, which must be a float, 0-d, or 1-D of length 1 or `batch`."""
    t = times("t", t)
    if t.ndim > 1 or t.numel() not in (1, batch):
        raise ValueError(
            f"t must be a float, 0-d, or 1-D of length {batch} (the batch), got {tuple(t.shape)}"
        )
    return t


def steps_count(steps: Any) -> int:
    """An integer >= 1 (Python or NumPy integer, or an integer 0-d tensor; not a bool or a float)."""
    if isinstance(steps, bool) or not hasattr(steps, "__index__") or operator.index(steps) < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return operator.index(steps)


def label_rules(model: Any) -> tuple[bool, int | None]:
    """What `model` allows as labels: whether it can be called `model(z, t, labels)` (False only
    when its signature visibly binds no third argument; True when it cannot be read), and the
    number of classes it declares (`model.config["num_classes"]`, as the built-in networks do) or
    None. `inspect.signature` costs tens of microseconds: a `Sampler` works it out once."""
    takes = True
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        signature = None  # unreadable: let it through
    if signature is not None:
        try:
            signature.bind(None, None, None)
        except TypeError:
            takes = False
    config = getattr(model, "config", None)
    classes = config.get("num_classes") if isinstance(config, dict) else None
    return takes, classes if isinstance(classes, int) and not isinstance(classes, bool) else None


def labels_tensor(labels: Any, batch: int, device: torch.device, classes: int | None = None) -> torch.Tensor:
    """Class labels as an int64 (B,) tensor on `device`: an int (shared by the batch), or integers of
    shape () or (B,) (a tensor on `device` or the CPU, a NumPy array or a list); -1 is the null
    label (docs/spec.md section 8), and with `classes` every other label lies below it. One host
    sync (the range check)."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers (-1 for the null label), got dtype {labels.dtype}")
        if labels.device != device and labels.device.type != "cpu":
            raise ValueError(f"labels is on {labels.device} but the data is on {device}: use one device")
        arr = labels.detach()
    else:  # an int, a NumPy integer or an integer array / list, as pd_ref takes them
        try:
            values = np.asarray(labels)
        except ValueError:  # a ragged list
            values = np.asarray(None)
        if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"labels must be an int or integers (-1 for the null label), got {type(labels).__name__} "
                f"of dtype {values.dtype}"
            )
        if values.size and values.dtype.kind == "u" and values.max() > np.iinfo(np.int64).max:
            raise ValueError(f"labels must fit in int64, got max {values.max()}")
        arr = torch.from_numpy(values.astype(np.int64))
    if arr.ndim == 0:
        arr = arr.expand(batch)
    elif tuple(arr.shape) != (batch,):
        raise ValueError(
            f"labels must be an int or of shape ({batch},) (the batch), got shape {tuple(arr.shape)}"
        )
    arr = arr.to(device=device, dtype=torch.int64)
    low, high = torch.stack([(arr < -1).any(), (arr >= (classes or 0)).any()]).tolist()
    if low:
        raise ValueError(f"labels must be >= -1 (-1 is the null label), got min {arr.min().item()}")
    if classes is not None and high:
        raise ValueError(
            f"labels must be < {classes} (the model's classes) or -1, got max {arr.max().item()}"
        )
    return arr.contiguous()


def cond_tensors(cond: Any, null_cond: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A tensor condition (docs/spec.md section 8; e.g. prompt embeddings (B, L, D)): `cond`, a
    floating tensor (B, ...) on z's device, and `null_cond` (or None) of cond's trailing shape, dtype
    and device with first dim 1 or B, broadcast to cond's shape. Metadata only: no device work
    beyond that broadcast, no host sync; the values are the model's business."""
    batch = z.shape[0]
    cond = _cond_tensor("cond", cond, z)
    if cond.ndim < 1 or cond.shape[0] != batch:
        raise ValueError(
            f"cond must have shape (B, ...) with B = {batch} (z's batch), got {tuple(cond.shape)}"
        )
    if null_cond is None:
        return cond, None
    null_cond = _cond_tensor("null_cond", null_cond, z)
    if null_cond.shape[1:] != cond.shape[1:] or null_cond.ndim < 1 or null_cond.shape[0] not in (1, batch):
        want = ", ".join([f"1 or {batch}", *map(str, cond.shape[1:])])
        raise ValueError(
            f"null_cond must have shape ({want}) (cond's trailing shape), got {tuple(null_cond.shape)}"
        )
    if null_cond.dtype != cond.dtype:
        raise ValueError(f"null_cond has dtype {null_cond.dtype} but cond has {cond.dtype}: use one dtype")
    null_cond = null_cond.detach()
    if null_cond.shape[0] != batch:  # one null condition for the batch (e.g. the empty prompt's)
        null_cond = null_cond.expand(cond.shape).contiguous()
    return cond.detach(), null_cond


def _cond_tensor(name: str, value: Any, z: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {value.dtype}")
    if value.device != z.device:
        raise ValueError(f"{name} is on {value.device} but z is on {z.device}: use one device")
    return value
