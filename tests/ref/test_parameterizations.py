"""pd_ref.predict_x_eps: from the output that encodes a known (x, eps), each param recovers them."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import pd_ref
from tests.strategies import inner_times, output_for, params, random_pair, seeds, shapes


@given(param=params, shape=shapes(min_ndim=2), t=inner_times, seed=seeds, per_example=st.booleans())
def test_each_param_recovers_x_and_eps(param, shape, t, seed, per_example):
    rng = np.random.default_rng(seed)
    x, eps = random_pair(rng, shape)
    ts = rng.uniform(0.02, 0.98, shape[0]) if per_example else np.float64(t)
    alpha, sigma = pd_ref.CosineSchedule().alpha_sigma(ts)
    a, s = (alpha.reshape((-1,) + (1,) * (len(shape) - 1)), sigma.reshape((-1,) + (1,) * (len(shape) - 1)))
    z = a * x + s * eps
    x_hat, eps_hat = pd_ref.predict_x_eps(z, output_for(param, x, eps, a, s), alpha, sigma, param)
    np.testing.assert_allclose(x_hat, x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(eps_hat, eps, rtol=0, atol=1e-12)


@given(param=params, shape=shapes(min_ndim=2), t=inner_times, seed=seeds)
def test_clipping_clips_x_and_recomputes_eps_from_it(param, shape, t, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, shape)  # mostly outside [-1, 1]
    eps = rng.standard_normal(shape)
    alpha, sigma = pd_ref.CosineSchedule().alpha_sigma(t)
    z = alpha * x + sigma * eps
    x_hat, eps_hat = pd_ref.predict_x_eps(
        z, output_for(param, x, eps, alpha, sigma), alpha, sigma, param, clip=True
    )
    np.testing.assert_allclose(x_hat, np.clip(x, -1, 1), rtol=0, atol=1e-12)
    # z = alpha x_hat + sigma eps_hat still holds after clipping; eps unchanged where x was in range
    np.testing.assert_allclose(alpha * x_hat + sigma * eps_hat, z, rtol=0, atol=1e-12)
    inside = np.abs(x) <= 1
    np.testing.assert_allclose(eps_hat[inside], eps[inside], rtol=0, atol=1e-9)


def test_v_is_alpha_eps_minus_sigma_x_by_rotation():
    """v-parameterisation ([PD] Appendix D): with phi = atan2(sigma, alpha), x = cos(phi) z - sin(phi) v."""
    rng = np.random.default_rng(0)
    x, eps = random_pair(rng, (3, 4))
    phi = 0.7
    alpha, sigma = np.cos(phi), np.sin(phi)
    z = alpha * x + sigma * eps
    v = alpha * eps - sigma * x
    x_hat, eps_hat = pd_ref.predict_x_eps(z, v, alpha, sigma, "v")
    np.testing.assert_allclose(x_hat, np.cos(phi) * z - np.sin(phi) * v, atol=1e-14)
    np.testing.assert_allclose(eps_hat, np.sin(phi) * z + np.cos(phi) * v, atol=1e-14)
