"""A stage's random streams: `torch.Generator`s seeded from (seed, rank, stage), data and t on the
CPU, noise on the training device, checkpointed with torch's global RNG (dropout)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _stream_seed(seed: int, rank: int, stream: str) -> int:
    """A 63-bit seed for one random stream, derived from (seed, rank, stream) by NumPy's SeedSequence."""
    tag = int.from_bytes(stream.encode(), "little")
    words = np.random.SeedSequence([seed, rank, tag]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


@dataclass
class _Generators:
    """`data`: CPU generator for example indices and t; `noise`: generator on the training device."""

    data: torch.Generator
    noise: torch.Generator
    device: torch.device

    @classmethod
    def seeded(cls, seed: int, rank: int, stage: str, device: torch.device) -> _Generators:
        data = torch.Generator().manual_seed(_stream_seed(seed, rank, stage + "/data"))
        noise = torch.Generator(device=device).manual_seed(_stream_seed(seed, rank, stage + "/noise"))
        return cls(data, noise, device)

    def states(self) -> dict[str, Tensor]:
        states = {
            "data": self.data.get_state(),
            "noise": self.noise.get_state().cpu(),
            "torch_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            states["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def restore(self, tensors: dict[str, Tensor], rank: int) -> None:
        prefix = f"rng/{rank}/"
        self.data.set_state(tensors[prefix + "data"])
        self.noise.set_state(tensors[prefix + "noise"])
        torch.set_rng_state(tensors[prefix + "torch_cpu"])
        if self.device.type == "cuda" and prefix + "torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors[prefix + "torch_cuda"], self.device)
