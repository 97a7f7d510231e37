"""What a conditional stage feeds its network besides (z, t): the example's condition (a label,
dropped to `NULL_LABEL` for a conditional teacher, or a tensor such as a prompt's embeddings), and
the guidance weight w of guided distillation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..._checks import remember_host_copy, to_device
from ...parameterizations import NULL_LABEL


def _dropped_labels(
    c_local: Tensor, p_uncond: float, device: torch.device, idx: Tensor, gen: torch.Generator
) -> tuple[Tensor]:
    """The labels of the examples `idx`, each replaced by `NULL_LABEL` with probability `p_uncond`
    (one uniform draw per example from the data generator), on `device`."""
    drop = torch.rand(idx.shape[0], generator=gen, dtype=torch.float64) < p_uncond
    return (to_device(c_local[idx].masked_fill(drop, NULL_LABEL), device, torch.int64),)


def _labels_and_w(
    c_local: Tensor, w_min: float, w_max: float, device: torch.device, idx: Tensor, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The conditions (labels or tensors) of the examples `idx` and w ~ U[w_min, w_max] per example
    (from the data generator), on `device`; w in float32, as the networks embed it."""
    w = (w_min + (w_max - w_min) * torch.rand(idx.shape[0], generator=gen, dtype=torch.float64)).float()
    w_dev = to_device(w, device, torch.float32)
    remember_host_copy(w_dev, w.double())  # the guided target checks w >= 0 on this copy: no sync
    return to_device(c_local[idx], device, c_local.dtype), w_dev


def _with_cond(model: nn.Module, cond: tuple[Tensor, ...], z: Tensor, t: Tensor) -> Tensor:
    """`model(z, t, *cond)`: a conditional model as the samplers call a model, `model(z, t)`."""
    return model(z, t, *cond)
