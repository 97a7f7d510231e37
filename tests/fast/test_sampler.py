"""`pd_fast.Sampler` (plan once, replay) on CPU tensors: against pd_ref's sampler loop (the
tolerances of tests/tolerances.py), equal to `pd_fast.sample` call for call, planned once per batch
size, and its bad input. The CUDA-graph path is tested in tests/fast/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pd_fast
import pd_ref
from pd_fast import sampling
from tests.fast_support import (
    DTYPES,
    as_torch,
    assert_close,
    gaussian_model,
    gaussian_model_ref,
    ref_sample,
    to_np,
)
from tests.strategies import PARAMS
from tests.tolerances import FP32_RTOL, OUT_RTOL, SAMPLER_GAIN

SHAPE = (3, 2, 5)  # one example's shape
CASES = [("ddim", 0.0, "fixed_large"), ("ddim", 0.6, "fixed_large"), ("ancestral", 0.0, "fixed_small")]


@pytest.mark.parametrize(("sampler", "eta", "variance"), CASES)
@pytest.mark.parametrize("param", PARAMS)
def test_sampler_matches_ref(backend, param, sampler, eta, variance):
    """Against pd_ref's loop fed with the noise the sampler draws from the caller's generator:
    one `randn(z.shape)` per step but the last, in order, after `sample` drew z from it."""
    steps, batch, dtype, seed = 5, 4, "float32", 11
    run = pd_fast.Sampler(
        gaussian_model(param), SHAPE, steps, pd_fast.CosineSchedule(), param,
        clip=True, sampler=sampler, eta=eta, variance=variance,
    )  # fmt: skip
    fast = run.sample(batch, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((batch, *SHAPE), generator=gen)
    noisy = sampler == "ancestral" or eta > 0
    noises = [to_np(torch.randn(z.shape, generator=gen)) if noisy else None for _ in range(steps - 1)]
    ref, scales = ref_sample(
        gaussian_model_ref(param, dtype), to_np(z), steps, pd_ref.CosineSchedule(), param, True,
        sampler, eta, variance, noises,
    )  # fmt: skip
    assert_close(fast, ref, dtype, SAMPLER_GAIN * (1.0 + OUT_RTOL[dtype] / FP32_RTOL) * scales, "Sampler")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("sampler", "eta", "variance"), CASES)
def test_sampler_equals_sample_call_for_call(backend, sampler, eta, variance, dtype):
    """`sampler(z, Generator().manual_seed(s))` is `sample(..., seed=s)`, on every call (the plan
    made on the first call serves the later ones) and for a second batch size."""
    schedule, kwargs = pd_fast.DiscreteSchedule.from_betas("linear"), {"sampler": sampler, "eta": eta}
    run = pd_fast.Sampler(
        gaussian_model("v"), SHAPE, 8, schedule, "v", **kwargs, variance=variance, dtype=DTYPES[dtype]
    )
    for batch, seed in ((3, 1), (3, 2), (1, 3), (3, 4)):
        z = as_torch(np.random.default_rng(seed).standard_normal((batch, *SHAPE)), dtype)
        expected = pd_fast.sample(
            gaussian_model("v"), z, 8, schedule, "v", **kwargs, variance=variance, seed=seed
        )
        got = run(z, torch.Generator().manual_seed(seed))
        assert got.dtype == z.dtype
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sampler_plans_once_per_batch_size(monkeypatch):
    calls = []
    real = sampling.plan
    monkeypatch.setattr(sampling, "plan", lambda z, *a: calls.append(z.shape[0]) or real(z, *a))
    run = pd_fast.Sampler(gaussian_model("eps"), SHAPE, 4, pd_fast.CosineSchedule(), "eps")
    for batch in (2, 2, 5, 2, 5):
        run(torch.randn(batch, *SHAPE))
    assert calls == [2, 5]


def test_sampler_draws_from_the_global_generator_without_one():
    """Like `sample` without a seed: the noise continues torch's global CPU generator."""
    run = pd_fast.Sampler(gaussian_model("x"), SHAPE, 4, pd_fast.CosineSchedule(), "x", sampler="ancestral")
    z = torch.randn(2, *SHAPE)
    torch.manual_seed(5)
    got = run(z)
    torch.manual_seed(5)
    expected = pd_fast.sample(gaussian_model("x"), z, 4, pd_fast.CosineSchedule(), "x", sampler="ancestral")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, run(z))  # the generator moved on


BAD = {
    "shape must be a tuple of positive integers": ({"shape": (3, 0)}, None),
    "steps must be an integer": ({"steps": 0}, None),
    "param must be one of": ({"param": "u"}, None),
    "sampler must be one of": ({"sampler": "euler"}, None),
    "eta must lie in": ({"eta": 2.0}, None),
    "variance must be one of": ({"variance": "wide"}, None),
    "dtype must be float32": ({"dtype": torch.float64}, None),
    "device must name a torch device": ({"device": "no-such-device"}, None),
    "cuda_graph=True needs a CUDA device": ({"cuda_graph": True}, None),
    r"z must have shape \(B, \*\(3, 2, 5\)\)": ({}, lambda run: run(torch.zeros(2, 3, 2))),
    "z has dtype torch.float16": ({}, lambda run: run(torch.zeros(2, *SHAPE, dtype=torch.float16))),
    "z is on meta": ({}, lambda run: run(torch.zeros(2, *SHAPE, device="meta"))),
    "z must be a torch.Tensor": ({}, lambda run: run(np.zeros((2, *SHAPE)))),
    "generator must be a torch.Generator": ({}, lambda run: run(torch.zeros(2, *SHAPE), 3)),
    "batch must be an integer >= 1": ({}, lambda run: run.sample(0)),
}


@pytest.mark.parametrize("pattern", list(BAD))
def test_sampler_bad_input_raises_value_error_naming_the_argument(pattern):
    kwargs, call = BAD[pattern]
    args = {"shape": SHAPE, "steps": 3, "param": "v", **kwargs}
    positional = (
        gaussian_model("v"),
        args.pop("shape"),
        args.pop("steps"),
        pd_fast.CosineSchedule(),
        args.pop("param"),
    )
    with pytest.raises(ValueError, match=pattern):
        run = pd_fast.Sampler(*positional, **args)
        call(run)
