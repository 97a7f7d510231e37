"""Training under `torchrun`: the rank and world size, barriers, the DDP wrapper, each rank's shard
of the data, every rank's generator states, and ending the process group together."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import checkpoint as ckpt
from .rng import _Generators


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if not self.active:
            return
        if dist.get_backend() == "nccl":  # NCCL needs the rank's own device, set by the launcher
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _dist_context() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    return _Dist()


def part_ranks() -> None:
    """End the process group on every rank together: collect garbage that may still hold it (a DDP
    wrapper in a reference cycle), meet at a barrier (no collective in flight), then
    `destroy_process_group`. A no-op outside torchrun.

    A group still alive when the interpreter exits is torn down in the interpreter's teardown,
    where gloo can abort the process (`terminate called without an active exception`; a 25-line
    DDP script that skips this does so in about one exit in three on a loaded machine). Even after
    it, torch 2.13 rarely aborts at exit, so the CLI leaves a torchrun rank through `os._exit`.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        _dist_context().barrier()
        dist.destroy_process_group()


def rank_fingerprints(models: dict[str, nn.Module]) -> list[dict[str, str]]:
    """Every rank's `model_fingerprint` of each named model, rank by rank (a collective call under
    torchrun, where the ranks must end identical; one entry otherwise)."""
    mine = {name: ckpt.model_fingerprint(m) for name, m in models.items()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def _gather_rng(gens: _Generators, ctx: _Dist) -> dict[str, Tensor]:
    """Every rank's generator states as `rng/<rank>/<name>` (a collective call under DDP)."""
    mine = gens.states()
    if ctx.active:
        everyone: list[Any] = [None] * ctx.world
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    return {f"rng/{r}/{k}": v for r, states in enumerate(everyone) for k, v in states.items()}


def _wrap(model: nn.Module, ctx: _Dist, device: torch.device) -> nn.Module:
    if not ctx.active:
        return model
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])


def _shard(data: Tensor, ctx: _Dist, device: torch.device, dtype: torch.dtype) -> Tensor:
    local = data[ctx.rank :: ctx.world] if ctx.world > 1 else data
    if local.shape[0] == 0:
        raise ValueError(f"data has {data.shape[0]} examples, fewer than the {ctx.world} ranks")
    return local.to(device=device, dtype=dtype).contiguous()
