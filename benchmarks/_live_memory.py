"""Memory of a CPU run, op by op: every tensor storage an op creates, from its creation until
Python reports it freed (what a GPU's allocator would have to hold, without its rounding), and the
tools to compare runs that differ in batch size or width (used by `memory_plan.py`).

A storage counts once: views and in-place results share their input's storage and allocate
nothing. Memory that kernels allocate inside themselves (workspaces) is not seen.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create inside the mode and that are still alive: `now`,
    `peak`, and `trace`, `now` after every op (`ops`). A storage counts once (views and in-place results
    share it), until Python's weak reference to it reports it freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = 0
        self.peak = 0
        self.trace: list[int] = []  # `now` after every op
        self.ops: list[Any] = []  # and the op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output sharing an input's storage (a view, an in-place result) allocated nothing: the
        # transposed view of a weight must not count the weight
        given = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.track(t.untyped_storage())
        self.trace.append(self.now)
        self.ops.append(func)
        return out

    def track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return
        self.live[key] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self.free, key)

    def free(self, key: int) -> None:
        self.now -= self.live.pop(key)


@contextlib.contextmanager
def cuda_norm_policy(unet: nn.Module) -> Iterator[None]:
    """CUDA's autocast runs group_norm and layer_norm in fp32 (fp32 outputs); CPU's runs them in
    the input's dtype. Under autocast, a forward pre-hook upcasts the norms' inputs, so that the CPU
    run saves what a CUDA run saves."""

    def upcast(module: nn.Module, args: tuple) -> tuple | None:
        if not torch.is_autocast_enabled("cpu"):
            return None
        return tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)

    norms = [m for m in unet.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    handles = [m.register_forward_pre_hook(upcast) for m in norms]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Trace:
    """The bytes alive after every op of one run, and the ops."""

    def __init__(self, mode: LiveBytes) -> None:
        self.bytes = np.array(mode.trace, dtype=np.float64)
        self.ops = mode.ops

    def aligned_to(self, ref: Trace) -> np.ndarray:
        """The bytes after every op of `ref`, read at this run's matching op: runs at other batch
        sizes or widths run the same ops but for a few (a reshape that is a view at batch 1 copies
        at batch 2); ops of `ref` without a match read the end of the differing stretch here."""
        if self.ops == ref.ops:
            return self.bytes
        return self.bytes[align(ref.ops, self.ops)]


def align(ref: list[Any], other: list[Any], window: int = 8, anchor: int = 4) -> np.ndarray:
    """For every op of `ref`, the index of its match in `other`: walking both, and where they
    differ skipping the fewest ops (at most `window` on each side) after which `anchor` ops agree."""
    index = np.zeros(len(ref), dtype=np.int64)
    i = j = 0
    while i < len(ref):
        if j < len(other) and ref[i] == other[j]:
            index[i], i, j = j, i + 1, j + 1
            continue
        skips = sorted(((di, dj) for di in range(window + 1) for dj in range(window + 1)), key=sum)
        agree = (d for d in skips if ref[i + d[0] : i + d[0] + anchor] == other[j + d[1] : j + d[1] + anchor])
        di, dj = next(agree, (len(ref) - i, len(other) - j))
        index[i : i + di] = max(min(j + dj, len(other)) - 1, 0)
        i, j = i + di, j + dj
    return index


def envelope(fixed: np.ndarray, per_example: np.ndarray) -> list[list[float]]:
    """The (fixed, per-example) pairs of a timeline that hold its peak for some batch B >= 0 (the
    peak is the most of `fixed + B per_example` over the ops): the pairs no other beats in both."""
    order = np.argsort(-per_example, kind="stable")
    best = np.maximum.accumulate(fixed[order])
    keep = np.concatenate([[True], fixed[order][1:] > best[:-1]])
    return [[float(fixed[i]), float(per_example[i])] for i in order[keep]]
