"""Fréchet distance, its floor, and the evaluation of models (pd_fast.app.evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pd_fast
from pd_fast.app.data import load_data
from pd_fast.app.evaluation import (
    evaluate_models,
    frechet_distance,
    frechet_distance_samples,
    gaussian_stats,
    make_evaluator,
    train_classifier,
)


def _random_cov(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_frechet_distance_of_1d_gaussians_is_mean_gap_plus_std_gap_squared():
    # closed form in 1-D: (mu1 - mu2)^2 + (s1 - s2)^2, s the standard deviations
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert fd == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2, rel=1e-12)


@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_frechet_distance_of_diagonal_gaussians_is_sum_of_sqrt_variance_gaps(d, seed):
    """Commuting (diagonal) covariances: tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9, abs=1e-10)


@given(st.integers(1, 10), st.floats(0.0, 3.0), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_frechet_distance_of_scaled_covariance_is_one_minus_c_squared_times_trace(d, c, seed):
    """S2 = c^2 S1 (S1 full): (S1 S2)^(1/2) = c S1, so FD = |dmu|^2 + (1 - c)^2 tr S1."""
    rng = np.random.default_rng(seed)
    s1 = _random_cov(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, c**2 * s1) == pytest.approx(expected, rel=1e-8, abs=1e-9)


@given(st.integers(2, 10), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_frechet_distance_matches_the_definition_with_scipy_sqrtm(d, seed):
    """General full covariances: the definition |dmu|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), evaluated
    with scipy's matrix square root (an independent algorithm) on well-conditioned inputs."""
    rng = np.random.default_rng(seed)
    s1, s2 = _random_cov(rng, d) + 0.1 * np.eye(d), _random_cov(rng, d) + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_frechet_distance_is_zero_for_equal_singular_gaussians():
    rng = np.random.default_rng(0)
    s = _random_cov(rng, 16, rank=3)  # rank 3 of 16, like the always-blank pixels of digits
    mu = rng.standard_normal(16)
    # zero eigenvalues carry rounding noise ~1e-16 whose square roots are ~1e-8: the distance is
    # exact to about sqrt(machine epsilon) times the scale, far below any floor that matters
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-6 * np.trace(s)
    assert frechet_distance(mu, s, mu + 1.0, s) == pytest.approx(16.0, abs=1e-6 * np.trace(s))


def test_frechet_distance_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.0, 2.0])
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.diag([4.0, 2.0, 0.5])
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    expected = 0.25 + 1.0 + (1.0 - 2.0) ** 2
    assert frechet_distance_samples(a, b) == pytest.approx(expected, abs=0.03)
    mu, cov = gaussian_stats(torch.from_numpy(a))
    np.testing.assert_allclose(cov, s1, atol=0.02)


def test_frechet_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match="mu1, mu2"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="s1"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))


@pytest.fixture(scope="module")
def digits_evaluator(tmp_path_factory):
    # one thread: the classifier's small matmuls run many times slower with 2 on shared cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = load_data("digits")
    yield d, make_evaluator(d.x, d.labels, seed=0, cache_dir=str(tmp_path_factory.mktemp("clf")))
    torch.set_num_threads(threads)


def test_classifier_learns_digits_and_is_cached(digits_evaluator, tmp_path):
    d, ev = digits_evaluator
    assert ev.info["classifier_accuracy"] > 0.9  # held-out accuracy of the feature network
    net1, acc1 = train_classifier(d.x, d.labels, iters=50, cache_dir=str(tmp_path))
    net2, acc2 = train_classifier(d.x, d.labels, iters=50, cache_dir=str(tmp_path))  # from the cache
    assert acc1 == acc2
    assert all(
        torch.equal(a, b) for a, b in zip(net1.state_dict().values(), net2.state_dict().values(), strict=True)
    )


def test_floor_is_small_and_noise_is_far(digits_evaluator):
    d, ev = digits_evaluator
    assert ev.metric == "classifier" and ev.n_samples == len(d) // 2
    noise = torch.rand((ev.n_samples, 1, 8, 8)) * 2 - 1
    far = ev.distances(noise)
    blurred = ev.distances(d.x[: ev.n_samples] * 0.5)  # a worse but data-like sample
    for space in ("pixel", "classifier"):
        assert 0 <= ev.floor[space] < blurred[space] < far[space]


def test_evaluate_models_rows_and_times(digits_evaluator):
    """A model whose x prediction is a data example (param 'x') scores the same at every N, and a
    student row appears only at its own N."""
    d, ev = digits_evaluator
    target = d.x[: ev.n_samples]

    def memorizer(z, t):
        return target[: z.shape[0]]

    z = torch.randn((ev.n_samples, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    sched = pd_fast.CosineSchedule()
    rows, samples = evaluate_models(memorizer, {2: memorizer}, ev, sched, "x", [1, 2, 4], z)
    assert [r["steps"] for r in rows] == [1, 2, 4]
    assert rows[0]["student"] is None and rows[1]["student"] == pytest.approx(rows[1]["teacher_ddim"])
    direct = ev.distances(target)["classifier"]
    for r in rows:
        assert r["teacher_ddim"] == pytest.approx(direct, rel=1e-6)
        assert r["sample_seconds"] > 0
    assert torch.equal(samples["teacher"][4], target)
