"""Fused distillation loss, forward and backward in one pass ([PD] Algorithm 2 lines 9-10,
docs/spec.md sections 4-5): reads the student output, z_t and z_tpp once, writes the gradient with respect
to the output and per-chunk partial sums of the squared error (summed afterwards, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_coefs, check_out, check_param
from .step import x_eps_from_out

BLOCK = 1024
NUM_WARPS = 4
MAX_CHUNKS = 4096  # programs per example; well under the 65535 limit of grid axis 1


@triton.jit
def distill_loss_kernel(
    out_ptr, z_t_ptr, z_tpp_ptr, grad_ptr, partial_ptr,
    alpha_ptr, sigma_ptr, p_ptr, q_ptr, w_ptr,
    M, n_chunks,
    PARAM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Program (b, c) covers blocks c, c + n_chunks, ... of example b's M elements:
    `x_tilde = p*z_tpp + q*z_t` ([PD] Algorithm 2 line 9 with p, q from float64),
    `x_hat` = the student's unclipped prediction (`x_eps_from_out`, docs/spec.md section 2),
    `diff = x_hat - x_tilde`,
    `grad = (2w/M) * diff * d x_hat/d out` (docs/spec.md section 5), and `partial[b, c] = sum diff^2`.
    """
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)  # int64 loop: start + stride may pass 2^31
    alpha = tl.load(alpha_ptr + b)
    sigma = tl.load(sigma_ptr + b)
    p = tl.load(p_ptr + b)
    q = tl.load(q_ptr + b)
    scale = 2.0 * tl.load(w_ptr + b) / M
    if PARAM == "eps":  # d x_hat / d out, docs/spec.md section 5 ('both': the x half; eps half below)
        d_out = -sigma / alpha
    elif PARAM == "x":
        d_out = 1.0
    elif PARAM == "v":
        d_out = -sigma
    else:
        d_out = sigma * sigma
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(c * BLOCK, M, n_chunks * BLOCK):
        j = start + tl.arange(0, BLOCK)
        mask = j < M
        z_t = tl.load(z_t_ptr + b * M + j, mask=mask).to(tl.float32)
        z_tpp = tl.load(z_tpp_ptr + b * M + j, mask=mask).to(tl.float32)
        o_offs = (b * 2 * M if PARAM == "both" else b * M) + j  # out is (B, 2M) for 'both', else (B, M)
        o_x = tl.load(out_ptr + o_offs, mask=mask).to(tl.float32)
        if PARAM == "both":
            o_e = tl.load(out_ptr + o_offs + M, mask=mask).to(tl.float32)
        else:
            o_e = o_x
        x_hat, _ = x_eps_from_out(z_t, o_x, o_e, alpha, sigma, PARAM, False)
        diff = tl.where(mask, x_hat - (p * z_tpp + q * z_t), 0.0)
        acc += diff * diff
        grad_ty = grad_ptr.dtype.element_ty
        tl.store(grad_ptr + o_offs, (d_out * scale * diff).to(grad_ty), mask=mask)
        if PARAM == "both":
            tl.store(grad_ptr + o_offs + M, (-alpha * sigma * scale * diff).to(grad_ty), mask=mask)
    tl.store(partial_ptr + b * n_chunks + c, tl.sum(acc, axis=0))


def distill_loss_fwd_bwd(
    out: torch.Tensor,
    z_t: torch.Tensor,
    z_tpp: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    w: torch.Tensor,
    param: str,
    grad_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss `w * mean_j (x_hat - x_tilde)^2` with `x_tilde = p*z_tpp + q*z_t`, and its
    gradient with respect to `out` ([PD] Algorithm 2 lines 9-10, docs/spec.md sections 4-5), in fp32.

    out: z_t's shape, or (B, 2C, ...) for 'both'; z_t, z_tpp: (B, ...), same dtype and device, except
    that z_tpp may be fp32 beside an fp16/bf16 z_t (the target magnifies its rounding by ~N);
    alpha_t, sigma_t, p, q, w: (B,) tensors (cast to fp32). Non-contiguous inputs are copied to
    contiguous ones first (`.contiguous()`). The sum over chunks runs in a fixed order: deterministic.
    Returns `(loss: fp32 (B,), grad: out's shape, contiguous, in `grad_dtype` (default out's dtype))`;
    fp16 callers that scale the gradient afterwards should ask for fp32: w/M * diff can pass 65504.
    """
    param = check_param(param)
    check_out(out, z_t, param)
    if (
        z_tpp.shape != z_t.shape
        or z_tpp.device != z_t.device
        or z_tpp.dtype not in (z_t.dtype, torch.float32)
    ):
        raise ValueError(
            f"z_tpp must have shape {tuple(z_t.shape)}, dtype {z_t.dtype} or float32 and device {z_t.device}"
        )
    coefs = check_coefs(z_t.shape[0], z_t.device, alpha_t=alpha_t, sigma_t=sigma_t, p=p, q=q, w=w)
    out, z_t, z_tpp = out.contiguous(), z_t.contiguous(), z_tpp.contiguous()
    grad = torch.empty(out.shape, dtype=grad_dtype or out.dtype, device=out.device)
    batch = z_t.shape[0]
    m = z_t.numel() // batch if batch else 0
    if z_t.numel() == 0:
        return torch.full((batch,), float("nan"), dtype=torch.float32, device=z_t.device), grad
    n_chunks = min(triton.cdiv(m, BLOCK), MAX_CHUNKS)
    partial = torch.empty((batch, n_chunks), dtype=torch.float32, device=z_t.device)
    distill_loss_kernel[(batch, n_chunks)](
        out, z_t, z_tpp, grad, partial, *coefs, m, n_chunks,
        PARAM=param, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
    return coefs[4] * partial.sum(dim=1) / m, grad
