"""pd_ref rejects bad input with a ValueError that names the argument (docs/spec.md section 7)."""

import numpy as np
import pytest

import pd_ref

Z = np.zeros((3, 2, 4))
COS = pd_ref.CosineSchedule()
A_T, S_T = 0.6, 0.8
A_S, S_S = 0.8, 0.6


def model(z, t):
    return np.zeros_like(z)


CASES = [
    ("param", lambda: pd_ref.predict_x_eps(Z, Z, A_T, S_T, "score")),
    ("out", lambda: pd_ref.predict_x_eps(Z, Z[:, :1], A_T, S_T, "x")),
    ("out", lambda: pd_ref.predict_x_eps(Z, Z, A_T, S_T, "both")),  # 'both' needs 2C channels
    ("alpha", lambda: pd_ref.predict_x_eps(Z, Z, np.ones(2), S_T, "x")),  # wrong length
    ("alpha", lambda: pd_ref.predict_x_eps(Z, Z, np.ones((3, 1)), S_T, "x")),  # wrong ndim
    ("sigma", lambda: pd_ref.predict_x_eps(Z, Z, A_T, np.nan, "x")),
    ("alpha", lambda: pd_ref.predict_x_eps(Z, Z, np.inf, S_T, "x")),
    ("sigma", lambda: pd_ref.predict_x_eps(Z, Z, A_T, 0.0, "x")),
    ("z", lambda: pd_ref.predict_x_eps(Z.astype(complex), Z, A_T, S_T, "x")),
    ("z", lambda: pd_ref.predict_x_eps(np.full_like(Z, np.nan), Z, A_T, S_T, "x")),
    ("s < t", lambda: pd_ref.ddim_step(Z, Z, A_S, S_S, A_T, S_T, "x")),  # s after t
    ("s < t", lambda: pd_ref.ddim_step(Z, Z, A_T, S_T, A_T, S_T, "x")),  # s == t
    ("eta", lambda: pd_ref.ddim_step(Z, Z, A_T, S_T, A_S, S_S, "x", eta=1.5, noise=Z)),
    ("noise", lambda: pd_ref.ddim_step(Z, Z, A_T, S_T, A_S, S_S, "x", eta=0.5)),
    ("noise", lambda: pd_ref.ddim_step(Z, Z, A_T, S_T, A_S, S_S, "x", eta=0.5, noise=Z[:2])),
    ("variance", lambda: pd_ref.ancestral_step(Z, Z, A_T, S_T, A_S, S_S, "x", variance="learned", noise=Z)),
    ("alpha_s", lambda: pd_ref.ancestral_step(Z, Z, A_T, S_T, [1.0, 1.0], S_S, "x", noise=Z)),
    ("steps", lambda: pd_ref.sample(model, Z, 0, COS, "x")),
    ("steps", lambda: pd_ref.sample(model, Z, 2.5, COS, "x")),
    ("sampler", lambda: pd_ref.sample(model, Z, 2, COS, "x", sampler="heun")),
    ("model output", lambda: pd_ref.sample(lambda z, t: z[:, :1], Z, 2, COS, "x")),
    ("z_tpp", lambda: pd_ref.two_step_target(Z, Z[:2], A_T, S_T, A_S, S_S)),
    ("s < t", lambda: pd_ref.two_step_target(Z, Z, A_S, S_S, A_T, S_T)),
    ("t must lie in", lambda: pd_ref.teacher_target(model, Z, np.full(3, 1.5), 4, COS, "x")),
    ("t must lie on the student grid", lambda: pd_ref.teacher_target(model, Z, np.full(3, 0.3), 4, COS, "x")),
    ("t must lie on the student grid", lambda: pd_ref.teacher_target(model, Z, np.zeros(3), 4, COS, "x")),
    ("steps", lambda: pd_ref.teacher_target(model, Z, np.ones(3), 0, COS, "x")),
    ("weighting", lambda: pd_ref.loss_weight(A_T, S_T, "snr_plus_one")),
    ("weighting", lambda: pd_ref.distill_loss(Z, Z, Z, A_T, S_T, "x", weighting="lpips")),
    ("x_tilde", lambda: pd_ref.distill_loss(Z, Z, Z[:, :1], A_T, S_T, "x")),
    ("alpha_t", lambda: pd_ref.distill_loss(Z, Z, Z, np.full(4, A_T), S_T, "x")),
    ("t must", lambda: COS.logsnr(-0.1)),
    ("logsnr", lambda: COS.t_from_logsnr(30.0)),
    ("logsnr_min", lambda: pd_ref.CosineSchedule(5.0, -5.0)),
    ("logsnr_min=-100.0 is beyond", lambda: pd_ref.CosineSchedule(-100.0, 20.0)),
    ("logsnr_max=1500.0 is beyond", lambda: pd_ref.CosineSchedule(-20.0, 1500.0)),
    ("overflows", lambda: pd_ref.CosineSchedule(-1e4, 1e4)),
    ("kind", lambda: pd_ref.DiscreteSchedule.from_betas("cosine")),
    ("num_train_timesteps", lambda: pd_ref.DiscreteSchedule.from_betas("linear", 0)),
    ("alphas_cumprod", lambda: pd_ref.DiscreteSchedule([0.5, 0.9])),
    ("alphas_cumprod", lambda: pd_ref.DiscreteSchedule([1.0, 0.5])),
]


@pytest.mark.parametrize("name,call", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input_raises_value_error_naming_the_argument(name, call):
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        call()


def test_per_example_coefficients_broadcast_like_scalars():
    rng = np.random.default_rng(0)
    z, out = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    scalar = pd_ref.ddim_step(z, out, A_T, S_T, A_S, S_S, "v")
    per_example = pd_ref.ddim_step(z, out, *(np.full(3, c) for c in (A_T, S_T, A_S, S_S)), "v")
    zero_d = pd_ref.ddim_step(z, out, *(np.array(c) for c in (A_T, S_T, A_S, S_S)), "v")
    np.testing.assert_array_equal(scalar, per_example)
    np.testing.assert_array_equal(scalar, zero_d)
