"""What the launchers check before a kernel runs: a known `param`, an output of the right shape,
and (B,) coefficients on the data's device. A ValueError names the argument otherwise.

The kernels import only torch, triton and each other, so they keep their own list of the
parameterizations their `PARAM` branches know (the core's is `pd_fast/_checks.py`'s PARAMS;
tests/kernels/test_direct.py checks that the two agree).
"""

from __future__ import annotations

import torch

PARAMS = ("eps", "x", "v", "both")


def check_param(param: str) -> str:
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    return param


def check_out(out: torch.Tensor, z: torch.Tensor, param: str, name: str = "out") -> None:
    """`out` has z's shape (twice its channels, axis 1, for 'both'), dtype and device."""
    expected = list(z.shape)
    if param == "both":
        if z.ndim < 2:
            raise ValueError(f"{name}: param 'both' needs a channel axis (z of at least 2 dims)")
        expected[1] *= 2
    if list(out.shape) != expected or out.dtype != z.dtype or out.device != z.device:
        raise ValueError(f"{name} must have shape {tuple(expected)}, dtype {z.dtype} and device {z.device}")


def check_coefs(batch: int, device: torch.device, **coefs: torch.Tensor) -> list[torch.Tensor]:
    """Each coefficient as a contiguous fp32 (B,) tensor on `device`; ValueError naming it otherwise."""
    checked = []
    for name, c in coefs.items():
        if not isinstance(c, torch.Tensor) or c.shape != (batch,) or c.device != device:
            raise ValueError(f"{name} must be a tensor of shape ({batch},) on {device}")
        checked.append(c.to(torch.float32).contiguous())
    return checked
