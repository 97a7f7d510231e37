"""[GD]'s stochastic N-step sampler in pd_ref (docs/spec.md section 8) on Gaussian data, where every
step is an affine map plus independent noise, so the law of its output is known in closed form."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pd_ref
from pd_ref.sampling import noise_back
from tests.strategies import DISCRETE_KINDS, seeds

MU = np.array([0.3, -0.5, 0.0])
STD = np.array([0.5, 0.2, 0.8])
COSINE = pd_ref.CosineSchedule()


def gain(alpha, sigma):
    """x_hat = MU + gain*(z - alpha*MU): E[x | z_t] for x ~ N(MU, diag(STD^2))."""
    return alpha * STD**2 / (alpha**2 * STD**2 + sigma**2)


def gaussian_model(schedule, calls=None):
    """model(z, t) -> x_hat (param 'x'), the exact denoiser; appends each call's t to `calls`."""

    def model(z, t):
        if calls is not None:
            calls.append(t[0])
        alpha, sigma = (c[:, None] for c in schedule.alpha_sigma(t))
        return MU + gain(alpha, sigma) * (z - alpha * MU)

    return model


def law_of_the_output(steps, schedule):
    """Mean and variance of the sampler's output from z_1 ~ N(0, I), per dimension, by following the
    algorithm of docs/spec.md section 8 on the Gaussian's moments: DDIM from t to k = t - 2/N is the
    affine map z -> alpha_k x_hat + sigma_k (z - alpha_t x_hat)/sigma_t, the noise back to s = t - 1/N
    multiplies by alpha_s/alpha_k and adds the variance sigma_s^2 - (alpha_s sigma_k/alpha_k)^2."""
    mean, var = np.zeros(3), np.ones(3)
    for i in range(steps, 1, -1):
        (a_t, s_t), (a_k, s_k), (a_s, s_s) = (
            schedule.alpha_sigma(max(u, 0.0)) for u in (i / steps, (i - 2) / steps, (i - 1) / steps)
        )
        g = gain(a_t, s_t)
        slope = a_k * g + s_k * (1 - a_t * g) / s_t  # d z_k / d z_t
        offset = (a_k - s_k * a_t / s_t) * (1 - g * a_t) * MU  # z_k at z_t = 0
        ratio = a_s / a_k
        mean, var = ratio * (slope * mean + offset), ratio**2 * slope**2 * var + s_s**2 - (ratio * s_k) ** 2
    a_1, s_1 = schedule.alpha_sigma(1.0 / steps)
    g = gain(a_1, s_1)
    return MU + g * (mean - a_1 * MU), g**2 * var


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_output_has_the_law_that_the_algorithm_implies(steps, schedule):
    """Monte Carlo moments of pd_ref's samples against `law_of_the_output` (4.5 standard errors);
    the discrete schedule reaches sigma_0 = 0 at the k = 0 of the second-to-last step."""
    sched = COSINE if schedule == "cosine" else pd_ref.DiscreteSchedule.from_betas("linear")
    n = 40000
    z1 = np.random.default_rng(steps).standard_normal((n, 3))
    x = pd_ref.sample(gaussian_model(sched), z1, steps, sched, "x", sampler="stochastic", seed=100 + steps)
    mean, var = law_of_the_output(steps, sched)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4.5 * np.sqrt(var / n) + 1e-12)
    np.testing.assert_allclose(x.var(0), var, rtol=4.5 * np.sqrt(2.0 / n))


def test_reaches_the_data_distribution_as_steps_grow():
    """With the exact denoiser the sampler's law tends to N(MU, STD^2): the shortfall of the std
    shrinks by 2.5x or more per 4x steps (first order: 2.8x, 3.6x, 3.9x), to under 1% at N = 1024;
    the samples at N = 256 agree."""
    shortfall = [
        np.abs(np.sqrt(law_of_the_output(n, COSINE)[1]) / STD - 1).max() for n in (16, 64, 256, 1024)
    ]
    assert all(a > 2.5 * b for a, b in zip(shortfall, shortfall[1:], strict=False)), shortfall
    assert shortfall[-1] < 0.01, shortfall
    n = 20000
    z1 = np.random.default_rng(9).standard_normal((n, 3))
    x = pd_ref.sample(gaussian_model(COSINE), z1, 256, COSINE, "x", sampler="stochastic", seed=1)
    np.testing.assert_array_less(np.abs(x.mean(0) - MU), 4.5 * STD / np.sqrt(n))
    np.testing.assert_allclose(x.std(0), STD, rtol=shortfall[2] + 4.5 / np.sqrt(2 * n))


@pytest.mark.parametrize("steps", [1, 2, 5, 16])
def test_n_steps_make_n_network_calls_on_the_grid(steps):
    calls = []
    z1 = np.random.default_rng(0).standard_normal((2, 3))
    pd_ref.sample(gaussian_model(COSINE, calls), z1, steps, COSINE, "x", sampler="stochastic", seed=0)
    np.testing.assert_allclose(calls, np.arange(steps, 0, -1) / steps, rtol=0, atol=1e-15)


def test_one_step_is_the_deterministic_x_hat_and_the_seed_reproduces_the_samples():
    z1 = np.random.default_rng(1).standard_normal((4, 3))
    model = gaussian_model(COSINE)
    one = pd_ref.sample(model, z1, 1, COSINE, "x", sampler="stochastic", seed=0)
    np.testing.assert_array_equal(one, pd_ref.sample(model, z1, 1, COSINE, "x"))
    a, b, c = (pd_ref.sample(model, z1, 6, COSINE, "x", sampler="stochastic", seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@given(
    kind=st.sampled_from(["cosine", *DISCRETE_KINDS]),
    k=st.floats(0.0, 0.95),
    ds=st.floats(1e-4, 0.5),
    seed=seeds,
)
def test_noise_back_gives_the_marginal_variance_at_s(kind, k, ds, seed):
    """q(z_s | z_k) maps the marginal of x ~ N(0, v) at k to the marginal at s:
    (alpha_s/alpha_k)^2 (alpha_k^2 v + sigma_k^2) + sigma_{s|k}^2 = alpha_s^2 v + sigma_s^2 for every v,
    i.e. slope^2 = (alpha_s/alpha_k)^2 and slope^2 sigma_k^2 + noise scale^2 = sigma_s^2; read off
    the (linear) step with unit inputs."""
    schedule = COSINE if kind == "cosine" else pd_ref.DiscreteSchedule.from_betas(kind)
    s = min(k + ds, 1.0)
    (a_k, s_k), (a_s, s_s) = schedule.alpha_sigma(k), schedule.alpha_sigma(s)
    if not s_k < s_s:
        return  # k and s on one segment of a flat discrete schedule: no step to take
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    slope = noise_back(one, a_k, s_k, a_s, s_s, zero)[0, 0]
    scale = noise_back(zero, a_k, s_k, a_s, s_s, one)[0, 0]
    np.testing.assert_allclose(slope, a_s / a_k, rtol=1e-13)
    for v in (0.0, 0.04, 1.0):
        np.testing.assert_allclose(
            slope**2 * (a_k**2 * v + s_k**2) + scale**2, a_s**2 * v + s_s**2, rtol=1e-10
        )
    rng = np.random.default_rng(seed)  # and a Monte Carlo check of the same
    z_k = a_k * 0.7 * rng.standard_normal((20000, 1)) + s_k * rng.standard_normal((20000, 1))
    z_s = noise_back(z_k, a_k, s_k, a_s, s_s, rng.standard_normal((20000, 1)))
    np.testing.assert_allclose(z_s.var(), a_s**2 * 0.49 + s_s**2, rtol=4.5 * np.sqrt(2 / 20000))


def test_noise_back_rejects_going_down_in_noise():
    with pytest.raises(ValueError, match="s < t"):
        noise_back(np.zeros((2, 1)), 0.6, 0.8, 0.8, 0.6, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="noise must have the shape of z_k"):
        noise_back(np.zeros((2, 1)), 0.8, 0.6, 0.6, 0.8, np.zeros((3, 1)))
