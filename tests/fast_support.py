"""Helpers for the pd_fast tests: tensors from NumPy data in a given dtype and memory layout, the
error scales of tests/tolerances.py, the comparison itself, and a Gaussian "network" whose output
is known exactly, in torch (capturable in a CUDA graph) and in NumPy for pd_ref; its conditional
version (one Gaussian per class, docs/spec.md section 8) for the guided functions."""

from __future__ import annotations

import math

import numpy as np
import torch

import pd_ref
from pd_ref.sampling import noise_back

from .strategies import out_shape
from .tolerances import FP32_RTOL, LOSS_RTOL, OUT_ATOL, OUT_RTOL

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_torch(a: np.ndarray, dtype, layout: str = "contiguous", device: str = "cpu") -> torch.Tensor:
    """`a` rounded to `dtype` (a name of DTYPES, or a torch dtype), on `device`, with the values
    unchanged but stored as `layout`:
    "transposed" (strides reversed), "sliced" (every other element of a larger buffer),
    "channels_last" (4-D NHWC strides); layouts that do not apply to the shape stay contiguous."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)
    if layout == "transposed" and t.ndim >= 2:
        t = t.permute(*reversed(range(t.ndim))).contiguous().permute(*reversed(range(t.ndim)))
    elif layout == "sliced":
        big = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=device)
        big[..., ::2] = t
        t = big[..., ::2]
    elif layout == "channels_last" and t.ndim == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def to_np(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as float64 NumPy (exact: every fp32/fp16/bf16 value is a float64)."""
    return t.detach().cpu().to(torch.float64).numpy()


def ref_schedule(name: str):
    if name == "cosine":
        return pd_ref.CosineSchedule()
    return pd_ref.DiscreteSchedule.from_betas(name)


def fast_schedule(name: str):
    import pd_fast

    if name == "cosine":
        return pd_fast.CosineSchedule()
    return pd_fast.DiscreteSchedule.from_betas(name)


def per_example(c, ndim: int) -> np.ndarray:
    return np.asarray(c, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))


def coef_arg(values: np.ndarray, form: str):
    """Per-example coefficient values (B,) passed as `form`; returns (argument, values the
    reference must use). 'float' and '0-d' share example 0's value across the batch."""
    if form == "float":
        return float(values[0]), np.full_like(values, values[0])
    if form == "0-d":
        return torch.tensor(values[0], dtype=torch.float64), np.full_like(values, values[0])
    if form == "batch-fp32":
        t = torch.tensor(values, dtype=torch.float32)
        return t, to_np(t)
    return torch.tensor(values, dtype=torch.float64), values


def weight_arg(w: float, form: str, batch: int, rng: np.random.Generator):
    """A guidance weight (docs/spec.md section 8) passed as `form`, and the (B,) values pd_ref must
    use: 'batch' draws per-example weights in [0, 2w] with a zero among them (the conditional model,
    row 0)."""
    if form == "float":
        return w, np.full(batch, w)
    if form == "0-d":
        return torch.tensor(w, dtype=torch.float64), np.full(batch, w)
    values = np.concatenate([[0.0], rng.uniform(0.0, 2 * w, batch - 1)])
    return torch.tensor(values, dtype=torch.float64), values


def in_both(fn_name: str, *args, **kwargs) -> list:
    """(pd_ref.fn, args, kwargs) and (pd_fast.fn, args, kwargs) with the same arguments, NumPy arrays
    of a dimension or more turned into tensors (integer ones int64, the others fp32), for tests that
    both packages refuse bad input with the same message."""
    import pd_fast

    def conv(a):
        if isinstance(a, np.ndarray) and a.ndim > 0:
            return torch.tensor(a, dtype=torch.int64 if a.dtype.kind == "i" else torch.float32)
        return a

    return [
        (getattr(pd_ref, fn_name), args, kwargs),
        (getattr(pd_fast, fn_name), tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}),
    ]


# ------------------------------------------------------------------ error scales (tolerances.py)


def predict_scale(param: str, z, out, alpha, sigma, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes of the terms that make up x_hat and eps_hat (docs/spec.md section 2, absolute values);
    alpha, sigma shaped to broadcast. An error of x_hat feeds eps_hat through alpha/sigma."""
    az, ao = np.abs(z), np.abs(out)
    if param == "eps":
        x, e = (az + sigma * ao) / alpha, ao
    elif param == "x":
        x, e = ao, (az + alpha * ao) / sigma
    elif param == "v":
        x, e = alpha * az + sigma * ao, sigma * az + alpha * ao
    else:
        c = z.shape[1]
        x = sigma**2 * ao[:, :c] + alpha * (az + sigma * ao[:, c:])
        e = (az + alpha * x) / sigma
    if clip:
        e = (az + alpha * x) / sigma
    return x, e


def guided_predict_scale(param, z, out, out_uncond, alpha, sigma, w, clip) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes of the terms of the guided prediction `x_c + w*(x_c - x_u)` (docs/spec.md section 8):
    `(1 + w)*scale_c + w*scale_u`, for x_hat and eps_hat alike; with `clip`, eps_hat recomputed from the
    clipped x_hat. w shaped to broadcast."""
    x_c, e_c = predict_scale(param, z, out, alpha, sigma, False)
    x_u, e_u = predict_scale(param, z, out_uncond, alpha, sigma, False)
    x, e = (1 + w) * x_c + w * x_u, (1 + w) * e_c + w * e_u
    if clip:
        e = (np.abs(z) + alpha * x) / sigma
    return x, e


def step_predict_scale(param, z, out, alpha, sigma, clip, out_uncond=None, w=None):
    """`predict_scale`, or `guided_predict_scale` when `out_uncond` is given."""
    if out_uncond is None:
        return predict_scale(param, z, out, alpha, sigma, clip)
    return guided_predict_scale(param, z, out, out_uncond, alpha, sigma, w, clip)


def ddim_scale(
    param, z, out, alpha_t, sigma_t, alpha_s, sigma_s, clip, noise=None, out_uncond=None, w=None
) -> np.ndarray:
    """`alpha_s*|x_hat| + sigma_s*(|eps_hat| + |noise|)`: every DDIM coefficient (k_eps and c too)
    is at most sigma_s; so is every coefficient of the stochastic step (k_eps = alpha_s sigma_k/alpha_k
    with alpha_s <= alpha_k and sigma_k <= sigma_s, k_noise <= sigma_s). Guided with `out_uncond`, `w`."""
    x, e = step_predict_scale(param, z, out, alpha_t, sigma_t, clip, out_uncond, w)
    return alpha_s * x + sigma_s * (e + (0.0 if noise is None else np.abs(noise)))


def ancestral_scale(
    param, z, out, alpha_t, sigma_t, alpha_s, sigma_s, clip, noise, out_uncond=None, w=None
) -> np.ndarray:
    """`|z| + alpha_s*|x_hat| + sigma_t*|noise|`: r*alpha_s/alpha_t <= 1, (1 - r)*alpha_s <= alpha_s,
    sqrt(var) <= sigma_t. Guided with `out_uncond`, `w`."""
    x, _ = step_predict_scale(param, z, out, alpha_t, sigma_t, clip, out_uncond, w)
    return np.abs(z) + alpha_s * x + sigma_t * np.abs(noise)


def target_scale(z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp) -> np.ndarray:
    """`(|z_tpp| + ratio*|z_t|) / |den|`: the cancellation of the two-step target."""
    ratio = sigma_tpp / sigma_t
    return (np.abs(z_tpp) + ratio * np.abs(z_t)) / np.abs(alpha_tpp - ratio * alpha_t)


#: a bound on |d z_t'' / d z_t'| and |d x_hat / d z_t'| of a DDIM step driven by the Gaussian
#: denoiser below (x_hat is z times alpha*STD^2/(alpha^2*STD^2 + sigma^2) <= 1/alpha, then the DDIM
#: map keeps it O(1)); it carries the first step's error through the second
GAUSSIAN_LIPSCHITZ = 4.0


def other_rounding(z: np.ndarray, err: np.ndarray, dtype: str) -> np.ndarray:
    """Where a value known to within `err` may round to either of two neighbours of `dtype`, the
    neighbour that z itself does not round to; elsewhere z's own rounding."""
    own = torch.from_numpy(z).to(DTYPES[dtype])
    up, down = (torch.from_numpy(z + sign * err).to(DTYPES[dtype]) for sign in (1.0, -1.0))
    return to_np(torch.where(up != own, up, torch.where(down != own, down, own)))


def teacher_target_scale(
    param, teacher, z, t, steps, schedule, labels=None, w=None, dtype=None, null=None
) -> np.ndarray:
    """Error scale of `teacher_target` (float64, following pd_ref.teacher_target): each teacher
    step's own `ddim_scale`, the first carried through the second by GAUSSIAN_LIPSCHITZ, then the
    target's 1/den amplification (`target_scale`); on the final interval, x_hat's own scale.
    Guided (labels and w (B,)): the teacher is `teacher(z, t, c)`, the scales `guided_predict_scale`'s
    (the classes share one STD, so the guided map has the unguided map's slope). `labels` may also be
    a tensor condition, with `null` its null condition (default: the null label -1).

    With `dtype`, the teacher sees z_t' rounded to it: where pd_fast's fp32 z_t' (within
    FP32_RTOL * its scale of pd_ref's) may round to the other neighbour, its teacher sees that value;
    the scale then also holds the difference this makes to the target (evaluated with pd_ref), which
    for eps at t' ~ 1 is ~ulp/alpha_t' (a jump, not covered by a Lipschitz bound)."""
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), (z.shape[0],))
    t_p, t_pp = t - 0.5 / steps, np.maximum(t - 1.0 / steps, 0.0)
    (a_t, s_t), (a_p, s_p), (a_pp, s_pp) = (
        (per_example(a, z.ndim), per_example(s, z.ndim)) for a, s in map(schedule.alpha_sigma, (t, t_p, t_pp))
    )

    def outs(z, time):
        if labels is None:
            return teacher(z, time), {}
        uncond = teacher(z, time, np.full_like(labels, -1) if null is None else null)
        return teacher(z, time, labels), {"out_uncond": uncond, "w": w}

    def step_w(guide):
        return {**guide, "w": per_example(guide["w"], z.ndim)} if guide else {}

    final = per_example(np.isclose(t * steps, 1.0), z.ndim)

    def target(z_p, out_p, guide):
        """pd_ref's target from z_t' and the teacher's outputs there."""
        z_pp = pd_ref.ddim_step(
            z_p, out_p, a_p.ravel(), s_p.ravel(), a_pp.ravel(), s_pp.ravel(), param, **guide
        )
        coefs = (a_p.ravel(), s_p.ravel(), param)
        if guide:
            x_hat_p = pd_ref.guided_x_eps(z_p, out_p, guide["out_uncond"], *coefs, w=w)[0]
        else:
            x_hat_p = pd_ref.predict_x_eps(z_p, out_p, *coefs)[0]
        ratio = s_pp / s_t
        return np.where(final, x_hat_p, (z_pp - ratio * z) / (a_pp - ratio * a_t))

    out, guide = outs(z, t)
    err_p = ddim_scale(param, z, out, a_t, s_t, a_p, s_p, False, **step_w(guide))
    z_p = pd_ref.ddim_step(z, out, a_t.ravel(), s_t.ravel(), a_p.ravel(), s_p.ravel(), param, **guide)
    out_p, guide = outs(z_p, t_p)
    err_pp = ddim_scale(param, z_p, out_p, a_p, s_p, a_pp, s_pp, False, **step_w(guide))
    err_pp = err_pp + GAUSSIAN_LIPSCHITZ * err_p
    ratio = s_pp / s_t
    step_scale = (err_pp + ratio * np.abs(z)) / np.abs(a_pp - ratio * a_t)
    x_scale, _ = step_predict_scale(param, z_p, out_p, a_p, s_p, False, **step_w(guide))
    scale = np.where(final, x_scale + GAUSSIAN_LIPSCHITZ * err_p, step_scale)
    if dtype is None:
        return scale
    seen = other_rounding(z_p, FP32_RTOL * err_p, dtype)  # the teacher is elementwise: one call
    jump = np.abs(target(z_p, *outs(seen, t_p)) - target(z_p, out_p, guide))
    return scale + jump / FP32_RTOL


# ------------------------------------------------------------------ the comparison


def assert_close(fast: torch.Tensor, ref: np.ndarray, dtype: str, scale, what: str, ulps: int = 1) -> None:
    """`|fast - ref| <= ulps*(OUT_RTOL*|ref| + OUT_ATOL) + FP32_RTOL*scale` elementwise
    (tolerances.py; `ulps` = 2 where a result is rounded to its dtype twice); where ref lies beyond
    the dtype's largest finite value (fp16 only, in practice), fast must be that value or inf."""
    got = to_np(fast)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert fast.dtype == DTYPES[dtype], f"{what}: dtype {fast.dtype}, expected {dtype}"
    biggest = torch.finfo(DTYPES[dtype]).max
    beyond = np.abs(ref) > biggest
    if beyond.any():
        hit = got[beyond]
        assert np.all((np.abs(hit) >= biggest) & (np.sign(hit) == np.sign(ref[beyond]))), what
    tol = ulps * (OUT_RTOL[dtype] * np.abs(ref) + OUT_ATOL[dtype]) + FP32_RTOL * np.broadcast_to(
        scale, ref.shape
    )
    err = np.abs(got - ref)
    bad = ~beyond & ~(err <= tol)
    if bad.any():
        k = np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), ref.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {ref.size} elements off; worst at {k}: fast {got[k]!r}, "
            f"ref {ref[k]!r}, |err| {err[k]:.3g} > tol {tol[k]:.3g}"
        )


# ------------------------------------------------------------------ losses and their gradient


def analytic_grad(param, z, out, x_tilde, alpha, sigma, w) -> tuple[np.ndarray, np.ndarray]:
    """d loss_b / d out_b from docs/spec.md section 5 in float64, and its error scale's factor |dx_hat/dout|:
    `(2w/M)(x_hat - x_tilde) * dx_hat/dout`; dx_hat/dout = 1 (x), -sigma (v), -sigma/alpha (eps),
    sigma^2 and -alpha*sigma on the two halves (both)."""
    x_hat, _ = pd_ref.predict_x_eps(z, out, alpha.reshape(-1), sigma.reshape(-1), param)
    m = np.prod(z.shape[1:], dtype=np.int64)
    g = 2.0 * w / m * (x_hat - x_tilde)
    if param == "x":
        return g, 2.0 * w / m * np.ones_like(z)
    if param == "v":
        return -sigma * g, 2.0 * w / m * sigma * np.ones_like(z)
    if param == "eps":
        return -sigma / alpha * g, 2.0 * w / m * sigma / alpha * np.ones_like(z)
    factor = 2.0 * w / m * np.ones_like(z)
    return (
        np.concatenate([sigma**2 * g, -alpha * sigma * g], axis=1),
        np.concatenate([sigma**2 * factor, alpha * sigma * factor], axis=1),
    )


def check_loss_and_grad(param, dtype, loss, grad, incoming, ref_loss, w, ref_grad, grad_factor, diff_scale):
    """loss (fp32, (B,)) against pd_ref's, and `grad` (out.grad) against `incoming * ref_grad`.

    `diff_scale` S: the magnitude of the terms of d = x_hat - x_tilde, whose fp32 error
    |delta| <= FP32_RTOL*S drives both. Loss `w mean(d^2)`: its error is at most
    `w mean(2|d| delta + delta^2) <= 2 FP32_RTOL sqrt(w L) rms(S) + w FP32_RTOL^2 mean(S^2)`
    (Cauchy-Schwarz), plus the fp32 reduction (LOSS_RTOL). Gradient `(2w/M) d dx_hat/dout`:
    error `grad_factor * delta`, and 2 roundings to out's dtype (kernel, then the scaling)."""
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    s2 = (diff_scale.reshape(diff_scale.shape[0], -1) ** 2).mean(axis=1)
    w = w.reshape(-1)
    tol = LOSS_RTOL * ref_loss + 2 * FP32_RTOL * np.sqrt(w * ref_loss * s2) + w * FP32_RTOL**2 * s2
    err = np.abs(to_np(loss) - ref_loss)
    assert np.all(err <= tol), f"loss: err {err} > tol {tol}"
    incoming = per_example(incoming, diff_scale.ndim)
    if param == "both":
        diff_scale = np.concatenate([diff_scale, diff_scale], axis=1)
    grad_scale = np.abs(incoming) * grad_factor * diff_scale
    assert_close(grad, incoming * ref_grad, dtype, grad_scale, "grad", ulps=2)


# ------------------------------------------------------------------ pd_ref's sampler loop


def ref_sample(
    model, z, steps, schedule, param, clip, sampler, eta, variance, noises, labels=None, w=None, null=None
):
    """pd_ref's sampler loop (as pd_ref.sample) with given noise draws, one per step but the last.
    Also returns the sum over the model calls of each step's error scale (fast_support), the
    magnitude of the terms that step combines, along the reference trajectory. Guided when `labels`
    and `w` ((B,), some > 0) are given: `model(z, t, c)` with the labels and with the null label
    (or with a tensor condition in place of `labels` and its null condition `null`, (B, ...))."""
    t_batch = np.ones(z.shape[0])
    scales = np.zeros_like(z)

    def outs(z, time):
        if labels is None:
            return model(z, time), {}
        out = model(z, time, labels)
        if not np.any(w > 0):
            return out, {}
        uncond = model(z, time, np.full_like(labels, -1) if null is None else null)
        return out, {"out_uncond": uncond, "w": w}

    def shaped(guide):
        return {**guide, "w": per_example(guide["w"], z.ndim)} if guide else {}

    for k, i in enumerate(range(steps, 1, -1)):
        t, s = i / steps, (i - 1) / steps
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        out, guide = outs(z, t * t_batch)
        noise = noises[k]
        coefs = (alpha_t, sigma_t, alpha_s, sigma_s)
        if sampler == "ddim":
            scales += ddim_scale(param, z, out, *coefs, clip, noise, **shaped(guide))
            z = pd_ref.ddim_step(z, out, *coefs, param, clip=clip, eta=eta, noise=noise, **guide)
        elif sampler == "ancestral":
            scales += ancestral_scale(param, z, out, *coefs, clip, noise, **shaped(guide))
            z = pd_ref.ancestral_step(
                z, out, *coefs, param, clip=clip, variance=variance, noise=noise, **guide
            )
        else:  # [GD]'s stochastic step (docs/spec.md section 8), through pd_ref's own pieces
            scales += ddim_scale(param, z, out, *coefs, clip, noise, **shaped(guide))
            alpha_k, sigma_k = schedule.alpha_sigma(max(t - 2.0 / steps, 0.0))
            z_k = pd_ref.ddim_step(z, out, alpha_t, sigma_t, alpha_k, sigma_k, param, clip=clip, **guide)
            z = noise_back(z_k, alpha_k, sigma_k, alpha_s, sigma_s, noise)
    alpha_t, sigma_t = schedule.alpha_sigma(1.0 / steps)
    out, guide = outs(z, t_batch / steps)
    scales += step_predict_scale(param, z, out, alpha_t, sigma_t, clip, **shaped(guide))[0]
    if guide:
        return pd_ref.guided_x_eps(z, out, guide["out_uncond"], alpha_t, sigma_t, param, clip=clip, w=w)[
            0
        ], scales
    return pd_ref.predict_x_eps(z, out, alpha_t, sigma_t, param, clip=clip)[0], scales


# ------------------------------------------------------------------ a network with a known output

#: data x ~ N(MU, STD^2) elementwise: E[x | z_t] is known in closed form
MU, STD = 0.2, 0.6
COSINE_B = math.atan(math.exp(-10.0))
COSINE_A = math.atan(math.exp(10.0)) - COSINE_B


def gaussian_out_torch(z: torch.Tensor, t: torch.Tensor, param: str, mu=MU) -> torch.Tensor:
    """The exact denoiser of Gaussian data N(mu, STD^2) under the cosine schedule, as `param` output,
    in pure torch (float64 inside; capturable in a CUDA graph); returned in z's dtype. mu: a float,
    or a float64 (B,) tensor of per-example means."""
    theta = COSINE_A * t.to(torch.float64) + COSINE_B
    shape = (-1,) + (1,) * (z.ndim - 1)
    alpha, sigma = torch.cos(theta).reshape(shape), torch.sin(theta).reshape(shape)
    if isinstance(mu, torch.Tensor):
        mu = mu.reshape(shape)
    z64 = z.to(torch.float64)
    x_hat = mu + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z64 - alpha * mu)
    eps_hat = (z64 - alpha * x_hat) / sigma
    if param == "eps":
        out = eps_hat
    elif param == "x":
        out = x_hat
    elif param == "v":
        out = alpha * eps_hat - sigma * x_hat
    else:
        out = torch.cat([x_hat, eps_hat], dim=1)
    return out.to(z.dtype)


def gaussian_model(param: str):
    """model(z, t) for pd_fast."""
    return lambda z, t: gaussian_out_torch(z, t, param)


def gaussian_model_ref(param: str, dtype: str):
    """The same network for pd_ref: it sees z and t rounded to `dtype` (as pd_fast's model does)
    and its output is rounded to `dtype` (as pd_fast's model returns it)."""

    def model(z: np.ndarray, t: np.ndarray) -> np.ndarray:
        z_d = torch.from_numpy(np.asarray(z, dtype=np.float64)).to(DTYPES[dtype])
        t_d = torch.from_numpy(np.asarray(t, dtype=np.float64)).to(DTYPES[dtype])
        return to_np(gaussian_out_torch(z_d, t_d, param))

    return model


#: the mean of class c is MU + CLASS_SHIFT*(c + 1): the null label -1 gives MU
CLASS_SHIFT = 0.15


def class_means(c: torch.Tensor) -> torch.Tensor:
    return MU + CLASS_SHIFT * (c.to(torch.float64) + 1.0)


def gaussian_cond_model(param: str):
    """model(z, t, c) for pd_fast: the exact denoiser of class c's Gaussian N(MU_c, STD^2). All
    classes share STD, so a guided step is the affine map of an unguided one (same slope)."""
    return lambda z, t, c: gaussian_out_torch(z, t, param, class_means(c).to(z.device))


def gaussian_cond_model_ref(param: str, dtype: str):
    """The same conditional network for pd_ref, seeing z and t rounded to `dtype`, output rounded."""

    def model(z: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        z_d = torch.from_numpy(np.asarray(z, dtype=np.float64)).to(DTYPES[dtype])
        t_d = torch.from_numpy(np.asarray(t, dtype=np.float64)).to(DTYPES[dtype])
        return to_np(gaussian_out_torch(z_d, t_d, param, class_means(torch.from_numpy(np.asarray(c)))))

    return model


def cond_means(c: torch.Tensor) -> torch.Tensor:
    """Per-example means of a tensor condition c (B, ...): MU + CLASS_SHIFT * (the mean of c's row),
    reduced in float64 over a contiguous copy (so that pd_fast's model and pd_ref's, given the same
    values in any layout, reduce them in one order and agree exactly)."""
    rows = c.detach().to(torch.float64).contiguous().reshape(c.shape[0], -1)
    return MU + CLASS_SHIFT * rows.mean(dim=1)


def gaussian_tensor_cond_model(param: str):
    """model(z, t, c) for pd_fast with c a floating tensor (B, ...) (e.g. prompt embeddings): the
    exact denoiser of N(cond_means(c), STD^2), an affine map of z whose offset depends on a reduction
    of c (one STD: a guided step is the affine map of an unguided one, as for the classes)."""
    return lambda z, t, c: gaussian_out_torch(z, t, param, cond_means(c).to(z.device))


def gaussian_tensor_cond_model_ref(param: str, dtype: str):
    """The same network for pd_ref, seeing z and t rounded to `dtype`, its output rounded."""

    def model(z: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        z_d = torch.from_numpy(np.asarray(z, dtype=np.float64)).to(DTYPES[dtype])
        t_d = torch.from_numpy(np.asarray(t, dtype=np.float64)).to(DTYPES[dtype])
        return to_np(gaussian_out_torch(z_d, t_d, param, cond_means(torch.from_numpy(np.array(c)))))

    return model


def tensor_cond_inputs(spec, batch: int):
    """A tensor condition and its null condition from a `strategies.tensor_conds` draw: cond
    (B, *trailing) uniform in [-2, 2], null_cond (1 or B, *trailing) in [-1, 1], in the drawn dtype
    and layout; and their float64 values for pd_ref (null_cond broadcast to the batch)."""
    rng = np.random.default_rng(spec.seed)
    dtype = torch.float64 if spec.dtype == "float64" else DTYPES[spec.dtype]
    made = []
    for first, bound in ((batch, 2.0), (1 if spec.null_batch == "1" else batch, 1.0)):
        values = rng.uniform(-bound, bound, (first, *spec.trailing))
        made.append(as_torch(values, dtype, spec.layout))
    cond, null_cond = made
    return (cond, null_cond), (to_np(cond), np.broadcast_to(to_np(null_cond), cond.shape).copy())


def tensors(case, *shapes_and_names):
    """Standard normal tensors in the case's dtype and layout, and their float64 values for pd_ref."""
    made = [as_torch(case.rng.standard_normal(shape), case.dtype, case.layout) for shape in shapes_and_names]
    return made, [to_np(t) for t in made]


def coefficients(case, values: dict[str, np.ndarray]):
    """Each per-example coefficient as the case's argument form, and the values pd_ref must use.
    fp32 coefficients are used only where their rounding keeps s < t (near t = 1 with N = 8192,
    sigma_t and sigma_s both round to 1.0f: bad input for both packages, tested elsewhere)."""
    form = case.form
    if form == "batch-fp32":
        sigmas = [np.float32(v) for k, v in values.items() if k.startswith("sigma")]
        if len(sigmas) == 2 and np.any(sigmas[1] >= sigmas[0]):
            form = "batch"
    args, refs = {}, {}
    for name, v in values.items():
        args[name], refs[name] = coef_arg(np.asarray(v, dtype=np.float64), form)
    return args, refs


def shaped(refs: dict[str, np.ndarray], ndim: int) -> dict[str, np.ndarray]:
    return {k: per_example(v, ndim) for k, v in refs.items()}


def step_inputs(case):
    alpha_t, sigma_t = ref_schedule(case.schedule).alpha_sigma(case.t)
    alpha_s, sigma_s = ref_schedule(case.schedule).alpha_sigma(case.s)
    args, refs = coefficients(
        case, {"alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_s": alpha_s, "sigma_s": sigma_s}
    )
    (z, out, noise), (z_r, out_r, noise_r) = tensors(
        case, case.shape, out_shape(case.shape, case.param), case.shape
    )
    return (z, out, noise), (z_r, out_r, noise_r), args, refs
