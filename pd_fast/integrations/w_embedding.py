"""The guidance weight's Fourier embedding as `StableDiffusionPipeline` computes it
(`get_guidance_scale_embedding`, [GD], docs/spec.md section 10), and the band of its features that a
w-conditioned student reads. Imports torch only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["W_SCALE", "guidance_frequencies", "guidance_band", "guidance_embedding"]

#: the embedding's phase is `W_SCALE * w * f_i` (diffusers' `w * 1000`)
W_SCALE = 1000.0


def guidance_frequencies(embedding_dim: int) -> Tensor:
    """The `embedding_dim // 2` frequencies of `guidance_embedding` (float32, on the CPU, computed as
    `StableDiffusionPipeline.get_guidance_scale_embedding` computes them)."""
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 4:
        raise ValueError(f"embedding_dim must be an integer >= 4, got {embedding_dim!r}")
    half = embedding_dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.float32) * -step)


def guidance_band(embedding_dim: int, w_max: float) -> Tensor:
    """The features of `guidance_embedding(w, embedding_dim)` that vary smoothly over [0, w_max]:
    (embedding_dim,) bool, True for the sine and the cosine of each frequency f with
    `1000 * w_max * f <= pi` (at most half a period over the range; the lowest frequency always). A
    w-conditioned student that reads only these is a smooth function of w between the weights it was
    trained at; the others turn up to 1000 * w_max / (2 pi) times over the range (about 640 at
    w_max = 4) and let it fit noise in w (docs/spec.md section 10)."""
    f = guidance_frequencies(embedding_dim)
    if isinstance(w_max, bool) or not isinstance(w_max, (int, float)) or not 0 <= w_max < float("inf"):
        raise ValueError(f"w_max must be a finite number >= 0, got {w_max!r}")
    keep = W_SCALE * float(w_max) * f <= torch.pi
    keep[-1] = True
    band = torch.cat([keep, keep])
    return nn.functional.pad(band, (0, embedding_dim - band.numel()))


def guidance_embedding(w: Tensor, embedding_dim: int, frequencies: Tensor | None = None) -> Tensor:
    """[GD]'s Fourier embedding of the guidance weight (docs/spec.md section 10), exactly
    `StableDiffusionPipeline.get_guidance_scale_embedding(w, embedding_dim)`: with `a = 1000 * w`,
    `[sin(a * f_i), cos(a * f_i)]`, `f_i = 10000^(-i / (d/2 - 1))`, zero-padded to an odd `d`.

    w: (B,), rounded to float32 first (the pipeline's `torch.tensor(guidance_scale - 1)`).
    frequencies: `guidance_frequencies(embedding_dim)` on w's device (computed on the CPU if None).
    Returns (B, embedding_dim) float32 on w's device.
    """
    if not isinstance(w, Tensor) or w.ndim != 1:
        raise ValueError(f"w must be a (B,) tensor, got {getattr(w, 'shape', type(w).__name__)}")
    if frequencies is None:
        frequencies = guidance_frequencies(embedding_dim).to(w.device)
    arg = (w.to(torch.float32) * W_SCALE)[:, None] * frequencies[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    if embedding_dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb
