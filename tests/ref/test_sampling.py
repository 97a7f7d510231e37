"""pd_ref samplers on Gaussian data, where the exact denoiser and the probability-flow ODE are
known in closed form (docs/spec.md section 3)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import pd_ref
from tests.strategies import inner_times, output_for, params, seeds, shapes

MU = np.array([0.3, -0.5, 0.0])
STD = np.array([0.5, 0.2, 0.8])
COSINE = pd_ref.CosineSchedule()


def exact_x_hat(z, alpha, sigma):
    """E[x | z_t] for x ~ N(MU, diag(STD^2)), z_t = alpha x + sigma eps (Gaussian conditioning)."""
    return MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z - alpha * MU)


def gaussian_model(param, schedule=COSINE):
    """A 'network' that outputs the exact denoiser in the given parameterisation."""

    def model(z, t):
        alpha, sigma = (c[:, None] for c in schedule.alpha_sigma(t))
        x_hat = exact_x_hat(z, alpha, sigma)
        eps_hat = (z - alpha * x_hat) / sigma
        if param == "both":  # (B, 2C): a 'both' net whose halves agree
            return np.concatenate([x_hat, eps_hat], axis=1)
        return output_for(param, x_hat, eps_hat, alpha, sigma)

    return model


@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
def test_ddim_maps_noise_to_the_data_distribution(param):
    n = 20000
    z1 = np.random.default_rng(1).standard_normal((n, 3))
    x = pd_ref.sample(gaussian_model(param), z1, 512, COSINE, param)
    mc = 4.5 * STD / np.sqrt(n)  # 4.5 standard errors of the mean
    np.testing.assert_array_less(np.abs(x.mean(0) - MU), mc)
    # DDIM is first order: its std falls short by ~2/N (0.7% here; 5% at N = 64), plus 4.5 standard
    # errors of the std (~1.6%)
    np.testing.assert_allclose(x.std(0), STD, rtol=0.015 + 4.5 / np.sqrt(2 * n))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ancestral_sampler_reaches_the_data_distribution(variance):
    n = 10000
    z1 = np.random.default_rng(2).standard_normal((n, 3))
    x = pd_ref.sample(
        gaussian_model("v"), z1, 512, COSINE, "v", sampler="ancestral", seed=3, variance=variance
    )
    np.testing.assert_array_less(np.abs(x.mean(0) - MU), 4.5 * STD / np.sqrt(n))
    # fixed_small falls short by ~4% at N = 256 and ~1% at N = 1024 where the std is 0.2
    np.testing.assert_allclose(x.std(0), STD, rtol=0.02 + 4.5 / np.sqrt(2 * n))


def flow_solution(z1, t_end):
    """The probability-flow ODE dz/dt = a (alpha_t z - x_hat(z, t)) / sigma_t of the cosine schedule
    (DDIM's continuous limit), integrated by scipy from t = 1 to t_end."""
    shape = z1.shape

    def rhs(t, z):
        alpha, sigma = COSINE.alpha_sigma(t)
        z = z.reshape(shape)
        return (COSINE.a * (alpha * z - exact_x_hat(z, alpha, sigma)) / sigma).ravel()

    sol = solve_ivp(rhs, (1.0, t_end), z1.ravel(), method="DOP853", rtol=1e-11, atol=1e-11)
    assert sol.success
    return sol.y[:, -1].reshape(shape)


def test_flow_solution_matches_the_closed_form_transport():
    """For Gaussian data the flow keeps u = (z - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) constant."""
    z1 = np.random.default_rng(4).standard_normal((20, 3))
    t_end = 0.05
    a1, s1 = COSINE.alpha_sigma(1.0)
    a0, s0 = COSINE.alpha_sigma(t_end)
    u = (z1 - a1 * MU) / np.sqrt(a1**2 * STD**2 + s1**2)
    np.testing.assert_allclose(
        flow_solution(z1, t_end), a0 * MU + np.sqrt(a0**2 * STD**2 + s0**2) * u, atol=1e-8
    )


@pytest.mark.parametrize("param", ["x", "v", "both"])
def test_ddim_converges_to_the_probability_flow_ode(param):
    z1 = np.random.default_rng(5).standard_normal((20, 3))
    errors = []
    for n in (16, 64, 256):
        alpha, sigma = COSINE.alpha_sigma(1.0 / n)
        x_ode = exact_x_hat(flow_solution(z1, 1.0 / n), alpha, sigma)
        errors.append(np.abs(pd_ref.sample(gaussian_model(param), z1, n, COSINE, param) - x_ode).max())
    # DDIM is Euler's method on this ODE (in y = z/alpha against sigma/alpha): error ~ 2/N
    assert errors[-1] < 0.012, errors
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors  # first order or better


@given(param=params, shape=shapes(min_ndim=2), t=inner_times, ds=st.floats(0.001, 0.5), seed=seeds)
def test_ddim_with_eta_one_equals_ancestral_fixed_small(param, shape, t, ds, seed):
    rng = np.random.default_rng(seed)
    s = max(t - ds, 0.0)
    out = rng.standard_normal((shape[0], 2 * shape[1]) + shape[2:] if param == "both" else shape)
    z_t, noise = rng.standard_normal(shape), rng.standard_normal(shape)
    coefs = (*COSINE.alpha_sigma(t), *COSINE.alpha_sigma(s))
    ddim = pd_ref.ddim_step(z_t, out, *coefs, param, eta=1.0, noise=noise)
    anc = pd_ref.ancestral_step(z_t, out, *coefs, param, variance="fixed_small", noise=noise)
    np.testing.assert_allclose(ddim, anc, rtol=1e-9, atol=1e-9)


@settings(max_examples=25)
@given(param=params, t=inner_times, ds=st.floats(0.001, 0.5), seed=seeds)
def test_deterministic_ddim_step_is_alpha_s_x_plus_sigma_s_eps(param, t, ds, seed):
    """[DDIM] Eq. 12 with eta = 0, from a known (x, eps) encoded in each param."""
    rng = np.random.default_rng(seed)
    x, eps = rng.uniform(-1, 1, (2, 3)), rng.standard_normal((2, 3))
    (a_t, s_t), (a_s, s_s) = COSINE.alpha_sigma(t), COSINE.alpha_sigma(max(t - ds, 0.0))
    z_t = a_t * x + s_t * eps
    out = output_for(param, x, eps, a_t, s_t)
    np.testing.assert_allclose(
        pd_ref.ddim_step(z_t, out, a_t, s_t, a_s, s_s, param), a_s * x + s_s * eps, atol=1e-11
    )


def test_stochastic_samplers_are_reproducible_from_the_seed():
    z1 = np.random.default_rng(6).standard_normal((4, 3))
    model = gaussian_model("eps")
    a = pd_ref.sample(model, z1, 8, COSINE, "eps", sampler="ancestral", seed=7)
    b = pd_ref.sample(model, z1, 8, COSINE, "eps", sampler="ancestral", seed=7)
    c = pd_ref.sample(model, z1, 8, COSINE, "eps", sampler="ancestral", seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_one_step_sampler_returns_x_hat_at_t_one():
    z1 = np.random.default_rng(8).standard_normal((5, 3))
    a1, s1 = COSINE.alpha_sigma(1.0)
    np.testing.assert_allclose(
        pd_ref.sample(gaussian_model("x"), z1, 1, COSINE, "x"), exact_x_hat(z1, a1, s1)
    )
