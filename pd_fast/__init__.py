"""pd_fast: progressive distillation (Salimans & Ho, ICLR 2022) on torch tensors, with fused Triton
kernels for the per-element work on CUDA (`pd_fast.kernels`, imported lazily).

The names of SPEC section 7 have pd_ref's semantics: fp32/fp16/bf16 tensors on any device,
schedule coefficients in float64 then fp32, element arithmetic in fp32, outputs in the input dtype.
`PD_FAST_BACKEND=torch|triton` forces a backend (see `backend_for`). Beyond the spec: the training
loop (`train_teacher`, `progressive_distill`, see `pd_fast/training.py`), checkpoints, built-in
networks and data, evaluation, and the command-line job (`python -m pd_fast`).
"""

from ._backend import backend_for
from .checkpoint import load_model_checkpoint, save_model_checkpoint, schedule_from_dict, schedule_to_dict
from .data import Dataset, load_data
from .distillation import (
    distill_loss,
    fused_distill_loss,
    loss_weight,
    teacher_target,
    teacher_two_step,
    two_step_target,
)
from .evaluation import evaluate_models, frechet_distance, frechet_distance_samples, make_evaluator
from .models import ResidualMLP, UNet, build_model
from .parameterizations import predict_x_eps
from .sampling import ancestral_step, ddim_step, sample
from .schedules import CosineSchedule, DiscreteSchedule
from .training import check_data, progressive_distill, train_teacher

__all__ = [
    # SPEC section 7
    "CosineSchedule",
    "DiscreteSchedule",
    "predict_x_eps",
    "ddim_step",
    "ancestral_step",
    "sample",
    "two_step_target",
    "teacher_target",
    "loss_weight",
    "distill_loss",
    # fused training path and dispatch
    "teacher_two_step",
    "fused_distill_loss",
    "backend_for",
    # training and checkpoints
    "train_teacher",
    "progressive_distill",
    "check_data",
    "load_model_checkpoint",
    "save_model_checkpoint",
    "schedule_from_dict",
    "schedule_to_dict",
    # networks, data, evaluation
    "ResidualMLP",
    "UNet",
    "build_model",
    "Dataset",
    "load_data",
    "frechet_distance",
    "frechet_distance_samples",
    "make_evaluator",
    "evaluate_models",
]
