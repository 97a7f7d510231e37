"""The text-to-image job's evaluation (docs/spec.md section 10): every sample set is compared in
latent space with the teacher's 256-step guided DDIM sample from the same noise and prompt.

    unet_calls(models) -> counter      per image: how many times the UNets ran (forward pre-hooks)
    evaluate_latent(teacher, students, schedule, teacher_param, param, z, cond, null_cond, ws, ...)
        -> (rows, samples)
    digit_images(x) -> (n, 1, 8, 8)    decoded images as the digits classifier reads them
    add_digit_accuracy(rows, samples, decode, labels, classifier, seed)   (adds `accuracy`)

For each w and N in {1, 2, 4, 8}: the teacher with guided DDIM at N steps (two UNet calls a step)
and the N-step student (one call a step, w as its input); each row holds the mean over the samples
of the root-mean-square latent distance to the reference, `distance`, its 95% bootstrap interval
(1000 resamplings of the samples, percentile), and the UNet calls per image. An unconditional
teacher (LDM) has no w: its rows have w None and the teacher sampled with plain DDIM.

Where the prompts name digits (the captioned digits, `--data digits`), `add_digit_accuracy` adds to
each row the digits classifier's accuracy of the digit its prompt names, on the decoded samples
taken back to the digits' 8 x 8 grayscale (`digit_images`), with its bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

EVAL_STEPS = (1, 2, 4, 8)
REFERENCE_STEPS = 256
RESAMPLES = 1000


@contextmanager
def unet_calls(*models: nn.Module) -> Iterator[list[int]]:
    """A one-item list counting the examples every call of the models' UNets (or the models
    themselves) processed: with `n` images sampled, `count[0] / n` calls an image."""
    count = [0]

    def hook(module: nn.Module, args: tuple) -> None:
        count[0] += int(args[0].shape[0])

    handles = [getattr(m, "unet", m).register_forward_pre_hook(hook) for m in models]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


def rms_distances(x: Tensor, reference: Tensor) -> np.ndarray:
    """Per sample, the root-mean-square difference of two latent sets (n, ...), in float64."""
    d = (x.double() - reference.double()).reshape(x.shape[0], -1)
    return d.pow(2).mean(dim=1).sqrt().cpu().numpy()


def mean_interval(values: np.ndarray, seed: int, level: float = 0.95) -> tuple[float, list[float]]:
    """The mean of `values` and its percentile bootstrap interval (resampling with replacement)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), [float(lo), float(hi)]


def evaluate_latent(
    teacher: nn.Module, students: dict[int, nn.Module], schedule: Any, teacher_param: str, param: str,
    z: Tensor, cond: Tensor | None, null_cond: Tensor | None, ws: list[tuple[str, float]], seed: int = 0,
) -> tuple[list[dict], dict[str, Tensor]]:  # fmt: skip
    """The rows (module docstring) and the samples by `<model>_N<N>_w<w>` (latents, CPU)."""
    rows: list[dict] = []
    samples: dict[str, Tensor] = {}
    for w_name, w in ws if cond is not None else [(None, 0.0)]:
        reference, _ = _teacher(teacher, schedule, teacher_param, z, cond, null_cond, w, REFERENCE_STEPS)
        samples[f"teacher_N{REFERENCE_STEPS}_w{w_name}"] = reference
        for n in EVAL_STEPS:
            x, calls = _teacher(teacher, schedule, teacher_param, z, cond, null_cond, w, n)
            samples[f"teacher_N{n}_w{w_name}"] = x
            rows.append(_row("teacher", n, w_name, x, reference, calls, seed))
            if n in students:
                x, calls = _student(students[n], schedule, param, z, cond, w, n)
                samples[f"student_N{n}_w{w_name}"] = x
                rows.append(_row("student", n, w_name, x, reference, calls, seed))
    return rows, samples


def _row(model: str, n: int, w: str | None, x: Tensor, reference: Tensor, calls: float, seed: int) -> dict:
    distance, interval = mean_interval(rms_distances(x, reference), seed)
    return dict(model=model, steps=n, w=w, distance=distance, interval=interval, unet_calls_per_image=calls)


def _teacher(
    teacher: nn.Module, schedule: Any, param: str, z: Tensor, cond: Tensor | None, null_cond: Tensor | None,
    w: float, steps: int,
) -> tuple[Tensor, float]:  # fmt: skip
    """The teacher's N-step DDIM sample, guided with weight w (two calls a step where w > 0)."""
    from ...sampling import sample

    kw = {} if cond is None else dict(cond=cond, null_cond=null_cond, w=w)
    with unet_calls(teacher) as count, torch.no_grad():
        x = sample(teacher, z, steps, schedule, param, clip=False, **kw)
    return x.float().cpu(), count[0] / z.shape[0]


def _student(
    student: nn.Module, schedule: Any, param: str, z: Tensor, cond: Tensor | None, w: float, steps: int
) -> tuple[Tensor, float]:
    """The N-step student's DDIM sample at weight w (one call a step, w its input)."""
    from ...sampling import sample

    if cond is None:
        model = student
    else:
        w_batch = torch.full((z.shape[0],), w, dtype=torch.float32, device=z.device)

        def model(z_: Tensor, t: Tensor) -> Tensor:
            return student(z_, t, cond, w_batch)

    with unet_calls(student) as count, torch.no_grad():
        x = sample(model, z, steps, schedule, param, clip=False)
    return x.float().cpu(), count[0] / z.shape[0]


def _upsampling_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in): the linear map of `pd_fast.app.data.center_crop_resize` along one axis (torch's
    antialiased bicubic interpolation, `align_corners=False`) from n_in to n_out pixels."""
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    out = nn.functional.interpolate(
        basis, size=(1, n_out), mode="bicubic", antialias=True, align_corners=False
    )
    return out[:, 0, 0, :].T


def digit_images(x: Tensor, size: int = 8) -> Tensor:
    """Decoded images x (n, C, H, W), C 1 or 3, about [-1, 1], as the digits classifier reads them:
    (n, 1, size, size) float32 on the CPU. x is clamped into [-1, 1], RGB goes to gray by the luma
    weights (`pd_fast.app.data.match_channels`), and each axis is mapped from H (W) to `size` pixels
    by the least-squares inverse (Moore-Penrose pseudo-inverse) of the upsampling that fitted the
    size x size digits to H x W (`center_crop_resize`: antialiased bicubic), the result clamped into
    [-1, 1]. The captioned digits at 16 x 16 come back to within 0.16 of the 8 x 8 digits (the
    bicubic overshoot clamped at upsampling is all that is lost)."""
    from ..data import match_channels

    gray = match_channels(x.detach().float().cpu().clamp(-1.0, 1.0), 1, "samples").double()
    rows = torch.linalg.pinv(_upsampling_matrix(size, gray.shape[-2]))
    cols = torch.linalg.pinv(_upsampling_matrix(size, gray.shape[-1]))
    return torch.einsum("ih,nchw,jw->ncij", rows, gray, cols).clamp(-1.0, 1.0).float()


def add_digit_accuracy(
    rows: list[dict], samples: dict[str, Tensor], decode: Any, labels: Tensor, classifier: nn.Module,
    seed: int = 0, batch_size: int = 256,
) -> None:  # fmt: skip
    """Add to each row `accuracy`, the fraction of its samples (`samples[<model>_N<N>_w<w>]`, latents)
    that the digits `classifier` assigns to `labels` (n,), the digit each prompt names, after
    `decode` (latents -> images, e.g. `LatentPipeline.decode_latents`) and `digit_images`; and
    `accuracy_interval`, its 95% bootstrap interval (as `distance`'s)."""
    labels = labels.detach().cpu().long()
    for row in rows:
        z = samples[f"{row['model']}_N{row['steps']}_w{row['w']}"]
        with torch.no_grad():
            images = torch.cat(
                [digit_images(decode(z[i : i + batch_size])) for i in range(0, z.shape[0], batch_size)]
            )
            correct = (classifier(images).argmax(1) == labels).double().numpy()
        row["accuracy"], row["accuracy_interval"] = mean_interval(correct, seed)
