"""Captioned image folders (metadata.jsonl / metadata.csv) and the cache of their latents and
prompt embeddings (pd_fast.app.captioned)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pd_fast.app.captioned import encode_cached, load_captioned, read_metadata

CAPTIONS = ["a red square", "the number 7", "", "ünïcode, with a comma"]


def _folder(tmp_path: Path, fmt: str = "jsonl", captions: list[str] = CAPTIONS) -> Path:
    folder = tmp_path / f"data_{fmt}"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i, text in enumerate(captions):
        name = f"sub/img{i}.png" if i % 2 else f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name)
        records.append({"file_name": name, "text": text})
    if fmt == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
            writer.writeheader()
            writer.writerows(records)
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_images_and_captions_are_read_in_metadata_order(tmp_path: Path, fmt: str) -> None:
    folder = _folder(tmp_path, fmt)
    data = load_captioned(str(folder))
    assert data.captions == CAPTIONS and len(data) == 4
    for i, x in enumerate(data.images):  # pixel / 255 * 2 - 1, read back with Pillow
        name = f"sub/img{i}.png" if i % 2 else f"img{i}.png"
        expected = np.asarray(Image.open(folder / name), dtype=np.float32).transpose(2, 0, 1) / 255 * 2 - 1
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    small = load_captioned(str(folder), resolution=4, channels=1)
    assert small.images.shape == (4, 1, 4, 4)


def test_a_missing_caption_or_image_is_one_line_naming_the_first(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["text"]
    (folder / "metadata.jsonl").write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"line 2 \(sub/img1.png\) has no caption"):
        read_metadata(str(folder))
    folder = _folder(tmp_path / "b")
    (folder / "sub" / "img3.png").unlink()
    (folder / "sub" / "img1.png").unlink()
    with pytest.raises(ValueError, match="the image sub/img1.png of .* does not exist"):
        load_captioned(str(folder))
    with pytest.raises(ValueError, match="no metadata.jsonl or metadata.csv"):
        load_captioned(str(tmp_path))


class _Encoder:
    """A stand-in autoencoder and text encoder with closed forms: latents = 2x pooled 2x2,
    embeddings = the caption's length and character sum, null = zeros. Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 2 * torch.nn.functional.avg_pool2d(x, 2)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([[[len(p), sum(map(ord, p))]] * 3 for p in prompts], dtype=torch.float32)

    def null_condition(self) -> torch.Tensor:
        return torch.zeros(1, 3, 2)


def test_latents_and_embeddings_are_cached_once_and_tied_to_their_data_and_teacher(tmp_path: Path) -> None:
    data = load_captioned(str(_folder(tmp_path)))
    enc, cache = _Encoder(), tmp_path / "run"
    got = encode_cached(data, enc, cache, "teacher-A", batch_size=3, progress=False)
    assert enc.calls == 4  # two batches of images, two of prompts
    torch.testing.assert_close(got.latents, 2 * torch.nn.functional.avg_pool2d(data.images, 2))
    assert got.cond[1, 0].tolist() == [len("the number 7"), sum(map(ord, "the number 7"))]
    assert got.null_cond.shape == (1, 3, 2) and not got.null_cond.any()
    again = encode_cached(data, enc, cache, "teacher-A", progress=False)
    assert enc.calls == 4 and torch.equal(again.latents, got.latents) and torch.equal(again.cond, got.cond)
    with pytest.raises(ValueError, match="latents of another teacher"):
        encode_cached(data, enc, cache, "teacher-B", progress=False)
    other = load_captioned(str(_folder(tmp_path / "other", captions=["x", "y", "z", "w"])))
    with pytest.raises(ValueError, match="latents of another data set"):
        encode_cached(other, enc, cache, "teacher-A", progress=False)


def test_a_damaged_cache_is_encoded_again_with_a_warning(tmp_path: Path) -> None:
    data = load_captioned(str(_folder(tmp_path)))
    enc, cache = _Encoder(), tmp_path / "run"
    first = encode_cached(data, enc, cache, "t", progress=False)
    blob = bytearray((cache / "encoded.safetensors").read_bytes())
    blob[-3] ^= 0xFF  # one byte of the last tensor's values
    (cache / "encoded.safetensors").write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="damaged"):
        again = encode_cached(data, enc, cache, "t", progress=False)
    assert (
        enc.calls == 4 and torch.equal(again.latents, first.latents) and torch.equal(again.cond, first.cond)
    )
    assert torch.equal(again.null_cond, first.null_cond)
