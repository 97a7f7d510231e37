"""pd_fast on a CUDA device, both backends (the Triton kernels compiled for the GPU, and torch),
against pd_ref (float64) with the tolerances of tests/tolerances.py; and the CUDA-graph sampler
against the eager one. Skipped where CUDA is absent (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    gaussian_model,
    gaussian_model_ref,
    per_example,
    predict_scale,
    ref_sample,
    ref_schedule,
    target_scale,
    teacher_target_scale,
    to_np,
)
from tests.strategies import PARAMS, out_shape
from tests.tolerances import FP32_RTOL, OUT_RTOL, SAMPLER_GAIN

pytestmark = pytest.mark.gpu
DTYPE_NAMES = ("float32", "float16", "bfloat16")
SHAPE = (3, 4, 33, 65)  # several kernel blocks per example, odd sizes


def _coefs(rng, batch: int, steps: int = 1000):
    """Per-example (alpha_t, sigma_t, alpha_s, sigma_s) on the cosine grid, t = 1 and t = 1/N included."""
    i = np.concatenate([[steps, 1], rng.integers(2, steps, batch - 2)])
    cos = pd_ref.CosineSchedule()
    return (*cos.alpha_sigma(i / steps), *cos.alpha_sigma((i - 1) / steps))


def test_cuda_tensors_default_to_triton(monkeypatch):
    monkeypatch.delenv("PD_FAST_BACKEND", raising=False)
    assert pd_fast.backend_for(torch.zeros(1, device="cuda")) == "triton"


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("param", PARAMS)
def test_steps_on_cuda_match_ref(cuda_backend, param, dtype):
    rng = np.random.default_rng(0)
    coefs = _coefs(rng, SHAPE[0])
    z = as_torch(rng.standard_normal(SHAPE), dtype, "transposed", "cuda")
    out = as_torch(rng.standard_normal(out_shape(SHAPE, param)), dtype, "sliced", "cuda")
    noise = as_torch(rng.standard_normal(SHAPE), dtype, "contiguous", "cuda")
    z_r, out_r, noise_r = to_np(z), to_np(out), to_np(noise)
    args = [torch.tensor(c, device="cuda") for c in coefs]
    c = [per_example(v, len(SHAPE)) for v in coefs]
    for clip in (False, True):
        fast = pd_fast.ddim_step(z, out, *args, param, clip=clip, eta=0.5, noise=noise)
        ref = pd_ref.ddim_step(z_r, out_r, *coefs, param, clip=clip, eta=0.5, noise=noise_r)
        assert_close(fast, ref, dtype, ddim_scale(param, z_r, out_r, *c, clip, noise_r), "ddim_step")
        fast = pd_fast.ancestral_step(z, out, *args, param, clip=clip, variance="fixed_small", noise=noise)
        ref = pd_ref.ancestral_step(
            z_r, out_r, *coefs, param, clip=clip, variance="fixed_small", noise=noise_r
        )
        assert_close(fast, ref, dtype, ancestral_scale(param, z_r, out_r, *c, clip, noise_r), "ancestral")


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("param", PARAMS)
def test_fused_loss_on_cuda_matches_ref(cuda_backend, param, dtype):
    rng = np.random.default_rng(1)
    alpha_t, sigma_t, alpha_tpp, sigma_tpp = _coefs(rng, SHAPE[0])
    c = [per_example(v, len(SHAPE)) for v in (alpha_t, sigma_t, alpha_tpp, sigma_tpp)]
    x, eps = rng.uniform(-1, 1, SHAPE), rng.standard_normal(SHAPE)
    z_t = as_torch(c[0] * x + c[1] * eps, dtype, "contiguous", "cuda")
    z_tpp = as_torch(c[2] * x + c[3] * eps, "float32", "contiguous", "cuda")  # as teacher_two_step returns
    out = as_torch(rng.standard_normal(out_shape(SHAPE, param)), dtype, "channels_last", "cuda")
    out.requires_grad_(True)
    coefs = [torch.tensor(v, device="cuda") for v in (alpha_t, sigma_t, alpha_tpp, sigma_tpp)]
    loss = pd_fast.fused_distill_loss(out, z_t, z_tpp, *coefs, param, weighting="snr_trunc")
    incoming = rng.uniform(-2, 2, SHAPE[0])
    loss.backward(torch.tensor(incoming, dtype=torch.float32, device="cuda"))

    z_r, zpp_r, out_r = to_np(z_t), to_np(z_tpp), to_np(out)
    xt_r = pd_ref.two_step_target(z_r, zpp_r, alpha_t, sigma_t, alpha_tpp, sigma_tpp)
    ref_loss = pd_ref.distill_loss(out_r, z_r, xt_r, alpha_t, sigma_t, param, weighting="snr_trunc")
    w = per_example(pd_ref.loss_weight(alpha_t, sigma_t, "snr_trunc"), len(SHAPE))
    ref_grad, factor = analytic_grad(param, z_r, out_r, xt_r, c[0], c[1], w)
    x_scale, _ = predict_scale(param, z_r, out_r, c[0], c[1], False)
    diff_scale = x_scale + target_scale(z_r, zpp_r, *c)
    check_loss_and_grad(param, dtype, loss, out.grad, incoming, ref_loss, w, ref_grad, factor, diff_scale)


@pytest.mark.parametrize("param", PARAMS)
def test_teacher_target_on_cuda_matches_ref(cuda_backend, param):
    rng = np.random.default_rng(2)
    steps, dtype = 8192, "float32"
    t = np.array([1.0, 1 / steps, 4097 / steps])
    z = as_torch(rng.standard_normal((3, 4, 9, 7)), dtype, "contiguous", "cuda")
    schedule = pd_fast.CosineSchedule()
    fast = pd_fast.teacher_target(
        gaussian_model(param), z, torch.tensor(t, device="cuda"), steps, schedule, param
    )
    teacher_ref = gaussian_model_ref(param, dtype)
    ref = pd_ref.teacher_target(teacher_ref, to_np(z), t, steps, pd_ref.CosineSchedule(), param)
    scale = teacher_target_scale(param, teacher_ref, to_np(z), t, steps, pd_ref.CosineSchedule())
    assert_close(fast, ref, dtype, scale, "teacher_target")


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sample_on_cuda_matches_ref(cuda_backend, sampler):
    """Noise: one randn per step but the last from a CUDA generator seeded with `seed`."""
    rng = np.random.default_rng(3)
    param, steps, dtype, seed, eta = "v", 6, "float32", 7, 0.3
    z = as_torch(rng.standard_normal((2, 3, 8, 8)), dtype, "contiguous", "cuda")
    model, schedule = gaussian_model(param), fast_schedule("cosine")
    fast = pd_fast.sample(model, z, steps, schedule, param, sampler=sampler, eta=eta, seed=seed)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    noises = [to_np(torch.randn(z.shape, generator=generator, device="cuda")) for _ in range(steps - 1)]
    model_ref = gaussian_model_ref(param, dtype)
    ref, scales = ref_sample(
        model_ref, to_np(z), steps, ref_schedule("cosine"), param, False, sampler, eta, "fixed_large", noises
    )
    assert_close(fast, ref, dtype, SAMPLER_GAIN * (1.0 + OUT_RTOL[dtype] / FP32_RTOL) * scales, "sample")


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize(
    ("sampler", "eta", "seed"), [("ddim", 0.0, None), ("ddim", 0.5, 11), ("ancestral", 0.0, 12)]
)
def test_cuda_graph_sample_equals_eager(cuda_backend, sampler, eta, seed, dtype):
    """The captured loop replays the eager loop's kernels on the same inputs (and, seeded, the same
    noise): bitwise equal."""
    z = torch.randn(3, 4, 16, 16, device="cuda").to(DTYPES[dtype])
    for param in PARAMS:
        args = (gaussian_model(param), z, 12, pd_fast.CosineSchedule(), param)
        kwargs = {"clip": True, "sampler": sampler, "eta": eta}
        eager = pd_fast.sample(*args, **kwargs, seed=seed)
        graphed = pd_fast.sample(*args, **kwargs, seed=seed, cuda_graph=True)
        torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
        if seed is not None:  # the noise matters, and a new seed gives a new sample
            assert not torch.equal(graphed, pd_fast.sample(*args, **kwargs, seed=seed + 1, cuda_graph=True))


def _count_graphs(monkeypatch) -> list[int]:
    """Counts the CUDA graphs pd_fast creates from here on."""
    made = []
    real = torch.cuda.CUDAGraph

    class Counted(real):
        def __new__(cls, *args, **kwargs):
            made.append(1)
            return real.__new__(cls, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Counted)
    return made


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddim", 0.5), ("ancestral", 0.0)])
def test_graphed_sampler_captures_once_and_replays_the_eager_loop(
    cuda_backend, monkeypatch, sampler, eta, dtype
):
    """`Sampler(cuda_graph=True)` captures on its first call and only replays afterwards; every
    replay equals the eager `sample` bitwise (seeded: the same noise), also after the memory
    around the graph was freed and reused, and advances the caller's generator as `sample` does."""
    made = _count_graphs(monkeypatch)
    shape, steps, param = (4, 16, 16), 12, "v"
    run = pd_fast.Sampler(
        gaussian_model(param), shape, steps, pd_fast.CosineSchedule(), param, clip=True, sampler=sampler,
        eta=eta, device="cuda", dtype=DTYPES[dtype], cuda_graph=True,
    )  # fmt: skip
    for seed in (1, 2, 3):
        z = torch.randn(3, *shape, device="cuda").to(DTYPES[dtype])
        eager = pd_fast.sample(
            gaussian_model(param), z, steps, pd_fast.CosineSchedule(), param, clip=True, sampler=sampler,
            eta=eta, seed=seed,
        )  # fmt: skip
        gen = torch.Generator(device="cuda").manual_seed(seed)
        torch.testing.assert_close(run(z, gen), eager, rtol=0, atol=0)
        junk = [torch.randn(1 << 20, device="cuda") for _ in range(8)]  # reuse freed memory, if any
        del junk
        torch.cuda.empty_cache()
        torch.testing.assert_close(
            run(z, torch.Generator(device="cuda").manual_seed(seed)), eager, rtol=0, atol=0
        )
        if sampler == "ancestral" or eta > 0:  # the generator moved on exactly as in an eager run
            after = torch.Generator(device="cuda").manual_seed(seed)
            for _ in range(steps - 1):
                torch.randn(z.shape, generator=after, device="cuda", dtype=z.dtype)
            assert torch.equal(
                torch.rand(4, generator=gen, device="cuda"), torch.rand(4, generator=after, device="cuda")
            )
    assert len(made) == 1


def test_graphed_sampler_without_generator_draws_from_the_default_one(cuda_backend):
    run = pd_fast.Sampler(
        gaussian_model("eps"), (2, 8), 6, pd_fast.CosineSchedule(), "eps", sampler="ancestral", device="cuda",
        cuda_graph=True,
    )  # fmt: skip
    z = torch.randn(5, 2, 8, device="cuda")
    torch.cuda.manual_seed(7)
    graphed = run(z)
    torch.cuda.manual_seed(7)
    eager = pd_fast.sample(gaussian_model("eps"), z, 6, pd_fast.CosineSchedule(), "eps", sampler="ancestral")
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)


def test_graphed_conditional_sampler_copies_each_calls_labels_and_w_in(cuda_backend, monkeypatch):
    """One graph per kind of call (guided, labels only); each replay equals the eager guided
    `sample` bitwise, with the labels and w of its own call."""
    from tests.fast_support import gaussian_cond_model

    made = _count_graphs(monkeypatch)
    shape, steps, param = (2, 8), 6, "v"
    model = gaussian_cond_model(param)
    schedule = pd_fast.CosineSchedule()
    run = pd_fast.Sampler(model, shape, steps, schedule, param, device="cuda", cuda_graph=True)
    z = torch.randn(3, *shape, device="cuda")
    calls = [
        (torch.tensor([2, 0, 7], device="cuda"), torch.tensor([0.0, 1.5, 4.0], device="cuda")),
        (torch.tensor([5, 5, 1], device="cuda"), torch.tensor([3.0, 0.0, 0.5], device="cuda")),
        (torch.tensor([9, 3, 0], device="cuda"), 0.0),
        (torch.tensor([1, 1, 4], device="cuda"), 0.0),
    ]
    for labels, w in calls:
        eager = pd_fast.sample(model, z, steps, schedule, param, labels=labels, w=w)
        torch.testing.assert_close(run(z, labels=labels, w=w), eager, rtol=0, atol=0)
    assert len(made) == 2


def test_graphed_sampler_copies_each_calls_tensor_condition_in(cuda_backend, monkeypatch):
    """As for labels, with tensor conditions (cond (B, L, D), null_cond of one row or of the batch):
    one graph per kind of call (guided, unguided, per trailing shape); each replay equals the eager
    guided `sample` bitwise, with the cond, null_cond and w of its own call."""
    from tests.fast_support import gaussian_tensor_cond_model

    made = _count_graphs(monkeypatch)
    shape, steps, param = (2, 8), 6, "v"
    model, schedule = gaussian_tensor_cond_model(param), pd_fast.CosineSchedule()
    run = pd_fast.Sampler(model, shape, steps, schedule, param, device="cuda", cuda_graph=True)
    z = torch.randn(3, *shape, device="cuda")

    def embeddings(first: int) -> torch.Tensor:
        return torch.randn(first, 7, 16, device="cuda")

    calls = [
        (embeddings(3), embeddings(1), torch.tensor([0.0, 1.5, 4.0], device="cuda")),
        (embeddings(3), embeddings(3), torch.tensor([3.0, 0.0, 0.5], device="cuda")),
        (embeddings(3), embeddings(1), 2.0),
        (embeddings(3), None, 0.0),
        (embeddings(3), None, 0.0),
    ]
    for cond, null_cond, w in calls:
        eager = pd_fast.sample(model, z, steps, schedule, param, cond=cond, null_cond=null_cond, w=w)
        got = run(z, cond=cond, null_cond=null_cond, w=w)
        torch.testing.assert_close(got, eager, rtol=0, atol=0)
    assert len(made) == 2
