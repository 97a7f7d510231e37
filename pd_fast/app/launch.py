"""The process a job runs in: its device, and under torchrun its rank and the process group.

device(name, local_rank) -> torch.device      `--device`, checked; cuda:LOCAL_RANK under torchrun
torchrun_ranks() -> (rank, world, local rank) or None
start_group(device, out, resume) -> out      the process group (gloo on CPU, NCCL on CUDA), and
                                             one default run folder for all ranks (rank 0's)
agree(error) -> error or None                 every rank takes the first rank's error
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist


def device(name: str | None, local_rank: int | None = None) -> torch.device:
    """The training device; under torchrun (`local_rank` given) a CUDA device is `cuda:<local_rank>`."""
    if name is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise ValueError(f"--device: {err}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:INDEX], got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available")
        if local_rank is not None:
            if dev.index is not None:
                raise ValueError(
                    f"--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda"
                )
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {dev}: there are {torch.cuda.device_count()} CUDA device(s)")
    return dev


def start_group(dev: torch.device, out: str | None, resume: bool) -> str | None:
    """Under torchrun: set the rank's CUDA device, start the process group, and give every rank
    rank 0's default run folder when none is given; returns the run folder (None: not chosen yet)."""
    from .run_dir import default_out

    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if out is None and not resume:
        names = [default_out()]
        dist.broadcast_object_list(names, src=0)
        out = names[0]
    return out


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun, else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        return None
    try:
        rank, world, local = (int(os.environ[n]) for n in names)
    except ValueError as err:
        raise ValueError(f"torchrun: RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err})") from err
    return rank, world, local


def agree(error: BaseException | None) -> BaseException | None:
    """Under torchrun: the first rank's error, if any rank has one (every rank takes the same way)."""
    if not dist.is_initialized():
        return error
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, None if error is None else f"{type(error).__name__}: {error}")
    first = next((r for r, e in enumerate(everyone) if e is not None), None)
    if first is None:
        return None
    if error is not None and first == dist.get_rank():
        return error  # this rank's error is the first: it says it
    return OtherRank(f"rank {first}: {everyone[first]}")


class OtherRank(ValueError):
    """Another rank failed its checks; this rank stops without a message of its own."""


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"pd-distill: warning: {message}", file=sys.stderr)


def together(step: Any) -> Any:
    """`step()` on every rank; if it fails on any rank (a ValueError or OSError), every rank stops
    together with the first rank's error."""
    from .training import part_ranks

    result, error = None, None
    try:
        result = step()
    except (ValueError, OSError) as err:
        error = err
    error = agree(error)
    if error is not None:
        part_ranks()
        raise error
    return result


def one_line(err: BaseException, out: str | None) -> str:
    if isinstance(err, FloatingPointError):
        return (
            f"{err} (continue with: python -m pd_fast --resume --out {out}; a run's settings cannot "
            "change on resume, so if a setting such as the learning rate caused it, start a new run)"
        )
    if isinstance(err, RuntimeError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"out of memory ({first}): try a smaller --batch-size or --teacher-batch-size"
    return " ".join(str(err).split()) or type(err).__name__


def out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
