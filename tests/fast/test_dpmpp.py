"""pd_fast's DPM-Solver++(2M) sampler (docs/spec.md section 3) against pd_ref (float64) on both
backends, unguided and guided, in the style and with the tolerances of test_equivalence.py. On the
Triton path the fused step writes x_hat and the previous x_hat's term is one torch pass after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pd_fast
import pd_ref
from pd_ref.sampling import dpmpp_2m_update
from tests.fast_support import (
    as_torch,
    assert_close,
    fast_schedule,
    gaussian_cond_model,
    gaussian_cond_model_ref,
    gaussian_model,
    gaussian_model_ref,
    per_example,
    ref_schedule,
    step_predict_scale,
    to_np,
)
from tests.strategies import float_dtypes, params, schedule_names, seeds, shapes
from tests.tolerances import FP32_RTOL, OUT_RTOL, SAMPLER_GAIN

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: a 2M step also carries the previous step's x_hat error forward, with weight |k_prev|/alpha_s =
#: (1 - exp(-h/2))/(2r) <= 1/2 on the grids here, beside the one-step gain SAMPLER_GAIN
DPMPP_GAIN = 2.0 * SAMPLER_GAIN


def ref_dpmpp(model, z, steps, schedule, param, clip, labels=None, w=None):
    """pd_ref's DPM-Solver++(2M) loop (as pd_ref.sample), and the sum over the model calls of the
    magnitudes of the terms each step combines (tests/tolerances.py), along the reference trajectory."""
    t_batch = np.ones(z.shape[0])
    scales = np.zeros_like(z)

    def outs(z, time):
        if labels is None:
            return model(z, time), {}
        return model(z, time, labels), {"out_uncond": model(z, time, np.full_like(labels, -1)), "w": w}

    def x_hat_and_scale(z, time, alpha, sigma):
        out, guide = outs(z, time * t_batch)
        w_shaped = {"w": per_example(w, z.ndim)} if guide else {}
        x_scale, _ = step_predict_scale(
            param, z, out, alpha, sigma, clip, guide.get("out_uncond"), **w_shaped
        )
        if guide:
            x_hat = pd_ref.guided_x_eps(z, out, guide["out_uncond"], alpha, sigma, param, clip=clip, w=w)[0]
        else:
            x_hat = pd_ref.predict_x_eps(z, out, alpha, sigma, param, clip=clip)[0]
        return x_hat, x_scale

    x_prev, x_prev_scale, lambda_prev = None, 0.0, None
    for i in range(steps, 1, -1):
        t, s = i / steps, (i - 1) / steps
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
        x_hat, x_scale = x_hat_and_scale(z, t, alpha_t, sigma_t)
        scales += np.abs(z) + alpha_s * (1.5 * x_scale + 0.5 * x_prev_scale)
        z = dpmpp_2m_update(z, x_hat, x_prev, lambda_prev, alpha_t, sigma_t, alpha_s, sigma_s)
        x_prev, x_prev_scale, lambda_prev = x_hat, x_scale, 2.0 * (np.log(alpha_t) - np.log(sigma_t))
    alpha_t, sigma_t = schedule.alpha_sigma(1.0 / steps)
    x_hat, x_scale = x_hat_and_scale(z, 1.0 / steps, alpha_t, sigma_t)
    return x_hat, scales + x_scale


@settings(FAST)
@given(
    param=params,
    shape=shapes(min_ndim=2, max_side=4),
    steps=st.one_of(st.sampled_from([1, 2, 3, 8]), st.integers(1, 24)),
    clip=st.booleans(),
    dtype=float_dtypes,
    schedule=schedule_names,
    guided=st.booleans(),
    seed=seeds,
)
def test_dpmpp_2m_sample_matches_ref(backend, param, shape, steps, clip, dtype, schedule, guided, seed):
    """pd_fast.sample(sampler="dpmpp_2m") against pd_ref's loop from the same z, the same network
    (seeing z and t rounded to dtype) and, when guided, per-example w and labels."""
    rng = np.random.default_rng(seed)
    z = as_torch(rng.standard_normal(shape), dtype)
    kwargs, ref_kwargs = {}, {}
    if guided:
        labels = rng.integers(0, 3, shape[0])
        w = rng.uniform(0.0, 2.0, shape[0])
        kwargs = {"labels": torch.tensor(labels), "w": torch.tensor(w)}
        ref_kwargs = {"labels": labels, "w": w}
        model, model_ref = gaussian_cond_model(param), gaussian_cond_model_ref(param, dtype)
    else:
        model, model_ref = gaussian_model(param), gaussian_model_ref(param, dtype)
    fast = pd_fast.sample(
        model, z, steps, fast_schedule(schedule), param, clip=clip, sampler="dpmpp_2m", **kwargs
    )
    ref, scales = ref_dpmpp(model_ref, to_np(z), steps, ref_schedule(schedule), param, clip, **ref_kwargs)
    if not guided:  # the loop above is pd_ref.sample's
        np.testing.assert_array_equal(
            ref,
            pd_ref.sample(
                model_ref, to_np(z), steps, ref_schedule(schedule), param, clip=clip, sampler="dpmpp_2m"
            ),
        )
    scale = DPMPP_GAIN * (1.0 + OUT_RTOL[dtype] / FP32_RTOL) * scales
    assert_close(fast, ref, dtype, scale, f"sample dpmpp_2m N={steps}")


def test_dpmpp_2m_differs_from_ddim_from_the_third_call_on(backend):
    """The same first step as DDIM (two calls: identical up to rounding), then the second-order term."""
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    schedule = pd_fast.CosineSchedule()
    model = gaussian_model("v")
    for steps, same in ((2, True), (3, False)):
        a = pd_fast.sample(model, z, steps, schedule, "v", sampler="dpmpp_2m")
        b = pd_fast.sample(model, z, steps, schedule, "v")
        assert torch.allclose(a, b, atol=1e-5) == same, (steps, (a - b).abs().max())
