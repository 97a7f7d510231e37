"""pd_fast's classifier-free guidance (docs/spec.md section 8) against pd_ref (float64) on both
backends, in the style and with the tolerances of test_equivalence.py: the guided prediction, the
guided steps (one fused pass on the Triton path), the guided sampler, the guided two-step target,
and the loss on it (plain and fused)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pd_fast
import pd_ref
from tests.fast_support import (
    DTYPES,
    analytic_grad,
    ancestral_scale,
    as_torch,
    assert_close,
    check_loss_and_grad,
    ddim_scale,
    fast_schedule,
    gaussian_cond_model,
    gaussian_cond_model_ref,
    guided_predict_scale,
    in_both,
    per_example,
    predict_scale,
    ref_sample,
    ref_schedule,
    shaped,
    step_inputs,
    teacher_target_scale,
    tensors,
    to_np,
    weight_arg,
)
from tests.strategies import (
    FAST,
    cases,
    etas,
    float_dtypes,
    grid_times,
    guidance_forms,
    guidance_weights,
    out_shape,
    params,
    schedule_names,
    seeds,
    shapes,
    weightings,
)
from tests.tolerances import FP32_RTOL, OUT_RTOL, SAMPLER_GAIN

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


def guided_inputs(case, w, w_form):
    """A step case plus the unconditional output (same dtype and layout) and the weight."""
    (z, out, noise), (z_r, out_r, noise_r), args, refs = step_inputs(case)
    (out_u,), (out_u_r,) = tensors(case, out_shape(case.shape, case.param))
    w_arg, w_ref = weight_arg(w, w_form, case.shape[0], case.rng)
    return (z, out, out_u, noise), (z_r, out_r, out_u_r, noise_r), args, refs, w_arg, w_ref


@FAST
@given(case=cases(), w=guidance_weights, w_form=guidance_forms)
def test_guided_x_eps_matches_ref(case, w, w_form):
    (z, out, out_u, _), (z_r, out_r, out_u_r, _), args, refs, w_arg, w_ref = guided_inputs(case, w, w_form)
    x_hat, eps_hat = pd_fast.guided_x_eps(
        z, out, out_u, args["alpha_t"], args["sigma_t"], case.param, clip=case.clip, w=w_arg
    )
    x_ref, eps_ref = pd_ref.guided_x_eps(
        z_r, out_r, out_u_r, refs["alpha_t"], refs["sigma_t"], case.param, clip=case.clip, w=w_ref
    )
    c = shaped(refs, z.ndim)
    x_scale, eps_scale = guided_predict_scale(
        case.param, z_r, out_r, out_u_r, c["alpha_t"], c["sigma_t"], per_example(w_ref, z.ndim), case.clip
    )
    assert_close(x_hat, x_ref, case.dtype, x_scale, "x_hat_w")
    assert_close(eps_hat, eps_ref, case.dtype, eps_scale, "eps_hat_w")


@FAST
@given(case=cases(), eta=etas, w=guidance_weights, w_form=guidance_forms)
def test_guided_ddim_step_matches_ref(backend, case, eta, w, w_form):
    """The guided DDIM step: on the Triton path, one pass reads both outputs and combines them."""
    (z, out, out_u, noise), (z_r, out_r, out_u_r, noise_r), args, refs, w_arg, w_ref = guided_inputs(
        case, w, w_form
    )
    names = ("alpha_t", "sigma_t", "alpha_s", "sigma_s")
    fast = pd_fast.ddim_step(
        z, out, *[args[k] for k in names], case.param,
        clip=case.clip, eta=eta, noise=noise, out_uncond=out_u, w=w_arg,
    )  # fmt: skip
    ref = pd_ref.ddim_step(
        z_r, out_r, *[refs[k] for k in names], case.param,
        clip=case.clip, eta=eta, noise=noise_r, out_uncond=out_u_r, w=w_ref,
    )  # fmt: skip
    c = shaped(refs, z.ndim)
    scale = ddim_scale(
        case.param, z_r, out_r, *[c[k] for k in names], case.clip, noise_r if eta > 0 else None,
        out_uncond=out_u_r, w=per_example(w_ref, z.ndim),
    )  # fmt: skip
    assert_close(fast, ref, case.dtype, scale, f"guided ddim_step eta={eta}")


@settings(FAST, max_examples=30)
@given(case=cases(), variance=st.sampled_from(["fixed_small", "fixed_large"]), w=guidance_weights)
def test_guided_ancestral_step_matches_ref(backend, case, variance, w):
    (z, out, out_u, noise), (z_r, out_r, out_u_r, noise_r), args, refs, w_arg, w_ref = guided_inputs(
        case, w, "batch"
    )
    names = ("alpha_t", "sigma_t", "alpha_s", "sigma_s")
    fast = pd_fast.ancestral_step(
        z, out, *[args[k] for k in names], case.param,
        clip=case.clip, variance=variance, noise=noise, out_uncond=out_u, w=w_arg,
    )  # fmt: skip
    ref = pd_ref.ancestral_step(
        z_r, out_r, *[refs[k] for k in names], case.param,
        clip=case.clip, variance=variance, noise=noise_r, out_uncond=out_u_r, w=w_ref,
    )  # fmt: skip
    c = shaped(refs, z.ndim)
    scale = ancestral_scale(
        case.param, z_r, out_r, *[c[k] for k in names], case.clip, noise_r,
        out_uncond=out_u_r, w=per_example(w_ref, z.ndim),
    )  # fmt: skip
    assert_close(fast, ref, case.dtype, scale, f"guided ancestral_step {variance}")


@settings(FAST, max_examples=25)
@given(case=cases())
def test_guided_step_at_w_zero_is_the_plain_step_bitwise(backend, case):
    """w = 0 gives the conditional model: x_c + 0*(x_c - x_u) is x_c exactly in fp32."""
    (z, out, out_u, _), _, args, _, _, _ = guided_inputs(case, 0.0, "float")
    coefs = [args[k] for k in ("alpha_t", "sigma_t", "alpha_s", "sigma_s")]
    guided = pd_fast.ddim_step(z, out, *coefs, case.param, clip=case.clip, out_uncond=out_u, w=0.0)
    plain = pd_fast.ddim_step(z, out, *coefs, case.param, clip=case.clip)
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)


def labels_for(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Labels of 10 classes, the null label -1 among them now and then."""
    return rng.integers(-1, 10, batch)


@FAST
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=5),
    it=grid_times(),
    dtype=float_dtypes,
    schedule=schedule_names,
    w=guidance_weights,
    seed=seeds,
)
def test_guided_teacher_target_matches_ref(backend, param, shape, it, dtype, schedule, w, seed):
    """The guided two-step target ([PD] Algorithm 2 with a guided teacher), per-example t and w."""
    i, n = it
    rng = np.random.default_rng(seed)
    t = np.concatenate([[i], rng.integers(1, n + 1, shape[0] - 1)]) / n
    z = as_torch(rng.standard_normal(shape), dtype)
    labels = labels_for(rng, shape[0])
    _, w_ref = weight_arg(w, "batch", shape[0], rng)
    fast = pd_fast.teacher_target(
        gaussian_cond_model(param), z, torch.tensor(t), n, fast_schedule(schedule), param,
        labels=torch.tensor(labels), w=torch.tensor(w_ref),
    )  # fmt: skip
    teacher_ref = gaussian_cond_model_ref(param, dtype)
    ref = pd_ref.teacher_target(
        teacher_ref, to_np(z), t, n, ref_schedule(schedule), param, labels=labels, w=w_ref
    )
    scale = teacher_target_scale(
        param, teacher_ref, to_np(z), t, n, ref_schedule(schedule), labels, w_ref, dtype=dtype
    )
    assert_close(fast, ref, dtype, scale, f"guided teacher_target N={n}")


@FAST
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=5),
    it=grid_times(),
    dtype=float_dtypes,
    schedule=schedule_names,
    w=guidance_weights,
    weighting=weightings,
    seed=seeds,
)
def test_loss_on_the_guided_target_matches_ref(
    backend, param, shape, it, dtype, schedule, w, weighting, seed
):
    """The loss is unchanged: `fused_distill_loss` of the guided `teacher_two_step`, and
    `distill_loss` of the guided `teacher_target`, against pd_ref's `distill_loss` of its guided
    target; gradients against the analytic gradient (docs/spec.md section 5)."""
    i, n = it
    rng = np.random.default_rng(seed)
    t = np.concatenate([[i], rng.integers(1, n + 1, shape[0] - 1)]) / n
    z = as_torch(rng.standard_normal(shape), dtype)
    labels = labels_for(rng, shape[0])
    _, w_ref = weight_arg(w, "batch", shape[0], rng)
    teacher, teacher_ref = gaussian_cond_model(param), gaussian_cond_model_ref(param, dtype)
    guide = {"labels": torch.tensor(labels), "w": torch.tensor(w_ref)}
    z_r, sched_ref = to_np(z), ref_schedule(schedule)
    x_tilde_ref = pd_ref.teacher_target(teacher_ref, z_r, t, n, sched_ref, param, labels=labels, w=w_ref)
    target_scale = teacher_target_scale(param, teacher_ref, z_r, t, n, sched_ref, labels, w_ref, dtype)
    alpha_t, sigma_t = sched_ref.alpha_sigma(t)
    c = {k: per_example(v, z.ndim) for k, v in (("alpha_t", alpha_t), ("sigma_t", sigma_t))}
    w_loss = per_example(pd_ref.loss_weight(alpha_t, sigma_t, weighting), z.ndim)
    for fused in (False, True):
        out = as_torch(rng.standard_normal(out_shape(shape, param)), dtype)
        out.requires_grad_(True)
        if fused:
            z_tpp, alpha_tpp, sigma_tpp = pd_fast.teacher_two_step(
                teacher, z, torch.tensor(t), n, fast_schedule(schedule), param, **guide
            )
            loss = pd_fast.fused_distill_loss(
                out, z, z_tpp, torch.tensor(alpha_t), torch.tensor(sigma_t), alpha_tpp, sigma_tpp, param,
                weighting=weighting,
            )  # fmt: skip
        else:
            x_tilde = pd_fast.teacher_target(
                teacher, z, torch.tensor(t), n, fast_schedule(schedule), param, **guide
            )
            loss = pd_fast.distill_loss(
                out, z, x_tilde, torch.tensor(alpha_t), torch.tensor(sigma_t), param, weighting=weighting
            )
        incoming = rng.uniform(-2.0, 2.0, shape[0])
        (loss * torch.tensor(incoming, dtype=torch.float32)).sum().backward()
        out_r = to_np(out)
        ref_loss = pd_ref.distill_loss(out_r, z_r, x_tilde_ref, alpha_t, sigma_t, param, weighting=weighting)
        ref_grad, factor = analytic_grad(param, z_r, out_r, x_tilde_ref, c["alpha_t"], c["sigma_t"], w_loss)
        x_scale, _ = predict_scale(param, z_r, out_r, c["alpha_t"], c["sigma_t"], False)
        # the non-fused path rounds x_tilde to the dtype first: 1 ulp of it joins the target's scale
        rounding = 0.0 if fused else OUT_RTOL[dtype] / FP32_RTOL * np.abs(x_tilde_ref)
        check_loss_and_grad(
            param, dtype, loss, out.grad, incoming, ref_loss, w_loss, ref_grad, factor,
            x_scale + target_scale + rounding,
        )  # fmt: skip


@settings(FAST, max_examples=40)
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=4),
    steps=st.one_of(st.sampled_from([1, 2, 3, 8]), st.integers(1, 24)),
    sampler=st.sampled_from(["ddim", "ancestral", "stochastic"]),
    clip=st.booleans(),
    dtype=float_dtypes,
    schedule=schedule_names,
    w=guidance_weights,
    w_form=guidance_forms,
    seed=seeds,
)
def test_guided_sample_matches_ref(
    backend, param, shape, steps, sampler, clip, dtype, schedule, w, w_form, seed
):
    """pd_fast's guided sampler against pd_ref's steps fed with the noise pd_fast draws (as
    test_sample_matches_ref); the deterministic one also against pd_ref.sample itself."""
    rng = np.random.default_rng(seed)
    z = as_torch(rng.standard_normal(shape), dtype)
    labels = labels_for(rng, shape[0])
    w_arg, w_ref = weight_arg(w, w_form, shape[0], rng)
    fast = pd_fast.sample(
        gaussian_cond_model(param), z, steps, fast_schedule(schedule), param,
        clip=clip, sampler=sampler, seed=seed, labels=torch.tensor(labels), w=w_arg,
    )  # fmt: skip
    model_ref, schedule_ref = gaussian_cond_model_ref(param, dtype), ref_schedule(schedule)
    generator = torch.Generator().manual_seed(seed)
    noisy = sampler != "ddim"
    noises = [
        to_np(torch.randn(shape, generator=generator, dtype=DTYPES[dtype])) if noisy else None
        for _ in range(steps - 1)
    ]
    ref, scales = ref_sample(
        model_ref,
        to_np(z),
        steps,
        schedule_ref,
        param,
        clip,
        sampler,
        0.0,
        "fixed_large",
        noises,
        labels,
        w_ref,
    )
    if not noisy:
        np.testing.assert_array_equal(
            ref,
            pd_ref.sample(model_ref, to_np(z), steps, schedule_ref, param, clip=clip, labels=labels, w=w_ref),
        )
    scale = SAMPLER_GAIN * (1.0 + OUT_RTOL[dtype] / FP32_RTOL) * scales
    assert_close(fast, ref, dtype, scale, f"guided sample {sampler} N={steps}")


def test_guided_sampler_calls_the_model_with_the_labels_then_the_null_label(backend):
    """Two calls a step when some w > 0, in that order; one call (with the labels) when all w = 0;
    `model(z, t)` without labels."""
    seen = []

    def model(z, t, c=None):
        seen.append(None if c is None else c.tolist())
        return torch.zeros_like(z)

    z, labels = torch.randn(3, 4), torch.tensor([2, 0, 7])
    pd_fast.sample(model, z, 3, pd_fast.CosineSchedule(), "x", labels=labels, w=torch.tensor([0.0, 1.0, 0.0]))
    assert seen == [[2, 0, 7], [-1, -1, -1]] * 3
    seen.clear()
    pd_fast.sample(model, z, 3, pd_fast.CosineSchedule(), "x", labels=labels, w=0.0)
    assert seen == [[2, 0, 7]] * 3
    seen.clear()
    pd_fast.sample(model, z, 3, pd_fast.CosineSchedule(), "x")
    assert seen == [None] * 3
    assert pd_fast.NULL_LABEL == pd_ref.NULL_LABEL == -1


Z, OUT, COS = np.zeros((2, 3)), np.zeros((2, 3)), (0.6, 0.8, 0.8, 0.6)


def _model(z, t, c=None):
    return z * 0


def _unconditional(z, t):
    return z * 0


class _TenClasses:
    """A model that declares its classes, as the built-in networks do (`config["num_classes"]`)."""

    config = {"num_classes": 10}

    def __call__(self, z, t, c=None):
        return z * 0


GUIDED_ERRORS = {
    r"\bw must be >= 0": in_both("guided_x_eps", Z, OUT, OUT, 0.6, 0.8, "x", w=-1.0),
    "out_uncond must have shape": in_both("ddim_step", Z, OUT, *COS, "x", out_uncond=np.zeros((2, 4)), w=1.0),
    "w > 0 needs out_uncond": in_both("ddim_step", Z, OUT, *COS, "x", w=2.0),
    "w > 0 needs labels": in_both("sample", _model, Z, 2, None, "x", w=1.0),
    "labels must be an int or of shape": in_both(
        "sample", _model, Z, 2, None, "x", labels=np.array([1, 2, 3])
    ),
    "labels must be >= -1": in_both("teacher_target", _model, Z, 1.0, 2, None, "x", labels=np.array([0, -3])),
    "sampler must be one of": in_both("sample", _model, Z, 2, None, "x", sampler="heun"),
    "labels given, but the model takes no labels": (
        in_both("sample", _unconditional, Z, 2, None, "x", labels=1)
        + in_both("teacher_target", _unconditional, Z, 1.0, 2, None, "x", labels=np.array([0, 1]), w=1.0)
    ),
    r"labels must be < 10 \(the model's classes\) or -1, got max 10": (
        in_both("sample", _TenClasses(), Z, 2, None, "x", labels=np.array([9, 10]))
        + in_both("teacher_target", _TenClasses(), Z, 1.0, 2, None, "x", labels=10, w=1.0)
    ),
}


@pytest.mark.parametrize("pattern", list(GUIDED_ERRORS))
def test_bad_guidance_input_raises_the_same_value_error_as_pd_ref(backend, pattern):
    for fn, args, kwargs in GUIDED_ERRORS[pattern]:
        package = pd_ref if fn.__module__.startswith("pd_ref") else pd_fast
        args = tuple(package.CosineSchedule() if a is None else a for a in args)
        with pytest.raises(ValueError, match=pattern):
            fn(*args, **kwargs)


def test_labels_inside_the_declared_classes_pass(backend):
    """Labels 0..9 and the null label -1 are what a 10-class model takes: no error, both packages."""
    for fn, args, kwargs in in_both(
        "sample", _TenClasses(), Z, 2, None, "x", labels=np.array([9, -1]), w=1.0
    ):
        package = pd_ref if fn.__module__.startswith("pd_ref") else pd_fast
        fn(*tuple(package.CosineSchedule() if a is None else a for a in args), **kwargs)


def test_a_guidance_weight_beyond_float32_is_refused_not_turned_into_nan(backend):
    """pd_fast guides in fp32: a w that float32 cannot hold would make every sample inf or NaN."""
    z, sched = torch.zeros(2, 3), pd_fast.CosineSchedule()
    for call in (
        lambda: pd_fast.sample(_model, z, 2, sched, "x", labels=1, w=1e39),
        lambda: pd_fast.teacher_two_step(
            _model, z, 1.0, 2, sched, "x", labels=1, w=torch.tensor([0.0, 1e300], dtype=torch.float64)
        ),
        lambda: pd_fast.guided_x_eps(z, z, z, 0.6, 0.8, "x", w=-1e39),
    ):
        with pytest.raises(ValueError, match=r"w must be finite in float32"):
            call()


def test_labels_as_numpy_integers_and_lists_are_taken_as_pd_ref_takes_them(backend):
    """An np.int64, a list and an int64 array give the samples of the same labels as a tensor, in
    both packages; an integer beyond int64 is refused naming labels."""
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    sched = pd_fast.CosineSchedule()

    def model(z, t, c):
        return z * 0.5 + c[:, None].to(z.dtype) * 0.1

    want = pd_fast.sample(model, z, 2, sched, "x", labels=torch.tensor([4, 4, 4]), w=1.0)
    for labels in (np.int64(4), [4, 4, 4], np.array([4, 4, 4])):
        got = pd_fast.sample(model, z, 2, sched, "x", labels=labels, w=1.0)
        assert torch.equal(got, want)
        ref = pd_ref.sample(
            lambda z, t, c: z * 0.5 + c[:, None] * 0.1,
            z.double().numpy(),
            2,
            pd_ref.CosineSchedule(),
            "x",
            labels=labels,
            w=1.0,
        )
        np.testing.assert_allclose(ref, want.double().numpy(), rtol=1e-5, atol=1e-6)
    too_big = {"labels": 2**70, "labels must fit in int64": np.array([2**63 + 1, 0, 0], dtype=np.uint64)}
    for pkg, zz, net in ((pd_fast, z, model), (pd_ref, z.numpy(), lambda z, t, c: z)):
        for pattern, labels in too_big.items():
            with pytest.raises(ValueError, match=pattern):
                pkg.sample(net, zz, 2, pkg.CosineSchedule(), "x", labels=labels)


def test_float_labels_raise(backend):
    with pytest.raises(ValueError, match="labels must be integers"):
        pd_fast.sample(_model, torch.zeros(2, 3), 2, pd_fast.CosineSchedule(), "x", labels=torch.zeros(2))
