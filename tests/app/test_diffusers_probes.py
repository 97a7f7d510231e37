"""What a new user's probes of the diffusers-teacher job (`python -m pd_fast --teacher DIR`) found,
each reproduced here and checked fixed: a latent (LDM) pipeline refused instead of distilled
wrongly, a UNet that cannot take its own sample_size refused in one line before anything is
written, step counts checked against T before training, messages that name the real problem,
a warning for upscaled images, and non-square teachers (`--resolution HxW`). Tiny pipelines are
built as tests/app/test_diffusers.py builds them; nothing is downloaded. Every refusal is one line
and leaves no run folder behind.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")  # the test extra installs it; `pip install -e .[test]`
from diffusers import DDPMPipeline, DDPMScheduler, LDMPipeline, VQModel  # noqa: E402

from pd_fast.app.cli import build_parser, main, validate  # noqa: E402
from pd_fast.app.config import DiffusersConfig, config_from_dict, parse_resolution  # noqa: E402
from pd_fast.app.data import center_crop_resize, load_data, load_image_folder  # noqa: E402
from tests.app.test_diffusers import tiny_unet  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
logging.getLogger("diffusers").setLevel(logging.ERROR)
TINY = ["--quick", "--iters", "2", "--batch-size", "8", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def job_refuses(folder: Path) -> str:
    """The diffusers-teacher job's own refusal of `folder` (its `prepare`, as an API caller reaches
    it; the command line sends latent pipelines to the text-to-image job)."""
    from pd_fast.app.jobs import diffusers_teacher
    from pd_fast.app.jobs.common import Run

    cfg = DiffusersConfig(teacher=str(folder), quick=True, start_steps=16, iters=2, batch_size=8)
    with pytest.raises(ValueError) as err:
        diffusers_teacher.prepare(cfg, Run(str(folder / "never"), torch.device("cpu"), False, False))
    return str(err.value)


def refused(argv: list[str], out: Path, capsys) -> str:
    """`main(argv + --out out)` fails with exit code 2 and one error line (returned), and writes nothing."""
    assert main(argv + ["--out", str(out)]) == 2
    err = [
        line for line in capsys.readouterr().err.splitlines() if not line.startswith("pd-distill: warning")
    ]
    assert len(err) == 1 and err[0].startswith("pd-distill: error: "), err
    assert not out.exists()
    return err[0]


def pipeline(path: Path, T: int = 16, **unet) -> Path:
    DDPMPipeline(unet=tiny_unet(**unet), scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(
        str(path)
    )
    return path


# ----- 1. latent pipelines -------------------------------------------------------------------------


def test_ldm_pipeline_is_refused_not_distilled_on_pixels(tmp_path, capsys):
    vqvae = VQModel(
        in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8,), norm_num_groups=4,
        num_vq_embeddings=16, vq_embed_dim=1,
    )  # fmt: skip
    folder = tmp_path / "ldm"
    LDMPipeline(
        vqvae=vqvae, unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=16)
    ).save_pretrained(str(folder))
    line = job_refuses(folder)  # the command line sends it to the text-to-image job
    assert (
        "is a latent pipeline (LDMPipeline: UNet2DModel + VQModel); this job distills pixel-space "
        "UNet2DModel pipelines" in line
    )


def test_pipeline_with_components_beyond_unet_and_scheduler_is_refused(tmp_path, capsys):
    folder = pipeline(tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    # a component saved as None ([null, null]) is absent, and is no reason to refuse
    (folder / "model_index.json").write_text(json.dumps({**index, "safety_checker": [None, None]}))
    args = build_parser().parse_args(["--teacher", str(folder), "--out", str(tmp_path / "run")])
    assert validate(args, torch.device("cpu"))[2].data.shape == (1, 8, 8)
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder": ["transformers", "X"]}))
    line = job_refuses(folder)
    assert "components beyond unet and scheduler (text_encoder)" in line
    assert "pixel-space pipelines of a UNet2DModel and a scheduler only" in line
    (folder / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKL"]}))
    assert "latent pipeline (DDPMPipeline: UNet2DModel + AutoencoderKL)" in job_refuses(folder)


# ----- 2. a sample_size that does not fit the UNet ------------------------------------------------


def test_sample_size_unfit_for_the_unets_depth_is_one_line_before_anything_is_written(tmp_path, capsys):
    three = dict(
        sample_size=10, block_out_channels=(8, 8, 16), down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
    )  # fmt: skip
    folder = pipeline(tmp_path / "pipe", **three)
    line = refused(["--teacher", str(folder)] + TINY, tmp_path / "run", capsys)
    assert line.endswith(
        "sample_size 10 does not fit the UNet: its 3 down blocks halve the image 2 times, so each side "
        "must be a multiple of 4"
    )
    # the same UNet at a size its blocks can halve twice goes through
    folder = pipeline(tmp_path / "fits", **{**three, "sample_size": 12})
    args = build_parser().parse_args(["--teacher", str(folder), "--out", str(tmp_path / "run")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # digits upscaled from 8x8
        assert validate(args, torch.device("cpu"))[2].data.shape == (1, 12, 12)


# ----- 3. step counts against T ----------------------------------------------------------------------


def test_start_steps_above_T_is_refused(tmp_path, capsys):
    folder = pipeline(tmp_path / "pipe", T=16)
    line = refused(["--teacher", str(folder), "--start-steps", "32"] + TINY, tmp_path / "run", capsys)
    assert "--start-steps 32 is more than the teacher's T = 16 timesteps" in line
    assert "pass --start-steps 16 or fewer" in line


def test_no_exportable_student_is_refused_naming_the_n_that_would_be(tmp_path, capsys):
    folder = pipeline(tmp_path / "pipe", T=1001)  # 1001 = 7 * 11 * 13: no power of two but 1 divides it
    line = refused(["--teacher", str(folder), "--end-steps", "2"] + TINY, tmp_path / "run", capsys)
    assert "none of the students (8, 4, 2 steps) could be exported" in line
    assert "N dividing T = 1001" in line and "below 16 those are 1, 7, 11, 13" in line
    assert "--end-steps 1" in line and "--start-steps 56 --end-steps 7" in line


def test_students_that_stay_checkpoints_are_named_before_training(tmp_path, capsys):
    folder = pipeline(tmp_path / "pipe", T=1001)
    out = tmp_path / "run"
    assert main(["--teacher", str(folder), "--eval-max-steps", "1", "--out", str(out)] + TINY) == 0
    lines = capsys.readouterr().out.splitlines()
    plan = [i for i, line in enumerate(lines) if line.startswith("export as DDIMPipelines")]
    trained = [i for i, line in enumerate(lines) if line.startswith("eps -> v:")]  # after the first stage
    assert len(plan) == 1 and plan[0] < trained[0]
    assert lines[plan[0]] == (
        "export as DDIMPipelines (diffusers/student_<N>/): the 1-step student; checkpoints only "
        "(N does not divide T = 1001): the 16, 8, 4, 2-step students"
    )
    report = json.loads((out / "report.json").read_text())
    assert list(report["diffusers_exports"]) == ["1"] and report["not_exported_steps"] == [2, 4, 8, 16]


def test_teacher_evaluation_never_exceeds_T_steps(tmp_path):
    folder = pipeline(tmp_path / "pipe", T=8)
    out = tmp_path / "run"
    argv = ["--teacher", str(folder), "--start-steps", "4", "--end-steps", "2", "--eval-max-steps", "64"]
    assert main(argv + ["--out", str(out)] + TINY) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [1, 2, 4, 8]  # --eval-max-steps 64 clipped to T = 8


# ----- 4. messages naming the real problem -------------------------------------------------------


def test_unet_folder_of_a_pipeline_says_to_pass_its_parent(tmp_path, capsys):
    folder = pipeline(tmp_path / "pipe")
    for given in (folder / "unet", f"{folder / 'unet'}/"):
        line = refused(["--teacher", str(given)] + TINY, tmp_path / "run", capsys)
        assert f"is the unet/ folder of the pipeline in {folder}" in line
        assert line.endswith(f"pass the pipeline folder itself: --teacher {folder}")
    (tmp_path / "other").mkdir()
    line = refused(["--teacher", str(tmp_path / "other")] + TINY, tmp_path / "run", capsys)
    assert "is a folder, but not a diffusers pipeline folder" in line and "no such file" not in line


def test_missing_unet_weights_are_named_in_one_line(tmp_path, capsys):
    folder = pipeline(tmp_path / "pipe")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    line = refused(["--teacher", str(folder)] + TINY, tmp_path / "run", capsys)
    assert line.endswith(
        f"the UNet's weights (diffusion_pytorch_model.safetensors) are missing in {folder / 'unet'}/"
    )
    assert ".bin" not in line


# ----- 5. upscaled images --------------------------------------------------------------------------


def test_images_smaller_than_the_resolution_warn_once_with_count_and_size(tmp_path):
    with pytest.warns(UserWarning) as record:
        data = load_data("digits", resolution=(16, 12))
    assert data.shape == (1, 16, 12) and len(record) == 1
    assert "1797 of 1797 images (8x8, height x width) are smaller than the resolution 16x12" in str(
        record[0].message
    )
    from PIL import Image

    for name, side in (("a", 4), ("b", 4), ("c", 12)):
        Image.fromarray(np.full((side, side), 99, np.uint8)).save(tmp_path / f"{name}.png")
    with pytest.warns(UserWarning) as record:
        load_image_folder(str(tmp_path), resolution=8)
    assert len(record) == 1 and "2 of 3 images (4x4, height x width)" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # downscaling, or no resizing, says nothing
        load_image_folder(str(tmp_path), resolution=4)
        load_data("digits", resolution=8)


# ----- 6. non-square teachers ----------------------------------------------------------------------


def test_resolution_takes_n_or_hxw_and_survives_config_json_as_a_tuple(tmp_path):
    assert parse_resolution("16") == 16 and parse_resolution("16x32") == (16, 32)
    for bad in ("16x", "x16", "1x8", "16x32x2", "-4"):
        with pytest.raises(ValueError, match="--resolution"):
            parse_resolution(bad)
    cfg = DiffusersConfig(teacher="p", resolution=(16, 32))
    back = config_from_dict(json.loads(json.dumps(cfg.to_dict())), "config.json")
    assert back == cfg and back.resolution == (16, 32)
    with pytest.raises(ValueError, match="--resolution must be an integer >= 2 or a pair"):
        DiffusersConfig(teacher="p", resolution=(16, 1))


def test_hxw_resolution_center_crops_to_the_aspect_ratio_then_resizes():
    x = torch.linspace(-1, 1, 2 * 6 * 6).reshape(2, 1, 6, 6)
    out = center_crop_resize(x, (2, 4))  # aspect 1:2 -> the center 3 rows, all 6 columns
    expected = torch.nn.functional.interpolate(
        x[..., 1:4, :], size=(2, 4), mode="bicubic", antialias=True, align_corners=False
    )
    assert out.shape == (2, 1, 2, 4) and torch.equal(out, expected.clamp(-1, 1))
    tall = center_crop_resize(x, (4, 2))  # aspect 2:1 -> the center 3 columns
    assert torch.equal(
        tall,
        torch.nn.functional.interpolate(
            x[..., :, 1:4], size=(4, 2), mode="bicubic", antialias=True, align_corners=False
        ).clamp(-1, 1),
    )
    assert torch.equal(center_crop_resize(x, 6), x)  # N: a square, as before


def test_non_square_teacher_runs_end_to_end_with_hxw_or_no_resolution(tmp_path, capsys):
    folder = pipeline(tmp_path / "rect", sample_size=(16, 32))
    base = ["--teacher", str(folder)] + TINY
    line = refused(base + ["--resolution", "16"], tmp_path / "run", capsys)
    assert "--resolution 16 differs from the teacher's sample_size 16x32" in line
    assert line.endswith("pass --resolution 16x32")
    args = build_parser().parse_args(["--teacher", str(folder), "--out", str(tmp_path / "run")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert validate(args, torch.device("cpu"))[2].data.shape == (1, 16, 32)  # no flag: sample_size
    out = tmp_path / "run"
    argv = base + ["--resolution", "16x32", "--start-steps", "4", "--end-steps", "2", "--eval-max-steps", "1"]
    assert main(argv + ["--out", str(out)]) == 0
    warned = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("pd-distill: warning:")
    ]
    assert (
        len(warned) == 1 and "images (8x8, height x width) are smaller than the resolution 16x32" in warned[0]
    )
    assert json.loads((out / "config.json").read_text())["resolution"] == [16, 32]
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["diffusers_exports"]) == ["2", "4"]
    unet = json.loads((out / "diffusers" / "student_2" / "unet" / "config.json").read_text())
    assert unet["sample_size"] == [16, 32]
    with np.load(out / "samples.npz") as f:
        assert f["x_student_ddim_N2"].shape[1:] == (1, 16, 32)
