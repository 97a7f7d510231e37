"""Captioned images (the imagefolder convention) and their latents and prompt embeddings, computed
once and cached in the run folder (docs/spec.md section 10).

    load_captioned(folder, resolution, channels) -> Captioned     images in [-1, 1] and captions
    captioned_digits(resolution, channels) -> Captioned            the 8x8 digits, captions naming them
    named_digit(caption) -> int | None                             the digit a caption names
    encode_cached(data, encoder, cache_dir, teacher_id, batch_size, progress) -> Encoded

A folder holds the images and `metadata.jsonl` (one JSON object a line) or `metadata.csv` (a
header line), each record naming an image by `file_name` (relative to the folder) and its caption
as `text`, as diffusers' training scripts read them (`datasets`' imagefolder). A record without a
caption, a caption that is not a string, or a file that is missing is a one-line ValueError
naming the first one. Images are fitted to the autoencoder's input as `pd_fast.app.data` fits
images (center crop, antialiased resize, channels).

The latents (`encoder.encode_images`: section 10's `scaling_factor * E(x)`) and the prompt
embeddings (`encoder.encode_prompt`, as `StableDiffusionPipeline.encode_prompt` makes them) are
computed in batches with a progress bar and saved as `<cache_dir>/encoded.safetensors`, and then
`encoded.json` with its SHA-256 and the fingerprints of the data (the images' bytes and the
captions) and of the teacher (`teacher_id`): a resume reuses them, a cache of other data or another
teacher is refused, and a damaged or half-written one is computed again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: the captions of the built-in captioned digits, chosen in turn: each names the digit
DIGIT_TEMPLATES = ("a handwritten digit {word}", "the number {n}", "a drawing of the digit {n}", "{word}")
CACHE_FILE = "encoded.safetensors"


@dataclass
class Captioned:
    """`images`: float32 (N, C, H, W) in [-1, 1]; `captions`: N strings; `name`: the folder's."""

    images: Tensor
    captions: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.captions)

    def fingerprint(self) -> str:
        """SHA-256 of the images' dtype, shape and bytes, and of the captions."""
        h = hashlib.sha256(f"{self.images.dtype}|{tuple(self.images.shape)}|".encode())
        h.update(self.images.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(json.dumps(self.captions).encode())
        return h.hexdigest()


@dataclass
class Encoded:
    """What the training stages read: `latents` float32 (N, C, h, w), `cond` float32 (N, L, D) and
    the null condition `null_cond` (1, L, D), the empty prompt's embedding (None: unconditional)."""

    latents: Tensor
    cond: Tensor | None
    null_cond: Tensor | None


def read_metadata(folder: str) -> list[tuple[str, str]]:
    """The (file_name, text) records of `folder`'s metadata file, in order; ValueError naming the
    first record without a caption or the folder without a metadata file."""
    paths = [os.path.join(folder, name) for name in METADATA_FILES]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise ValueError(
            f"--data {folder}: no metadata.jsonl or metadata.csv (records of file_name and text) there"
        )
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith(".csv"):
                records = [(i + 2, r) for i, r in enumerate(csv.DictReader(f))]
            else:
                records = [(i + 1, json.loads(line)) for i, line in enumerate(f) if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise ValueError(f"--data: cannot read {path}: {err}") from err
    out = []
    for line, record in records:
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
            raise ValueError(f"--data: {path} line {line} has no file_name")
        text = record.get("text")
        if not isinstance(text, str):
            raise ValueError(f"--data: {path} line {line} ({record['file_name']}) has no caption ('text')")
        out.append((record["file_name"], text))
    if not out:
        raise ValueError(f"--data: {path} holds no records")
    return out


def load_captioned(folder: str, resolution: Any = None, channels: int | None = None) -> Captioned:
    """The captioned images of `folder` (module docstring), fitted to `resolution` and `channels`."""
    from .data import _image_array, _open_image, fit_images

    records = read_metadata(folder)
    missing = next((f for f, _ in records if not os.path.isfile(os.path.join(folder, f))), None)
    if missing is not None:
        raise ValueError(f"--data: the image {missing} of {folder}'s metadata does not exist")
    images = []
    for file_name, _ in records:
        with _open_image(os.path.join(folder, file_name)) as image:
            arr = _image_array(image, channels or 3)
        x = torch.from_numpy(arr * 2.0 - 1.0)[None]
        images.append(fit_images(x, resolution, channels, name=file_name))
    sizes = {tuple(x.shape[1:]) for x in images}
    if len(sizes) > 1:
        raise ValueError(f"--data: images of {folder} differ in size ({sorted(sizes)}); pass --resolution")
    x = torch.cat(images).clamp(-1.0, 1.0).contiguous()
    return Captioned(x, [text for _, text in records], os.path.basename(os.path.normpath(folder)))


def digit_caption(label: int, i: int) -> str:
    """The caption of the i-th digit, of class `label`: `DIGIT_TEMPLATES` in turn."""
    return DIGIT_TEMPLATES[i % len(DIGIT_TEMPLATES)].format(word=DIGIT_WORDS[label], n=label)


def named_digit(caption: str) -> int | None:
    """The digit a caption names, by its word ("seven") or its numeral ("7"); None where it names
    none, or more than one."""
    found = set()
    for word in caption.lower().replace(",", " ").replace(".", " ").split():
        if word in DIGIT_WORDS:
            found.add(DIGIT_WORDS.index(word))
        elif len(word) == 1 and word.isdigit():
            found.add(int(word))
    return found.pop() if len(found) == 1 else None


def captioned_digits(resolution: Any = None, channels: int | None = None) -> Captioned:
    """The 8x8 digits (`pd_fast.app.data.digits`) as captioned images, fitted to `resolution` and
    `channels`, each captioned by a template that names its digit ("a handwritten digit seven", "the
    number 7", ...), as a text-to-image teacher's data."""
    from .data import digits, fit_images

    d = digits()
    captions = [digit_caption(int(c), i) for i, c in enumerate(d.labels)]
    return Captioned(fit_images(d.x, resolution, channels, name="digits").contiguous(), captions, "digits")


def _batched(fn: Callable[[Any], Tensor], items: Any, batch_size: int, desc: str, progress: bool) -> Tensor:
    from tqdm.auto import tqdm

    parts = []
    with torch.no_grad():
        for i in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False):
            parts.append(fn(items[i : i + batch_size]).float().cpu())
    return torch.cat(parts)


def encode_cached(
    data: Captioned, encoder: Any, cache_dir: str | os.PathLike | None, teacher_id: str, batch_size: int = 32,
    progress: bool = True, conditional: bool = True,
) -> Encoded:  # fmt: skip
    """The latents and prompt embeddings of `data` by `encoder` (its `encode_images(x)`,
    `encode_prompt(prompts)` and `null_condition()`), from the cache in `cache_dir` when it holds those
    of this data and teacher, else computed in batches and cached there (None: nowhere). ValueError
    if the cache holds another data set's or another teacher's. `conditional` False: latents only
    (an unconditional teacher's; the captions are not encoded)."""
    from .checkpoint import CheckpointError, load_tensors, read_json, save_json, save_tensors

    key = {"data": data.fingerprint(), "teacher": teacher_id}
    path = None if cache_dir is None else Path(cache_dir) / CACHE_FILE
    record = None if path is None else path.with_suffix(".json")
    if record is not None and record.is_file():
        info = read_json(record)
        for what in ("data", "teacher"):
            if info.get(what) != key[what]:
                raise ValueError(
                    f"{path} holds the latents of another {'data set' if what == 'data' else 'teacher'}; "
                    "a run keeps its data and teacher (start a new run for others)"
                )
        try:
            tensors, _ = load_tensors(path, info.get("sha256"))
            return Encoded(tensors["latents"], tensors.get("cond"), tensors.get("null_cond"))
        except (CheckpointError, KeyError) as err:
            warnings.warn(f"{err}; encoding the data again", stacklevel=2)
    latents = _batched(encoder.encode_images, data.images, batch_size, "encoding images", progress)
    cond = null = None
    if conditional:
        cond = _batched(encoder.encode_prompt, data.captions, batch_size, "encoding prompts", progress)
        with torch.no_grad():
            null = encoder.null_condition().float().cpu().reshape(1, *cond.shape[1:]).contiguous()
        cond = cond.contiguous()
    encoded = Encoded(latents.contiguous(), cond, null)
    if path is not None:  # the tensors first, then the record that vouches for them
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": encoded.latents, "cond": encoded.cond, "null_cond": encoded.null_cond}
        tensors = {k: v for k, v in tensors.items() if v is not None}
        save_json(record, {**key, "sha256": save_tensors(path, tensors)})
    return encoded
