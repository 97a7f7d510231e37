"""pd_fast: progressive distillation (Salimans & Ho, ICLR 2022) on torch tensors, with fused Triton
kernels for the per-element work on CUDA (`pd_fast.kernels`, imported lazily).

The math core (docs/spec.md section 7) has pd_ref's names and semantics: fp32/fp16/bf16 tensors on
any device, schedule coefficients in float64 then fp32, element arithmetic in fp32, outputs in the
input dtype. `PD_FAST_BACKEND=torch|triton` forces a backend (see `backend_for`).

The application layer lives in `pd_fast.app` (training loop, checkpoints, built-in networks and
data, evaluation, the command-line job `python -m pd_fast`). Its main names are importable from
here as a convenience (`from pd_fast import train_teacher`); they are loaded on first use, so
`import pd_fast` imports neither the app nor its dependencies (safetensors, scikit-learn,
matplotlib, torch.distributed).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._backend import backend_for
from .distillation import (
    distill_loss,
    fused_distill_loss,
    loss_weight,
    teacher_target,
    teacher_two_step,
    two_step_target,
)
from .parameterizations import NULL_LABEL, guided_x_eps, predict_x_eps
from .sampling import Sampler, ancestral_step, ddim_step, sample
from .schedules import CosineSchedule, DiscreteSchedule, diffuse

#: app names re-exported lazily: name -> the pd_fast.app module that defines it
_APP = {
    "train_teacher": "training",
    "progressive_distill": "training",
    "distill_guidance": "training",
    "check_data": "training",
    "load_model_checkpoint": "checkpoint",
    "save_model_checkpoint": "checkpoint",
    "schedule_from_dict": "checkpoint",
    "schedule_to_dict": "checkpoint",
    "ResidualMLP": "models",
    "UNet": "models",
    "build_model": "models",
    "w_conditioned_from": "models",
    "Dataset": "data",
    "load_data": "data",
    "frechet_distance": "evaluation",
    "frechet_distance_samples": "evaluation",
    "make_evaluator": "evaluation",
    "evaluate_models": "evaluation",
}

__all__ = [
    # docs/spec.md section 7
    "CosineSchedule",
    "DiscreteSchedule",
    "diffuse",
    "predict_x_eps",
    "guided_x_eps",
    "NULL_LABEL",
    "ddim_step",
    "ancestral_step",
    "sample",
    "Sampler",
    "two_step_target",
    "teacher_target",
    "loss_weight",
    "distill_loss",
    # fused training path and dispatch
    "teacher_two_step",
    "fused_distill_loss",
    "backend_for",
    # the application layer (pd_fast.app), loaded on first use
    *_APP,
]


def __getattr__(name: str) -> Any:
    if name in _APP:
        value = getattr(importlib.import_module(f"pd_fast.app.{_APP[name]}"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'pd_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_APP))
