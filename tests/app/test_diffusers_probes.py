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
from diffusers import DDPMPipeline, DDPMScheduler  # noqa: E402

from pd_fast.app.cli import main  # noqa: E402
from pd_fast.app.config import DiffusersConfig, config_from_dict, parse_resolution  # noqa: E402
from pd_fast.app.data import center_crop_resize, load_data, load_image_folder  # noqa: E402
from tests.app.test_diffusers import tiny_unet  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
logging.getLogger("diffusers").setLevel(logging.ERROR)
TINY = ["--quick", "--iters", "2", "--batch-size", "8", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one torch thread runs them many times faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
