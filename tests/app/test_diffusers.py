"""diffusers in and out (pd_fast.integrations.diffusers, docs/spec.md section 9), checked against
diffusers itself: its `DDIMPipeline`, its `DDIMScheduler.step` loop and its `UNet2DModel` called
directly. Small random UNets (8x8, 1 channel, no attention) built here; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pd_fast
import pd_ref

diffusers = pytest.importorskip("diffusers")  # the test extra installs it; `pip install -e .[test]`
from diffusers import (  # noqa: E402
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    UNet2DModel,
)

from pd_fast.integrations.diffusers import (  # noqa: E402
    ZERO_SNR_ALPHA_BAR,
    DiffusersUNet,
    default_start_steps,
    export_betas,
    from_diffusers,
    to_diffusers,
)

ROOT = Path(__file__).resolve().parents[2]
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
logging.getLogger("diffusers").setLevel(logging.ERROR)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_unet(seed: int = 0, **kwargs) -> UNet2DModel:
    torch.manual_seed(seed)
    config = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
    )
    config.update(kwargs)
    return UNet2DModel(**config).eval()


def save_pipeline(path: Path, scheduler, seed: int = 0) -> Path:
    DDPMPipeline(unet=tiny_unet(seed), scheduler=scheduler).save_pretrained(str(path))
    return path


def ddim_pipeline(folder: Path) -> DDIMPipeline:
    """diffusers' own DDIMPipeline for a saved pipeline folder, with the scheduler of section 9."""
    pipe = DDIMPipeline.from_pretrained(str(folder))
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scheduler_loop(pipe: DDIMPipeline, z: torch.Tensor, steps: int) -> torch.Tensor:
    """DDIMPipeline's loop without its final clamp to [0, 1]: unet, then `scheduler.step`."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    x = z.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(pipe.unet(x, k).sample, k, x).prev_sample
    return x


def images(x: torch.Tensor) -> np.ndarray:
    """pd_fast samples as DDIMPipeline's output_type='np' images: (x/2 + 0.5).clip(0, 1), channels last."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# fp32 tolerance of a whole N-step trajectory: every step rounds in fp32 (coefficients in float64 on
# our side, in float32 on diffusers'); measured at most 2e-6 of the largest |x| for N <= 20
REL_TOL = 1e-5


def assert_same_samples(folder: Path, model, schedule, param: str, steps: int, batch: int = 4) -> None:
    pipe = ddim_pipeline(folder)
    z = torch.randn((batch, 1, 8, 8), generator=torch.Generator().manual_seed(steps))
    ours = pd_fast.sample(model, z, steps, schedule, param, clip=False)
    theirs = scheduler_loop(pipe, z, steps)
    scale = float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) <= REL_TOL * max(scale, 1.0), (steps, scale)
    out = pipe(
        batch_size=batch,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(steps),
        output_type="np",
    ).images
    np.testing.assert_allclose(images(ours), out, rtol=0, atol=REL_TOL)


SCHEDULERS_T16 = {
    "linear-eps": dict(beta_start=1e-3, beta_end=0.3, prediction_type="epsilon"),
    "scaled_linear-v": dict(
        beta_start=1e-3, beta_end=0.3, beta_schedule="scaled_linear", prediction_type="v_prediction"
    ),
    "cosine-sample": dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
    "trained_betas-eps": dict(trained_betas=np.linspace(0.01, 0.2, 16).tolist(), prediction_type="epsilon"),
    "zero_snr-v": dict(
        beta_start=1e-3, beta_end=0.3, rescale_betas_zero_snr=True, prediction_type="v_prediction"
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS_T16))
def test_imported_teacher_samples_as_diffusers_ddim_for_every_divisor_of_T(name, tmp_path):
    folder = save_pipeline(tmp_path / "pipe", DDPMScheduler(num_train_timesteps=16, **SCHEDULERS_T16[name]))
    model, schedule, param = from_diffusers(folder)
    assert (
        param
        == {"epsilon": "eps", "v_prediction": "v", "sample": "x"}[SCHEDULERS_T16[name]["prediction_type"]]
    )
    for steps in (2, 4, 8, 16):
        assert_same_samples(folder, model, schedule, param, steps)


def test_imported_teacher_samples_as_diffusers_ddim_at_T_1000(tmp_path):
    folder = save_pipeline(tmp_path / "pipe", DDPMScheduler(num_train_timesteps=1000))
    model, schedule, param = from_diffusers(folder)
    assert param == "eps" and schedule.num_train_timesteps == 1000
    for steps in (2, 5, 8, 40):
        assert_same_samples(folder, model, schedule, param, steps)


def test_schedule_is_the_schedulers_own_alphas_cumprod(tmp_path):
    betas = np.linspace(0.01, 0.2, 16)
    folder = save_pipeline(
        tmp_path / "a", DDPMScheduler(num_train_timesteps=16, trained_betas=betas.tolist())
    )
    _, schedule, _ = from_diffusers(folder)
    # trained_betas: diffusers' float32 cumprod of 1 - beta, exactly, against the closed form in float64
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-6)
    scheduler = DDPMScheduler(num_train_timesteps=16, trained_betas=betas.tolist())
    assert torch.equal(schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    # zero terminal SNR: every other value as diffusers has it, the zero replaced
    zero = DDPMScheduler(num_train_timesteps=16, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    folder = save_pipeline(tmp_path / "b", zero)
    _, schedule, _ = from_diffusers(folder)
    assert float(zero.alphas_cumprod[-1]) == 0.0
    assert torch.equal(schedule.alphas_cumprod[:-1], zero.alphas_cumprod[:-1].double())
    assert float(schedule.alphas_cumprod[-1]) == ZERO_SNR_ALPHA_BAR


def test_model_calls_the_unet_at_timestep_tT_minus_one(tmp_path):
    unet = tiny_unet(3)
    model = DiffusersUNet(unet, 1000)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in (0, 249, 999):  # on the grid: bitwise the integer timestep diffusers passes
            t = torch.full((3,), (k + 1) / 1000, dtype=torch.float32)
            assert torch.equal(model(z, t), unet(z, torch.tensor(k)).sample)
        # between grid points: the fractional timestep t*T - 1
        t = torch.tensor([0.0125, 0.5004, 0.99995], dtype=torch.float32)
        k = t.double() * 1000 - 1
        assert torch.equal(model(z, t), unet(z, k.float()).sample)
        assert not torch.equal(model(z, t), unet(z, torch.round(k).float()).sample)


def test_class_conditional_unet_takes_labels_as_class_labels(tmp_path):
    unet = tiny_unet(1, num_class_embeds=10)
    folder = tmp_path / "cond"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=16)).save_pretrained(str(folder))
    model, _, _ = from_diffusers(folder)
    assert model.conditional
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 3, 7, 9])
    t = torch.full((4,), 0.25)
    with torch.no_grad():
        expected = model.unet(z, torch.tensor(3), class_labels=c).sample
        assert torch.equal(model(z, t, c), expected)
        assert not torch.equal(model(z, t, torch.tensor([1, 1, 1, 1])), expected)
    with pytest.raises(ValueError, match="class-conditional"):
        model(z, t)
    with pytest.raises(ValueError, match="unconditional"):
        DiffusersUNet(tiny_unet(), 16)(z, t, c)
    with pytest.raises(ValueError, match="class-conditional"):
        to_diffusers(model, pd_fast.DiscreteSchedule.from_betas("linear", 16), "eps", tmp_path / "x", 4)


def test_bare_unet_folder_needs_a_scheduler(tmp_path):
    unet_dir = tmp_path / "unet"
    tiny_unet(2).save_pretrained(str(unet_dir))
    with pytest.raises(ValueError, match="scheduler="):
        from_diffusers(unet_dir)
    scheduler = DDPMScheduler(num_train_timesteps=16, prediction_type="v_prediction")
    scheduler.save_pretrained(str(tmp_path / "sched"))
    for given in (scheduler, tmp_path / "sched"):
        model, schedule, param = from_diffusers(unet_dir, scheduler=given)
        assert param == "v" and torch.equal(schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
        z = torch.randn(2, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(model(z, torch.full((2,), 1.0)), tiny_unet(2)(z, torch.tensor(15)).sample)


def test_import_refuses_what_it_cannot_represent(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        from_diffusers(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither model_index.json"):
        from_diffusers(tmp_path / "empty")
    learned = tmp_path / "learned"
    DDPMPipeline(
        unet=tiny_unet(out_channels=2), scheduler=DDPMScheduler(num_train_timesteps=16)
    ).save_pretrained(str(learned))
    with pytest.raises(ValueError, match="output channels"):
        from_diffusers(learned)
    zero_eps = save_pipeline(
        tmp_path / "zero", DDPMScheduler(num_train_timesteps=16, rescale_betas_zero_snr=True)
    )
    with pytest.raises(ValueError, match="v_prediction"):
        from_diffusers(zero_eps)
    other = save_pipeline(tmp_path / "other", DDPMScheduler(num_train_timesteps=16))
    config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps(dict(config, _class_name="UNet2DConditionModel")))
    with pytest.raises(ValueError, match="UNet2DModel"):
        from_diffusers(other)


EXPORTS = {
    "discrete-v": (lambda: pd_fast.DiscreteSchedule.from_betas("linear", 1000), "v", 1000),
    "discrete-x": (
        lambda: pd_fast.DiscreteSchedule.from_betas("scaled_linear", 1000, 8.5e-4, 0.012),
        "x",
        1000,
    ),
    "discrete-eps": (lambda: pd_fast.DiscreteSchedule.from_betas("linear", 1000), "eps", 1000),
    "cosine-v": (lambda: pd_fast.CosineSchedule(), "v", 64),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_ddim_pipeline_reproduces_pd_fast_sample(name, tmp_path):
    make_schedule, param, T = EXPORTS[name]
    schedule = make_schedule()
    student = DiffusersUNet(tiny_unet(5), T)
    for steps in (1, 2, 4, 8):
        folder = to_diffusers(student, schedule, param, tmp_path / f"student_{steps}", steps)
        pipe = DDIMPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            batch_size=3,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(11),
            output_type="np",
        ).images
        z = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(11))
        ours = images(pd_fast.sample(student, z, steps, schedule, param, clip=False))
        np.testing.assert_allclose(ours, out, rtol=0, atol=1e-4)
        info = json.loads((folder / "pd_fast.json").read_text())
        assert info["steps"] == steps and info["param"] == param
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["timestep_spacing"] == "trailing" and config["set_alpha_to_one"] is True
    assert config["clip_sample"] is False and config["num_train_timesteps"] == T
    assert config["prediction_type"] == {"v": "v_prediction", "x": "sample", "eps": "epsilon"}[param]
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"


def test_exported_betas_reproduce_the_schedule_on_the_integer_grid():
    # cumprod(1 - beta)[k] = alpha_bar((k + 1)/T), as diffusers computes it (float32), against
    # pd_ref's float64 schedules (the cosine one in closed form)
    T = 1000
    k = np.arange(T)
    for fast, ref in (
        (pd_fast.DiscreteSchedule.from_betas("linear", T), pd_ref.DiscreteSchedule.from_betas("linear", T)),
        (pd_fast.CosineSchedule(), pd_ref.CosineSchedule()),
    ):
        acp = DDIMScheduler(
            num_train_timesteps=T, trained_betas=export_betas(fast, T).tolist()
        ).alphas_cumprod
        expected = np.asarray(ref.alpha_sigma((k + 1) / T)[0]) ** 2
        # float32 rounding of the betas and of the product: ~1e-6 drift over 500 steps; up to 1.3e-5
        # where cosine betas come close to 1 (a float32 beta near 1 resolves 1 - beta to ~6e-8)
        np.testing.assert_allclose(acp.double().numpy(), expected, rtol=2e-5)
        assert np.abs(acp.double().numpy() / expected - 1)[: T // 2].max() < 3e-6


def test_export_refuses_steps_off_the_grid_other_models_and_params(tmp_path):
    schedule = pd_fast.DiscreteSchedule.from_betas("linear", 1000)
    student = DiffusersUNet(tiny_unet(), 1000)
    with pytest.raises(ValueError, match="does not divide num_train_timesteps = 1000"):
        to_diffusers(student, schedule, "v", tmp_path / "s16", 16)
    mlp = pd_fast.build_model("mlp", (1, 8, 8), param="v")
    with pytest.raises(ValueError, match="UNet2DModel.*ResidualMLP"):
        to_diffusers(mlp, schedule, "v", tmp_path / "mlp", 4)
    with pytest.raises(ValueError, match="param must be one of"):
        to_diffusers(student, schedule, "both", tmp_path / "both", 4)
    with pytest.raises(ValueError, match="bare UNet2DModel"):
        to_diffusers(tiny_unet(), pd_fast.CosineSchedule(), "v", tmp_path / "bare", 4)
    assert not (tmp_path / "s16").exists() and not (tmp_path / "mlp").exists()


def test_export_then_import_gives_back_model_schedule_and_param(tmp_path):
    schedule = pd_fast.DiscreteSchedule.from_betas("linear", 1000)
    student = DiffusersUNet(tiny_unet(4), 1000)
    folder = to_diffusers(student, schedule, "v", tmp_path / "s", 8)
    model, back, param = from_diffusers(folder)
    assert param == "v" and model.num_train_timesteps == 1000
    np.testing.assert_allclose(back.alphas_cumprod.numpy(), schedule.alphas_cumprod.numpy(), rtol=1e-6)
    for a, b in zip(model.unet.state_dict().values(), student.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_default_start_steps_is_a_power_of_two_not_finer_than_T():
    assert default_start_steps(1024, 128) == 128
    assert default_start_steps(1000, 128) == 128
    assert default_start_steps(256, 16) == 16
    assert default_start_steps(24, 128) == 16
    assert default_start_steps(16, 128) == 16


def test_importing_the_integration_does_not_import_diffusers():
    code = (
        "import sys, pd_fast, pd_fast.integrations.diffusers, pd_fast.app.cli, pd_fast.app.reparam\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'PIL')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ----- the v student of an eps teacher -------------------------------------------------------------


class PerStepLinear(torch.nn.Module):
    """`out = coef[i] * z` at t = i/N: a model that can hold the exact eps and the exact v of a
    Gaussian data set on the N-step grid."""

    def __init__(self, coef: torch.Tensor, steps: int) -> None:
        super().__init__()
        self.coef = torch.nn.Parameter(coef.clone())
        self.steps = steps

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = torch.round(t.double() * self.steps).long()
        return self.coef[i].reshape(-1, 1, 1, 1).to(z.dtype) * z


def test_v_student_learns_the_eps_teachers_own_ddim():
    """The eps teacher is the optimal denoiser of N(0, s^2 I): `eps_hat = a_t z`,
    `a_t = sigma_t / (alpha_t^2 s^2 + sigma_t^2)`. The v model with the same x_hat on the grid has
    `v_hat = (eps_hat - sigma_t z) / alpha_t = b_t z`, `b_t = (a_t - sigma_t) / alpha_t` (docs/spec.md
    section 2): the student must learn b_t, and then sample exactly as the teacher."""
    from pd_fast.app.reparam import reparameterize

    N, s = 8, 0.5
    schedule = pd_fast.DiscreteSchedule.from_betas("linear", 1000)
    alpha, sigma = schedule.alpha_sigma(torch.arange(N + 1, dtype=torch.float64) / N)
    a = sigma / (alpha**2 * s**2 + sigma**2)
    teacher = PerStepLinear(a.float(), N)
    x = (s * torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    student, losses = reparameterize(
        teacher, x, N, schedule=schedule, teacher_param="eps", param="v", iters=400, batch_size=64,
        lr=0.05, progress=False,
    )  # fmt: skip
    b = (a - sigma) / alpha
    np.testing.assert_allclose(student.coef.detach().double()[1:].numpy(), b[1:].numpy(), rtol=2e-3)
    z = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    target = pd_fast.sample(teacher, z, N, schedule, "eps")
    assert float((pd_fast.sample(teacher, z, N, schedule, "v") - target).abs().max()) > 0.1  # eps read as v
    assert float((pd_fast.sample(student, z, N, schedule, "v") - target).abs().max()) < 1e-5
    assert losses[-1] < 1e-6 * losses[0]
    assert torch.equal(teacher.coef.detach(), a.float())  # the teacher is untouched


# ----- the command line ----------------------------------------------------------------------------


def test_cli_distills_a_diffusers_teacher_and_exports_every_student_it_can(tmp_path, capsys):
    from pd_fast.app.cli import main

    T = 24  # --quick starts at 16, which does not divide 24: that student is not exported
    folder = save_pipeline(
        tmp_path / "pipe", DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.3)
    )
    out = tmp_path / "run"
    argv = ["--teacher", str(folder), "--data", "digits", "--quick", "--end-steps", "4", "--iters", "3",
            "--batch-size", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["start_steps"] == 16 and report["num_train_timesteps"] == T
    assert report["teacher_param"] == "eps" and report["param"] == "v" and report["clip"] is False
    assert report["reparam"]["steps"] == 16 and report["reparam"]["teacher_param"] == "eps"
    assert sorted(report["diffusers_exports"]) == ["4", "8"] and report["not_exported_steps"] == [16]
    rows = {r["steps"]: r for r in report["rows"]}
    assert [n for n in rows if rows[n]["student"] is not None] == [4, 8, 16]
    assert all(np.isfinite(r["teacher_ddim"]) for r in rows.values())
    # the exported UNet is the round's student checkpoint, weight for weight
    from pd_fast.app.checkpoint import load_tensors

    weights, _ = load_tensors(out / "checkpoints" / "student_4.safetensors")
    exported = UNet2DModel.from_pretrained(str(out / "diffusers" / "student_4" / "unet")).state_dict()
    assert set(exported) == {k.removeprefix("unet.") for k in weights}
    for key, value in weights.items():
        assert torch.equal(exported[key.removeprefix("unet.")], value)
    assert "DDIMPipeline.from_pretrained" in capsys.readouterr().out
    # the scored samples, named as the main job names them, one array per scored model and N
    with np.load(out / "samples.npz") as f:
        arrays = {k: f[k] for k in f.files}
    assert set(arrays) == {f"x_teacher_ddim_N{n}" for n in rows} | {
        f"x_student_ddim_N{n}" for n in (4, 8, 16)
    }
    shape = arrays["x_teacher_ddim_N4"].shape
    assert shape[0] == report["eval_samples"] and all(a.shape == shape for a in arrays.values())
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays.values())
    assert not np.array_equal(arrays["x_teacher_ddim_N4"], arrays["x_student_ddim_N4"])
    # a resumed finished run reloads the v student and gives the same numbers
    assert main(["--resume", "--out", str(out), "--no-progress"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert [r["student"] for r in again["rows"]] == [r["student"] for r in report["rows"]]


def test_cli_defaults_for_a_diffusers_teacher(tmp_path):
    from pd_fast.app.cli import build_parser, resolve_config

    for T, quick, start in ((1000, False, 128), (1000, True, 16), (64, False, 64), (24, True, 16)):
        folder = tmp_path / f"T{T}"
        if not folder.exists():
            save_pipeline(folder, DDPMScheduler(num_train_timesteps=T))
        argv = ["--teacher", str(folder), "--out", str(tmp_path / "out")] + (["--quick"] if quick else [])
        cfg, _ = resolve_config(build_parser().parse_args(argv))
        assert cfg.start_steps == start and cfg.param == "v"
        assert cfg.batch_size == (64 if quick else 256)
    argv = ["--teacher", str(tmp_path / "T24"), "--quick", "--start-steps", "8", "--batch-size", "32"]
    cfg, _ = resolve_config(build_parser().parse_args(argv + ["--out", str(tmp_path / "out")]))
    assert cfg.start_steps == 8 and cfg.batch_size == 32


def test_cli_errors_for_a_diffusers_teacher(tmp_path, capsys):
    from pd_fast.app.cli import main

    folder = save_pipeline(tmp_path / "pipe", DDPMScheduler(num_train_timesteps=16))
    base = ["--teacher", str(folder), "--quick", "--no-progress"]
    assert main(base + ["--resolution", "16", "--out", str(tmp_path / "a")]) == 2
    assert "sample_size 8" in capsys.readouterr().err
    assert main(base + ["--data", "moons", "--out", str(tmp_path / "b")]) == 2
    assert "not images" in capsys.readouterr().err
    assert main(base + ["--param", "both", "--out", str(tmp_path / "c")]) == 2
    assert "--param both" in capsys.readouterr().err
    tiny_unet().save_pretrained(str(tmp_path / "bare"))
    assert main(["--teacher", str(tmp_path / "bare"), "--out", str(tmp_path / "d")]) == 2
    assert "bare UNet2DModel" in capsys.readouterr().err
    # --guided trains a conditional built-in network: a diffusers teacher is refused, not ignored
    assert main(base + ["--guided", "--out", str(tmp_path / "e")]) == 2
    assert "--guided trains on a conditional built-in network" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_benchmark_script_tiny_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    for name in ("_common", "diffusers_teacher"):
        sys.modules.pop(name, None)
    import diffusers_teacher

    threads = torch.get_num_threads()
    try:
        payload = diffusers_teacher.main(
            ["--quick", "--out", str(tmp_path / "work"), "--results", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    written = json.loads((tmp_path / "diffusers_teacher.json").read_text())
    assert written["table"] == payload["table"] and [r["steps"] for r in written["table"]] == [8, 4, 2]
    assert written["teacher"]["iters"] == 20 and written["machine"]["cpu_model"]
    assert set(written["export_max_abs_diff"]) == {"2", "4", "8"}
    assert max(written["export_max_abs_diff"].values()) <= 1e-4
