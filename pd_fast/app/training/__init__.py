"""Teacher training and progressive distillation ([PD] Algorithm 2, docs/spec.md sections 5-6).

    train_teacher(model, data, *, schedule=None, param="v", weighting="snr_trunc", iters=2000,
                  batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, grad_clip=1.0, seed=0,
                  out_dir=None, ckpt_every=0, resume=False, progress=True, log_every=10,
                  precision="fp32")
        -> nn.Module   # a new module holding the EMA weights, in eval mode
    progressive_distill(teacher, data, start_steps, end_steps=1, *, schedule=None, param="v",
                        weighting="snr_trunc", iters=1000, last_rounds_factor=1.0, batch_size=128,
                        lr=1e-4, grad_clip=1.0, seed=0, out_dir=None, ckpt_every=0, resume=False,
                        progress=True, log_every=10, on_round_end=None, labels=None, w_min=0.0,
                        w_max=4.0, cond=None, bounded=True, precision="fp32")
        -> dict[int, nn.Module]   # {student steps: student}, e.g. {4: ..., 2: ..., 1: ...}, eval mode
    distill_guidance(teacher, data, labels=None, *, cond=None, null_cond=None, student=None,
                     w_min=0.0, w_max=4.0, ...)   # [GD] stage 1: a w-conditioned student
        -> nn.Module
    check_data(data, name="data", bounded=True) -> Tensor   # ValueError unless finite, ndim >= 2,
                                                            # N >= 1 and (bounded) in [-1, 1]
    data_fingerprint(data) -> str             # SHA-256 of the data's dtype, shape and values
    TrainingDiverged                          # FloatingPointError: a non-finite loss, gradient or weight

(`load_model_checkpoint` and `schedule_from_dict` are re-exported from `pd_fast.app.checkpoint`.)

One loop serves both stages, as in the official PD code: each iteration draws x from `data`, t,
eps ~ N(0, I), `z_t = diffuse(x, t, schedule, eps)` (docs/spec.md section 1), and takes one Adam
step on the loss of docs/spec.md section 5 (`fused_distill_loss`: Triton on CUDA, torch
elsewhere), its gradient clipped to global norm `grad_clip` (None: off). A stage is its step:

- teacher: t ~ U(0, 1], `x_tilde = x` (z_tpp = x, alpha_tpp = 1, sigma_tpp = 0), a linear LR
  warm-up over `warmup` iterations, then an EMA of the weights with decay
  `min(ema_decay, (1 + k) / (10 + k))` after update k (short runs do not average in the init);
- distillation round to N steps (N = start_steps / 2, ..., end_steps): student = copy of the
  previous round's student (of `teacher` in round 1), fresh Adam, t = i/N with i uniform in
  1..N, `x_tilde` from `teacher_two_step` (no grad), LR annealed linearly from `lr` to 0, no
  EMA. The last two rounds run `round(iters * last_rounds_factor)` iterations (the paper: 2).

`model(z, t)` takes t of shape (B,) in z's dtype; training runs on the device of its parameters,
and `data` (a tensor or array (N, ...) in [-1, 1]; any finite values with `bounded=False`, for
latents) is moved there once. Conditional stages take `labels` (integers (N,)) or `cond` (tensors
(N, ...), e.g. prompt embeddings, docs/spec.md section 10), one per example. `schedule`: a
`CosineSchedule` (default) or a `DiscreteSchedule` of `pd_fast.schedules`.

- `out_dir`: the run writes `out_dir/checkpoints/` (see `pd_fast.app.checkpoint`): `teacher`
  (EMA weights) and `student_<N>` model checkpoints, and each stage's training state every
  `ckpt_every` iterations (0: only at stage/round ends); plus `out_dir/log.jsonl`, one JSON
  record (phase, round, steps, iteration, loss, lr, grad_norm, time) per `log_every` iterations.
  A stage with a state in `out_dir` raises ValueError unless `resume=True`, which continues from
  its last checkpoint with the same settings and data (`to_dict()` of the stage's config, which
  holds the data's fingerprint) and cuts the log back to that checkpoint; a stage starting afresh
  cuts the log back to the stages before it. Checkpoint files are verified against their SHA-256
  (`pd_fast.app.checkpoint`): a damaged last state falls back to the one before it, with a warning.
- `precision` ("fp32", "bf16" or "fp16"; also of `distill_guidance`; another value is a
  ValueError): the trained network (the teacher, or the student) runs its forward under
  `torch.autocast` in bf16 or fp16, its weights and Adam's states staying fp32, its output cast to
  fp32 for the loss; fp16 adds a loss scaler (`torch.amp.GradScaler`: the gradients unscaled before
  the clipping, an update with an inf or NaN gradient skipped) and a fused Adam that skips on the
  device; the scaler's state goes into the training state. The frozen networks of the targets (the
  teacher of guidance, the previous round's model) run as a copy with half parameters, under
  autocast on fp32 inputs, their outputs cast to fp32; the targets' math stays fp32. "fp32" (the
  default) runs as before, bitwise; it is part of the stage's config, so a resume with another
  precision is refused. Autocast on CPU supports both half dtypes, so both run there too.
- Finiteness: every update's loss and gradient norm go into a small device buffer, read (one host
  sync) every `CHECK_EVERY` updates, before every log record and before every checkpoint, which
  also checks the weights. A non-finite value raises `TrainingDiverged` naming the stage, round and
  iteration; nothing is written after the last finite checkpoint, so a resume continues from it.
  With fp16, an update with a finite loss and a non-finite gradient norm is one the loss scaler
  skipped, not divergence, unless `MAX_SKIPPED` (40) updates in a row are; a non-finite loss or
  weight always stops training.
- Randomness comes only from `torch.Generator`s seeded from (seed, rank, stage) (data and t on
  the CPU, noise on the device) and torch's global RNG (dropout); all are checkpointed. With
  `torch.use_deterministic_algorithms(True)` and a fixed thread count, a run killed with SIGKILL
  and resumed ends bitwise equal to an uninterrupted one on CPU.
- Under `torchrun` (`torch.distributed.is_initialized()`) the trained model is wrapped in
  DistributedDataParallel, rank r samples from `data[r::world_size]` with its own generators,
  rank 0 writes checkpoints and log, and resume needs the same world size. The caller sets up
  the process group (and the CUDA device) first.
- Speed on CPU: tiny models train several times faster with `torch.set_num_threads(1)` on a busy
  2-core machine (tests/app/test_training.py's distillation test: ~40 s with 2 threads, ~6 s with 1).
"""

from __future__ import annotations

from ..checkpoint import load_model_checkpoint, schedule_from_dict
from .checks import check_data, check_labels, data_fingerprint
from .distill import progressive_distill

# for the jobs (`from .training import part_ranks, rank_fingerprints`), outside `__all__` as before
from .distributed import part_ranks as part_ranks
from .distributed import rank_fingerprints as rank_fingerprints
from .guards import CHECK_EVERY, MAX_SKIPPED, TrainingDiverged
from .guidance import distill_guidance
from .teacher import train_teacher

__all__ = [
    "train_teacher",
    "progressive_distill",
    "distill_guidance",
    "check_data",
    "check_labels",
    "data_fingerprint",
    "TrainingDiverged",
    "CHECK_EVERY",
    "MAX_SKIPPED",
    "load_model_checkpoint",
    "schedule_from_dict",
]
