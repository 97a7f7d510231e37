"""pd_ref distillation target and loss ([PD] Algorithm 2, docs/spec.md sections 4-5)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pd_ref
from tests.strategies import DISCRETE_KINDS, params, seeds, shapes, step_counts, weightings

SCHEDULES = {
    "cosine": pd_ref.CosineSchedule(),
    **{k: pd_ref.DiscreteSchedule.from_betas(k) for k in DISCRETE_KINDS},
}
schedules = st.sampled_from(sorted(SCHEDULES))


def nonlinear_teacher(param, seed):
    """A random smooth nonlinear 'network' of (z, t); for 'both' it outputs 2C channels."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.5, 1.5, 3)

    def f(z, t, phase):
        tb = t.reshape((-1,) + (1,) * (z.ndim - 1))
        return np.tanh(a * z + b * np.roll(z, 1, axis=-1) + c * np.cos(3 * tb + phase)) + 0.1 * z

    def teacher(z, t):
        if param == "both":
            return np.concatenate([f(z, t, 0.0), f(z, t, 1.0)], axis=1)
        return f(z, t, 0.0)

    return teacher


def bcast(c, ndim):
    return np.asarray(c).reshape((-1,) + (1,) * (ndim - 1))


@settings(max_examples=150)
@given(param=params, shape=shapes(min_ndim=2), steps=step_counts, sched=schedules, seed=seeds, data=st.data())
def test_one_student_ddim_step_with_x_tilde_lands_on_the_teachers_two_steps(
    param, shape, steps, sched, seed, data
):
    """The defining identity of the target ([PD] Algorithm 2): a DDIM step from z_t to t'' with
    x_hat = x_tilde reproduces the teacher's z_t'' (here for every example not on the final interval;
    there the final-interval rule applies, checked below)."""
    schedule = SCHEDULES[sched]
    rng = np.random.default_rng(seed)
    i = np.array([data.draw(st.one_of(st.just(steps), st.integers(1, steps))) for _ in range(shape[0])])
    t = i / steps
    z_t = rng.standard_normal(shape)
    teacher = nonlinear_teacher(param, seed)
    x_tilde = pd_ref.teacher_target(teacher, z_t, t, steps, schedule, param)

    t_p, t_pp = t - 0.5 / steps, t - 1.0 / steps
    (a_t, s_t), (a_p, s_p), (a_pp, s_pp) = (schedule.alpha_sigma(u) for u in (t, t_p, np.maximum(t_pp, 0)))
    z_p = pd_ref.ddim_step(z_t, teacher(z_t, t), a_t, s_t, a_p, s_p, param)
    z_pp = pd_ref.ddim_step(z_p, teacher(z_p, t_p), a_p, s_p, a_pp, s_pp, param)
    # the student's DDIM step, written out: eps_hat = (z_t - alpha_t x_tilde) / sigma_t
    nd = len(shape)
    student = bcast(a_pp, nd) * x_tilde + bcast(s_pp, nd) * (z_t - bcast(a_t, nd) * x_tilde) / bcast(s_t, nd)
    inner = i > 1
    scale = 1 + np.abs(bcast(a_pp, nd) * x_tilde) + np.abs(z_t)
    np.testing.assert_array_less(np.abs(student - z_pp)[inner], (1e-11 * steps * scale)[inner])

    final = i == 1
    if final.any():
        x_hat_p, _ = pd_ref.predict_x_eps(z_p, teacher(z_p, t_p), a_p, s_p, param)
        np.testing.assert_array_equal(x_tilde[final], x_hat_p[final])


@given(shape=shapes(), seed=seeds, ds=st.floats(1e-4, 0.5), t=st.floats(0.51, 1.0))
def test_two_step_target_closed_form_inverts_ddim(shape, seed, ds, t):
    """Feeding the DDIM step's own z_s back gives the x_hat it used (any x, any t'' < t)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape)
    (a_t, s_t), (a_s, s_s) = (
        pd_ref.CosineSchedule().alpha_sigma(t),
        pd_ref.CosineSchedule().alpha_sigma(t - ds),
    )
    z_t = a_t * x + s_t * rng.standard_normal(shape)
    z_s = a_s * x + s_s * (z_t - a_t * x) / s_t
    np.testing.assert_allclose(pd_ref.two_step_target(z_t, z_s, a_t, s_t, a_s, s_s), x, atol=1e-9 / ds)


def _mse(a, b):
    return ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)


@given(param=params, shape=shapes(min_ndim=2), seed=seeds, weighting=weightings)
def test_weightings_equal_the_mse_they_name(param, shape, seed, weighting):
    """constant = x-MSE, snr = eps-MSE, snr_trunc = max(x-MSE, eps-MSE), snr+1 = v-MSE ([PD] Section 4),
    each MSE computed from its definition."""
    rng = np.random.default_rng(seed)
    out_shape = (shape[0], 2 * shape[1]) + shape[2:] if param == "both" else shape
    out, z_t, x_tilde = rng.standard_normal(out_shape), rng.standard_normal(shape), rng.uniform(-1, 1, shape)
    alpha, sigma = pd_ref.CosineSchedule().alpha_sigma(rng.uniform(0.05, 0.95, shape[0]))
    a, s = bcast(alpha, len(shape)), bcast(sigma, len(shape))
    x_hat, eps_hat = pd_ref.predict_x_eps(z_t, out, alpha, sigma, param)
    eps_tilde = (z_t - a * x_tilde) / s
    x_mse, eps_mse = _mse(x_hat, x_tilde), _mse(eps_hat, eps_tilde)
    v_mse = _mse(a * eps_hat - s * x_hat, a * eps_tilde - s * x_tilde)
    expected = {"constant": x_mse, "snr": eps_mse, "snr_trunc": np.maximum(x_mse, eps_mse), "snr+1": v_mse}
    loss = pd_ref.distill_loss(out, z_t, x_tilde, alpha, sigma, param, weighting=weighting)
    assert loss.shape == (shape[0],)
    np.testing.assert_allclose(loss, expected[weighting], rtol=1e-9)


def test_loss_weight_closed_forms():
    alpha, sigma = np.array([0.6, 0.8, np.sqrt(0.5)]), np.array([0.8, 0.6, np.sqrt(0.5)])
    snr = np.array([0.5625, 16 / 9, 1.0])
    np.testing.assert_allclose(pd_ref.loss_weight(alpha, sigma, "constant"), 1.0)
    np.testing.assert_allclose(pd_ref.loss_weight(alpha, sigma, "snr"), snr)
    np.testing.assert_allclose(pd_ref.loss_weight(alpha, sigma, "snr_trunc"), [1.0, 16 / 9, 1.0])
    np.testing.assert_allclose(pd_ref.loss_weight(alpha, sigma, "snr+1"), snr + 1)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_final_interval_target_is_the_teachers_x_hat_at_t_prime(sched):
    schedule = SCHEDULES[sched]
    z_t = np.random.default_rng(0).standard_normal((3, 2, 5))
    teacher = nonlinear_teacher("v", 1)
    for steps in (1, 4, 8192):
        t = np.full(3, 1.0 / steps)
        t_p = t - 0.5 / steps
        (a_t, s_t), (a_p, s_p) = schedule.alpha_sigma(t), schedule.alpha_sigma(t_p)
        z_p = pd_ref.ddim_step(z_t, teacher(z_t, t), a_t, s_t, a_p, s_p, "v")
        x_hat_p, _ = pd_ref.predict_x_eps(z_p, teacher(z_p, t_p), a_p, s_p, "v")
        np.testing.assert_array_equal(pd_ref.teacher_target(teacher, z_t, t, steps, schedule, "v"), x_hat_p)
