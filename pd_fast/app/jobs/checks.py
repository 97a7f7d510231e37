"""The checks a job makes before the run writes anything: the teacher file, whether it fits the
data, whether a batch fits the device's memory, and whether a resume fits its run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import BuiltinConfig, RunConfig


def load_teacher(path: str, model_cfg: dict[str, Any], seed: int) -> tuple[nn.Module, dict]:
    """A teacher from a checkpoint: the network's config from `model.json` of the run that wrote it
    (two folders up) if there is one, else `model_cfg` (this run's flags)."""
    from ..checkpoint import load_model_checkpoint
    from ..models import model_from_config

    run_model = Path(path).resolve().parent.parent / "model.json"
    if run_model.is_file():
        model_cfg = json.loads(run_model.read_text())["model"]
    model = model_from_config(model_cfg, seed=seed)
    info = load_model_checkpoint(path, model)
    return model, info


def checked_teacher(cfg: BuiltinConfig, model: nn.Module, data: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The `--teacher` checkpoint of `cfg`, loaded and checked: a file, a teacher (not a student of
    fewer steps than --start-steps) that takes the data (and, for a guided run, its classes)."""
    path = cfg.teacher
    if os.path.isdir(path):
        raise ValueError(
            f"--teacher {path} is a folder, but not a diffusers pipeline folder (model_index.json, unet/, "
            "scheduler/); a built-in teacher is a .safetensors checkpoint"
        )
    if not os.path.isfile(path):
        raise ValueError(f"--teacher {path}: no such file")
    if not path.endswith(".safetensors"):
        raise ValueError(f"--teacher {path}: expected a .safetensors checkpoint")
    try:
        teacher, info = load_teacher(path, model.config, cfg.seed)
    except ValueError as err:
        raise ValueError(f"--teacher: {err}") from err
    steps = info.get("steps")
    if steps is not None and steps != cfg.start_steps:
        raise ValueError(
            f"--teacher {path} is a student of {steps} steps (its JSON says so), not a teacher: "
            f"distilling it from --start-steps {cfg.start_steps} would use it at a step count it "
            f"was not trained for; pass --start-steps {steps} to distill it further, or a teacher checkpoint"
        )
    _check_teacher_fits(path, teacher, model.config, data)
    return teacher, info


def _check_teacher_fits(path: str, teacher: nn.Module, config: dict[str, Any], data: Any) -> None:
    """The teacher takes this run's data (one example through it) and, for a guided run (`config`
    has num_classes), is conditional on as many classes as the data has."""
    classes, theirs = config.get("num_classes"), getattr(teacher, "config", {}).get("num_classes")
    if classes is not None and theirs is None:
        raise ValueError(f"--teacher {path} is unconditional, and --guided needs a conditional one")
    if classes is not None and theirs != classes:
        raise ValueError(f"--teacher {path} has {theirs} classes, and the labels of --data have {classes}")
    c = torch.zeros(1, dtype=torch.long) if theirs is not None else None
    try:
        with torch.no_grad():
            teacher(data.x[:1], torch.full((1,), 0.5), c)
    except ValueError as err:
        raise ValueError(f"--teacher {path} does not take --data {data.name}: {err}") from err


def _memory(device: torch.device) -> int:
    """Bytes of memory of `device` (all of it, not what is free)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_memory(cfg: RunConfig, shape: tuple[int, ...], device: torch.device) -> None:
    """A batch must fit in memory: at least its x, noise, z_t and the network output in float32."""
    per_example = 4 * 4 * math.prod(shape)
    flags = [("--batch-size", cfg.batch_size)]
    if isinstance(cfg, BuiltinConfig) and not cfg.teacher:
        flags.append(("--teacher-batch-size", cfg.teacher_batch_size))
    for name, batch in flags:
        need, have = batch * per_example, _memory(device)
        if need > have:
            raise ValueError(
                f"{name} {batch}: one batch of examples of shape {shape} takes at least "
                f"{need / 2**30:.4g} GiB, more than the {have / 2**30:.4g} GiB of memory of {device}"
            )


def check_resume(out: str, x: torch.Tensor, model: nn.Module, student: nn.Module | None = None) -> None:
    """Before a resume: the run's training states are intact, were trained on this data, and fit
    this model (the network of config.json; `student`: the w-conditioned network of a guided run's
    later stages); the students of finished rounds are intact."""
    from .. import checkpoint as ckpt

    ckpt_dir = Path(out) / "checkpoints"
    stages = [("teacher", "model/", model), ("distill", "student/", student or model)]
    if student is not None:
        stages.insert(1, ("guidance", "student/", student))
    for stage, prefix, net in stages:
        state = ckpt.load_training_state(ckpt_dir, stage, repair=False)
        if state is None:
            continue
        info, tensors = state
        _check_state_data(out, ckpt_dir, stage, info.get("config", {}), x)
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        for key, value in tensors.items():
            if key.startswith(prefix) and shapes.get(key[len(prefix) :]) != tuple(value.shape):
                raise ValueError(
                    f"--resume: the {stage} state in {ckpt_dir} does not fit the network of config.json "
                    f"(tensor {key[len(prefix) :]!r}: {tuple(value.shape)} there, "
                    f"{shapes.get(key[len(prefix) :])} now); was config.json edited?"
                )
        for stem in (info.get("completed") or {}).values():
            ckpt.verify_model_checkpoint(ckpt_dir / stem)


def _check_state_data(out: str, ckpt_dir: Path, stage: str, config: dict, x: torch.Tensor) -> None:
    """A stage's training state was trained on data of `x`'s shape and values."""
    from ..training import data_fingerprint

    if list(config.get("data_shape", [])) != list(x.shape):
        raise ValueError(
            f"--resume: the {stage} state in {ckpt_dir} was trained on data of shape "
            f"{tuple(config.get('data_shape', []))}, the data now has shape {tuple(x.shape)}"
        )
    if "data" in config and config["data"] != data_fingerprint(x):
        raise ValueError(
            f"--resume: the data differ from those the run in {out} trained on: same shape "
            f"{tuple(x.shape)}, different values (was the data file changed?)"
        )


def guided_classes(labels: Tensor | None, name: str) -> int:
    """The number of classes K of a guided job's labels (integers >= 0); ValueError unless they are
    0..K-1 with every class present and K >= 2 (evaluation asks the students for every class)."""
    if labels is None:
        raise ValueError(f"--guided needs a labelled data set, and --data {name} has no labels")
    present = torch.unique(labels.to(torch.int64))
    if present.numel() < 2:
        raise ValueError(
            f"--guided needs at least 2 classes, and the labels of --data {name} hold only {present.tolist()}"
        )
    gap = (present != torch.arange(present.numel())).nonzero()
    if gap.numel():
        raise ValueError(
            f"--guided needs the labels of --data {name} to be the classes 0..K-1, each present; "
            f"class {int(gap[0, 0])} is missing (labels run from {int(present[0])} to {int(present[-1])})"
        )
    return int(present.numel())
