"""Checkpoints of teacher training and progressive distillation (docs/spec.md section 6).

Two kinds of files live in a run's `checkpoints/` folder:

- **Model checkpoints**, one per finished stage: `teacher.safetensors` (the EMA weights) and
  `student_<N>.safetensors` (the student of N steps), each with a JSON twin `<stem>.json` holding
  steps, schedule (kind + parameters, see `schedule_to_dict`), param, weighting, round and
  iteration. The same JSON is also stored in the safetensors metadata under the key "pd_fast", so
  a lone `.safetensors` file is self-describing. `load_model_checkpoint` reads them back.
- **Training state**, one per stage (`teacher_state.json`, `distill_state.json`): the JSON holds
  the scalars (round, iteration, Adam's hyper-parameters, ...) and names a tensors file
  (`<stage>_state-r<round>-i<iteration>.safetensors`) with the weights, Adam's moments and the RNG
  states. The JSON is the commit point: it is replaced only after its tensors file is on disk,
  so a kill at any moment leaves either the old or the new state whole.

Every write is atomic: a temporary file in the same folder, flushed and fsync'ed, then
`os.replace`, then an fsync of the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor, nn

__all__ = [
    "atomic_write_bytes",
    "save_json",
    "save_tensors",
    "load_tensors",
    "schedule_to_dict",
    "schedule_from_dict",
    "model_fingerprint",
    "save_model_checkpoint",
    "load_model_checkpoint",
    "save_training_state",
    "load_training_state",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
]

METADATA_KEY = "pd_fast"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: temporary file in the same folder, fsync, `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive os.replace; O_EXCL with the umask's mode instead.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (floats round-trip exactly through `repr`)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write `tensors` (moved to CPU, made contiguous, unshared) as safetensors."""
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, _st_save(flat, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on CPU, metadata) of a safetensors file."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return _st_load(data), header.get("__metadata__", {}) or {}


# ----- schedules -------------------------------------------------------------------------------


def schedule_to_dict(schedule: Any) -> dict[str, Any]:
    """A JSON-able description of a schedule, `schedule.to_dict()` (see `pd_fast.schedules`)."""
    return schedule.to_dict()


def schedule_from_dict(d: dict[str, Any]) -> Any:
    """Inverse of `schedule_to_dict`: a `pd_fast` schedule (`pd_fast.schedules.schedule_from_dict`)."""
    from .. import schedules

    return schedules.schedule_from_dict(d)


# ----- models ----------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), to recognise a teacher."""
    h = hashlib.sha256()
    for name, tensor in sorted(_unwrap(model).state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def save_model_checkpoint(path: str | os.PathLike, model: nn.Module, info: dict[str, Any]) -> Path:
    """Write `<stem>.safetensors` (the state dict, `info` as metadata) and then `<stem>.json`.

    `path` may end in `.safetensors`, `.json` or neither. Returns the safetensors path.
    """
    stem = _stem(path)
    info = dict(info)
    weights = stem.with_suffix(".safetensors")
    save_tensors(weights, _unwrap(model).state_dict(), {METADATA_KEY: json.dumps(info, sort_keys=True)})
    save_json(stem.with_suffix(".json"), info)
    return weights


def load_model_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the weights of a model checkpoint into `model` (strictly: same names and shapes) and
    return its description (steps, schedule, param, weighting, ...; `{}` for a foreign file).

    `path`: the `.safetensors` file, its `.json` twin, or their common stem. The schedule is
    rebuilt with `schedule_from_dict(info["schedule"])`.
    """
    stem = _stem(path)
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise ValueError(f"path: no checkpoint weights at {weights}")
    tensors, metadata = load_tensors(weights)
    target = _unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"path: checkpoint {weights} does not fit the model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(
                f"path: tensor {name!r} of {weights} has shape {tuple(value.shape)}, "
                f"the model's has {tuple(own[name].shape)}"
            )
    target.load_state_dict(tensors, strict=True)
    json_path = stem.with_suffix(".json")
    if json_path.is_file():
        return json.loads(json_path.read_text())
    if METADATA_KEY in metadata:
        return json.loads(metadata[METADATA_KEY])
    return {}


# ----- optimizer -------------------------------------------------------------------------------


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (`optim/<param id>/<name>`, e.g. Adam's
    `exp_avg`, `exp_avg_sq`, `step`) and JSON scalars (param groups, non-tensor state)."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{pid}/{name}"] = value
            else:
                scalars[f"{pid}/{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "state_scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], scalars: dict[str, Any]
) -> None:
    """Inverse of `optimizer_to_tensors`: load the state into `optimizer` (same parameters)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in scalars.get("state_scalars", {}).items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = []
    for group in scalars["param_groups"]:
        g = dict(group)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----- training state --------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def save_training_state(
    ckpt_dir: str | os.PathLike, stage: str, tensors: dict[str, Tensor], info: dict[str, Any]
) -> Path:
    """Commit the training state of `stage` ('teacher' or 'distill'): tensors file first, then the
    JSON `<stage>_state.json` naming it (atomic replace), then remove the superseded tensors file."""
    ckpt_dir = Path(ckpt_dir)
    json_path = ckpt_dir / f"{stage}_state.json"
    old = None
    if json_path.is_file():
        old = json.loads(json_path.read_text()).get("tensors_file")
    name = f"{stage}_state-r{info.get('round', 0)}-i{info.get('iteration', 0)}.safetensors"
    save_tensors(ckpt_dir / name, tensors)
    info = dict(info, stage=stage, tensors_file=name)
    save_json(json_path, _json_safe(info))
    if old and old != name:
        try:
            os.unlink(ckpt_dir / old)
        except FileNotFoundError:
            pass
    return json_path


def load_training_state(
    ckpt_dir: str | os.PathLike, stage: str
) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """(info, tensors) of the last committed state of `stage`, or None if there is none.
    Files left behind by a kill (an uncommitted tensors file, a temporary file) are removed."""
    ckpt_dir = Path(ckpt_dir)
    json_path = ckpt_dir / f"{stage}_state.json"
    if not json_path.is_file():
        return None
    info = json.loads(json_path.read_text())
    name = info["tensors_file"]
    for stale in ckpt_dir.glob(f"{stage}_state-*.safetensors"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    for partial in ckpt_dir.glob(".*.tmp"):  # half-written by a killed atomic write
        partial.unlink(missing_ok=True)
    tensors, _ = load_tensors(ckpt_dir / name)
    return info, tensors
