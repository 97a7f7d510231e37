"""pd_fast against pd_ref (float64) on both backends: torch, and Triton (under TRITON_INTERPRET=1 on
the CPU, see conftest.py). Inputs are rounded to the dtype under test first and pd_ref sees the same
rounded values; tolerances (per dtype, and why) live in tests/tolerances.py."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pd_fast
import pd_ref
from pd_fast.schedules import schedule_from_dict
from tests.fast_support import (
    DTYPES,
    analytic_grad,
    ancestral_scale,
    as_torch,
    assert_close,
    check_loss_and_grad,
    coefficients,
    ddim_scale,
    fast_schedule,
    gaussian_model,
    gaussian_model_ref,
    per_example,
    predict_scale,
    ref_sample,
    ref_schedule,
    shaped,
    step_inputs,
    target_scale,
    teacher_target_scale,
    tensors,
    to_np,
)
from tests.strategies import (
    FAST,
    cases,
    etas,
    float_dtypes,
    grid_times,
    out_shape,
    params,
    schedule_names,
    seeds,
    shapes,
    weightings,
)
from tests.tolerances import FP32_RTOL, OUT_RTOL, SAMPLER_GAIN

#: fp16 results beyond 65504 are inf (checked in assert_close); numpy warns when the interpreter casts
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
# ------------------------------------------------------------------ forward process


@FAST
@given(case=cases())
def test_diffuse_matches_ref(case):
    """z_t = alpha_t x + sigma_t noise in float64, rounded once to the input dtype."""
    (x, noise), (x_r, noise_r) = tensors(case, case.shape, case.shape)
    t = np.full(case.shape[0], case.t) if case.form == "batch" else case.t
    z = pd_fast.diffuse(x, torch.as_tensor(t, dtype=torch.float64), fast_schedule(case.schedule), noise)
    z_ref = pd_ref.diffuse(x_r, t, ref_schedule(case.schedule), noise_r)
    assert z.dtype == x.dtype and z.shape == x.shape
    alpha, sigma = (per_example(c, x.ndim) for c in ref_schedule(case.schedule).alpha_sigma(np.atleast_1d(t)))
    assert_close(z, z_ref, case.dtype, np.abs(alpha * x_r) + np.abs(sigma * noise_r), "z_t")


# ------------------------------------------------------------------ parameterizations and steps


@FAST
@given(case=cases())
def test_predict_x_eps_matches_ref(case):
    (z, out, _), (z_r, out_r, _), args, refs = step_inputs(case)
    x_hat, eps_hat = pd_fast.predict_x_eps(
        z, out, args["alpha_t"], args["sigma_t"], case.param, clip=case.clip
    )
    x_ref, eps_ref = pd_ref.predict_x_eps(
        z_r, out_r, refs["alpha_t"], refs["sigma_t"], case.param, clip=case.clip
    )
    c = shaped(refs, z.ndim)
    x_scale, eps_scale = predict_scale(case.param, z_r, out_r, c["alpha_t"], c["sigma_t"], case.clip)
    assert_close(x_hat, x_ref, case.dtype, x_scale, "x_hat")
    assert_close(eps_hat, eps_ref, case.dtype, eps_scale, "eps_hat")


@FAST
@given(case=cases(), eta=etas)
def test_ddim_step_matches_ref(backend, case, eta):
    (z, out, noise), (z_r, out_r, noise_r), args, refs = step_inputs(case)
    coefs = [args[k] for k in ("alpha_t", "sigma_t", "alpha_s", "sigma_s")]
    fast = pd_fast.ddim_step(z, out, *coefs, case.param, clip=case.clip, eta=eta, noise=noise)
    ref_coefs = [refs[k] for k in ("alpha_t", "sigma_t", "alpha_s", "sigma_s")]
    ref = pd_ref.ddim_step(z_r, out_r, *ref_coefs, case.param, clip=case.clip, eta=eta, noise=noise_r)
    c = shaped(refs, z.ndim)
    scale = ddim_scale(
        case.param, z_r, out_r, c["alpha_t"], c["sigma_t"], c["alpha_s"], c["sigma_s"], case.clip,
        noise_r if eta > 0 else None,
    )  # fmt: skip
    assert_close(fast, ref, case.dtype, scale, f"ddim_step eta={eta}")


@FAST
@given(case=cases(), variance=st.sampled_from(["fixed_small", "fixed_large"]))
def test_ancestral_step_matches_ref(backend, case, variance):
    (z, out, noise), (z_r, out_r, noise_r), args, refs = step_inputs(case)
    coefs = [args[k] for k in ("alpha_t", "sigma_t", "alpha_s", "sigma_s")]
    fast = pd_fast.ancestral_step(z, out, *coefs, case.param, clip=case.clip, variance=variance, noise=noise)
    ref_coefs = [refs[k] for k in ("alpha_t", "sigma_t", "alpha_s", "sigma_s")]
    ref = pd_ref.ancestral_step(
        z_r, out_r, *ref_coefs, case.param, clip=case.clip, variance=variance, noise=noise_r
    )
    c = shaped(refs, z.ndim)
    scale = ancestral_scale(
        case.param, z_r, out_r, c["alpha_t"], c["sigma_t"], c["alpha_s"], c["sigma_s"], case.clip, noise_r
    )
    assert_close(fast, ref, case.dtype, scale, f"ancestral_step {variance}")


@settings(FAST, max_examples=25)
@given(case=cases())
def test_ddim_step_with_eta_one_equals_ancestral_fixed_small(backend, case):
    """docs/spec.md section 3's property, on pd_fast itself. The two formulas agree only as well as their
    float64 coefficients do (near alpha_t ~ 1e-5 they differ by ~1e-6 relative in pd_ref too):
    that float64 discrepancy is allowed on top of both sides' fp32 tolerances."""
    (z, out, noise), (z_r, out_r, noise_r), args, refs = step_inputs(case)
    coefs = [args[k] for k in ("alpha_t", "sigma_t", "alpha_s", "sigma_s")]
    ddim = pd_fast.ddim_step(z, out, *coefs, case.param, clip=case.clip, eta=1.0, noise=noise)
    anc = pd_fast.ancestral_step(
        z, out, *coefs, case.param, clip=case.clip, variance="fixed_small", noise=noise
    )
    c = shaped(refs, z.ndim)
    coefs_r = (c["alpha_t"], c["sigma_t"], c["alpha_s"], c["sigma_s"])
    scale = ancestral_scale(case.param, z_r, out_r, *coefs_r, case.clip, noise_r)
    scale = scale + ddim_scale(case.param, z_r, out_r, *coefs_r, case.clip, noise_r)
    names = ("alpha_t", "sigma_t", "alpha_s", "sigma_s")
    ref_ddim = pd_ref.ddim_step(
        z_r, out_r, *[refs[k] for k in names], case.param, clip=case.clip, eta=1.0, noise=noise_r
    )
    ref_anc = pd_ref.ancestral_step(
        z_r,
        out_r,
        *[refs[k] for k in names],
        case.param,
        clip=case.clip,
        variance="fixed_small",
        noise=noise_r,
    )
    scale = scale + np.abs(ref_ddim - ref_anc) / FP32_RTOL
    # each side carries its own error: the two one-sided tolerances added
    assert_close(ddim, to_np(anc), case.dtype, scale, "ddim eta=1 vs ancestral fixed_small", ulps=2)


# ------------------------------------------------------------------ target and loss


def target_inputs(case, on_trajectory: bool, fp32_target: bool):
    """z_t and z_tpp; on a trajectory, z_tpp = alpha_tpp*x + sigma_tpp*eps with the same (x, eps) as
    z_t, so that x_tilde = x: the cancellation docs/spec.md section 4 warns about is real."""
    alpha_t, sigma_t = ref_schedule(case.schedule).alpha_sigma(case.t)
    alpha_tpp, sigma_tpp = ref_schedule(case.schedule).alpha_sigma(case.s)
    args, refs = coefficients(
        case, {"alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_tpp": alpha_tpp, "sigma_tpp": sigma_tpp}
    )
    c = shaped(refs, len(case.shape))
    x = case.rng.uniform(-1.0, 1.0, case.shape)
    eps = case.rng.standard_normal(case.shape)
    z_t = c["alpha_t"] * x + c["sigma_t"] * eps
    z_tpp = (
        c["alpha_tpp"] * x + c["sigma_tpp"] * eps if on_trajectory else case.rng.standard_normal(case.shape)
    )
    target_dtype = "float32" if fp32_target else case.dtype
    z_t, z_tpp = as_torch(z_t, case.dtype, case.layout), as_torch(z_tpp, target_dtype, case.layout)
    return z_t, z_tpp, args, refs, c


@FAST
@given(case=cases(), on_trajectory=st.booleans(), fp32_target=st.booleans())
def test_two_step_target_matches_ref(case, on_trajectory, fp32_target):
    z_t, z_tpp, args, refs, c = target_inputs(case, on_trajectory, fp32_target)
    names = ("alpha_t", "sigma_t", "alpha_tpp", "sigma_tpp")
    fast = pd_fast.two_step_target(z_t, z_tpp, *[args[k] for k in names])
    ref = pd_ref.two_step_target(to_np(z_t), to_np(z_tpp), *[refs[k] for k in names])
    scale = target_scale(to_np(z_t), to_np(z_tpp), *[c[k] for k in names])
    assert_close(fast, ref, case.dtype, scale, "two_step_target")


@FAST
@given(case=cases(), weighting=weightings)
def test_loss_weight_matches_ref(case, weighting):
    alpha, sigma = ref_schedule(case.schedule).alpha_sigma(case.t)
    fast = pd_fast.loss_weight(torch.tensor(alpha), torch.tensor(sigma), weighting)
    assert fast.dtype == torch.float64
    np.testing.assert_allclose(to_np(fast), pd_ref.loss_weight(alpha, sigma, weighting), rtol=1e-13)
    fast_float = pd_fast.loss_weight(float(alpha[0]), float(sigma[0]), weighting)
    np.testing.assert_allclose(
        to_np(fast_float), pd_ref.loss_weight(alpha[0], sigma[0], weighting), rtol=1e-13
    )


@FAST
@given(case=cases(), weighting=weightings, fp32_target=st.booleans())
def test_distill_loss_and_grad_match_ref(backend, case, weighting, fp32_target):
    (z, out), (z_r, out_r) = tensors(case, case.shape, out_shape(case.shape, case.param))
    x_tilde = as_torch(case.rng.uniform(-1, 1, case.shape), "float32" if fp32_target else case.dtype)
    alpha, sigma = ref_schedule(case.schedule).alpha_sigma(case.t)
    args, refs = coefficients(case, {"alpha_t": alpha, "sigma_t": sigma})
    out.requires_grad_(True)
    loss = pd_fast.distill_loss(
        out, z, x_tilde, args["alpha_t"], args["sigma_t"], case.param, weighting=weighting
    )
    incoming = case.rng.uniform(-2.0, 2.0, case.shape[0])
    (loss * torch.tensor(incoming, dtype=torch.float32)).sum().backward()

    xt_r = to_np(x_tilde)
    ref_loss = pd_ref.distill_loss(
        out_r, z_r, xt_r, refs["alpha_t"], refs["sigma_t"], case.param, weighting=weighting
    )
    c = shaped(refs, z.ndim)
    w = per_example(pd_ref.loss_weight(refs["alpha_t"], refs["sigma_t"], weighting), z.ndim)
    ref_grad, factor = analytic_grad(case.param, z_r, out_r, xt_r, c["alpha_t"], c["sigma_t"], w)
    x_scale, _ = predict_scale(case.param, z_r, out_r, c["alpha_t"], c["sigma_t"], False)
    check_loss_and_grad(
        case.param,
        case.dtype,
        loss,
        out.grad,
        incoming,
        ref_loss,
        w,
        ref_grad,
        factor,
        x_scale + np.abs(xt_r),
    )


@FAST
@given(case=cases(), weighting=weightings, final=st.booleans(), fp32_target=st.booleans())
def test_fused_distill_loss_and_grad_match_ref(backend, case, weighting, final, fp32_target):
    z_t, z_tpp, args, refs, c = target_inputs(case, on_trajectory=True, fp32_target=fp32_target)
    if final:  # the final-interval rule: z_tpp is a target itself, alpha_tpp = 1, sigma_tpp = 0
        z_tpp = as_torch(case.rng.uniform(-1, 1, case.shape), "float32" if fp32_target else case.dtype)
        args["alpha_tpp"], args["sigma_tpp"] = 1.0, 0.0
        refs["alpha_tpp"], refs["sigma_tpp"] = np.ones(case.shape[0]), np.zeros(case.shape[0])
        c = shaped(refs, len(case.shape))
    out = as_torch(case.rng.standard_normal(out_shape(case.shape, case.param)), case.dtype, case.layout)
    out.requires_grad_(True)
    names = ("alpha_t", "sigma_t", "alpha_tpp", "sigma_tpp")
    loss = pd_fast.fused_distill_loss(
        out, z_t, z_tpp, *[args[k] for k in names], case.param, weighting=weighting
    )
    incoming = case.rng.uniform(-2.0, 2.0, case.shape[0])
    (loss * torch.tensor(incoming, dtype=torch.float32)).sum().backward()

    z_r, zpp_r, out_r = to_np(z_t), to_np(z_tpp), to_np(out)
    xt_r = pd_ref.two_step_target(z_r, zpp_r, *[refs[k] for k in names])
    ref_loss = pd_ref.distill_loss(
        out_r, z_r, xt_r, refs["alpha_t"], refs["sigma_t"], case.param, weighting=weighting
    )
    w = per_example(pd_ref.loss_weight(refs["alpha_t"], refs["sigma_t"], weighting), z_t.ndim)
    ref_grad, factor = analytic_grad(case.param, z_r, out_r, xt_r, c["alpha_t"], c["sigma_t"], w)
    x_scale, _ = predict_scale(case.param, z_r, out_r, c["alpha_t"], c["sigma_t"], False)
    t_scale = target_scale(z_r, zpp_r, *[c[k] for k in names])
    check_loss_and_grad(
        case.param, case.dtype, loss, out.grad, incoming, ref_loss, w, ref_grad, factor, x_scale + t_scale
    )


@pytest.mark.parametrize("fused", [False, True])
def test_loss_backward_scales_by_the_incoming_gradient(backend, fused):
    """loss.mean().backward() and a non-uniform incoming gradient g give g_b times the per-example
    gradient, checked against finite differences of pd_ref's float64 loss."""
    rng = np.random.default_rng(3)
    shape, param = (4, 2, 3), "both"
    alpha, sigma = pd_ref.CosineSchedule().alpha_sigma(np.array([0.1, 0.4, 0.7, 0.95]))
    z = rng.standard_normal(shape)
    x_tilde = rng.uniform(-1, 1, shape)
    out = rng.standard_normal(out_shape(shape, param))
    grads = []
    for incoming in (np.full(4, 0.25), np.array([1.0, -3.0, 0.0, 0.5])):
        o = torch.tensor(out, dtype=torch.float32, requires_grad=True)
        zt, xt = torch.tensor(z, dtype=torch.float32), torch.tensor(x_tilde, dtype=torch.float32)
        a, s = torch.tensor(alpha), torch.tensor(sigma)
        if fused:  # x_tilde as a final-interval target
            loss = pd_fast.fused_distill_loss(o, zt, xt, a, s, 1.0, 0.0, param, weighting="snr+1")
        else:
            loss = pd_fast.distill_loss(o, zt, xt, a, s, param, weighting="snr+1")
        if np.all(incoming == 0.25):
            loss.mean().backward()
        else:
            loss.backward(torch.tensor(incoming, dtype=torch.float32))
        grads.append((incoming, o.grad.double().numpy()))

    def ref_loss(o):
        return pd_ref.distill_loss(o, z, x_tilde, alpha, sigma, param, weighting="snr+1")

    h = 1e-6
    fd = np.zeros((4,) + out.shape)  # fd[b] = d loss_b / d out, central differences in float64
    for idx in np.ndindex(out.shape):
        e = np.zeros_like(out)
        e[idx] = h
        fd[(slice(None),) + idx] = (ref_loss(out + e) - ref_loss(out - e)) / (2 * h)
    for incoming, grad in grads:
        expected = np.einsum("b,b...->...", incoming, fd)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ teacher


@FAST
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=5),
    it=grid_times(),
    dtype=float_dtypes,
    schedule=schedule_names,
    seed=seeds,
    per_example_t=st.booleans(),
)
def test_teacher_target_matches_ref(backend, param, shape, it, dtype, schedule, seed, per_example_t):
    i, n = it
    rng = np.random.default_rng(seed)
    t = np.concatenate([[i], rng.integers(1, n + 1, shape[0] - 1)]) / n if per_example_t else i / n
    z = as_torch(rng.standard_normal(shape), dtype)
    t_arg = torch.tensor(t) if per_example_t else t
    fast = pd_fast.teacher_target(gaussian_model(param), z, t_arg, n, fast_schedule(schedule), param)
    teacher_ref = gaussian_model_ref(param, dtype)
    ref = pd_ref.teacher_target(teacher_ref, to_np(z), t, n, ref_schedule(schedule), param)

    z_tpp, alpha_tpp, sigma_tpp = pd_fast.teacher_two_step(
        gaussian_model(param), z, t_arg, n, fast_schedule(schedule), param
    )
    assert z_tpp.dtype == torch.float32 and alpha_tpp.dtype == sigma_tpp.dtype == torch.float64
    final = np.broadcast_to(np.isclose(np.asarray(t) * n, 1.0), (shape[0],))
    np.testing.assert_array_equal(to_np(alpha_tpp)[final], 1.0)
    np.testing.assert_array_equal(to_np(sigma_tpp)[final], 0.0)
    scale = teacher_target_scale(param, teacher_ref, to_np(z), t, n, ref_schedule(schedule), dtype=dtype)
    assert_close(fast, ref, dtype, scale, f"teacher_target N={n}")


def test_teacher_two_step_snaps_float32_times_to_the_grid(backend):
    """t = i/N rounded to fp32 is off the float64 grid by up to ~N * 6e-8 grid steps: it gives the
    same result as the exact float64 times; a time between grid points is still rejected."""
    n, i = 6000, torch.tensor([6000, 5999, 1, 2731], dtype=torch.float64)
    z = torch.randn(4, 3)
    model, schedule = gaussian_model("v"), pd_fast.CosineSchedule()
    exact = pd_fast.teacher_two_step(model, z, i / n, n, schedule, "v")
    snapped = pd_fast.teacher_two_step(model, z, (i / n).float(), n, schedule, "v")
    assert (i / n).float().double().ne(i / n).any()  # the fp32 times really are off the grid
    for x, y in zip(exact, snapped, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="student grid"):
        pd_fast.teacher_two_step(model, z, ((i - 0.01) / n).float(), n, schedule, "v")
    with pytest.raises(ValueError, match="cannot resolve"):
        pd_fast.teacher_two_step(model, z, (i / n).half(), n, schedule, "v")


# ------------------------------------------------------------------ sampler


@settings(FAST, max_examples=40)
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=4),
    steps=st.one_of(st.sampled_from([1, 2, 3, 8]), st.integers(1, 24)),
    sampler=st.sampled_from(["ddim", "ancestral", "stochastic"]),
    eta=etas,
    variance=st.sampled_from(["fixed_small", "fixed_large"]),
    clip=st.booleans(),
    dtype=float_dtypes,
    schedule=schedule_names,
    seed=seeds,
)
def test_sample_matches_ref(
    backend, param, shape, steps, sampler, eta, variance, clip, dtype, schedule, seed
):
    """Deterministic DDIM against pd_ref.sample itself; stochastic samplers against pd_ref's steps
    fed with the noise pd_fast draws: one `randn(z.shape, dtype)` per step but the last, in order,
    from a CPU generator seeded with `seed`. Tolerance: tolerances.SAMPLER_GAIN."""
    rng = np.random.default_rng(seed)
    z = as_torch(rng.standard_normal(shape), dtype)
    fast = pd_fast.sample(
        gaussian_model(param), z, steps, fast_schedule(schedule), param,
        clip=clip, sampler=sampler, eta=eta, variance=variance, seed=seed,
    )  # fmt: skip
    model_ref, schedule_ref = gaussian_model_ref(param, dtype), ref_schedule(schedule)
    noisy = sampler != "ddim" or eta > 0
    generator = torch.Generator().manual_seed(seed)
    noises = [
        to_np(torch.randn(shape, generator=generator, dtype=DTYPES[dtype])) if noisy else None
        for _ in range(steps - 1)
    ]
    ref, scales = ref_sample(
        model_ref, to_np(z), steps, schedule_ref, param, clip, sampler, eta, variance, noises
    )
    if not noisy:  # the loop above is pd_ref.sample's
        np.testing.assert_array_equal(
            ref, pd_ref.sample(model_ref, to_np(z), steps, schedule_ref, param, clip=clip)
        )
    scale = SAMPLER_GAIN * (1.0 + OUT_RTOL[dtype] / FP32_RTOL) * scales
    assert_close(fast, ref, dtype, scale, f"sample {sampler} N={steps}")


def test_sample_with_progress_bar_and_cuda_graph_on_cpu_raises(backend):
    z = torch.randn(2, 3)
    x = pd_fast.sample(gaussian_model("x"), z, 3, pd_fast.CosineSchedule(), "x", progress=True)
    assert x.shape == z.shape
    with pytest.raises(ValueError, match="cuda_graph"):
        pd_fast.sample(gaussian_model("x"), z, 3, pd_fast.CosineSchedule(), "x", cuda_graph=True)


# ------------------------------------------------------------------ schedules


@FAST
@given(name=schedule_names, it=grid_times(), seed=seeds)
def test_schedules_match_ref(name, it, seed):
    i, n = it
    t = np.concatenate([[0.0, 1.0, i / n], np.random.default_rng(seed).uniform(0, 1, 5)])
    fast, ref = fast_schedule(name), ref_schedule(name)
    for got, want in zip(fast.alpha_sigma(torch.tensor(t)), ref.alpha_sigma(t), strict=True):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(to_np(got), want, rtol=1e-12, atol=1e-15)
    got = to_np(fast.logsnr(torch.tensor(t)))
    np.testing.assert_allclose(got, ref.logsnr(t), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_np(fast.alpha_sigma(i / n)[0]), ref.alpha_sigma(i / n)[0], rtol=1e-12)
    if name == "cosine":
        lam = ref.logsnr(t)
        np.testing.assert_allclose(to_np(fast.t_from_logsnr(torch.tensor(lam))), t, atol=1e-9)
    else:
        np.testing.assert_allclose(to_np(fast.alphas_cumprod), ref.alphas_cumprod, rtol=1e-12)


def test_schedules_serialize_in_the_checkpoint_format_and_load_it_back():
    """`to_dict` writes what checkpoints have always stored, and `schedule_from_dict` reads such a
    dict (written here by hand) back into the same schedule."""
    cosine = {"kind": "cosine", "logsnr_min": -15.0, "logsnr_max": 12.5}
    assert pd_fast.CosineSchedule(-15.0, 12.5).to_dict() == cosine
    acp = pd_ref.DiscreteSchedule.from_betas("linear", 20).alphas_cumprod.tolist()
    discrete = {"kind": "discrete", "alphas_cumprod": acp}
    assert pd_fast.DiscreteSchedule(acp).to_dict() == discrete
    t = torch.linspace(0, 1, 41, dtype=torch.float64)
    for d, ref in ((cosine, pd_ref.CosineSchedule(-15.0, 12.5)), (discrete, pd_ref.DiscreteSchedule(acp))):
        rebuilt = schedule_from_dict(json.loads(json.dumps(d)))
        assert rebuilt.to_dict() == d
        for got, want in zip(rebuilt.alpha_sigma(t), ref.alpha_sigma(t.numpy()), strict=True):
            np.testing.assert_allclose(to_np(got), want, rtol=1e-12, atol=1e-15)
    for bad in ({"kind": "linear"}, ["cosine"]):
        with pytest.raises(ValueError, match="kind"):
            schedule_from_dict(bad)


# ------------------------------------------------------------------ the signatures

KEYWORD_ONLY = {
    "predict_x_eps": ["clip"],
    "guided_x_eps": ["clip", "w"],
    "ddim_step": ["clip", "eta", "noise", "out_uncond", "w"],
    "ancestral_step": ["clip", "variance", "noise", "out_uncond", "w"],
    "sample": ["clip", "sampler", "eta", "variance", "seed", "labels", "cond", "null_cond", "w"],
    "teacher_target": ["labels", "cond", "null_cond", "w"],
    "distill_loss": ["weighting"],
}


@pytest.mark.parametrize("name", KEYWORD_ONLY)
def test_arguments_after_param_are_keyword_only_in_one_order_in_both_packages(name):
    """docs/spec.md section 7: after `param`, keyword-only arguments in the order listed there;
    pd_fast may add its own after pd_ref's."""
    for package in (pd_ref, pd_fast):
        parameters = list(inspect.signature(getattr(package, name)).parameters.values())
        after = parameters[[p.name for p in parameters].index("param") + 1 :]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in after), (package.__name__, name)
        assert [p.name for p in after][: len(KEYWORD_ONLY[name])] == KEYWORD_ONLY[name]
    fused = inspect.signature(pd_fast.fused_distill_loss).parameters["weighting"]
    assert fused.kind is inspect.Parameter.KEYWORD_ONLY


# ------------------------------------------------------------------ errors

Z, OUT, COS = np.zeros((2, 3)), np.zeros((2, 3)), (0.6, 0.8, 0.8, 0.6)


def _pair(fn_name, *args, **kwargs):
    """Call pd_ref.fn and pd_fast.fn with the same arguments (NumPy arrays turned into fp32 tensors)."""

    def conv(a):
        return torch.tensor(a, dtype=torch.float32) if isinstance(a, np.ndarray) and a.ndim > 0 else a

    ref = (getattr(pd_ref, fn_name), args, kwargs)
    fast = (getattr(pd_fast, fn_name), tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()})
    return ref, fast


#: message pattern (regex, checked on both packages' messages) -> the two calls
ERROR_CASES = {
    "param must be one of": _pair("predict_x_eps", Z, OUT, 0.6, 0.8, "u"),
    "out must have shape": _pair("predict_x_eps", Z, np.zeros((2, 4)), 0.6, 0.8, "x"),
    "param='both' needs z with a channel axis": _pair(
        "predict_x_eps", np.zeros(2), np.zeros(4), 0.6, 0.8, "both"
    ),
    r"\balpha must be > 0": _pair("predict_x_eps", Z, OUT, 0.0, 0.8, "x"),
    r"\bsigma must be finite": _pair("predict_x_eps", Z, OUT, 0.6, np.array([0.8, np.nan]), "x"),
    "alpha_t must be a float, 0-d, or 1-D of length 2": _pair(
        "ddim_step", Z, OUT, np.array([0.6, 0.6, 0.6]), 0.8, 0.8, 0.6, "x"
    ),
    "sigma_s must be >= 0": _pair("ddim_step", Z, OUT, 0.6, 0.8, 0.8, -0.1, "x"),
    "sigma_s >= sigma_t": _pair("ddim_step", Z, OUT, *COS[2:], *COS[:2], "x"),
    "eta must lie in": _pair("ddim_step", Z, OUT, *COS, "x", eta=1.5, noise=Z),
    "noise is required": _pair("ddim_step", Z, OUT, *COS, "x", eta=0.5),
    "noise must have the shape of z_t": _pair("ancestral_step", Z, OUT, *COS, "x", noise=np.zeros((2, 4))),
    "variance must be one of": _pair("ancestral_step", Z, OUT, *COS, "x", variance="wide", noise=Z),
    "x_tilde must have the shape of z_t": _pair("distill_loss", OUT, Z, np.zeros((3, 3)), 0.6, 0.8, "x"),
    "weighting must be one of": _pair("distill_loss", OUT, Z, Z, 0.6, 0.8, "x", weighting="snr2"),
    "z_tpp must have the shape of z_t": _pair("two_step_target", Z, np.zeros((2, 2)), 0.6, 0.8, 0.8, 0.6),
    "sigma_tpp >= sigma_t": _pair("two_step_target", Z, Z, 0.6, 0.8, 0.8, 0.9),
    "steps must be an integer >= 1": _pair("sample", lambda z, t: z, Z, 0, None, "x"),
    "sampler must be one of": _pair("sample", lambda z, t: z, Z, 2, None, "x", sampler="euler"),
    r"^t must lie in \[0, 1\]": _pair("teacher_target", lambda z, t: z, Z, 1.5, 4, None, "x"),
    "t must lie on the student grid": _pair("teacher_target", lambda z, t: z, Z, 0.3, 4, None, "x"),
}


@pytest.mark.parametrize("pattern", list(ERROR_CASES))
def test_bad_input_raises_the_same_value_error_as_pd_ref(backend, pattern):
    """Both packages reject the input with a ValueError whose message names the argument."""
    for fn, args, kwargs in ERROR_CASES[pattern]:
        package = pd_ref if fn.__module__.startswith("pd_ref") else pd_fast
        args = tuple(package.CosineSchedule() if a is None else a for a in args)  # the schedule slot
        with pytest.raises(ValueError, match=pattern):
            fn(*args, **kwargs)


def test_schedule_value_errors_match_pd_ref():
    for pkg in (pd_ref, pd_fast):
        with pytest.raises(ValueError, match="logsnr_min"):
            pkg.CosineSchedule(5.0, -5.0)
        # float64 cannot hold these endpoints: lambda(1) would be -74.7, lambda(0) would be inf
        with pytest.raises(
            ValueError, match=r"logsnr_min=-100.0 is beyond .* lambda\(1\) evaluates to -74.66"
        ):
            pkg.CosineSchedule(-100.0, 20.0)
        with pytest.raises(ValueError, match=r"logsnr_max=1500.0 is beyond .* lambda\(0\) evaluates to inf"):
            pkg.CosineSchedule(-20.0, 1500.0)
        for bound in ("a", None, 1j, False, np.array([1.0, 2.0])):
            with pytest.raises(ValueError, match="logsnr_min must be a real number"):
                pkg.CosineSchedule(bound, 30.0)
        with pytest.raises(ValueError, match="too close for float64"):
            pkg.CosineSchedule(0.0, 1e-17)  # t_from_logsnr would divide by a = 0
        assert pkg.CosineSchedule(np.float32(-5), np.int64(5)).logsnr_max == 5.0
        for acp in ([0.9 + 1j, 0.5], None, ["a", "b"], np.array([True, False]), [[0.9], [0.5, 0.1]]):
            with pytest.raises(ValueError, match="alphas_cumprod must be real numbers"):
                pkg.DiscreteSchedule(acp)
        for name, value in (("beta_start", -1e-4), ("beta_start", float("nan")), ("beta_end", 1.5)):
            with pytest.raises(ValueError, match=f"{name} must lie in \\(0, 1\\)"):
                pkg.DiscreteSchedule.from_betas("scaled_linear", 10, **{name: value})
        with pytest.raises(ValueError, match="beta_start must be a real number"):
            pkg.DiscreteSchedule.from_betas("linear", 10, beta_start="0.1")
        with pytest.raises(ValueError, match="kind"):
            pkg.DiscreteSchedule.from_betas("cubic")
        with pytest.raises(ValueError, match="num_train_timesteps"):
            pkg.DiscreteSchedule.from_betas("linear", 0)
        with pytest.raises(ValueError, match="decreasing"):
            pkg.DiscreteSchedule([0.5, 0.6])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            pkg.CosineSchedule().alpha_sigma(1.5)
        with pytest.raises(ValueError, match="sigma"):
            pkg.loss_weight(0.5, 0.0, "snr")


def test_discrete_alpha_bar_is_exactly_alphas_cumprod_on_the_grid():
    """Piecewise-linear through (k/T, alphas_cumprod[k-1]): the grid points give the values back
    bit for bit, however small (a difference form lost 1e-300 next to 0.5)."""
    acp = np.array([0.9, 0.5, 1e-300])
    for sched in (pd_fast.DiscreteSchedule(acp), pd_ref.DiscreteSchedule(acp)):
        t = np.arange(4) / 3.0
        got = sched.alpha_bar(torch.tensor(t) if isinstance(sched, pd_fast.DiscreteSchedule) else t)
        assert np.asarray(got).tolist() == [1.0, 0.9, 0.5, 1e-300]


def test_the_widest_accepted_cosine_schedule_keeps_its_endpoints():
    """At the edges the endpoint check allows, lambda(0) and lambda(1) are what was asked for, and
    alpha_1 = sqrt(sigmoid(logsnr_min)) (closed form) to 1e-5 relative."""
    t = np.array([0.0, 1.0])
    for sched in (pd_ref.CosineSchedule(-50.0, 1400.0), pd_fast.CosineSchedule(-50.0, 1400.0)):
        lam = np.asarray(sched.logsnr(t if sched.__module__.startswith("pd_ref") else torch.tensor(t)))
        np.testing.assert_allclose(lam, [1400.0, -50.0], rtol=1e-6)
        alpha, _ = sched.alpha_sigma(t if sched.__module__.startswith("pd_ref") else torch.tensor(t))
        assert float(alpha[1]) == pytest.approx(math.sqrt(1.0 / (1.0 + math.exp(50.0))), rel=1e-5)


def test_tensors_on_mixed_dtypes_or_of_unsupported_dtype_raise(backend):
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="out has dtype"):
        pd_fast.ddim_step(z, z.half(), *COS, "x")
    with pytest.raises(ValueError, match="noise has dtype"):
        pd_fast.ddim_step(z, z, *COS, "x", eta=0.5, noise=z.bfloat16())
    with pytest.raises(ValueError, match="x_tilde has dtype"):
        pd_fast.distill_loss(z.half(), z.half(), z.bfloat16(), 0.6, 0.8, "x")
    with pytest.raises(ValueError, match="z_t must be float32, float16 or bfloat16"):
        pd_fast.ddim_step(z.double(), z.double(), *COS, "x")
    with pytest.raises(ValueError, match="model output has dtype"):
        pd_fast.sample(lambda z, t: z.double().float().half(), z, 2, pd_fast.CosineSchedule(), "x")
    with pytest.raises(ValueError, match="z_t must be a torch.Tensor"):
        pd_fast.ddim_step(np.zeros((2, 3)), z, *COS, "x")


def test_tensors_on_different_devices_raise(backend):
    """'meta' tensors stand in for a second device (no data, so no computation is attempted)."""
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="out is on meta"):
        pd_fast.ddim_step(z, torch.zeros(2, 3, device="meta"), *COS, "x")
    with pytest.raises(ValueError, match="alpha_t is on meta"):
        pd_fast.ddim_step(z, z, torch.tensor(0.6, device="meta"), *COS[1:], "x")
    with pytest.raises(ValueError, match="z_tpp is on meta"):
        pd_fast.fused_distill_loss(z, z, torch.zeros(2, 3, device="meta"), 0.6, 0.8, 0.8, 0.6, "x")
