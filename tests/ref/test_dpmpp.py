"""pd_ref's DPM-Solver++(2M) sampler (docs/spec.md section 3) against diffusers'
`DPMSolverMultistepScheduler` and against the exact probability-flow solution on Gaussian data."""

import numpy as np
import pytest

import pd_ref
from tests.ref.test_sampling import COSINE, MU, STD, exact_x_hat, gaussian_model


class LogSNRLinear:
    """A schedule whose log-SNR is linear in t, from `hi` at t = 0 to `lo` at t = 1: equal steps in
    lambda, where the solver's order shows (the cosine schedule's lambda steps at both ends of the
    grid t_i = i/N do not shrink with N)."""

    def __init__(self, lo: float = -6.0, hi: float = 6.0):
        self.lo, self.hi = lo, hi

    def alpha_sigma(self, t):
        lam = self.hi + (self.lo - self.hi) * np.asarray(t, dtype=np.float64)
        return np.sqrt(1.0 / (1.0 + np.exp(-lam))), np.sqrt(1.0 / (1.0 + np.exp(lam)))


def x_model(schedule):
    def model(z, t):
        alpha, sigma = (c[:, None] for c in schedule.alpha_sigma(t))
        return exact_x_hat(z, alpha, sigma)

    return model


def flow_x_hat(z1, t_end, schedule):
    """x_hat at t_end on the exact probability-flow trajectory from z1: for Gaussian data the flow
    keeps u = (z - alpha mu)/sqrt(alpha^2 s^2 + sigma^2) constant (tests/ref/test_sampling.py checks
    this closed form against scipy's DOP853)."""
    a1, s1 = schedule.alpha_sigma(1.0)
    a, s = schedule.alpha_sigma(t_end)
    u = (z1 - a1 * MU) / np.sqrt(a1**2 * STD**2 + s1**2)
    return exact_x_hat(a * MU + np.sqrt(a**2 * STD**2 + s**2) * u, a, s)


def diffusers_dpmpp_2m(z1, steps, train_steps=1024):
    """diffusers' DPM-Solver++(2M) on the cosine schedule discretised as betas with
    cumprod(1 - beta)[k] = alpha_bar((k + 1)/T) (docs/spec.md section 9): with "trailing" spacing
    its timesteps k = T*i/N - 1 are the grid t_i = i/N. The model predicts x ("sample")."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    k = np.arange(1, train_steps + 1)
    alpha_bar = COSINE.alpha_sigma(k / train_steps)[0] ** 2
    betas = 1.0 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=train_steps,
        trained_betas=betas.tolist(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
        prediction_type="sample",
    )
    scheduler.set_timesteps(steps)
    z = torch.from_numpy(z1.copy())
    times = []
    for step in scheduler.timesteps:
        t = (int(step) + 1) / train_steps
        times.append(t)
        alpha, sigma = COSINE.alpha_sigma(t)
        x_hat = torch.from_numpy(exact_x_hat(z.numpy(), alpha, sigma))
        z = scheduler.step(x_hat, step, z).prev_sample.double()
    np.testing.assert_allclose(times, np.arange(steps, 0, -1) / steps, rtol=0, atol=1e-12)
    return z.numpy()


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 32])
def test_dpmpp_2m_matches_diffusers_dpm_solver_multistep(steps):
    """Same noise, same exact denoiser: the outputs agree to diffusers' float32 schedule (its
    alphas_cumprod and sigmas are float32), far below the gap to DDIM (~0.1 at N = 8)."""
    train_steps = 1023 if steps == 3 else 1024  # N must divide T for the grid
    z1 = np.random.default_rng(7).standard_normal((16, 3))
    ref = pd_ref.sample(x_model(COSINE), z1, steps, COSINE, "x", sampler="dpmpp_2m")
    np.testing.assert_allclose(ref, diffusers_dpmpp_2m(z1, steps, train_steps), rtol=0, atol=2e-5)


@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
def test_dpmpp_2m_is_second_order_on_the_probability_flow_ode(param):
    """Error against the exact flow falls ~4x per halving of the step (DDIM's falls ~2x), on a
    schedule with equal lambda steps; measured ratios 3.60, 3.91, 3.97 from N = 16 to 128."""
    schedule = LogSNRLinear()
    z1 = np.random.default_rng(5).standard_normal((20, 3))
    model = gaussian_model(param, schedule)
    errors = []
    for n in (16, 32, 64, 128):
        x = pd_ref.sample(model, z1, n, schedule, param, sampler="dpmpp_2m")
        errors.append(np.abs(x - flow_x_hat(z1, 1.0 / n, schedule)).max())
    ratios = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(r > 3.4 for r in ratios), (errors, ratios)
    assert ratios[-1] > 3.8, (errors, ratios)


def test_dpmpp_2m_beats_ddim_on_the_cosine_schedule():
    """On the cosine grid (lambda steps at the ends that do not shrink) the order does not show, but
    the error against the exact flow is still far below DDIM's at the same N (measured 7x at N = 16)."""
    z1 = np.random.default_rng(5).standard_normal((20, 3))
    for n in (8, 16, 64):
        exact = flow_x_hat(z1, 1.0 / n, COSINE)
        err = {
            s: np.abs(pd_ref.sample(gaussian_model("v"), z1, n, COSINE, "v", sampler=s) - exact).max()
            for s in ("ddim", "dpmpp_2m")
        }
        assert err["dpmpp_2m"] < err["ddim"] / 4, err


def test_dpmpp_2m_with_two_steps_is_ddim():
    """The first step is first order (DPM-Solver++(1) is DDIM) and the last returns x_hat."""
    z1 = np.random.default_rng(8).standard_normal((5, 3))
    for steps in (1, 2):
        np.testing.assert_allclose(
            pd_ref.sample(gaussian_model("v"), z1, steps, COSINE, "v", sampler="dpmpp_2m"),
            pd_ref.sample(gaussian_model("v"), z1, steps, COSINE, "v"),
            rtol=1e-12,
            atol=1e-12,
        )
