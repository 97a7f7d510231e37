"""Built-in networks (pd_fast.app.models) and data sets (pd_fast.app.data)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pd_fast.app.data import eight_gaussians, load_data, moons, validate_array
from pd_fast.app.models import (
    ResidualMLP,
    UNet,
    build_model,
    guidance_embedding,
    model_from_config,
    timestep_embedding,
    w_conditioned_from,
)

# ----- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
@pytest.mark.parametrize("shape", [(2,), (5,), (1, 8, 8), (3, 4, 4)])
def test_mlp_output_has_input_shape_or_twice_the_channels_for_both(param, shape):
    model = ResidualMLP(shape, hidden=16, depth=2, param=param)
    z, t = torch.randn((3,) + shape), torch.rand(3)
    out = model(z, t)
    channels = 2 * shape[0] if param == "both" else shape[0]
    assert out.shape == (3, channels) + shape[1:]


@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (2, 2)])
def test_unet_output_has_input_shape_or_twice_the_channels_for_both(param, hw):
    model = UNet(channels=2, ch=8, param=param)
    z, t = torch.randn((3, 2) + hw), torch.rand(3)
    out = model(z, t)
    assert out.shape == (3, 4 if param == "both" else 2) + hw


def test_out_channels_argument_overrides_param():
    out = UNet(channels=1, ch=8, out_channels=5)(torch.randn(2, 1, 8, 8), torch.rand(2))
    assert out.shape == (2, 5, 8, 8)
    assert ResidualMLP(4, hidden=8, out_channels=8)(torch.randn(2, 4), torch.rand(2)).shape == (2, 8)


@pytest.mark.parametrize(
    "make", [lambda s: ResidualMLP((1, 8, 8), hidden=16, seed=s), lambda s: UNet(1, ch=8, seed=s)]
)
def test_weights_are_a_function_of_the_seed_only(make):
    torch.manual_seed(123)
    a = make(7).state_dict()
    torch.manual_seed(456)  # the global RNG must not matter, and must not be consumed
    before = torch.get_rng_state()
    b = make(7).state_dict()
    assert torch.equal(before, torch.get_rng_state())
    c = make(8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1 and a[k].abs().sum() > 0)


def test_untrained_models_output_zero_so_v_model_predicts_alpha_z():
    """The zero-initialised last layer makes out = 0: for param v, x_hat = alpha*z - sigma*0."""
    for model, z in ((ResidualMLP(3, hidden=8), torch.randn(4, 3)), (UNet(1, ch=8), torch.randn(4, 1, 6, 6))):
        assert torch.count_nonzero(model(z, torch.rand(4))) == 0


def test_output_depends_on_time_after_a_training_step():
    model = ResidualMLP(2, hidden=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    z = torch.randn(8, 2)
    loss = (model(z, torch.rand(8)) - 1).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    # after one step the last layer is non-zero; then the time embedding must change the output
    z1 = torch.randn(1, 2)
    assert not torch.allclose(model(z1, torch.tensor([0.1])), model(z1, torch.tensor([0.9])))


def test_timestep_embedding_is_cos_and_sin_of_scaled_time():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t, 6)
    freqs = [10_000 ** (-k / 3) for k in range(3)]
    expected = [
        [math.cos(1000 * ti * f) for f in freqs] + [math.sin(1000 * ti * f) for f in freqs]
        for ti in t.tolist()
    ]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-4)


def test_models_reject_wrong_shapes():
    with pytest.raises(ValueError, match="z must have shape"):
        ResidualMLP(4, hidden=8)(torch.randn(2, 5), torch.rand(2))
    with pytest.raises(ValueError, match="z must have shape"):
        UNet(1, ch=8)(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="t must have shape"):
        UNet(1, ch=8)(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="param"):
        UNet(1, ch=8, param="score")
    with pytest.raises(ValueError, match="hidden"):
        ResidualMLP(4, hidden=0)
    with pytest.raises(ValueError, match="model"):
        build_model("transformer", (1, 8, 8))
    with pytest.raises(ValueError, match="unet"):
        build_model("unet", (2,))


def test_model_rebuilds_from_its_config():
    for model in (
        build_model("mlp", (1, 8, 8), param="both", hidden=16),
        build_model("unet", (1, 8, 8), ch=8),
    ):
        twin = model_from_config(model.config, seed=99)
        twin.load_state_dict(model.state_dict())
        z, t = torch.randn(2, 1, 8, 8), torch.rand(2)
        assert torch.equal(model(z, t), twin(z, t))


# ----- conditional networks (docs/spec.md section 8) ---------------------------------------------

CONDITIONAL = {
    "mlp": (lambda **kw: ResidualMLP((1, 6, 6), hidden=16, depth=2, **kw), (5, 1, 6, 6)),
    "unet": (lambda **kw: UNet(1, ch=8, **kw), (5, 1, 6, 6)),
}


def _trained(model: torch.nn.Module, shape, steps: int = 3, seed: int = 0) -> torch.nn.Module:
    """A few SGD steps on random targets, so that no layer is at its zero initialisation."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        z, t = torch.randn(shape, generator=gen), torch.rand(shape[0], generator=gen)
        c = torch.randint(-1, model.config.get("num_classes", 1), (shape[0],), generator=gen)
        kwargs = {"w": 4 * torch.rand(shape[0], generator=gen)} if model.config.get("w_conditioned") else {}
        out = model(z, t, c, **kwargs) if "num_classes" in model.config else model(z, t)
        (out - torch.randn(out.shape, generator=gen)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("kind", CONDITIONAL)
def test_conditioning_adds_modules_without_changing_the_others(kind):
    """The label (and guidance) modules are created after all others: for one seed, every weight the
    unconditional network has is the same in the conditional ones, and its config has no new keys."""
    make, _ = CONDITIONAL[kind]
    plain = make(seed=3).state_dict()
    for options in ({"num_classes": 10}, {"num_classes": 10, "w_conditioned": True}):
        conditional = make(seed=3, **options)
        state = conditional.state_dict()
        assert set(state) - set(plain) and all(k.startswith("cond.") for k in set(state) - set(plain))
        assert all(torch.equal(plain[k], state[k]) for k in plain)
        assert conditional.config == make(seed=3).config | options
    assert "num_classes" not in make().config and "w_conditioned" not in make().config


@pytest.mark.parametrize("kind", CONDITIONAL)
def test_labels_change_the_output_and_the_null_label_is_an_omitted_label(kind):
    make, shape = CONDITIONAL[kind]
    model = _trained(make(num_classes=10), shape)
    z, t = torch.randn(shape), torch.rand(shape[0])
    a, b = model(z, t, torch.tensor([0, 1, 2, 3, 9])), model(z, t, torch.tensor([1, 1, 2, 3, 9]))
    assert not torch.equal(a[0], b[0]) and torch.equal(a[1:], b[1:])  # the label acts per example
    null = torch.full((shape[0],), -1)
    assert torch.equal(model(z, t, null), model(z, t))
    assert not torch.equal(model(z, t, null), a)


@pytest.mark.parametrize("kind", CONDITIONAL)
def test_w_student_built_from_a_teacher_is_the_teachers_conditional_model_for_every_w(kind):
    """[GD] stage 1 starts from the teacher: the guidance embedding's output layer is zero, so the
    student's output equals the teacher's conditional output exactly for any w; once that layer
    is not zero, w changes the output."""
    make, shape = CONDITIONAL[kind]
    teacher = _trained(make(num_classes=10), shape)
    student = w_conditioned_from(teacher, seed=5)
    assert student.config == teacher.config | {"w_conditioned": True}
    z, t, c = torch.randn(shape), torch.rand(shape[0]), torch.tensor([0, 3, -1, 9, 4])
    want = teacher(z, t, c)
    for w in (0.0, 1.0, 4.0, 7.3, torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0])):
        assert torch.equal(student(z, t, c, w), want)
    trained = _trained(student, shape)
    assert not torch.equal(trained(z, t, c, 0.0), trained(z, t, c, 4.0))


@pytest.mark.parametrize("kind", CONDITIONAL)
def test_conditional_config_round_trips_through_model_from_config(kind):
    make, shape = CONDITIONAL[kind]
    for model in (
        _trained(make(num_classes=7), shape),
        _trained(make(num_classes=10, w_conditioned=True), shape),
    ):
        twin = model_from_config(json.loads(json.dumps(model.config)), seed=99)
        twin.load_state_dict(model.state_dict())
        z, t, c = torch.randn(shape), torch.rand(shape[0]), torch.tensor([0, 1, 2, -1, 3])
        kwargs = {"w": torch.rand(shape[0])} if model.config.get("w_conditioned") else {}
        assert torch.equal(model(z, t, c, **kwargs), twin(z, t, c, **kwargs))


def test_guidance_embedding_is_cos_and_sin_of_w_at_geometric_frequencies():
    w = torch.tensor([0.0, 1.0, 4.0])
    emb = guidance_embedding(w, 6, min_freq=0.5, max_freq=8.0)
    freqs = [0.5, 2.0, 8.0]
    expected = [[math.cos(x * f) for f in freqs] + [math.sin(x * f) for f in freqs] for x in w.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_conditional_models_reject_bad_labels_and_weights():
    mlp = ResidualMLP(4, hidden=8, num_classes=3)
    z, t = torch.randn(2, 4), torch.rand(2)
    with pytest.raises(ValueError, match="c must hold labels"):
        mlp(z, t, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="c must hold labels"):
        mlp(z, t, torch.tensor([0, -2]))
    with pytest.raises(ValueError, match="c must be an integer tensor"):
        mlp(z, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="c must have shape"):
        mlp(z, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="w given"):
        mlp(z, t, torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="unconditional"):
        ResidualMLP(4, hidden=8)(z, t, torch.tensor([0, 1]))
    student = ResidualMLP(4, hidden=8, num_classes=3, w_conditioned=True)
    with pytest.raises(ValueError, match="w is required"):
        student(z, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="w must be a float or of shape"):
        student(z, t, torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(ValueError, match="num_classes"):
        UNet(1, ch=8, num_classes=0)
    with pytest.raises(ValueError, match="w_conditioned needs num_classes"):
        UNet(1, ch=8, w_conditioned=True)
    with pytest.raises(ValueError, match="conditional built-in network"):
        w_conditioned_from(ResidualMLP(4, hidden=8))
    with pytest.raises(ValueError, match="w-conditioned already"):
        w_conditioned_from(student)


# ----- data ------------------------------------------------------------------------------------


def test_digits_are_sklearn_pixels_scaled_from_0_16_to_minus1_1():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d = load_data("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32
    np.testing.assert_allclose(d.x.reshape(-1, 64).numpy(), raw.data / 8.0 - 1.0, atol=1e-7)
    assert d.x.min() == -1.0 and d.x.max() == 1.0
    assert torch.equal(d.labels, torch.from_numpy(raw.target).long())


@pytest.mark.parametrize("make", [moons, eight_gaussians])
def test_toy_sets_are_seeded_2d_points_in_range(make):
    a, b, c = make(n=500, seed=3), make(n=500, seed=3), make(n=500, seed=4)
    assert a.x.shape == (500, 2) and a.labels.shape == (500,)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.x.abs().max() <= 1.0


def test_eight_gaussians_components_sit_on_the_circle():
    d = eight_gaussians(n=8000, seed=0, radius=0.7, std=0.05)
    for k in range(8):
        mean = d.x[d.labels == k].mean(0)
        expected = torch.tensor([0.7 * math.cos(k * math.pi / 4), 0.7 * math.sin(k * math.pi / 4)])
        torch.testing.assert_close(mean, expected, atol=0.01, rtol=0)


def test_user_npy_and_npz_load(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, size=(10, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(10))
    np.savez(tmp_path / "c.npz", x[:, 0])  # (N, H, W) gets a channel axis
    a, b, c = (load_data(str(tmp_path / f)) for f in ("a.npy", "b.npz", "c.npz"))
    assert torch.equal(a.x, torch.from_numpy(x)) and a.labels is None
    assert torch.equal(b.x, a.x) and torch.equal(b.labels, torch.arange(10))
    assert c.x.shape == (10, 1, 4, 4) and torch.equal(c.x[:, 0], a.x[:, 0])


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros(10), r"shape \(N, D\)"),
        (np.zeros((2, 1, 1, 1, 1)), r"shape \(N, D\)"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((3, 0)), "empty"),
        (np.zeros((1, 4)), "at least 2"),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), "NaN or infinite"),
        (np.array([[0.0, np.inf], [0.0, 0.0]]), "NaN or infinite"),
        (np.array([[0.0, 1.5], [0.0, 0.0]]), r"\[-1, 1\].*1\.5"),
        (np.array([[0.0, 255.0], [-3.0, 0.0]]), r"\[-1, 1\]"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ],
)
def test_bad_user_data_is_rejected_with_a_clear_message(tmp_path, array, message):
    with pytest.raises(ValueError, match=message):
        validate_array(array)
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=message):
        load_data(str(tmp_path / "bad.npy"))


def test_bad_paths_and_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_data(str(tmp_path / "missing.npy"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"\.npy/\.npz"):
        load_data(str(tmp_path / "x.csv"))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="name the data 'x'"):
        load_data(str(tmp_path / "two.npz"))
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2)), y=np.arange(4))
    with pytest.raises(ValueError, match="labels"):
        load_data(str(tmp_path / "lab.npz"))
    with pytest.raises(ValueError, match="n must be"):
        load_data("moons", n=1)
