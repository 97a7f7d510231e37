"""Triton kernels of pd_fast and their thin launchers.

- `sampler_step`: one fused pass from (z_t, network output) to z_s (docs/spec.md sections 2-3); for a
  classifier-free guided step it also reads the unconditional output (docs/spec.md section 8).
- `distill_loss_fwd_bwd`: per-example distillation loss and its gradient with respect to the
  student output in one pass (docs/spec.md sections 4-5).

Triton only: imports neither `pd_fast`'s other modules nor `pd_ref`. Under `TRITON_INTERPRET=1`
(set before triton is imported) the launchers run on CPU tensors.

Block sizes are fixed by the launchers (no autotuning). On the GPU, contiguous accesses compile to
128-bit loads and stores when the tensors are 16-byte aligned (fresh allocations are) and, for the
loss kernel and the 'both' outputs of the sampler, when the elements per example M are a multiple of
16 (the JIT's divisibility specialisation); otherwise results are the same, with narrower accesses.
tests/kernels/test_compile.py checks this on the generated PTX/SASS for sm_80 and sm_90.
"""

from .loss import distill_loss_fwd_bwd, distill_loss_kernel
from .step import sampler_step, sampler_step_kernel

__all__ = ["distill_loss_fwd_bwd", "distill_loss_kernel", "sampler_step", "sampler_step_kernel"]
