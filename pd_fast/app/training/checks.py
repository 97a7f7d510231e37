"""Input checks of the training functions: data, labels, the numbers of a stage's settings, the
schedule, the rounds' step counts and the model to train; each raises ValueError naming the argument."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...schedules import CosineSchedule, DiscreteSchedule


def check_data(data: Any, name: str = "data", bounded: bool = True) -> Tensor:
    """`data` as a floating tensor (N, ...), N >= 1, at least 2 dims, finite, and in [-1, 1] where
    `bounded` (images; latents, docs/spec.md section 10, are not); ValueError naming `name` otherwise."""
    if not isinstance(data, Tensor):
        try:
            data = torch.as_tensor(np.asarray(data))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{name} must be a tensor or array of floats (N, ...), got {type(data)!r}"
            ) from err
    if not data.is_floating_point():
        raise ValueError(f"{name} must be floating point (N, ...) in [-1, 1], got dtype {data.dtype}")
    if data.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, ...) with at least 2 dims (N examples of >= 1 feature), "
            f"got shape {tuple(data.shape)}"
        )
    if data.shape[0] < 1 or data.numel() == 0:
        raise ValueError(f"{name} must hold at least one non-empty example, got shape {tuple(data.shape)}")
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        bad = int((~finite).reshape(data.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or infinite values (first in example {bad})")
    lo, hi = float(data.min()), float(data.max())
    if bounded and (lo < -1.0 or hi > 1.0):
        raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:.6g}, {hi:.6g}]")
    return data


def data_fingerprint(data: Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and values (read on the CPU), to recognise a run's data."""
    x = data.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{x.dtype}|{tuple(x.shape)}|".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().data if x.numel() else b"")
    return h.hexdigest()


def check_labels(labels: Any, n: int, name: str = "labels") -> Tensor:
    """`labels` as an int64 CPU tensor (n,) of class labels >= 0, one per example of the data;
    ValueError naming `name` otherwise."""
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{name} must be a tensor or array of integers ({n},), got {type(labels)!r}"
            ) from err
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class labels, got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one label per example), got {tuple(labels.shape)}")
    labels = labels.detach().to("cpu", torch.int64).contiguous()
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class labels >= 0, got min {int(labels.min())}")
    return labels


def check_cond(cond: Any, n: int, name: str = "cond") -> Tensor:
    """`cond` as a float32 CPU tensor (n, ...): one tensor condition per example of the data (e.g. a
    prompt's embeddings (L, D), docs/spec.md section 10); ValueError naming `name` otherwise."""
    if not isinstance(cond, Tensor) or not cond.is_floating_point():
        what = f"dtype {cond.dtype}" if isinstance(cond, Tensor) else type(cond).__name__
        raise ValueError(f"{name} must be a floating tensor ({n}, ...), one condition an example, got {what}")
    if cond.ndim < 2 or cond.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n}, ...), one condition an example, got {tuple(cond.shape)}"
        )
    return cond.detach().to("cpu", torch.float32).contiguous()


def check_null_cond(null_cond: Any, cond: Tensor) -> Tensor:
    """The null condition of `cond` (the empty prompt's embedding) as float32 (1, ...) on the CPU."""
    shape = tuple(cond.shape[1:])
    if not isinstance(null_cond, Tensor) or not null_cond.is_floating_point():
        raise ValueError(f"null_cond must be a floating tensor of shape {shape} or (1, *{shape}) beside cond")
    if tuple(null_cond.shape) not in (shape, (1, *shape)):
        raise ValueError(f"null_cond must have shape {shape} or (1, *{shape}), got {tuple(null_cond.shape)}")
    return null_cond.detach().to("cpu", torch.float32).reshape(1, *shape).contiguous()


def conditions(labels: Any, cond: Any, n: int) -> Tensor | None:
    """A stage's per-example conditions: integer `labels` (n,) or tensor `cond` (n, ...), or None;
    ValueError if both are given."""
    if labels is not None and cond is not None:
        raise ValueError("pass labels or cond, not both")
    if cond is not None:
        return check_cond(cond, n)
    return None if labels is None else check_labels(labels, n)


def _labels_fingerprint(labels: Tensor | None, out_dir: Any) -> str | None:
    """What a conditional stage's config records of its labels: their fingerprint when the run
    writes checkpoints, "" when it does not; None for an unconditional stage."""
    if labels is None:
        return None
    return data_fingerprint(labels) if out_dir is not None else ""


def _unit_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def _w_range(w_min: Any, w_max: Any) -> tuple[float, float]:
    for name, v in (("w_min", w_min), ("w_max", w_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if float(w_max) < float(w_min):
        raise ValueError(f"w_max must be >= w_min, got w_min={w_min!r}, w_max={w_max!r}")
    return float(w_min), float(w_max)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _schedule(schedule: Any) -> CosineSchedule | DiscreteSchedule:
    if schedule is None:
        return CosineSchedule()
    if not isinstance(schedule, (CosineSchedule, DiscreteSchedule)):
        raise ValueError(f"schedule must be a CosineSchedule or a DiscreteSchedule, got {type(schedule)!r}")
    return schedule


def _round_steps(start_steps: Any, end_steps: Any) -> tuple[int, ...]:
    """The student step counts of the rounds: start_steps / 2, start_steps / 4, ..., end_steps."""
    start_steps = _positive_int("start_steps", start_steps, 2)
    end_steps = _positive_int("end_steps", end_steps)
    ratio = start_steps // end_steps
    if start_steps % end_steps or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"start_steps must be end_steps times a power of two >= 2, got start_steps={start_steps}, "
            f"end_steps={end_steps}"
        )
    steps, out = start_steps, []
    while steps > end_steps:
        steps //= 2
        out.append(steps)
    return tuple(out)


def _model_device(model: nn.Module, name: str) -> tuple[torch.device, torch.dtype]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module called as {name}(z, t), got {type(model)!r}")
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ValueError(f"{name} has no parameters to train")
    return p.device, (p.dtype if p.is_floating_point() else torch.float32)


def _trainable(model: nn.Module, name: str) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name} has no parameters with requires_grad=True")
    return params
