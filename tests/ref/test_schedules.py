"""pd_ref schedules against closed forms and independent recomputation (docs/spec.md section 1)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

import pd_ref
from tests.strategies import DISCRETE_KINDS, unit_times

SCHEDULES = [
    pd_ref.CosineSchedule(),
    pd_ref.CosineSchedule(-10.0, 12.0),
    *(pd_ref.DiscreteSchedule.from_betas(k) for k in DISCRETE_KINDS),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@given(t=st.lists(unit_times, min_size=1, max_size=20))
def test_alpha_squared_plus_sigma_squared_is_one(schedule, t):
    alpha, sigma = schedule.alpha_sigma(np.array(t))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=0, atol=4e-16)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_logsnr_strictly_decreasing_on_a_fine_grid(schedule):
    t = np.linspace(0.0, 1.0, 20001)
    assert np.all(np.diff(schedule.logsnr(t)) < 0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@given(t=st.floats(1e-3, 1.0))
def test_alpha_sigma_are_square_roots_of_sigmoid_of_logsnr(schedule, t):
    lam = schedule.logsnr(t)
    alpha, sigma = schedule.alpha_sigma(t)
    np.testing.assert_allclose(alpha, np.sqrt(expit(lam)), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.sqrt(expit(-lam)), rtol=1e-9)


@given(
    t=unit_times,
    bounds=st.tuples(st.floats(-25, 5), st.floats(0.5, 25)).filter(lambda b: b[0] < b[1]),
)
def test_t_from_logsnr_inverts_logsnr(t, bounds):
    sched = pd_ref.CosineSchedule(*bounds)
    np.testing.assert_allclose(sched.t_from_logsnr(sched.logsnr(t)), t, rtol=0, atol=1e-12)


def test_cosine_endpoints_with_default_clipping():
    sched = pd_ref.CosineSchedule()
    # -2 log tan(theta) near pi/2 amplifies the rounding of theta by 2/(sin cos) ~ 4.4e4
    np.testing.assert_allclose(sched.logsnr([0.0, 1.0]), [20.0, -20.0], rtol=0, atol=5e-11)
    alpha, sigma = sched.alpha_sigma([0.0, 1.0])
    tiny = math.sqrt(1.0 / (1.0 + math.exp(20.0)))  # sqrt(sigmoid(-20)) ~ 4.54e-5
    np.testing.assert_allclose([sigma[0], alpha[1]], [tiny, tiny], rtol=1e-10)
    # and alpha_t ~ cos(pi t / 2) in between (the clipping moves it by at most ~1e-4)
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(sched.alpha_sigma(t)[0], np.cos(np.pi * t / 2), atol=1e-4)


def _betas_by_hand(kind, T, beta_start=1e-4, beta_end=0.02):
    """Written from the definitions, one beta at a time (independent of from_betas)."""
    if kind == "linear":
        return [beta_start + (beta_end - beta_start) * k / (T - 1) for k in range(T)]
    if kind == "scaled_linear":
        a, b = math.sqrt(beta_start), math.sqrt(beta_end)
        return [(a + (b - a) * k / (T - 1)) ** 2 for k in range(T)]

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - f((k + 1) / T) / f(k / T), 0.999) for k in range(T)]


@pytest.mark.parametrize("kind", DISCRETE_KINDS)
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_alphas_cumprod_recomputed_by_hand(kind, T):
    acp, prod = [], 1.0
    for beta in _betas_by_hand(kind, T):
        prod *= 1.0 - beta
        acp.append(prod)
    sched = pd_ref.DiscreteSchedule.from_betas(kind, num_train_timesteps=T)
    np.testing.assert_allclose(sched.alphas_cumprod, acp, rtol=1e-12)


@pytest.mark.parametrize("kind", DISCRETE_KINDS)
@given(data=st.data())
def test_grid_t_equals_trailing_ddim_timestep_index(kind, data):
    """t = i/N is diffusers' trailing timestep k = i*T/N - 1: alpha_bar(t) = alphas_cumprod[k],
    and t = 0 is alpha_bar = 1 (set_alpha_to_one)."""
    T = 1000
    sched = pd_ref.DiscreteSchedule.from_betas(kind, num_train_timesteps=T)
    n = data.draw(st.sampled_from([1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000]))
    # diffusers' trailing spacing: np.round(np.arange(T, 0, -T / N)) - 1, from t = 1 down
    trailing = np.round(np.arange(T, 0, -T / n)).astype(int) - 1
    t = np.arange(n, 0, -1) / n
    alpha, sigma = sched.alpha_sigma(t)
    np.testing.assert_allclose(alpha**2, sched.alphas_cumprod[trailing], rtol=1e-14)
    assert sched.alpha_sigma(0.0) == (1.0, 0.0)
    assert sched.logsnr(0.0) == np.inf


@given(k=st.integers(0, 998), frac=st.floats(0, 1))
def test_discrete_alpha_bar_is_linear_between_grid_points(k, frac):
    sched = pd_ref.DiscreteSchedule.from_betas("linear")
    acp = sched.alphas_cumprod
    t = (k + 1 + frac) / 1000
    expected = (1 - frac) * acp[k] + frac * acp[k + 1]
    np.testing.assert_allclose(sched.alpha_sigma(t)[0] ** 2, expected, rtol=1e-12)


@settings(max_examples=20)
@given(t=st.one_of(st.floats(-10, -1e-9), st.floats(1 + 1e-9, 10), st.just(float("nan"))))
def test_t_outside_unit_interval_is_rejected(t):
    for sched in SCHEDULES:
        with pytest.raises(ValueError, match="t must"):
            sched.alpha_sigma(t)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@given(t=st.lists(unit_times, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_diffuse_is_the_forward_process_from_the_logsnr(schedule, t, seed):
    """z_t = sqrt(sigmoid(lambda)) x + sqrt(sigmoid(-lambda)) eps, per example (docs/spec.md section 1)."""
    rng = np.random.default_rng(seed)
    t = np.array(t)
    x, eps = rng.standard_normal((2, t.size, 3, 2))
    lam = schedule.logsnr(t)[:, None, None]
    with np.errstate(over="ignore"):
        expected = np.sqrt(expit(lam)) * x + np.sqrt(expit(-lam)) * eps
    np.testing.assert_allclose(pd_ref.diffuse(x, t, schedule, eps), expected, rtol=1e-9, atol=1e-9)


def test_diffuse_refuses_bad_input():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="noise"):
        pd_ref.diffuse(x, 0.5, pd_ref.CosineSchedule(), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="t must"):
        pd_ref.diffuse(x, [0.1, 0.2], pd_ref.CosineSchedule(), x)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        pd_ref.diffuse(x, 1.5, pd_ref.CosineSchedule(), x)
