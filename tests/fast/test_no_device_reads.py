"""The hot paths read no values back from the device (no host sync; what a CUDA graph capture and
a fast training step need), shown on CPU: 'meta' tensors stand in for the device. A meta tensor has
no data, so any read of its values (`.item()`, `.tolist()`, `bool(...)`, a copy to the CPU) raises."""

from __future__ import annotations

import pytest
import torch

import pd_fast
from pd_fast import _checks
from tests.fast_support import gaussian_model, gaussian_tensor_cond_model

META = torch.device("meta")
STEPS = 8


def test_sample_and_sampler_loops_read_nothing_from_the_device():
    z = torch.zeros(3, 2, 4, device=META)
    for param in ("eps", "v"):
        x = pd_fast.sample(gaussian_model(param), z, 6, pd_fast.CosineSchedule(), param, clip=True)
        assert x.device == META and x.shape == z.shape
        run = pd_fast.Sampler(gaussian_model(param), (2, 4), 6, pd_fast.CosineSchedule(), param, device=META)
        assert run(z).shape == z.shape


def test_tensor_conditions_are_checked_without_reading_the_device():
    """A guided sampler and teacher with a tensor condition (cond, null_cond of one row, w a float
    or a CPU tensor): the condition's checks read only metadata, w is checked on the CPU."""
    z = torch.zeros(3, 2, 4, device=META)
    cond, null_cond = torch.zeros(3, 7, 5, device=META), torch.zeros(1, 7, 5, device=META)
    model, schedule = gaussian_tensor_cond_model("v"), pd_fast.CosineSchedule()
    for w in (2.0, torch.tensor([0.0, 1.0, 4.0])):
        guide = {"cond": cond, "null_cond": null_cond, "w": w}
        assert pd_fast.sample(model, z, 4, schedule, "v", sampler="stochastic", **guide).device == META
        run = pd_fast.Sampler(model, (2, 4), 4, schedule, "v", device=META)
        assert run(z, **guide).device == META
        t = torch.tensor([1, 3, 8]) / STEPS
        z_tpp, _, _ = pd_fast.teacher_two_step(model, z, t, STEPS, schedule, "v", **guide)
        assert z_tpp.device == META


def _step(z_t: torch.Tensor, t: torch.Tensor):
    """One distillation step's core calls, as the training loop makes them (t on the CPU)."""
    schedule = pd_fast.CosineSchedule()
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    z_tpp, alpha_tpp, sigma_tpp = pd_fast.teacher_two_step(gaussian_model("v"), z_t, t, STEPS, schedule, "v")
    return z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp


def test_teacher_two_step_and_fused_loss_read_nothing_from_the_device():
    """teacher_two_step checks t on the CPU and sends its coefficients in one copy; the loss checks
    and combines them on the CPU (those of teacher_two_step through the CPU copies it keeps)."""
    t = torch.tensor([1, 3, 8]) / STEPS
    z_t = torch.zeros(3, 2, 4, device=META)
    z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp = _step(z_t, t)
    assert z_tpp.device == alpha_tpp.device == sigma_tpp.device == META
    out = torch.zeros(3, 2, 4, device=META, requires_grad=True)
    loss = pd_fast.fused_distill_loss(out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, "v")
    assert loss.device == META and loss.shape == (3,)
    loss.mean().backward()
    assert out.grad.shape == out.shape
    x_tilde = pd_fast.teacher_target(gaussian_model("v"), z_t, t, STEPS, pd_fast.CosineSchedule(), "v")
    assert x_tilde.device == META


def test_device_coefficients_without_a_cpu_copy_are_read_from_the_device():
    """The control: coefficients made elsewhere, or changed in place since teacher_two_step made
    them, are checked on the device (here: the read fails, as meta tensors have no values)."""
    t = torch.tensor([1, 3, 8]) / STEPS
    z_t = torch.zeros(3, 2, 4, device=META)
    z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp = _step(z_t, t)
    out = torch.zeros(3, 2, 4, device=META)
    with pytest.raises((RuntimeError, NotImplementedError)):
        pd_fast.fused_distill_loss(out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp.clone(), sigma_tpp, "v")
    sigma_tpp.mul_(1.0)  # in place: the CPU copy no longer vouches for it
    with pytest.raises((RuntimeError, NotImplementedError)):
        pd_fast.fused_distill_loss(out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, "v")


def test_coefficients_are_checked_on_their_cpu_copies():
    """A bad coefficient is caught from its CPU copy as it would be from device values: the
    copies recorded here say sigma_tpp > sigma_t, or alpha_t = nan."""
    t = torch.tensor([2, 3, 8]) / STEPS
    z_t = torch.zeros(3, 2, 4, device=META)
    z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp = _step(z_t, t)
    out = torch.zeros(3, 2, 4, device=META)
    late = torch.zeros(3, device=META, dtype=torch.float64)
    _checks.remember_host_copy(late, sigma_t + 0.01)
    with pytest.raises(ValueError, match="the step must go back in time"):
        pd_fast.fused_distill_loss(out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, late, "v")
    nan = torch.zeros(3, device=META, dtype=torch.float64)
    _checks.remember_host_copy(nan, alpha_t * float("nan"))
    with pytest.raises(ValueError, match="alpha_tpp must be finite"):
        pd_fast.fused_distill_loss(out, z_t, z_tpp, alpha_t, sigma_t, nan, sigma_tpp, "v")
