"""pd_ref: the pure-NumPy, float64 executable specification of progressive distillation
(Salimans & Ho, ICLR 2022), with classifier-free guidance and the guided sampler of Meng et al.
(CVPR 2023). Read it beside `docs/spec.md`; `pd_fast` offers the same names."""

from .distillation import distill_loss, loss_weight, teacher_target, two_step_target
from .parameterizations import NULL_LABEL, guided_x_eps, predict_x_eps
from .sampling import ancestral_step, ddim_step, sample
from .schedules import CosineSchedule, DiscreteSchedule, diffuse

__all__ = [
    "CosineSchedule",
    "DiscreteSchedule",
    "diffuse",
    "predict_x_eps",
    "guided_x_eps",
    "NULL_LABEL",
    "ddim_step",
    "ancestral_step",
    "sample",
    "two_step_target",
    "teacher_target",
    "loss_weight",
    "distill_loss",
]
