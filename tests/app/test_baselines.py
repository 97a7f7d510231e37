"""The teacher baselines of the report (pd_fast.app.evaluation.baselines: `evaluate_baselines`,
`baseline_statistics`, `unipc_sample`): diffusers' UniPC on the project's schedule, and the report
section built from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pd_fast
import pd_ref
from pd_fast.app.evaluation import (
    baseline_statistics,
    baselines,
    evaluate_baselines,
    evaluate_models,
    make_evaluator,
    unipc_sample,
)
from tests.fast_support import MU, STD, gaussian_model

pytest.importorskip("diffusers")


def flow_x_hat(z1: np.ndarray, t_end: float) -> np.ndarray:
    """x_hat at t_end on the exact probability-flow trajectory from z1 (Gaussian data N(MU, STD^2):
    the flow keeps (z - alpha MU)/sqrt(alpha^2 STD^2 + sigma^2) constant)."""
    cosine = pd_ref.CosineSchedule()
    a1, s1 = cosine.alpha_sigma(1.0)
    a, s = cosine.alpha_sigma(t_end)
    u = (z1 - a1 * MU) / np.sqrt(a1**2 * STD**2 + s1**2)
    z = a * MU + np.sqrt(a**2 * STD**2 + s**2) * u
    return MU + a * STD**2 / (a**2 * STD**2 + s**2) * (z - a * MU)


@pytest.mark.parametrize("steps", [1, 8, 256])
def test_unipc_discretisation_puts_its_timesteps_on_the_grid(steps):
    """cumprod(1 - beta) at diffusers' trailing timesteps T*i/N - 1 is alpha(i/N)^2 of the cosine
    schedule (pd_ref, float64), to diffusers' float32."""
    scheduler = baselines._unipc_scheduler(pd_fast.CosineSchedule(), steps)
    T = scheduler.config.num_train_timesteps
    i = np.arange(steps, 0, -1)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), T * i // steps - 1)
    alpha, _ = pd_ref.CosineSchedule().alpha_sigma(i / steps)
    got = scheduler.alphas_cumprod[scheduler.timesteps].double().numpy()
    np.testing.assert_allclose(got, alpha**2, rtol=2e-5, atol=1e-9)
    with pytest.raises(ValueError, match="steps"):
        baselines._unipc_scheduler(pd_fast.CosineSchedule(), 3)


def test_unipc_sample_follows_the_probability_flow_closer_than_ddim():
    """With the exact Gaussian denoiser, UniPC's result is the flow's x_hat up to its solver error,
    far below DDIM's at the same N (both N calls). Measured max errors: UniPC 0.035 and 0.012 at
    N = 8 and 32, DDIM 0.23 and 0.081 (DPM-Solver++(2M) 0.009 and 0.016)."""
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    sched = pd_fast.CosineSchedule()
    model = gaussian_model("v")
    for n in (8, 32):
        exact = flow_x_hat(z.double().numpy(), 1.0 / n)
        unipc = unipc_sample(model, z, n, sched, "v", clip=False).double().numpy()
        ddim = pd_fast.sample(model, z, n, sched, "v").double().numpy()
        err_unipc, err_ddim = np.abs(unipc - exact).max(), np.abs(ddim - exact).max()
        assert err_unipc < err_ddim / 4, (n, err_unipc, err_ddim)


def _gaussian_evaluator(n: int = 600):
    x = (0.3 * torch.randn((n, 2), generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return make_evaluator(x, None, seed=0)


def test_baselines_of_a_model_that_predicts_a_fixed_x_score_as_that_x(monkeypatch):
    """A network whose x prediction is fixed samples it exactly with every solver (the last step
    returns x_hat), so every baseline scores as the fixed samples, and a student that is the same
    network has ratio exactly 1 to them (paired resampling); without diffusers UniPC is left out."""
    ev = _gaussian_evaluator()
    target = (0.3 * torch.randn((ev.n_samples, 2), generator=torch.Generator().manual_seed(1))).clamp(-1, 1)

    def fixed(z, t):
        return target[: z.shape[0]]

    z = torch.randn((ev.n_samples, 2), generator=torch.Generator().manual_seed(2))
    sched = pd_fast.CosineSchedule()
    rows, samples = evaluate_models(fixed, {2: fixed}, ev, sched, "x", [1, 2, 4], z)
    b_rows, b_samples = evaluate_baselines(fixed, ev, sched, "x", [1, 2, 4], z)
    direct = ev.distances(target)
    assert [r["steps"] for r in b_rows] == [1, 2, 4]
    for r in b_rows:
        for name in ("teacher_dpmpp", "teacher_unipc"):
            torch.testing.assert_close(b_samples[name][r["steps"]], target, rtol=0, atol=1e-6)
            assert r[name] == pytest.approx(direct["pixel"], rel=1e-5)
            assert r[f"{name}_sample_seconds"] > 0
    stats = baseline_statistics(ev, samples, rows, b_samples, b_rows, resamples=100, seed=3)
    comps = {c["name"]: c for c in stats["comparisons"]["rows"]}
    assert set(comps) == {
        "student_2_vs_teacher_dpmpp_2",
        "student_2_vs_teacher_unipc_2",
        *(f"{b}_{n}_vs_teacher_ddim_4" for b in ("teacher_dpmpp", "teacher_unipc") for n in (1, 2, 4)),
    }
    c = comps["student_2_vs_teacher_dpmpp_2"]
    assert c["ratio"] == pytest.approx(1.0, abs=1e-5) and not c["significant"]
    assert c["frechet_intervals_overlap"]
    ci = {r["steps"]: r for r in stats["intervals"]["rows"]}
    lo, hi = ci[4]["teacher_unipc"]
    assert lo <= b_rows[2]["teacher_unipc"] <= hi
    assert stats["precision_recall"]["rows"][0]["teacher_dpmpp"]["precision"] > 0.5

    monkeypatch.setattr(baselines, "_unipc_scheduler", lambda *a, **k: None)  # diffusers absent
    b_rows, b_samples = evaluate_baselines(fixed, ev, sched, "x", [1, 2], z)
    assert all(r["teacher_unipc"] is None for r in b_rows) and b_samples["teacher_unipc"] == {}
    stats = baseline_statistics(ev, samples, rows, b_samples, b_rows, resamples=100)
    assert not any("unipc" in c["name"] for c in stats["comparisons"]["rows"])
    assert all(r["teacher_unipc"] is None for r in stats["intervals"]["rows"])
