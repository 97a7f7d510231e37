"""pd_fast's tensor conditions (docs/spec.md section 8: `cond` (B, ...) and its null condition
`null_cond`, first dim 1 or B; in a text-to-image model the prompt embeddings and the empty
prompt's) against pd_ref (float64) on both backends, with the tolerances of
test_guided_equivalence.py: the guided samplers (`sample` and `Sampler`), the guided two-step
target (`teacher_target`, `teacher_two_step`); how the model is called; and bad input, refused with
pd_ref's messages."""

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
    as_torch,
    assert_close,
    fast_schedule,
    gaussian_tensor_cond_model,
    gaussian_tensor_cond_model_ref,
    in_both,
    ref_sample,
    ref_schedule,
    teacher_target_scale,
    tensor_cond_inputs,
    to_np,
    weight_arg,
)
from tests.strategies import (
    FAST,
    float_dtypes,
    grid_times,
    guidance_forms,
    guidance_weights,
    params,
    schedule_names,
    seeds,
    shapes,
    tensor_conds,
)
from tests.tolerances import FP32_RTOL, OUT_RTOL, SAMPLER_GAIN

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


def _ref_sample(param, z, steps, schedule, clip, sampler, dtype, seed, cond_r, null_r, w_ref):
    """pd_ref's guided loop fed with the noise pd_fast draws from `seed`, and the sampler tolerance."""
    generator = torch.Generator().manual_seed(seed)
    noises = [
        to_np(torch.randn(z.shape, generator=generator, dtype=DTYPES[dtype])) if sampler != "ddim" else None
        for _ in range(steps - 1)
    ]
    model_ref = gaussian_tensor_cond_model_ref(param, dtype)
    ref, scales = ref_sample(
        model_ref, to_np(z), steps, ref_schedule(schedule), param, clip, sampler, 0.0, "fixed_large",
        noises, cond_r, w_ref, null=null_r,
    )  # fmt: skip
    return ref, SAMPLER_GAIN * (1.0 + OUT_RTOL[dtype] / FP32_RTOL) * scales


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
    spec=tensor_conds(),
    seed=seeds,
)
def test_tensor_cond_sample_and_sampler_match_ref(
    backend, param, shape, steps, sampler, clip, dtype, schedule, w, w_form, spec, seed
):
    """`sample` and a `Sampler` planned once (called first with another condition of the same
    shape, whose plan the second call reuses) against pd_ref's guided loop with the same noise; the
    deterministic one also against pd_ref.sample itself."""
    rng = np.random.default_rng(seed)
    z = as_torch(rng.standard_normal(shape), dtype)
    (cond, null_cond), (cond_r, null_r) = tensor_cond_inputs(spec, shape[0])
    w_arg, w_ref = weight_arg(w, w_form, shape[0], rng)
    model, fast_sched = gaussian_tensor_cond_model(param), fast_schedule(schedule)
    guide = {"cond": cond, "null_cond": null_cond, "w": w_arg}
    fast = pd_fast.sample(model, z, steps, fast_sched, param, clip=clip, sampler=sampler, seed=seed, **guide)
    run = pd_fast.Sampler(
        model, shape[1:], steps, fast_sched, param, clip=clip, sampler=sampler, dtype=DTYPES[dtype]
    )
    run(z, torch.Generator().manual_seed(seed), cond=-cond, null_cond=null_cond, w=w_arg)
    planned = run(z, torch.Generator().manual_seed(seed), **guide)
    ref, scale = _ref_sample(param, z, steps, schedule, clip, sampler, dtype, seed, cond_r, null_r, w_ref)
    if sampler == "ddim":
        model_ref, sched_ref = gaussian_tensor_cond_model_ref(param, dtype), ref_schedule(schedule)
        np.testing.assert_array_equal(
            ref,
            pd_ref.sample(
                model_ref,
                to_np(z),
                steps,
                sched_ref,
                param,
                clip=clip,
                cond=cond_r,
                null_cond=null_r,
                w=w_ref,
            ),
        )
    assert_close(fast, ref, dtype, scale, f"tensor-cond sample {sampler} N={steps}")
    assert_close(planned, ref, dtype, scale, f"tensor-cond Sampler {sampler} N={steps}")


@FAST
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=5),
    it=grid_times(),
    dtype=float_dtypes,
    schedule=schedule_names,
    w=guidance_weights,
    spec=tensor_conds(),
    seed=seeds,
)
def test_tensor_cond_teacher_target_matches_ref(backend, param, shape, it, dtype, schedule, w, spec, seed):
    """The guided two-step target ([PD] Algorithm 2 with a teacher guided by a tensor condition),
    per-example t and w; `teacher_target` is `two_step_target` of `teacher_two_step`, bitwise."""
    i, n = it
    rng = np.random.default_rng(seed)
    t = np.concatenate([[i], rng.integers(1, n + 1, shape[0] - 1)]) / n
    z = as_torch(rng.standard_normal(shape), dtype)
    (cond, null_cond), (cond_r, null_r) = tensor_cond_inputs(spec, shape[0])
    _, w_ref = weight_arg(w, "batch", shape[0], rng)
    teacher, sched = gaussian_tensor_cond_model(param), fast_schedule(schedule)
    guide = {"cond": cond, "null_cond": null_cond, "w": torch.tensor(w_ref)}
    fast = pd_fast.teacher_target(teacher, z, torch.tensor(t), n, sched, param, **guide)
    z_tpp, alpha_tpp, sigma_tpp = pd_fast.teacher_two_step(
        teacher, z, torch.tensor(t), n, sched, param, **guide
    )
    alpha_t, sigma_t = sched.alpha_sigma(torch.tensor(t))
    torch.testing.assert_close(
        pd_fast.two_step_target(z, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp), fast, rtol=0, atol=0
    )
    teacher_ref, sched_ref = gaussian_tensor_cond_model_ref(param, dtype), ref_schedule(schedule)
    ref = pd_ref.teacher_target(
        teacher_ref, to_np(z), t, n, sched_ref, param, cond=cond_r, null_cond=null_r, w=w_ref
    )
    scale = teacher_target_scale(param, teacher_ref, to_np(z), t, n, sched_ref, cond_r, w_ref, dtype, null_r)
    assert_close(fast, ref, dtype, scale, f"tensor-cond teacher_target N={n}")


def test_the_model_sees_cond_then_null_cond_broadcast_to_the_batch(backend):
    """Two calls a step when some w > 0, with cond then null_cond (its one row repeated for the
    batch), in sample, Sampler and teacher_two_step; one call with cond when every w is 0, and then
    no null_cond is needed."""
    seen = []

    def model(z, t, c):
        seen.append(c.clone())
        return torch.zeros_like(z)

    z, cond, null_cond = torch.randn(3, 4), torch.randn(3, 2, 5), torch.randn(1, 2, 5)
    sched, w = pd_fast.CosineSchedule(), torch.tensor([0.0, 1.0, 0.0])
    runs = {
        "sample": lambda **kw: pd_fast.sample(model, z, 3, sched, "x", **kw),
        "Sampler": lambda **kw: pd_fast.Sampler(model, (4,), 3, sched, "x")(z, **kw),
        "teacher_two_step": lambda **kw: pd_fast.teacher_two_step(model, z, 1.0, 3, sched, "x", **kw),
    }
    for name, run in runs.items():
        seen.clear()
        run(cond=cond, null_cond=null_cond, w=w)
        calls = 2 if name == "teacher_two_step" else 3
        assert len(seen) == 2 * calls, name
        for k, c in enumerate(seen):
            assert torch.equal(c, cond if k % 2 == 0 else null_cond.expand(3, 2, 5)), (name, k)
        seen.clear()
        run(cond=cond, w=0.0)
        assert len(seen) == calls and all(torch.equal(c, cond) for c in seen), name


def test_tensor_cond_with_null_cond_of_the_batch_or_one_row_gives_the_same_samples(backend):
    """null_cond (1, ...) is the same null condition for every example as null_cond (B, ...) holding
    that row B times."""
    model, sched = gaussian_tensor_cond_model("v"), pd_fast.CosineSchedule()
    z, cond, null_row = torch.randn(4, 3, 2), torch.randn(4, 6, 3), torch.randn(1, 6, 3)
    one = pd_fast.sample(model, z, 5, sched, "v", cond=cond, null_cond=null_row, w=2.0)
    rows = pd_fast.sample(model, z, 5, sched, "v", cond=cond, null_cond=null_row.repeat(4, 1, 1), w=2.0)
    torch.testing.assert_close(one, rows, rtol=0, atol=0)


Z, C = np.zeros((3, 2)), np.zeros((3, 4, 5))


def _model(z, t, c=None):
    return z * 0


def _unconditional(z, t):
    return z * 0


COND_ERRORS = {
    "labels and cond are exclusive": (
        in_both("sample", _model, Z, 2, None, "x", labels=np.array([1, 2, 3]), cond=C)
        + in_both("teacher_target", _model, Z, 1.0, 2, None, "x", labels=1, cond=C, null_cond=C, w=1.0)
    ),
    "null_cond needs cond": in_both("sample", _model, Z, 2, None, "x", null_cond=C, w=1.0),
    r"w > 0 with cond needs null_cond": (
        in_both("sample", _model, Z, 2, None, "x", cond=C, w=np.array([0.0, 1.0, 0.0]))
        + in_both("teacher_target", _model, Z, 1.0, 2, None, "x", cond=C, w=1.0)
    ),
    r"cond must have shape \(B, ...\) with B = 3 \(z's batch\), got \(2, 4, 5\)": (
        in_both("sample", _model, Z, 2, None, "x", cond=C[:2])
        + in_both("teacher_target", _model, Z, 1.0, 2, None, "x", cond=C[:2])
    ),
    r"null_cond must have shape \(1 or 3, 4, 5\) \(cond's trailing shape\), got \(2, 4, 5\)": in_both(
        "sample", _model, Z, 2, None, "x", cond=C, null_cond=C[:2], w=1.0
    ),
    r"null_cond must have shape \(1 or 3, 4, 5\) \(cond's trailing shape\), got \(1, 4, 4\)": in_both(
        "teacher_target", _model, Z, 1.0, 2, None, "x", cond=C, null_cond=C[:1, :, :4]
    ),
    "cond must have a floating dtype": in_both("sample", _model, Z, 2, None, "x", cond=np.zeros((3, 4), int)),
    "null_cond must have a floating dtype": in_both(
        "teacher_target", _model, Z, 1.0, 2, None, "x", cond=C, null_cond=np.zeros((1, 4, 5), int), w=1.0
    ),
    "cond given, but the model takes no condition": (
        in_both("sample", _unconditional, Z, 2, None, "x", cond=C)
        + in_both("teacher_target", _unconditional, Z, 1.0, 2, None, "x", cond=C, null_cond=C, w=1.0)
    ),
    r"w must be >= 0": in_both("sample", _model, Z, 2, None, "x", cond=C, null_cond=C, w=-1.0),
}


@pytest.mark.parametrize("pattern", list(COND_ERRORS))
def test_bad_tensor_cond_raises_the_same_value_error_as_pd_ref(backend, pattern):
    for fn, args, kwargs in COND_ERRORS[pattern]:
        package = pd_ref if fn.__module__.startswith("pd_ref") else pd_fast
        args = tuple(package.CosineSchedule() if a is None else a for a in args)
        with pytest.raises(ValueError, match=pattern):
            fn(*args, **kwargs)


def test_bad_tensor_cond_raises_in_sampler_as_in_sample(backend):
    """`Sampler` checks its condition as `sample` does, and pd_fast's own rules (a tensor on z's
    device; null_cond in cond's dtype) name the argument."""
    z, cond = torch.zeros(3, 2), torch.zeros(3, 4, 5)
    run = pd_fast.Sampler(_model, (2,), 2, pd_fast.CosineSchedule(), "x")
    calls = {
        "labels and cond are exclusive": dict(labels=1, cond=cond),
        "null_cond needs cond": dict(null_cond=cond),
        "w > 0 with cond needs null_cond": dict(cond=cond, w=1.0),
        r"cond must have shape \(B, ...\) with B = 3": dict(cond=cond[:1]),
        r"null_cond must have shape \(1 or 3, 4, 5\)": dict(cond=cond, null_cond=cond[:, :1]),
        "cond must have a floating dtype, got torch.int64": dict(cond=cond.long()),
        "cond must be a torch.Tensor, got ndarray": dict(cond=np.zeros((3, 4, 5))),
        "cond is on meta but z is on cpu: use one device": dict(cond=cond.to("meta")),
        "null_cond is on meta but z is on cpu": dict(cond=cond, null_cond=cond.to("meta"), w=1.0),
        "null_cond has dtype torch.float16 but cond has torch.float32": dict(
            cond=cond, null_cond=cond.half()
        ),
    }
    sched = pd_fast.CosineSchedule()
    for pattern, kwargs in calls.items():
        for call, args in (
            (run, (z,)),
            (run.sample, (3,)),
            (pd_fast.sample, (_model, z, 2, sched, "x")),
            (pd_fast.teacher_two_step, (_model, z, 1.0, 2, sched, "x")),
        ):
            with pytest.raises(ValueError, match=pattern):
                call(*args, **kwargs)
