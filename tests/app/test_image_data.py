"""Real image data (pd_fast.app.data): folders of PNG/JPEG images and the CIFAR-10 python archive.

Every folder and archive is built here (nothing is downloaded); expected values come from the
pixels written, from Pillow's own conversions and resizing, and from CIFAR-10's documented layout
(each row: 1024 red, 1024 green, 1024 blue values, row-major 32x32).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pd_fast.app.cli import main
from pd_fast.app.data import load_cifar10, load_data, load_image_folder

Image = pytest.importorskip("PIL.Image")


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def rng_pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_grayscale_folder_is_pixels_scaled_to_minus_one_one(tmp_path):
    pixels = [rng_pixels(i, (6, 5)) for i in range(3)]
    for i, p in enumerate(pixels):
        write_png(tmp_path / f"img{i}.png", p)
    data = load_image_folder(str(tmp_path))
    assert data.x.shape == (3, 1, 6, 5) and data.x.dtype == torch.float32 and data.labels is None
    expected = np.stack(pixels)[:, None].astype(np.float64) / 255 * 2 - 1
    np.testing.assert_allclose(data.x.numpy(), expected, rtol=0, atol=1e-6)
    assert load_data(str(tmp_path)).x.shape == (3, 1, 6, 5)  # dispatch by folder


def test_rgb_png_keeps_channels_and_gray_images_join_as_rgb(tmp_path):
    rgb = rng_pixels(1, (4, 4, 3))
    gray = rng_pixels(2, (4, 4))
    write_png(tmp_path / "a.png", rgb)
    write_png(tmp_path / "b.png", gray)
    data = load_image_folder(str(tmp_path))
    assert data.x.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(data.x[0].numpy(), rgb.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    for c in range(3):  # a grayscale image among color ones: its value in every channel
        np.testing.assert_allclose(data.x[1, c].numpy(), gray / 127.5 - 1, atol=1e-6)


def test_channels_one_converts_rgb_by_luma(tmp_path):
    rgb = rng_pixels(3, (5, 5, 3))
    write_png(tmp_path / "a.png", rgb)
    data = load_image_folder(str(tmp_path), channels=1)
    # ITU-R 601-2: L = R*299/1000 + G*587/1000 + B*114/1000 (Pillow rounds it to an integer)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(data.x[0, 0].numpy(), luma / 127.5 - 1, rtol=0, atol=1 / 127.5 + 1e-6)


def test_jpeg_rgba_and_16_bit_images_are_read(tmp_path):
    Image.fromarray(rng_pixels(4, (8, 8, 3))).save(tmp_path / "a.JPG", quality=95)
    write_png(tmp_path / "b.png", rng_pixels(5, (8, 8, 4)))  # RGBA: the alpha channel is dropped
    data = load_image_folder(str(tmp_path))
    assert data.x.shape == (2, 3, 8, 8)
    assert float(data.x.min()) >= -1 and float(data.x.max()) <= 1
    wide = np.random.default_rng(6).integers(0, 65536, size=(3, 4), dtype=np.uint16)
    folder = tmp_path / "wide"
    write_png(folder / "w.png", wide)
    np.testing.assert_allclose(load_image_folder(str(folder)).x[0, 0].numpy(), wide / 32767.5 - 1, atol=1e-6)


def test_resolution_center_crops_then_resizes_like_pillow(tmp_path):
    wide = rng_pixels(7, (8, 12))  # H = 8, W = 12: the center square is columns 2..9
    write_png(tmp_path / "a.png", wide)
    same = load_image_folder(str(tmp_path), resolution=8)
    np.testing.assert_allclose(same.x[0, 0].numpy(), wide[:, 2:10] / 127.5 - 1, atol=1e-6)
    small = load_image_folder(str(tmp_path), resolution=4)
    pil = np.asarray(Image.fromarray(wide[:, 2:10]).resize((4, 4), Image.BICUBIC), dtype=np.float64)
    assert small.x.shape == (1, 1, 4, 4)
    # torch's antialiased bicubic against Pillow's: the same filter, up to Pillow's 8-bit rounding
    np.testing.assert_allclose(small.x[0, 0].numpy(), pil / 127.5 - 1, rtol=0, atol=0.05)


def test_folder_is_searched_recursively_skipping_hidden_and_other_files(tmp_path):
    write_png(tmp_path / "b" / "two.png", rng_pixels(1, (4, 4)))
    write_png(tmp_path / "a" / "one.png", rng_pixels(0, (4, 4)))
    write_png(tmp_path / ".hidden" / "skip.png", rng_pixels(2, (9, 9)))
    write_png(tmp_path / ".skip.png", rng_pixels(3, (9, 9)))
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_image_folder(str(tmp_path))
    np.testing.assert_allclose(data.x[0, 0].numpy(), rng_pixels(0, (4, 4)) / 127.5 - 1, atol=1e-6)
    assert data.x.shape == (2, 1, 4, 4)


def test_folder_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=f"folder {empty} holds no PNG or JPEG"):
        load_image_folder(str(empty))
    bad = tmp_path / "bad"
    write_png(bad / "good.png", rng_pixels(0, (4, 4)))
    (bad / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=f"cannot read image {bad / 'broken.png'}"):
        load_image_folder(str(bad))
    truncated = tmp_path / "truncated"
    png = write_png(truncated / "cut.png", rng_pixels(1, (64, 64, 3)))
    png.write_bytes(png.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"cannot read image {png}"):
        load_image_folder(str(truncated))
    mixed = tmp_path / "mixed"
    write_png(mixed / "a.png", rng_pixels(0, (4, 4)))
    write_png(mixed / "b.png", rng_pixels(1, (6, 5)))
    with pytest.raises(ValueError, match=r"a\.png is 4x4, .*b\.png is 5x6; pass --resolution"):
        load_image_folder(str(mixed))
    assert load_image_folder(str(mixed), resolution=4).x.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="resolution must be an integer >= 2"):
        load_image_folder(str(mixed), resolution=1)


# ----- CIFAR-10 ------------------------------------------------------------------------------------


class RunsCode:
    """A pickle that would run a shell command when loaded."""

    def __reduce__(self):
        return (os.system, ("echo this must not run",))


def cifar_batch(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def fake_cifar(path: Path, n: int = 3) -> tuple[Path, list[dict]]:
    batches = [cifar_batch(i, n) for i in range(5)]
    members = {
        f"cifar-10-batches-py/data_batch_{i + 1}": pickle.dumps(b, protocol=2) for i, b in enumerate(batches)
    }
    members["cifar-10-batches-py/test_batch"] = pickle.dumps(cifar_batch(9, n), protocol=2)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    return write_archive(path, members), batches


def test_cifar10_archive_gives_the_training_images_in_cifar_layout(tmp_path):
    archive, batches = fake_cifar(tmp_path / "cifar-10-python.tar.gz")
    data = load_data(f"cifar10:{archive}")
    assert data.x.shape == (15, 3, 32, 32) and data.name == "cifar10"
    rows = np.concatenate([b[b"data"] for b in batches])
    n, c, h, w = 7, 2, 5, 30  # pixel (h, w) of channel c is entry c*1024 + h*32 + w of the row
    assert float(data.x[n, c, h, w]) == pytest.approx(rows[n, c * 1024 + h * 32 + w] / 127.5 - 1, abs=1e-6)
    labels = np.concatenate([b[b"labels"] for b in batches])
    np.testing.assert_array_equal(data.labels.numpy(), labels)
    small = load_cifar10(str(archive), resolution=16, channels=1)
    assert small.x.shape == (15, 1, 16, 16)
    gray = load_cifar10(str(archive), channels=1)  # ITU-R 601-2 luma of the RGB pixel
    rgb = rows[n].reshape(3, 32, 32)[:, h, w].astype(np.float64)
    assert float(gray.x[n, 0, h, w]) == pytest.approx(rgb @ [0.299, 0.587, 0.114] / 127.5 - 1, abs=1e-6)
    for protocol in (3, 4, 5):  # archives rewritten by Python 3 tools load too
        members = {f"cifar-10-batches-py/data_batch_{i + 1}": pickle.dumps(b, protocol=protocol)
                   for i, b in enumerate(batches)}  # fmt: skip
        again = load_cifar10(str(write_archive(tmp_path / f"p{protocol}.tar.gz", members)))
        assert torch.equal(again.x, data.x)


def test_cifar10_wrong_layouts_are_errors_naming_the_archive(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_data(f"cifar10:{tmp_path / 'missing.tar.gz'}")
    not_tar = tmp_path / "not.tar.gz"
    not_tar.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match=f"{not_tar} is not a tar archive"):
        load_cifar10(str(not_tar))
    good = {f"cifar-10-batches-py/data_batch_{i}": pickle.dumps(cifar_batch(i, 2)) for i in range(1, 6)}
    partial = write_archive(
        tmp_path / "partial.tar.gz", {k: v for k, v in good.items() if not k.endswith("_5")}
    )
    with pytest.raises(
        ValueError, match=f"{partial} is not the CIFAR-10 python archive: it lacks .*data_batch_5"
    ):
        load_cifar10(str(partial))
    wrong = dict(
        good, **{"cifar-10-batches-py/data_batch_3": pickle.dumps({b"data": np.zeros((2, 10), np.uint8)})}
    )
    archive = write_archive(tmp_path / "wrong.tar.gz", wrong)
    with pytest.raises(ValueError, match=f"{archive}:cifar-10-batches-py/data_batch_3 has no 'data' array"):
        load_cifar10(str(archive))
    evil = dict(good, **{"cifar-10-batches-py/data_batch_2": pickle.dumps(RunsCode())})
    archive = write_archive(tmp_path / "evil.tar.gz", evil)
    with pytest.raises(ValueError, match="data_batch_2: refusing to load"):
        load_cifar10(str(archive))


def test_cli_reports_bad_image_data_and_runs_on_a_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny = "--teacher-iters 4 --iters 2 --start-steps 2 --eval-max-steps 2 --hidden 8 --depth 1 "
    tiny = (tiny + "--batch-size 8 --teacher-batch-size 8 --no-progress").split()
    assert main(["--data", str(empty), "--out", str(tmp_path / "a")] + tiny) == 2
    assert "holds no PNG or JPEG images" in capsys.readouterr().err
    folder = tmp_path / "imgs"
    for i in range(6):
        write_png(folder / f"{i}.png", rng_pixels(i, (10, 12, 3)))
    assert main(["--data", str(folder), "--resolution", "4", "--out", str(tmp_path / "b")] + tiny) == 0
    report = (tmp_path / "b" / "report.json").read_text()
    assert '"data": "imgs"' in report and '"metric": "frechet_pixel"' in report
