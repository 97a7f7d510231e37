"""Fréchet distance, its floor, and the evaluation of models (pd_fast.app.evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pd_fast
from pd_fast.app.data import load_data
from pd_fast.app.evaluation import (
    bootstrap_frechet,
    bootstrap_interval,
    evaluate_models,
    frechet_distance,
    frechet_distance_samples,
    gaussian_stats,
    knn_precision_recall,
    knn_radii,
    leave_one_out_distances,
    make_evaluator,
    nearest_distances,
    ratio_interval,
    sample_statistics,
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
    """S2 = c^2 S1 (S1 full): (S1 S2)^(1/2) = c S1, so FD = |dmu|^2 + (1 - c)^2 tr S1. S1 is kept
    well conditioned: near a singular S1 any matrix square root loses about sqrt(eps) of the
    largest eigenvalue (singular inputs have their own test below)."""
    rng = np.random.default_rng(seed)
    s1 = _random_cov(rng, d) + 0.01 * np.eye(d)
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


# ----- intervals --------------------------------------------------------------------------------


@given(st.integers(2, 40), st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_bootstrap_replicate_is_the_frechet_distance_of_the_resampled_rows(n, d, resamples, seed):
    """Each replicate equals [FID] Eq. 6 of the rows it drew (gaussian_stats + frechet_distance,
    eigen approach in NumPy), whatever the chunking of the replicates."""
    rng = np.random.default_rng(seed)
    feats = {"a": rng.standard_normal((n, d)) * 2 + 1, "b": rng.standard_normal((n, d)) ** 2}
    ref = gaussian_stats(rng.standard_normal((max(n, 3), d)) + 0.5)
    idx = rng.integers(0, n, size=(resamples, n))
    for chunk_bytes in (1 << 25, 1):  # all replicates at once, one replicate at a time
        reps = bootstrap_frechet(feats, ref, idx, chunk_bytes=chunk_bytes)
        for name, f in feats.items():
            expected = [frechet_distance(*gaussian_stats(f[i]), *ref) for i in idx]
            # singular covariances (n <= d) leave sqrt(rounding) ~ 1e-8 of the scale in both methods
            scale = np.trace(np.atleast_2d(ref[1])) + np.abs(f).max() ** 2 * d
            np.testing.assert_allclose(reps[name], expected, rtol=1e-9, atol=1e-6 * scale)


def test_shifted_bootstrap_interval_covers_the_expected_distance_and_ratio(one_thread):
    """Coverage against fresh draws (Monte Carlo, an independent source): for two models paired
    through the same Gaussian noise, the 95% interval of each distance covers E[FD_n] and that of
    the ratio covers E[FD_a] / E[FD_b] in most of 40 independent runs; the raw percentile interval
    of the same replicates, without the shift, misses E[FD_n] most of the time (its replicates
    carry the n-sample bias twice)."""
    d, n = 16, 200
    g = np.random.default_rng(7)
    chol = np.linalg.cholesky(np.cov(g.standard_normal((d, 3 * d))) + 0.1 * np.eye(d))
    ref = (np.zeros(d), chol @ chol.T)
    shift_a, shift_b = 0.3 * g.standard_normal(d) / np.sqrt(d), 0.15 * g.standard_normal(d) / np.sqrt(d)

    def draw(rng):
        z = rng.standard_normal((n, d)) @ chol.T
        return 1.3 * z + shift_a, 1.15 * z + shift_b

    rng = np.random.default_rng(1)
    mc = np.array([[frechet_distance(*gaussian_stats(x), *ref) for x in draw(rng)] for _ in range(1000)])
    expected = mc.mean(axis=0)
    runs, covered, covered_ratio, raw = 40, np.zeros(2), 0, np.zeros(2)
    for k in range(runs):
        a, b = draw(rng)
        idx = np.random.default_rng(k).integers(0, n, (200, n))
        reps = bootstrap_frechet({"a": a, "b": b}, ref, idx)
        points = [frechet_distance(*gaussian_stats(x), *ref) for x in (a, b)]
        for i, name in enumerate("ab"):
            lo, hi = bootstrap_interval(points[i], reps[name])
            covered[i] += lo <= expected[i] <= hi
            lo, hi = np.quantile(reps[name], [0.025, 0.975])
            raw[i] += lo <= expected[i] <= hi
        _, lo, hi = ratio_interval(points[0], reps["a"], points[1], reps["b"])
        covered_ratio += lo <= expected[0] / expected[1] <= hi
    assert np.all(covered / runs >= 0.85) and covered_ratio / runs >= 0.85
    assert np.all(raw / runs <= 0.6)


def test_ratio_interval_is_paired():
    """Replicates with a = c * b exactly (same resampled rows) give the ratio c with a zero-width
    interval; the same replicates unpaired (b shuffled) give a wide one."""
    rng = np.random.default_rng(0)
    b = 5.0 + rng.standard_normal(500)
    r, lo, hi = ratio_interval(2.0 * 5.1, 2.0 * b, 5.1, b)
    assert r == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    r, lo, hi = ratio_interval(2.0 * 5.1, 2.0 * b, 5.1, rng.permutation(b))
    assert hi - lo > 0.5


@given(st.floats(0.5, 5.0), st.floats(-0.5, 0.5), st.floats(0.01, 3.0), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_ratio_interval_excludes_one_exactly_when_the_paired_difference_is_significant(b, gap, noise, seed):
    """The ratio's interval inverts the paired test: 1 lies outside it exactly when the shifted
    percentile interval of the replicates of a - b (computed here by hand) excludes 0; and its
    ends x satisfy that the interval of a - x b just touches 0."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(400)
    rep_b = b + 0.2 * common
    rep_a = (b + gap) + 0.2 * common + noise * 0.1 * rng.standard_normal(400)
    pa, pb = b + gap + 0.01, b
    r, lo, hi = ratio_interval(pa, rep_a, pb, rep_b)
    sa, sb = rep_a - (rep_a.mean() - pa), rep_b - (rep_b.mean() - pb)
    dlo, dhi = np.quantile(sa - sb, [0.025, 0.975])
    assert (lo > 1 or hi < 1) == (dlo > 0 or dhi < 0)
    assert lo <= r <= hi
    for end in (lo, hi):
        if 0 < end < math.inf:
            q = np.quantile(sa - end * sb, [0.025, 0.975])
            assert min(abs(q[0]), abs(q[1])) < 1e-6 * (1 + np.abs(sa).max())


def test_ratio_to_a_distance_that_may_be_zero_is_unbounded():
    rng = np.random.default_rng(0)
    rep_b = 0.1 + rng.standard_normal(1000)  # b's replicates straddle 0
    r, lo, hi = ratio_interval(3.0, 3.0 + 0.1 * rng.standard_normal(1000), 0.1, rep_b)
    assert r == pytest.approx(30.0) and hi == math.inf and 0 <= lo < r


def test_bootstrap_interval_is_the_shifted_percentile_interval():
    reps = np.arange(1001, dtype=np.float64)  # mean 500, percentiles 25 and 975
    assert bootstrap_interval(100.0, reps, 0.95) == pytest.approx((0.0, 575.0))  # low clipped at 0
    assert bootstrap_interval(600.0, reps, 0.95) == pytest.approx((125.0, 1075.0))


def test_interval_functions_reject_bad_input():
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(1.0, np.ones(5), level=1.0)
    with pytest.raises(ValueError, match="point_b"):
        ratio_interval(1.0, np.ones(5), 0.0, np.ones(5))
    with pytest.raises(ValueError, match="paired"):
        ratio_interval(1.0, np.ones(5), 1.0, np.ones(4))
    with pytest.raises(ValueError, match="indices"):
        bootstrap_frechet({"a": np.ones((5, 2))}, (np.zeros(2), np.eye(2)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"features\['a'\]"):
        bootstrap_frechet({"a": np.ones((5, 3))}, (np.zeros(2), np.eye(2)), np.zeros((2, 5), dtype=int))


# ----- precision, recall, nearest neighbours --------------------------------------------------------


def _brute_radii(x: np.ndarray, k: int) -> list[float]:
    return [sorted(math.dist(p, q) for j, q in enumerate(x) if j != i)[k - 1] for i, p in enumerate(x)]


def _brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """[PR] Eqs. 1-3 with Python loops in float64."""
    rr, rf = _brute_radii(real, k), _brute_radii(fake, k)
    precision = np.mean([any(math.dist(f, r) <= rr[j] for j, r in enumerate(real)) for f in fake])
    recall = np.mean([any(math.dist(r, f) <= rf[j] for j, f in enumerate(fake)) for r in real])
    return float(precision), float(recall)


@given(
    st.integers(4, 30), st.integers(4, 30), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**31 - 1)
)
@settings(max_examples=25, deadline=None)
def test_precision_recall_match_brute_force(n, m, d, k, seed):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, d))
    fake = rng.standard_normal((m, d)) * rng.uniform(0.3, 2.0) + rng.uniform(-1.5, 1.5)
    assert knn_precision_recall(real, fake, k) == _brute_precision_recall(real, fake, k)
    np.testing.assert_allclose(knn_radii(real, k), _brute_radii(real, k), rtol=1e-14)


def test_precision_recall_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8))
    assert knn_precision_recall(x, x) == (1.0, 1.0)  # identical sets
    assert knn_precision_recall(x, x + 100.0) == (0.0, 0.0)  # disjoint, far apart
    # 10 modes, each held by 8 identical points (k-th neighbour at distance 0): a model that
    # produces 5 of the modes is precise (1) and recalls exactly half of the data
    modes = 10.0 * rng.standard_normal((10, 8))
    real = np.repeat(modes, 8, axis=0)
    fake = np.repeat(modes[:5], 16, axis=0)
    assert knn_precision_recall(real, fake, k=3) == (1.0, 0.5)
    assert knn_precision_recall(fake, real, k=3) == (0.5, 1.0)  # roles swapped
    with pytest.raises(ValueError, match="k must be"):
        knn_precision_recall(x[:3], x[:3], k=3)


def test_nearest_distances_match_brute_force_and_leave_one_out_skips_itself():
    rng = np.random.default_rng(1)
    train, queries = rng.standard_normal((50, 4)), rng.standard_normal((20, 4))
    expected = [min(math.dist(q, t) for t in train) for q in queries]
    np.testing.assert_allclose(nearest_distances(queries, train), expected, rtol=1e-13)
    loo = leave_one_out_distances(train)
    expected = [min(math.dist(p, q) for j, q in enumerate(train) if j != i) for i, p in enumerate(train)]
    np.testing.assert_allclose(loo, expected, rtol=1e-13)
    dup = np.concatenate([train, train[:1]])  # a duplicated example is at distance 0 from its twin
    assert leave_one_out_distances(dup)[0] == 0.0 and leave_one_out_distances(dup)[-1] == 0.0


def _gaussian_evaluator(n: int = 600, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (0.3 * torch.randn((n, 2), generator=g)).clamp(-1, 1)
    return x, make_evaluator(x, None, seed=seed)


def test_memorisation_check_flags_copies_and_passes_fresh_draws(one_thread):
    """Samples that copy training examples (plus tiny noise) sit far closer to the training set
    than held-out data; fresh draws from the data's distribution do not."""
    x, ev = _gaussian_evaluator()
    g = torch.Generator().manual_seed(1)
    fresh = (0.3 * torch.randn((ev.n_samples, 2), generator=g)).clamp(-1, 1)
    copies = x[:: len(x) // ev.n_samples][: ev.n_samples] + 1e-4 * torch.randn((ev.n_samples, 2), generator=g)
    stats = sample_statistics(ev, {"teacher": {1: fresh}, "student": {1: copies}}, resamples=50)
    memo = stats["memorisation"]["rows"][0]
    assert (
        0.8 < memo["teacher_ddim"]["median_ratio"] < 1.25
        and memo["teacher_ddim"]["below_held_out_p01"] < 0.05
    )
    assert memo["student"]["median_ratio"] < 0.05 and memo["student"]["below_held_out_p01"] > 0.95
    assert stats["memorisation"]["training_examples"] == len(x)


def test_sample_statistics_sections_are_seeded_and_consistent(one_thread):
    x, ev = _gaussian_evaluator()
    g = torch.Generator().manual_seed(2)
    z = torch.randn((ev.n_samples, 2), generator=g)
    t1 = (0.6 * z).clamp(-1, 1)
    samples = {"teacher": {1: t1, 4: (0.32 * z).clamp(-1, 1)}, "student": {1: t1.clone(), 4: 0.3 * z}}
    one = sample_statistics(ev, samples, resamples=200, seed=3)
    assert one == sample_statistics(ev, samples, resamples=200, seed=3)  # reproducible
    assert one["intervals"] != sample_statistics(ev, samples, resamples=200, seed=4)["intervals"]
    rows = {r["steps"]: r for r in one["intervals"]["rows"]}
    assert rows[1]["student"] == rows[1]["teacher_ddim"] and len(rows[4]["student"]) == 2
    comps = {c["name"]: c for c in one["comparisons"]["rows"]}
    assert set(comps) == {
        "teacher_ddim_1_vs_teacher_ddim_4",
        "student_1_vs_teacher_ddim_4",
        "student_1_vs_teacher_ddim_1",
        "student_4_vs_teacher_ddim_4",
    }
    # the same samples under two names: paired resampling makes their ratio exactly 1
    assert comps["student_1_vs_teacher_ddim_1"]["interval"] == [1.0, 1.0]
    assert not comps["student_1_vs_teacher_ddim_1"]["significant"]
    d = {k: ev.distances(samples["teacher"][k])["pixel"] for k in (1, 4)}
    assert comps["teacher_ddim_1_vs_teacher_ddim_4"]["ratio"] == d[1] / d[4]
    # z scaled by 0.6 is far wider than the data (0.3): significantly worse than 0.32 z
    assert comps["teacher_ddim_1_vs_teacher_ddim_4"]["significant"]
    lo, hi = comps["teacher_ddim_1_vs_teacher_ddim_4"]["interval"]
    # 0.32 z is within noise of the data (its interval reaches 0): the ratio has no upper bound
    assert rows[4]["teacher_ddim"][0] == 0.0 and 1.0 < lo < d[1] / d[4] and hi is None
    pr = one["precision_recall"]
    assert pr["space"] == "pixel" and pr["data"]["precision"] > 0.8 and pr["data"]["recall"] > 0.8
    student, teacher = pr["rows"][1]["student"], pr["rows"][0]["teacher_ddim"]
    assert student["precision"] > 0.8 and student["recall"] > 0.8  # 0.3 z is the data's distribution
    assert teacher["precision"] < student["precision"]  # 0.6 z spills outside the data
    with pytest.raises(ValueError, match="resamples"):
        sample_statistics(ev, samples, resamples=1)
