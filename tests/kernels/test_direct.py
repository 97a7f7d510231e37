"""The Triton launchers of `pd_fast.kernels` called directly, against `pd_ref` in float64.

Without CUDA the kernels run in the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); with CUDA they run on the GPU. The full Hypothesis equivalence suite goes
through `pd_fast`; these are the few direct checks of the launcher contract: coefficients of real
steps, non-contiguous inputs, blocks that straddle examples, the in-kernel chunk loop, fp16/bf16.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from pd_fast import _checks
from pd_fast.kernels import _launch, distill_loss_fwd_bwd, sampler_step
from pd_ref.distillation import distill_loss, two_step_target
from pd_ref.parameterizations import guided_x_eps, predict_x_eps
from pd_ref.sampling import ancestral_step, ddim_step
from tests.strategies import PARAMS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # of the largest |value|


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def col(a: np.ndarray, ndim: int) -> np.ndarray:
    return a.reshape((-1,) + (1,) * (ndim - 1))


def vec(a: np.ndarray) -> torch.Tensor:
    """A float64 (B,) coefficient as the launchers take it: fp32 on the device."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1), dtype=torch.float32, device=DEVICE)


def close(got: torch.Tensor, want: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
    err = np.abs(f64(got) - want).max()
    assert err <= RTOL[dtype] * max(1.0, np.abs(want).max()), err


def draw(rng: np.random.Generator, shape, param: str, dtype=torch.float32):
    """z, out (2C channels for 'both') and per-example alpha, sigma with alpha in [0.2, 0.98]."""
    out_shape = (shape[0], 2 * shape[1]) + tuple(shape[2:]) if param == "both" else shape
    z = torch.tensor(rng.standard_normal(shape), dtype=dtype, device=DEVICE)
    out = torch.tensor(rng.standard_normal(out_shape), dtype=dtype, device=DEVICE)
    alpha = rng.uniform(0.2, 0.98, shape[0])
    return z, out, alpha, np.sqrt(1.0 - alpha**2)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("param", PARAMS)
def test_sampler_step_with_ddim_coefficients_equals_ref_ddim_step(param: str, clip: bool) -> None:
    rng = np.random.default_rng(0)
    # M = 4099: examples straddle the launcher's blocks; B*M is odd
    shape = (3, 1, 4099) if param == "both" else (3, 4099)
    z, out, alpha_t, sigma_t = draw(rng, shape, param)
    alpha_s = np.minimum(alpha_t + rng.uniform(0.0, 0.3, 3), 0.999)
    sigma_s = np.sqrt(1.0 - alpha_s**2)
    zero = np.zeros(3)
    z_s, x_hat = sampler_step(
        z, out, vec(alpha_t), vec(sigma_t), vec(zero), vec(alpha_s), vec(sigma_s), vec(zero), param, clip,
        write_x_hat=True,
    )  # fmt: skip
    close(z_s, ddim_step(f64(z), f64(out), alpha_t, sigma_t, alpha_s, sigma_s, param, clip=clip))
    close(x_hat, predict_x_eps(f64(z), f64(out), alpha_t, sigma_t, param, clip=clip)[0])
    assert z_s.shape == z.shape and z_s.is_contiguous()


@pytest.mark.parametrize("param", PARAMS)
def test_sampler_step_with_ancestral_coefficients_equals_ref_ancestral_step(param: str) -> None:
    rng = np.random.default_rng(1)
    z, out, alpha_t, sigma_t = draw(rng, (2, 3, 5, 7), param)
    noise = torch.tensor(rng.standard_normal(z.shape), dtype=torch.float32, device=DEVICE)
    alpha_s = np.minimum(alpha_t + 0.1, 0.999)
    sigma_s = np.sqrt(1.0 - alpha_s**2)
    minus_r = np.expm1(2 * (np.log(alpha_t / sigma_t) - np.log(alpha_s / sigma_s)))  # r - 1
    k_z, k_x, k_noise = (1 + minus_r) * alpha_s / alpha_t, -minus_r * alpha_s, np.sqrt(-minus_r) * sigma_t
    z_s, x_hat = sampler_step(
        z, out, vec(alpha_t), vec(sigma_t), vec(k_z), vec(k_x), vec(np.zeros(2)), vec(k_noise), param, False,
        noise=noise,
    )  # fmt: skip
    want = ancestral_step(f64(z), f64(out), alpha_t, sigma_t, alpha_s, sigma_s, param, noise=f64(noise))
    close(z_s, want)
    assert x_hat is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param", ["eps", "both"])
def test_sampler_step_non_contiguous_inputs_any_dtype(param: str, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(2)
    shape = (3, 2, 5, 7)
    z, out, alpha, sigma = draw(rng, shape, param, dtype)
    z = z.transpose(2, 3).contiguous().transpose(2, 3)
    out = torch.cat([out, out], dim=-1)[..., 1::2]
    noise = torch.tensor(rng.standard_normal(shape[:3] + (14,)), dtype=dtype, device=DEVICE)[..., ::2]
    assert not (z.is_contiguous() or out.is_contiguous() or noise.is_contiguous())
    k = [rng.standard_normal(3) for _ in range(4)]
    z_s, x_hat = sampler_step(z, out, vec(alpha), vec(sigma), *map(vec, k), param, True, noise, True)
    x_ref, eps_ref = predict_x_eps(f64(z), f64(out), alpha, sigma, param, clip=True)
    nd = z.ndim
    want = (
        col(k[0], nd) * f64(z) + col(k[1], nd) * x_ref + col(k[2], nd) * eps_ref + col(k[3], nd) * f64(noise)
    )
    close(z_s, want, dtype)
    close(x_hat, x_ref, dtype)
    assert z_s.dtype == x_hat.dtype == dtype and z_s.is_contiguous()


@pytest.mark.parametrize("shape", [(1,), (7,), (1, 1), (2, 3)])
def test_sampler_step_tiny_sizes(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    z, out, alpha, sigma = draw(rng, shape, "v")
    k = [rng.standard_normal(shape[0]) for _ in range(4)]
    z_s, _ = sampler_step(z, out, vec(alpha), vec(sigma), *map(vec, k), "v", False)
    x_ref, eps_ref = predict_x_eps(f64(z), f64(out), alpha, sigma, "v")
    nd = z.ndim
    close(z_s, col(k[0], nd) * f64(z) + col(k[1], nd) * x_ref + col(k[2], nd) * eps_ref)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("param", PARAMS)
def test_guided_sampler_step_equals_ref_guided_ddim_step(param: str, clip: bool) -> None:
    """One pass reads out and out_uncond and combines them with the per-example w before the clip
    (docs/spec.md section 8); examples straddle blocks, one w is 0, out_uncond is non-contiguous."""
    rng = np.random.default_rng(7)
    shape = (3, 1, 4099) if param == "both" else (3, 4099)
    z, out, alpha_t, sigma_t = draw(rng, shape, param)
    out_u = torch.tensor(rng.standard_normal(out.shape), dtype=out.dtype, device=DEVICE).mT.contiguous().mT
    alpha_s = np.minimum(alpha_t + rng.uniform(0.0, 0.3, 3), 0.999)
    sigma_s = np.sqrt(1.0 - alpha_s**2)
    w, zero = np.array([0.0, 1.5, 4.0]), np.zeros(3)
    z_s, x_hat = sampler_step(
        z, out, vec(alpha_t), vec(sigma_t), vec(zero), vec(alpha_s), vec(sigma_s), vec(zero), param, clip,
        write_x_hat=True, out_uncond=out_u, w=vec(w),
    )  # fmt: skip
    args = (f64(z), f64(out), alpha_t, sigma_t)
    want = ddim_step(*args, alpha_s, sigma_s, param, clip=clip, out_uncond=f64(out_u), w=w)
    close(z_s, want)
    close(x_hat, guided_x_eps(f64(z), f64(out), f64(out_u), alpha_t, sigma_t, param, clip=clip, w=w)[0])
    with pytest.raises(ValueError, match="out_uncond and w go together"):
        sampler_step(z, out, *[vec(c) for c in (alpha_t, sigma_t, zero, alpha_s, sigma_s, zero)], param, clip,
                     out_uncond=out_u)  # fmt: skip


def loss_inputs(rng: np.random.Generator, shape, param: str, dtype=torch.float32):
    """Student output, z_t, z_tpp and the float64 coefficients of a step t -> t'' (t'' < t)."""
    z_t, out, alpha_t, sigma_t = draw(rng, shape, param, dtype)
    z_tpp = torch.tensor(rng.standard_normal(shape), dtype=dtype, device=DEVICE)
    alpha_tpp = np.minimum(alpha_t + rng.uniform(0.01, 0.2, shape[0]), 0.999)
    return out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, np.sqrt(1.0 - alpha_tpp**2)


def fused_loss(out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, w, param):
    """The launcher with p, q computed as pd_fast does: x_tilde = p*z_tpp + q*z_t ([PD] Alg. 2 l. 9)."""
    den = alpha_tpp - (sigma_tpp / sigma_t) * alpha_t
    p, q = 1.0 / den, -(sigma_tpp / sigma_t) / den
    return distill_loss_fwd_bwd(out, z_t, z_tpp, *map(vec, (alpha_t, sigma_t, p, q, w)), param)


def ref_loss(out: np.ndarray, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, w, param) -> np.ndarray:
    x_tilde = two_step_target(z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp)
    return w * distill_loss(out, z_t, x_tilde, alpha_t, sigma_t, param, weighting="constant")


@pytest.mark.parametrize("param", PARAMS)
def test_distill_loss_and_gradient_match_ref_and_its_central_differences(param: str) -> None:
    rng = np.random.default_rng(4)
    out, z_t, z_tpp, *coefs = loss_inputs(rng, (3, 2, 9, 5), param)
    w = rng.uniform(0.5, 2.0, 3)
    loss, grad = fused_loss(out, z_t, z_tpp, *coefs, w, param)
    args = (f64(z_t), f64(z_tpp), *coefs, w, param)
    want = ref_loss(f64(out), *args)
    close(loss, want)
    assert loss.dtype == torch.float32 and grad.shape == out.shape and grad.dtype == out.dtype
    # the loss is quadratic in out, so a central difference along any direction d is exact:
    # <grad[b], d[b]> = (L_b(out + d) - L_b(out - d)) / 2
    for _ in range(3):
        d = rng.standard_normal(out.shape)
        slope = (ref_loss(f64(out) + d, *args) - ref_loss(f64(out) - d, *args)) / 2
        got = (f64(grad) * d).reshape(3, -1).sum(axis=1)
        assert np.allclose(got, slope, rtol=1e-4, atol=1e-6 * np.abs(slope).max())


@pytest.mark.parametrize("param", ["x", "both"])
def test_distill_loss_multi_chunk_loop_and_non_contiguous(param: str, monkeypatch) -> None:
    # M = 5289 is 6 blocks; with at most 2 chunks per example each program loops 3 times
    monkeypatch.setattr(importlib.import_module("pd_fast.kernels.loss"), "MAX_CHUNKS", 2)
    rng = np.random.default_rng(5)
    out, z_t, z_tpp, *coefs = loss_inputs(rng, (2, 3, 41, 43), param)
    out = out.transpose(2, 3).contiguous().transpose(2, 3)
    z_tpp = torch.cat([z_tpp, z_tpp], dim=0)[::2]
    w = np.array([1.0, 3.0])
    loss, grad = fused_loss(out, z_t, z_tpp, *coefs, w, param)
    close(loss, ref_loss(f64(out), f64(z_t), f64(z_tpp), *coefs, w, param))
    d = rng.standard_normal(out.shape)
    args = (f64(z_t), f64(z_tpp), *coefs, w, param)
    slope = (ref_loss(f64(out) + d, *args) - ref_loss(f64(out) - d, *args)) / 2
    assert np.allclose((f64(grad) * d).reshape(2, -1).sum(axis=1), slope, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_distill_loss_half_precision_inputs(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(6)
    out, z_t, z_tpp, *coefs = loss_inputs(rng, (2, 2, 7, 3), "v", dtype)
    w = np.array([0.5, 2.0])
    loss, grad = fused_loss(out, z_t, z_tpp, *coefs, w, "v")
    close(loss, ref_loss(f64(out), f64(z_t), f64(z_tpp), *coefs, w, "v"), dtype)
    assert grad.dtype == dtype and loss.dtype == torch.float32


def test_the_kernels_know_the_params_of_the_core() -> None:
    """The launchers' own list (the kernels cannot import the core) is the core's, in order."""
    assert _launch.PARAMS == _checks.PARAMS == PARAMS


def test_unknown_param_raises_value_error_naming_it() -> None:
    z = torch.zeros(2, 3, device=DEVICE)
    c = vec(np.ones(2))
    with pytest.raises(ValueError, match="param"):
        sampler_step(z, z, c, c, c, c, c, c, "score", False)
    with pytest.raises(ValueError, match="param"):
        distill_loss_fwd_bwd(z, z, z, c, c, c, c, c, "score")
