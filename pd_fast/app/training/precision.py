"""Mixed precision of a stage, `precision` in {"fp32", "bf16", "fp16"}: the trained network's forward
under `torch.autocast` with fp32 master weights and Adam states, fp16's loss scaler (checkpointed with
the optimizer), and the half copy that the targets' frozen networks run as. "fp32" changes nothing."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _precision(value: Any) -> str:
    """`value` if it names a precision; ValueError naming `precision` otherwise."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {value!r}")
    return value


def _check_master_weights(model: nn.Module, precision: str, name: str) -> None:
    """Half precision trains fp32 master weights under autocast (which leaves float64 ops alone and
    cannot unscale fp16 gradients): ValueError unless `model`'s floating parameters are float32."""
    if PRECISIONS[precision] is None:
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        found = ", ".join(sorted(str(d) for d in dtypes))
        raise ValueError(
            f"precision={precision!r} trains float32 master weights under autocast: {name}'s "
            f"parameters must be float32, got {found}"
        )


def _autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Where the trained network's forward runs: under `torch.autocast` in the half dtype (its
    backward then follows the forward's dtypes), or nothing at all for fp32."""
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype)


def _adam(params: list[nn.Parameter], lr: float, precision: str) -> torch.optim.Optimizer:
    """A stage's Adam. fp16's is the fused one: it takes the loss scaler's inf/NaN flag on the device
    and skips there, where a plain Adam's `scaler.step` reads the flag back (a host sync per update)."""
    if precision == "fp16":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def _scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (a fresh one per stage and per distillation round, as is Adam); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def _load_scaler(scaler: torch.amp.GradScaler | None, info: dict[str, Any]) -> None:
    """Set `scaler` back to the state recorded in a training state's `info` (written by `_save_state`)."""
    if scaler is not None:
        scaler.load_state_dict(info["scaler"])


def _frozen(model: nn.Module, precision: str) -> Callable[..., Tensor]:
    """How a stage calls a network of its targets (no grad): `model` itself for fp32; otherwise a
    copy of it with its parameters in the half dtype, called as the trained network is: under
    autocast, on fp32 inputs, its buffers (e.g. a frequency table) left as they are, its output cast
    back to fp32 for the targets' math. (Rounded to bf16, t would leave its grid, i/N for N > 256,
    and a time embedding's frequencies up to 1000 would move its angles by radians: a tiny MLP's
    two-step targets then come out 6-38% off fp32's, where this copy's are 0.5-0.7% off.)"""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return model
    half = copy.deepcopy(model).requires_grad_(False)
    for p in half.parameters():
        p.data = p.data.to(dtype)
    device = next(half.parameters()).device
    return functools.partial(_half_call, half, device.type, dtype)


def _half_call(half: nn.Module, device_type: str, dtype: torch.dtype, *args: Any) -> Tensor:
    """`half(*args)` under autocast in `dtype` (so that fp32 inputs and a model's own fp32 parts,
    e.g. a sinusoidal time embedding, meet its half weights), the output in fp32."""
    with torch.autocast(device_type, dtype):
        out = half(*args)
    return out.to(torch.float32)
