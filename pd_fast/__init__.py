"""pd_fast: progressive distillation (Salimans & Ho, ICLR 2022) on torch tensors, with fused Triton
kernels for the per-element work on CUDA (`pd_fast.kernels`, imported lazily).

The names of SPEC section 7 have pd_ref's semantics: fp32/fp16/bf16 tensors on any device,
schedule coefficients in float64 then fp32, element arithmetic in fp32, outputs in the input dtype.
`PD_FAST_BACKEND=torch|triton` forces a backend (see `backend_for`).
"""

# --- core (SPEC section 7, module for module like pd_ref) ---
from ._backend import backend_for
from .distillation import (
    distill_loss,
    fused_distill_loss,
    loss_weight,
    teacher_target,
    teacher_two_step,
    two_step_target,
)
from .parameterizations import predict_x_eps
from .sampling import ancestral_step, ddim_step, sample
from .schedules import CosineSchedule, DiscreteSchedule

__all__ = [
    # core (SPEC section 7)
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
    # core extras (INTERFACES.md B)
    "teacher_two_step",
    "fused_distill_loss",
    "backend_for",
]

# --- further groups (training, models, data, CLI) are appended below by their owners ---

# --- training (owner: training helper; issue 4): see the docstring of pd_fast/training.py ---
from .checkpoint import load_model_checkpoint, save_model_checkpoint, schedule_from_dict, schedule_to_dict
from .training import check_data, progressive_distill, train_teacher

__all__ += [
    "train_teacher",
    "progressive_distill",
    "check_data",
    "load_model_checkpoint",
    "save_model_checkpoint",
    "schedule_from_dict",
    "schedule_to_dict",
]
# --- end training ---

# --- models, data, evaluation, CLI (owner: main-job helper; issue 4) ---
from .data import Dataset, load_data  # noqa: E402  (after the __all__ += of the block above)
from .evaluation import (  # noqa: E402
    evaluate_models,
    frechet_distance,
    frechet_distance_samples,
    make_evaluator,
)
from .models import ResidualMLP, UNet, build_model  # noqa: E402

__all__ += [
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
# --- end models, data, evaluation, CLI ---
