"""pd_ref's classifier-free guidance ([GD] Section 3, docs/spec.md section 8) against closed forms:
the x-space combination of known predictions, its linearity, clipping after combining, the guided
DDIM step, and the guided sampler and teacher target on Gaussian data, where guidance is exactly
the denoiser of a Gaussian with the guided mean."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pd_ref
from tests.strategies import guidance_weights, inner_times, output_for, params, seeds, shapes

COSINE = pd_ref.CosineSchedule()
STD = np.array([0.5, 0.2, 0.8])
MU_NULL = np.array([0.3, -0.5, 0.0])
SHIFT = np.array([0.2, 0.1, -0.3])  # the mean of class c is MU_NULL + (c + 1) * SHIFT


def col(a, ndim):
    return np.asarray(a, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))


def class_mean(c):
    """(B, 3) means: the null label -1 gives MU_NULL."""
    return MU_NULL + (np.asarray(c)[:, None] + 1) * SHIFT


def gaussian_x_hat(z, alpha, sigma, mu):
    """E[x | z_t] for x ~ N(mu, diag(STD^2)), z_t = alpha x + sigma eps."""
    return mu + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z - alpha * mu)


def encode(param, z, x_hat, alpha, sigma):
    """The output of `param` that predicts x_hat at z (eps_hat from z = alpha x_hat + sigma eps_hat)."""
    eps_hat = (z - alpha * x_hat) / sigma
    return output_for(param, x_hat, eps_hat, alpha, sigma)


def conditional_model(param, calls=None):
    """model(z, t, c): the exact denoiser of N(class_mean(c), STD^2) as `param` output; records calls."""

    def model(z, t, c):
        if calls is not None:
            calls.append(np.array(c))
        alpha, sigma = (col(v, 2) for v in COSINE.alpha_sigma(t))
        return encode(param, z, gaussian_x_hat(z, alpha, sigma, class_mean(c)), alpha, sigma)

    return model


def gaussian_model(param, mu):
    """model(z, t): the exact denoiser of N(mu, STD^2), mu (B, 3)."""

    def model(z, t):
        alpha, sigma = (col(v, 2) for v in COSINE.alpha_sigma(t))
        return encode(param, z, gaussian_x_hat(z, alpha, sigma, mu), alpha, sigma)

    return model


def known_pair(rng, shape, alpha, sigma):
    """z and two predictions at it, (x_c, eps_c) and (x_u, eps_u), each consistent with z."""
    z = rng.standard_normal(shape)
    x_c, x_u = rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)
    return z, (x_c, (z - alpha * x_c) / sigma), (x_u, (z - alpha * x_u) / sigma)


def per_example_w(rng, w, batch):
    return rng.uniform(0.0, 2 * w, batch) if w > 0 else np.zeros(batch)


@given(param=params, shape=shapes(min_ndim=2), t=inner_times, w=guidance_weights, seed=seeds)
def test_guided_prediction_is_the_x_space_combination_of_the_two_predictions(param, shape, t, w, seed):
    """[GD] Section 3: x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null), from outputs that encode known
    predictions; eps_hat_w is consistent with it, z = alpha x_hat_w + sigma eps_hat_w."""
    rng = np.random.default_rng(seed)
    alpha, sigma = COSINE.alpha_sigma(t)
    z, (x_c, e_c), (x_u, e_u) = known_pair(rng, shape, alpha, sigma)
    w_b = per_example_w(rng, w, shape[0])
    x_w, eps_w = pd_ref.guided_x_eps(
        z,
        output_for(param, x_c, e_c, alpha, sigma),
        output_for(param, x_u, e_u, alpha, sigma),
        alpha,
        sigma,
        param,
        w=w_b,
    )
    wc = col(w_b, len(shape))
    np.testing.assert_allclose(x_w, (1 + wc) * x_c - wc * x_u, rtol=0, atol=1e-11 * (1 + wc.max()))
    np.testing.assert_allclose(alpha * x_w + sigma * eps_w, z, rtol=0, atol=1e-11 * (1 + wc.max()))


@given(param=params, shape=shapes(min_ndim=2), t=inner_times, seed=seeds)
def test_guidance_weight_zero_is_the_conditional_prediction(param, shape, t, seed):
    rng = np.random.default_rng(seed)
    alpha, sigma = COSINE.alpha_sigma(t)
    z = rng.standard_normal(shape)
    out_c, out_u = (rng.standard_normal((shape[0], 2 * shape[1]) + shape[2:] if param == "both" else shape)
                    for _ in range(2))  # fmt: skip
    for clip in (False, True):
        guided = pd_ref.guided_x_eps(z, out_c, out_u, alpha, sigma, param, clip=clip, w=0.0)
        plain = pd_ref.predict_x_eps(z, out_c, alpha, sigma, param, clip=clip)
        for got, want in zip(guided, plain, strict=True):
            np.testing.assert_array_equal(got, want)


@given(param=params, shape=shapes(min_ndim=2), t=inner_times, w=guidance_weights, seed=seeds)
def test_combining_the_outputs_instead_gives_the_same_prediction(param, shape, t, w, seed):
    """docs/spec.md section 8: both predictions share z and the weights sum to 1, so the guided
    prediction is also the prediction of the combined output (eps, v, x or 'both' space)."""
    rng = np.random.default_rng(seed)
    t_b = rng.uniform(0.02, 0.98, shape[0])
    alpha, sigma = COSINE.alpha_sigma(t_b)
    z = rng.standard_normal(shape)
    out_shape = (shape[0], 2 * shape[1]) + shape[2:] if param == "both" else shape
    out_c, out_u = rng.standard_normal(out_shape), rng.standard_normal(out_shape)
    w_b = per_example_w(rng, w, shape[0])
    wc = col(w_b, len(shape))
    guided = pd_ref.guided_x_eps(z, out_c, out_u, alpha, sigma, param, w=w_b)
    combined = pd_ref.predict_x_eps(z, (1 + wc) * out_c - wc * out_u, alpha, sigma, param)
    for got, want in zip(guided, combined, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + np.abs(z)).max() / alpha.min())


@settings(max_examples=50)
@given(param=params, t=inner_times, seed=seeds)
def test_clipping_applies_to_the_combination_and_eps_is_recomputed(param, t, seed):
    """Both predictions lie in [-1, 1]; their combination at w = 2 mostly does not: it is clipped,
    and eps_hat_w recomputed from the clipped x_hat_w (docs/spec.md section 2)."""
    rng = np.random.default_rng(seed)
    alpha, sigma = COSINE.alpha_sigma(t)
    z, (x_c, e_c), (x_u, e_u) = known_pair(rng, (4, 3, 5), alpha, sigma)
    x_w, eps_w = pd_ref.guided_x_eps(
        z,
        output_for(param, x_c, e_c, alpha, sigma),
        output_for(param, x_u, e_u, alpha, sigma),
        alpha,
        sigma,
        param,
        clip=True,
        w=2.0,
    )
    np.testing.assert_allclose(x_w, np.clip(3 * x_c - 2 * x_u, -1, 1), rtol=0, atol=1e-11)
    np.testing.assert_allclose(alpha * x_w + sigma * eps_w, z, rtol=0, atol=1e-11)
    assert np.mean(np.abs(3 * x_c - 2 * x_u) > 1) > 0.2  # the clip really acts


@given(param=params, t=inner_times, ds=st.floats(0.001, 0.5), w=guidance_weights, seed=seeds)
def test_guided_ddim_step_is_alpha_s_x_hat_w_plus_sigma_s_eps_hat_w(param, t, ds, w, seed):
    """[DDIM] Eq. 12 with the guided prediction, from known predictions at z_t."""
    rng = np.random.default_rng(seed)
    (a_t, s_t), (a_s, s_s) = COSINE.alpha_sigma(t), COSINE.alpha_sigma(max(t - ds, 0.0))
    z, (x_c, e_c), (x_u, e_u) = known_pair(rng, (3, 2, 4), a_t, s_t)
    w_b = per_example_w(rng, w, 3)
    z_s = pd_ref.ddim_step(
        z,
        output_for(param, x_c, e_c, a_t, s_t),
        a_t,
        s_t,
        a_s,
        s_s,
        param,
        out_uncond=output_for(param, x_u, e_u, a_t, s_t),
        w=w_b,
    )
    wc = col(w_b, 3)
    x_w = (1 + wc) * x_c - wc * x_u
    np.testing.assert_allclose(
        z_s, a_s * x_w + s_s * (z - a_t * x_w) / s_t, rtol=0, atol=1e-10 * (1 + wc.max())
    )


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "stochastic"])
@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
def test_guided_sampling_of_gaussian_classes_samples_the_gaussian_of_the_guided_mean(param, sampler):
    """Classes N(mu_c, STD^2) with one STD: the guided denoiser is exactly the denoiser of
    N((1 + w) mu_c - w mu_null, STD^2) (the x-space combination of two affine maps of one slope), so
    guided sampling equals plain sampling of that Gaussian, with the same noise. The model is
    called with the labels, then with the null label, at every step."""
    rng = np.random.default_rng(0)
    z1 = rng.standard_normal((6, 3))
    labels = np.array([0, 1, 2, 3, 0, 9])
    w = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 3.0])
    calls = []
    guided = pd_ref.sample(
        conditional_model(param, calls), z1, 8, COSINE, param, sampler=sampler, seed=3, labels=labels, w=w
    )
    mu_w = (1 + w[:, None]) * class_mean(labels) - w[:, None] * MU_NULL
    plain = pd_ref.sample(gaussian_model(param, mu_w), z1, 8, COSINE, param, sampler=sampler, seed=3)
    np.testing.assert_allclose(guided, plain, rtol=1e-9, atol=1e-9)
    assert len(calls) == 16
    for k, c in enumerate(calls):
        np.testing.assert_array_equal(c, labels if k % 2 == 0 else np.full(6, pd_ref.NULL_LABEL))


def test_guided_sampling_at_w_zero_is_the_conditional_model_with_one_call_per_step():
    z1 = np.random.default_rng(1).standard_normal((4, 3))
    labels, calls = np.array([0, 1, 2, 3]), []
    guided = pd_ref.sample(conditional_model("v", calls), z1, 5, COSINE, "v", labels=labels, w=0.0)
    plain = pd_ref.sample(lambda z, t: conditional_model("v")(z, t, labels), z1, 5, COSINE, "v")
    np.testing.assert_array_equal(guided, plain)
    assert len(calls) == 5 and all(np.array_equal(c, labels) for c in calls)


@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
@pytest.mark.parametrize("steps", [1, 2, 8, 64])
def test_guided_teacher_target_is_the_target_of_the_gaussian_of_the_guided_mean(param, steps):
    """The guided two-step target ([PD] Algorithm 2 with the guided teacher) of Gaussian classes
    equals the plain target of the teacher of the guided mean (as in the sampling test above);
    the final interval (t = 1/N) included. At w = 0 it is the target of the conditional teacher."""
    rng = np.random.default_rng(2)
    z_t = rng.standard_normal((5, 3))
    t = np.array([steps, 1, rng.integers(1, steps + 1), steps, 1]) / steps
    labels, w = np.array([0, 4, 2, 1, -1]), np.array([1.0, 2.0, 0.0, 4.0, 0.5])
    guided = pd_ref.teacher_target(conditional_model(param), z_t, t, steps, COSINE, param, labels=labels, w=w)
    mu_w = (1 + w[:, None]) * class_mean(labels) - w[:, None] * MU_NULL
    plain = pd_ref.teacher_target(gaussian_model(param, mu_w), z_t, t, steps, COSINE, param)
    np.testing.assert_allclose(guided, plain, rtol=1e-9, atol=1e-9 * steps)
    at_zero = pd_ref.teacher_target(conditional_model(param), z_t, t, steps, COSINE, param, labels=labels)
    conditional = pd_ref.teacher_target(
        lambda z, time: conditional_model(param)(z, time, labels), z_t, t, steps, COSINE, param
    )
    np.testing.assert_array_equal(at_zero, conditional)


def cond_mean(c):
    """(B, 3) means of a tensor condition c (B, ...): MU_NULL shifted by the mean of each row of c,
    so that the empty condition (all zeros) gives MU_NULL, as the null label does."""
    return MU_NULL + np.asarray(c).reshape(len(c), -1).mean(axis=1)[:, None] * SHIFT


def tensor_cond_model(param, calls=None):
    """model(z, t, c) with c a tensor (B, ...): the exact denoiser of N(cond_mean(c), STD^2)."""

    def model(z, t, c):
        if calls is not None:
            calls.append(np.array(c))
        alpha, sigma = (col(v, 2) for v in COSINE.alpha_sigma(t))
        return encode(param, z, gaussian_x_hat(z, alpha, sigma, cond_mean(c)), alpha, sigma)

    return model


@pytest.mark.parametrize("null_batch", [1, 4])
@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
def test_guided_prediction_with_tensor_conditions_is_the_hand_combination(param, null_batch):
    """Two guided DDIM steps (t = 1 -> 1/2 -> x_hat) with a tensor condition (B, L, D) and a null
    condition (first dim 1 or B), against [GD]'s x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null)
    worked out by hand from the denoiser's x_hat, with null_cond broadcast to the batch."""
    rng = np.random.default_rng(5)
    z1 = rng.standard_normal((4, 3))
    cond = rng.uniform(-2.0, 2.0, (4, 3, 5))
    null_cond = rng.uniform(-0.5, 0.5, (null_batch, 3, 5))
    w = np.array([0.0, 0.5, 2.0, 4.0])
    got = pd_ref.sample(tensor_cond_model(param), z1, 2, COSINE, param, cond=cond, null_cond=null_cond, w=w)
    mu_c, mu_u = cond_mean(cond), cond_mean(np.broadcast_to(null_cond, cond.shape))
    z, wc = z1, w[:, None]
    for t, s in ((1.0, 0.5), (0.5, None)):
        (a_t, s_t) = COSINE.alpha_sigma(t)
        x_w = (1 + wc) * gaussian_x_hat(z, a_t, s_t, mu_c) - wc * gaussian_x_hat(z, a_t, s_t, mu_u)
        if s is None:
            break
        a_s, s_s = COSINE.alpha_sigma(s)
        z = a_s * x_w + s_s * (z - a_t * x_w) / s_t
    np.testing.assert_allclose(got, x_w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "stochastic", "dpmpp_2m"])
def test_tensor_conditions_are_passed_as_labels_are(sampler):
    """The model sees cond, then null_cond broadcast to the batch, at every step when some w > 0;
    guided sampling with a tensor condition equals plain sampling of the Gaussian of the guided
    mean; at w = 0 one call a step, with cond, and no null_cond needed."""
    rng = np.random.default_rng(6)
    z1 = rng.standard_normal((3, 3))
    cond, null_cond = rng.uniform(-2.0, 2.0, (3, 7)), np.zeros((1, 7))
    w, calls = np.array([1.0, 0.0, 3.0]), []
    model = tensor_cond_model("v", calls)
    guided = pd_ref.sample(
        model, z1, 4, COSINE, "v", sampler=sampler, seed=2, cond=cond, null_cond=null_cond, w=w
    )
    mu_w = (1 + w[:, None]) * cond_mean(cond) - w[:, None] * MU_NULL
    plain = pd_ref.sample(gaussian_model("v", mu_w), z1, 4, COSINE, "v", sampler=sampler, seed=2)
    np.testing.assert_allclose(guided, plain, rtol=1e-9, atol=1e-9)
    assert len(calls) == 8
    for k, c in enumerate(calls):
        np.testing.assert_array_equal(c, cond if k % 2 == 0 else np.zeros((3, 7)))
    calls.clear()
    pd_ref.sample(model, z1, 4, COSINE, "v", sampler=sampler, seed=2, cond=cond)
    assert len(calls) == 4 and all(np.array_equal(c, cond) for c in calls)


@pytest.mark.parametrize("steps", [1, 2, 64])
def test_guided_teacher_target_with_tensor_conditions_is_the_target_of_the_guided_mean(steps):
    """As for labels: the guided two-step target with cond and null_cond equals the plain target of
    the teacher of the guided mean, the final interval included."""
    rng = np.random.default_rng(7)
    z_t = rng.standard_normal((4, 3))
    t = np.array([steps, 1, rng.integers(1, steps + 1), 1]) / steps
    cond, null_cond = rng.uniform(-2.0, 2.0, (4, 2, 3)), rng.uniform(-1.0, 1.0, (4, 2, 3))
    w = np.array([1.0, 2.0, 0.0, 4.0])
    guided = pd_ref.teacher_target(
        tensor_cond_model("x"), z_t, t, steps, COSINE, "x", cond=cond, null_cond=null_cond, w=w
    )
    mu_w = (1 + w[:, None]) * cond_mean(cond) - w[:, None] * cond_mean(null_cond)
    plain = pd_ref.teacher_target(gaussian_model("x", mu_w), z_t, t, steps, COSINE, "x")
    np.testing.assert_allclose(guided, plain, rtol=1e-9, atol=1e-9 * steps)


Z = np.zeros((3, 2))
C = np.zeros((3, 4, 5))


def _sample(**kwargs):
    return pd_ref.sample(lambda z, t, c=None: z, Z, 2, COSINE, "x", **kwargs)


def _target(**kwargs):
    return pd_ref.teacher_target(lambda z, t, c=None: z, Z, 1.0, 2, COSINE, "x", **kwargs)


GUIDANCE_ERRORS = [
    ("w must be >= 0", lambda: pd_ref.guided_x_eps(Z, Z, Z, 0.6, 0.8, "x", w=-0.5)),
    ("w must be finite", lambda: pd_ref.guided_x_eps(Z, Z, Z, 0.6, 0.8, "x", w=np.inf)),
    (
        "w must be a float, 0-d, or 1-D of length 3",
        lambda: pd_ref.guided_x_eps(Z, Z, Z, 0.6, 0.8, "x", w=[1, 2]),
    ),
    ("out_uncond must have shape", lambda: pd_ref.guided_x_eps(Z, Z, Z[:, :1], 0.6, 0.8, "x", w=1.0)),
    ("w > 0 needs out_uncond", lambda: pd_ref.ddim_step(Z, Z, 0.6, 0.8, 0.8, 0.6, "x", w=1.0)),
    ("out_uncond must have shape", lambda: pd_ref.ddim_step(Z, Z, 0.6, 0.8, 0.8, 0.6, "x", out_uncond=Z[:2])),
    ("w > 0 needs labels", lambda: _sample(w=1.0)),
    ("labels must be integers", lambda: _sample(labels=[0.5] * 3)),
    ("labels must be an int or of shape", lambda: _sample(labels=[1, 2])),
    ("labels must be >= -1", lambda: _sample(labels=-2)),
    ("w must be >= 0", lambda: _sample(labels=1, w=-1.0)),
    ("w > 0 needs labels", lambda: _target(w=2.0)),
    ("labels must be an int or of shape", lambda: _target(labels=np.zeros(4, int))),
    ("labels and cond are exclusive", lambda: _sample(labels=1, cond=C)),
    ("null_cond needs cond", lambda: _target(null_cond=C)),
    ("w > 0 with cond needs null_cond", lambda: _sample(cond=C, w=1.0)),
    ("w > 0 needs labels", lambda: _target(w=np.array([0.0, 1.0, 0.0]))),
    (
        r"cond must have shape \(B, ...\) with B = 3 \(z's batch\), got \(2, 4, 5\)",
        lambda: _sample(cond=C[:2]),
    ),
    (r"cond must have shape \(B, ...\)", lambda: _target(cond=np.float64(1.0))),
    (r"null_cond must have shape \(1 or 3, 4, 5\)", lambda: _sample(cond=C, null_cond=C[:2])),
    (r"null_cond must have shape \(1 or 3, 4, 5\)", lambda: _target(cond=C, null_cond=C[:, :2], w=1.0)),
    ("cond must have a floating dtype, got int64", lambda: _sample(cond=np.zeros((3, 4), int))),
    ("null_cond must have a floating dtype", lambda: _sample(cond=C, null_cond=np.zeros((1, 4, 5), bool))),
    ("cond contains non-finite values", lambda: _target(cond=np.full((3, 2), np.nan))),
    (
        "cond given, but the model takes no condition",
        lambda: pd_ref.sample(lambda z, t: z, Z, 2, COSINE, "x", cond=C),
    ),
]


@pytest.mark.parametrize("pattern,call", GUIDANCE_ERRORS, ids=[p for p, _ in GUIDANCE_ERRORS])
def test_bad_guidance_input_raises_value_error_naming_the_argument(pattern, call):
    with pytest.raises(ValueError, match=pattern):
        call()
