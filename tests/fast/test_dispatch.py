"""pd_fast's dispatch (pd_fast/_backend.py): which implementation runs, and that the Triton tests
really exercise the Triton launchers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pd_fast

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_tensors_default_to_torch_and_the_variable_forces_a_backend(monkeypatch):
    z = torch.zeros(2)
    monkeypatch.delenv("PD_FAST_BACKEND", raising=False)
    assert pd_fast.backend_for(z) == "torch"
    for name in ("torch", "triton", " Triton "):
        monkeypatch.setenv("PD_FAST_BACKEND", name)
        assert pd_fast.backend_for(z) == name.strip().lower()
    monkeypatch.setenv("PD_FAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="PD_FAST_BACKEND"):
        pd_fast.backend_for(z)


def test_forcing_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PD_FAST_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        pd_fast.ddim_step(torch.zeros(2, 3), torch.zeros(2, 3), 0.6, 0.8, 0.8, 0.6, "x")


def _count_launcher_calls(monkeypatch) -> dict[str, int]:
    import pd_fast.kernels as kernels

    calls = {"sampler_step": 0, "distill_loss_fwd_bwd": 0}
    for name in calls:
        launcher = getattr(kernels, name)

        def counted(*args, _launcher=launcher, _name=name, **kwargs):
            calls[_name] += 1
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
    return calls


def _run_everything(z: torch.Tensor) -> None:
    out = torch.randn(z.shape[0], 2 * z.shape[1], requires_grad=True)
    schedule = pd_fast.CosineSchedule()
    pd_fast.ddim_step(z, out.detach(), 0.6, 0.8, 0.8, 0.6, "both", eta=0.5, noise=z)
    pd_fast.ancestral_step(z, out.detach(), 0.6, 0.8, 0.8, 0.6, "both", noise=z)
    pd_fast.sample(lambda z, t: torch.cat([z, z], 1), z, 2, schedule, "both")
    pd_fast.teacher_two_step(lambda z, t: torch.cat([z, z], 1), z, 0.5, 4, schedule, "both")
    pd_fast.distill_loss(out, z, z, 0.6, 0.8, "both").sum().backward()
    pd_fast.fused_distill_loss(out, z, z, 0.6, 0.8, 0.8, 0.6, "both").sum().backward()


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU tensors needs TRITON_INTERPRET=1"
)
def test_the_triton_backend_runs_the_launchers_and_the_torch_backend_does_not(monkeypatch):
    calls = _count_launcher_calls(monkeypatch)
    monkeypatch.setenv("PD_FAST_BACKEND", "torch")
    _run_everything(torch.randn(2, 3))
    assert calls == {"sampler_step": 0, "distill_loss_fwd_bwd": 0}
    monkeypatch.setenv("PD_FAST_BACKEND", "triton")
    _run_everything(torch.randn(2, 3))
    # ddim + ancestral + 2 sampler calls + 2 teacher steps; distill_loss + fused_distill_loss
    assert calls == {"sampler_step": 6, "distill_loss_fwd_bwd": 2}


def test_pd_fast_imports_and_runs_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, pd_fast\n"
        "z = torch.zeros(2, 3)\n"
        "assert pd_fast.backend_for(z) == 'torch'\n"
        "pd_fast.ddim_step(z, z, 0.6, 0.8, 0.8, 0.6, 'x')\n"
        "assert 'pd_fast.kernels' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PD_FAST_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
