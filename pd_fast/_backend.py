"""Which implementation runs a call: the fused Triton kernels or plain torch.

CUDA tensors go to the Triton launchers of `pd_fast.kernels` (when triton is installed), all
others to the torch formulas. The environment variable `PD_FAST_BACKEND=torch|triton` forces one;
it is read at every call, so tests can switch it. With `TRITON_INTERPRET=1` (set before triton is
first imported) and `PD_FAST_BACKEND=triton`, the launchers run on CPU tensors.

`pd_fast.kernels` is imported lazily, on the first Triton call, so that pd_fast imports (and its
torch path runs) where triton is missing.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from types import ModuleType

import torch

BACKENDS = ("torch", "triton")
ENV_VAR = "PD_FAST_BACKEND"


@cache
def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None
        return False


def backend_for(tensor: torch.Tensor) -> str:
    """ "triton" or "torch": the forced one if `PD_FAST_BACKEND` is set, else "triton" for CUDA
    tensors (with triton installed) and "torch" for every other device."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {forced!r}")
        if forced == "triton" and not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"{ENV_VAR}=triton needs CUDA tensors, or TRITON_INTERPRET=1 (set before triton is "
                f"imported) to run the kernels on {tensor.device} tensors"
            )
        return forced
    return "triton" if tensor.is_cuda and _triton_installed() else "torch"


def kernels() -> ModuleType:
    """`pd_fast.kernels`, imported on first use."""
    from . import kernels as module

    return module
