"""Fused sampler step: `(x_hat, eps_hat)` from the network output, then one step from t to s
(docs/spec.md sections 2-3; [DDIM] Eq. 12, [PD] Eq. 7, [DDPM] Eq. 6-7), in one pass over memory.

Every step of docs/spec.md section 3 is one linear combination
`z_s = k_z*z + k_x*x_hat + k_eps*eps_hat + k_noise*noise` with per-example coefficients:
DDIM (k_x = alpha_s, k_eps = sigma_s), DDIM with eta (k_eps = sqrt(sigma_s^2 - c^2), k_noise = c),
ancestral (k_z = r*alpha_s/alpha_t, k_x = (1 - r)*alpha_s, k_noise = sqrt(var)), x_hat only (k_x = 1),
[GD]'s stochastic step (k_x = alpha_s, k_eps = alpha_s*sigma_k/alpha_k, k_noise = sigma_{s|k}).
Guided (GUIDED, docs/spec.md section 8): the pass also reads the unconditional output and combines the
two predictions, `x_hat = x_c + w*(x_c - x_u)` (likewise eps_hat), before clipping.
`x_eps_from_out` is the one home of docs/spec.md section 2 in the kernels (the loss kernel calls it too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_coefs, check_out, check_param

BLOCK = 2048
NUM_WARPS = 8


@triton.jit
def x_eps_from_out(z, o_x, o_e, alpha, sigma, PARAM: tl.constexpr, CLIP: tl.constexpr):
    """`(x_hat, eps_hat)` in fp32 per docs/spec.md section 2; `o_x`/`o_e` are the two halves of the output
    for 'both', and both equal the output otherwise. With CLIP, x_hat is clipped to [-1, 1] and
    eps_hat recomputed so that `z = alpha*x_hat + sigma*eps_hat` (official `dpm.py`)."""
    if PARAM == "eps":
        x_hat = (z - sigma * o_e) / alpha
        eps_hat = o_e
    elif PARAM == "x":
        x_hat = o_x
        eps_hat = (z - alpha * x_hat) / sigma
    elif PARAM == "v":
        x_hat = alpha * z - sigma * o_x
        eps_hat = sigma * z + alpha * o_x
    else:
        x_hat = sigma * sigma * o_x + alpha * (z - sigma * o_e)
        eps_hat = (z - alpha * x_hat) / sigma
    if CLIP:
        x_hat, eps_hat = clipped_x_eps(z, x_hat, alpha, sigma)
    return x_hat, eps_hat


@triton.jit
def clipped_x_eps(z, x_hat, alpha, sigma):
    """x_hat clipped to [-1, 1], eps_hat recomputed from it (docs/spec.md section 2)."""
    x_hat = tl.minimum(tl.maximum(x_hat, -1.0), 1.0)
    return x_hat, (z - alpha * x_hat) / sigma


@triton.jit
def load_out(out_ptr, offs, b, M, mask, PARAM: tl.constexpr):
    """The output's two halves `(o_x, o_e)` at the elements `offs` in fp32 ('both': (B, 2M) with the x
    half at `b*2M + j` and the eps half at `b*2M + M + j`; otherwise both are the output)."""
    if PARAM == "both":
        o_x_ptrs = out_ptr + b * 2 * M + offs % M
        o_x = tl.load(o_x_ptrs, mask=mask).to(tl.float32)
        o_e = tl.load(o_x_ptrs + M, mask=mask).to(tl.float32)
    else:
        o_x = tl.load(out_ptr + offs, mask=mask).to(tl.float32)
        o_e = o_x
    return o_x, o_e


@triton.jit
def sampler_step_kernel(
    z_ptr, out_ptr, out_u_ptr, noise_ptr, z_s_ptr, x_hat_ptr,
    alpha_ptr, sigma_ptr, k_z_ptr, k_x_ptr, k_eps_ptr, k_noise_ptr, w_ptr,
    n_elements, M,
    PARAM: tl.constexpr, CLIP: tl.constexpr, HAS_NOISE: tl.constexpr, WRITE_X_HAT: tl.constexpr,
    GUIDED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One block of the flat (B*M,) view: `z_s = k_z*z + k_x*x_hat + k_eps*eps_hat (+ k_noise*noise)`,
    with (x_hat, eps_hat) from `out`, or (GUIDED) the guided combination of `out` and `out_u` with
    the per-example weight w, clipped after combining.

    Element `offs` belongs to example `b = offs // M` at position `j = offs % M`.
    Offsets are int64 so that B*M (and 2*B*M) may exceed 2^31.
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    b = offs // M
    z = tl.load(z_ptr + offs, mask=mask).to(tl.float32)
    o_x, o_e = load_out(out_ptr, offs, b, M, mask, PARAM)
    alpha = tl.load(alpha_ptr + b, mask=mask, other=1.0)
    sigma = tl.load(sigma_ptr + b, mask=mask, other=1.0)
    if GUIDED:
        x_hat, eps_hat = x_eps_from_out(z, o_x, o_e, alpha, sigma, PARAM, False)
        u_x, u_e = load_out(out_u_ptr, offs, b, M, mask, PARAM)
        x_u, eps_u = x_eps_from_out(z, u_x, u_e, alpha, sigma, PARAM, False)
        w = tl.load(w_ptr + b, mask=mask)
        x_hat += w * (x_hat - x_u)
        eps_hat += w * (eps_hat - eps_u)
        if CLIP:
            x_hat, eps_hat = clipped_x_eps(z, x_hat, alpha, sigma)
    else:
        x_hat, eps_hat = x_eps_from_out(z, o_x, o_e, alpha, sigma, PARAM, CLIP)
    k_z = tl.load(k_z_ptr + b, mask=mask)
    k_x = tl.load(k_x_ptr + b, mask=mask)
    k_eps = tl.load(k_eps_ptr + b, mask=mask)
    z_s = k_z * z + k_x * x_hat + k_eps * eps_hat
    if HAS_NOISE:
        k_noise = tl.load(k_noise_ptr + b, mask=mask)
        z_s += k_noise * tl.load(noise_ptr + offs, mask=mask).to(tl.float32)
    tl.store(z_s_ptr + offs, z_s.to(z_s_ptr.dtype.element_ty), mask=mask)
    if WRITE_X_HAT:
        tl.store(x_hat_ptr + offs, x_hat.to(x_hat_ptr.dtype.element_ty), mask=mask)


def sampler_step(
    z: torch.Tensor,
    out: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    k_z: torch.Tensor,
    k_x: torch.Tensor,
    k_eps: torch.Tensor,
    k_noise: torch.Tensor,
    param: str,
    clip: bool,
    noise: torch.Tensor | None = None,
    write_x_hat: bool = False,
    out_uncond: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused step `z_s = k_z*z + k_x*x_hat + k_eps*eps_hat (+ k_noise*noise)` with `(x_hat, eps_hat)`
    from `(z, out, alpha_t, sigma_t)` per docs/spec.md section 2 (clipped if `clip`), in fp32.
    Guided (docs/spec.md section 8) when `out_uncond` is given: `x_hat = x_c + w*(x_c - x_u)` and
    `eps_hat = eps_c + w*(eps_c - eps_u)` from `out` and `out_uncond`, then clipped if `clip`.

    z: (B, ...) fp32/fp16/bf16; out, out_uncond: z's shape, or (B, 2C, ...) for 'both'; noise: None or
    z's shape; alpha_t ... k_noise, w: (B,) tensors on z's device (cast to fp32). Non-contiguous inputs
    are copied to contiguous ones first (`.contiguous()`), so strides never matter.
    Returns `(z_s, x_hat if write_x_hat else None)`, contiguous, in z's dtype and shape.
    """
    param = check_param(param)
    check_out(out, z, param)
    if noise is not None and (noise.shape != z.shape or noise.dtype != z.dtype or noise.device != z.device):
        raise ValueError(f"noise must have z's shape {tuple(z.shape)}, dtype {z.dtype} and device {z.device}")
    guided = out_uncond is not None
    if guided:
        check_out(out_uncond, z, param, "out_uncond")
    if guided != (w is not None):
        raise ValueError("out_uncond and w go together: pass both for a guided step, or neither")
    coefs = check_coefs(
        z.shape[0], z.device, alpha_t=alpha_t, sigma_t=sigma_t, k_z=k_z, k_x=k_x, k_eps=k_eps, k_noise=k_noise
    )
    (w,) = check_coefs(z.shape[0], z.device, w=w) if guided else (coefs[0],)
    z, out = z.contiguous(), out.contiguous()
    out_uncond = out_uncond.contiguous() if guided else out
    noise = noise.contiguous() if noise is not None else None
    z_s = torch.empty_like(z)
    x_hat = torch.empty_like(z) if write_x_hat else None
    n_elements = z.numel()
    if n_elements == 0:
        return z_s, x_hat
    grid = (triton.cdiv(n_elements, BLOCK),)
    sampler_step_kernel[grid](
        z, out, out_uncond, noise if noise is not None else z, z_s, x_hat if write_x_hat else z_s,
        *coefs, w, n_elements, n_elements // z.shape[0],
        PARAM=param, CLIP=bool(clip), HAS_NOISE=noise is not None, WRITE_X_HAT=bool(write_x_hat),
        GUIDED=guided, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
    return z_s, x_hat
