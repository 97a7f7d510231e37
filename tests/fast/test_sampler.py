"""`pd_fast.Sampler` (plan once, replay) on CPU tensors: against pd_ref's sampler loop (the
tolerances of tests/tolerances.py), equal to `pd_fast.sample` call for call, planned once per batch
size, and its bad input. The CUDA-graph path is tested in tests/fast/test_gpu.py."""

from __future__ import annotations

import contextlib
import gc
import types
import weakref

import numpy as np
import pytest
import torch

import pd_fast
import pd_ref
from pd_fast import _engine, sampling
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


class _StandInCuda:
    """Enough of torch.cuda for `_engine.CapturedLoop` on CPU tensors: the capture context runs its
    code eagerly (so `x_hat` is what the captured run computed), a replay is only logged."""

    def __init__(self, monkeypatch, registers: bool = True) -> None:
        self.log: list = []
        log = self.log

        class Stream:
            def __init__(self, device=None) -> None:
                log.append(("new stream", self))

            def wait_stream(self, other) -> None:
                pass

        class Graph:
            def replay(self) -> None:
                log.append("replay")

        if registers:
            Graph.register_generator_state = lambda self, g: log.append(("register", g))

        @contextlib.contextmanager
        def stream(s):
            log.append(("on", s))
            yield

        @contextlib.contextmanager
        def graph(g, pool=None, stream=None, capture_error_mode="global"):
            log.append(("capture on", stream))
            yield

        current = types.SimpleNamespace(wait_stream=lambda other: None)
        cuda = {"Stream": Stream, "CUDAGraph": Graph, "stream": stream, "graph": graph,
                "current_stream": lambda device=None: current, "device": lambda d: contextlib.nullcontext(),
                "current_device": lambda: 0, "default_generators": (torch.default_generator,)}  # fmt: skip
        for name, value in cuda.items():
            monkeypatch.setattr(torch.cuda, name, value, raising=False)


def _ancestral_plan(z: torch.Tensor):
    rule = sampling.step_rule("ancestral", 0.0, "fixed_small")
    return _engine.plan(z, 5, pd_fast.CosineSchedule(), rule, "torch")


@pytest.mark.parametrize("seeded", [True, False])
def test_captured_loop_undoes_its_warm_up_draws_and_holds_its_inputs(monkeypatch, seeded):
    """The graph path's bookkeeping, through a stand-in for torch.cuda: warm-up and capture on
    one explicit side stream, the generator registered (a seeded one; torch registers the
    default), its state before the warm-up restored so that the captured run draws what an eager
    run draws, and every input of the graph held by the object."""
    cuda = _StandInCuda(monkeypatch)
    z = torch.randn(2, *SHAPE)
    plan = _ancestral_plan(z)
    gen = torch.Generator().manual_seed(3) if seeded else None
    torch.manual_seed(4)
    captured = _engine.CapturedLoop(gaussian_model("v"), z, plan, "v", False, gen, "torch")
    torch.manual_seed(4)
    fresh = torch.Generator().manual_seed(3) if seeded else None
    eager = _engine.loop(gaussian_model("v"), z, plan, "v", False, fresh, "torch")
    torch.testing.assert_close(captured.x_hat, eager, rtol=0, atol=0)
    side = cuda.log[0][1]
    assert cuda.log == [("new stream", side), ("on", side)] + ([("register", gen)] if seeded else []) + [
        ("capture on", side)
    ]
    alive = weakref.ref(plan)
    del plan
    gc.collect()
    assert alive() is captured.plan
    out = captured(torch.zeros_like(z))
    assert cuda.log[-1] == "replay" and torch.equal(captured.static_z, torch.zeros_like(z))
    assert out.data_ptr() != captured.x_hat.data_ptr()  # a copy: the next replay overwrites x_hat


def test_seeded_graph_on_a_torch_without_generator_registration_is_refused(monkeypatch):
    _StandInCuda(monkeypatch, registers=False)
    z = torch.randn(2, *SHAPE)
    with pytest.raises(ValueError, match=r"needs torch >= 2\.4"):
        _engine.CapturedLoop(
            gaussian_model("v"), z, _ancestral_plan(z), "v", False, torch.Generator(), "torch"
        )


@pytest.mark.parametrize("sampler", ["ddim", "stochastic", "dpmpp_2m"])
def test_conditional_sampler_equals_sample_call_for_call(backend, sampler):
    """With labels and w (mixed, all zero, none), each call equals `sample` with the same
    arguments, also when the labels and w change from call to call on one planned batch size."""
    from tests.fast_support import gaussian_cond_model

    param, steps, batch = "v", 4, 3
    model = gaussian_cond_model(param)
    run = pd_fast.Sampler(model, SHAPE, steps, pd_fast.CosineSchedule(), param, clip=True, sampler=sampler)
    calls = [
        (torch.tensor([2, 0, 7]), torch.tensor([0.0, 1.5, 4.0])),
        (torch.tensor([5, 5, 1]), torch.tensor([3.0, 0.0, 0.5])),
        (torch.tensor([9, 3, 0]), 0.0),
        (4, 2.0),
    ]
    for seed, (labels, w) in enumerate(calls):
        z = torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed))
        eager = pd_fast.sample(
            model, z, steps, pd_fast.CosineSchedule(), param, clip=True, sampler=sampler, seed=seed,
            labels=labels, w=w,
        )  # fmt: skip
        got = run(z, torch.Generator().manual_seed(seed), labels=labels, w=w)
        torch.testing.assert_close(got, eager, rtol=0, atol=0)
    with pytest.raises(ValueError, match="w > 0 needs labels"):
        run(z, w=1.0)


def test_graphed_sampler_copies_each_calls_tensor_condition_into_its_graph(monkeypatch):
    """The CUDA-graph bookkeeping of `Sampler` with tensor conditions, through the stand-in for
    torch.cuda (the capture runs eagerly; a replay is only logged): the first call of a kind captures
    on copies of its cond, null_cond (one row, broadcast) and w, and equals the eager `sample`; a
    later call of that kind replays the same graph after copying its own in; another trailing shape
    or an unguided call is another kind, with its own graph."""
    from tests.fast_support import gaussian_tensor_cond_model

    cuda = _StandInCuda(monkeypatch)
    model, schedule = gaussian_tensor_cond_model("v"), pd_fast.CosineSchedule()
    run = pd_fast.Sampler(model, SHAPE, 4, schedule, "v", clip=True)
    run.cuda_graph = True  # on CPU tensors: CapturedLoop runs on the stand-in
    z = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    cond, null_cond, w = torch.randn(3, 7, 5), torch.randn(1, 7, 5), torch.tensor([0.0, 1.0, 3.0])
    got = run(z, cond=cond, null_cond=null_cond, w=w)
    eager = pd_fast.sample(model, z, 4, schedule, "v", clip=True, cond=cond, null_cond=null_cond, w=w)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)
    (captured,) = run._plans.values()
    assert captured.guide.cond is not cond and torch.equal(captured.guide.cond, cond)
    assert torch.equal(captured.guide.null, null_cond.expand(3, 7, 5))
    other = (torch.randn(3, 7, 5), torch.randn(3, 7, 5), torch.tensor([2.0, 0.5, 0.0]))
    run(z, cond=other[0], null_cond=other[1], w=other[2])
    assert cuda.log[-1] == "replay" and len(run._plans) == 1
    for static, value in zip(captured.guide, other, strict=True):
        assert torch.equal(static, value.to(static.dtype))
    run(z, cond=torch.randn(3, 2), null_cond=torch.randn(1, 2), w=1.0)
    run(z, cond=other[0], w=0.0)
    assert len(run._plans) == 3
