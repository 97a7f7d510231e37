"""Small stand-ins shared by the training tests and their subprocess workers: a tiny MLP with
`forward(z, t)`, the eight-Gaussians toy data and a Frechet distance (NumPy/SciPy only)."""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg
import torch
from torch import nn


class TinyMLP(nn.Module):
    """`model(z, t)` for flat data (B, D): [z, sin/cos features of t] -> MLP -> (B, out_dim or D).
    `sleep` (seconds per call) slows it down for the kill-and-resume tests; the class attribute
    `calls` counts the calls of all instances (deep copies included)."""

    calls = 0

    def __init__(
        self, dim: int = 2, hidden: int = 32, seed: int = 0, sleep: float = 0.0, out_dim: int | None = None
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), 8)))
        self.net = nn.Sequential(
            nn.Linear(dim + 16, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_dim or dim),
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.sleep = sleep

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        TinyMLP.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        angles = t[:, None] * self.freqs
        return self.net(torch.cat([z, torch.sin(angles), torch.cos(angles)], dim=1))


def eight_gaussians(n: int, seed: int) -> torch.Tensor:
    """n points (n, 2) of a mixture of 8 Gaussians (std 0.05) on a circle of radius 0.7, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=gen).double() * (2 * math.pi / 8)
    centers = torch.stack([torch.cos(k), torch.sin(k)], dim=1) * 0.7
    x = centers + 0.05 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x.clamp(-1.0, 1.0).float()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """`|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))` of two samples (n, d), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c_a, c_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(c_a @ c_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(c_a + c_b - 2.0 * root))
