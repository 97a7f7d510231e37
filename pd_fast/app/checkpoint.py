"""Checkpoints of teacher training and progressive distillation (docs/spec.md section 6).

Two kinds of files live in a run's `checkpoints/` folder:

- **Model checkpoints**, one per finished stage: `teacher.safetensors` (the EMA weights) and
  `student_<N>.safetensors` (the student of N steps), each with a JSON twin `<stem>.json` holding
  steps, schedule (kind + parameters, see `schedule_to_dict`), param, weighting, round and
  iteration, and the SHA-256 of the `.safetensors` file ("sha256"). The same JSON, less the
  digest, is also stored in the safetensors metadata under the key "pd_fast", so a lone
  `.safetensors` file is self-describing. `load_model_checkpoint` reads them back.
- **Training state**, one per stage (`teacher_state.json`, `distill_state.json`): the JSON holds
  the scalars (round, iteration, Adam's hyper-parameters, ...) and names a tensors file
  (`<stage>_state-r<round>-i<iteration>.safetensors`, its SHA-256 under "tensors_sha256") with the
  weights, Adam's moments and the RNG states. The JSON is the commit point: it is replaced only
  after its tensors file is on disk, so a kill at any moment leaves either the old or the new
  state whole. The state it replaces is kept as `<stage>_state.prev.json` (with its tensors file),
  so that a state whose file is later found damaged leaves an intact one to fall back to.

Every tensors file is checked against its recorded SHA-256 when it is read: a missing,
truncated or altered file is a `CheckpointError` (a ValueError) naming the file. Files written
before digests were recorded are read without the check.

Every write is atomic: a temporary file in the same folder, flushed and fsync'ed, then
`os.replace`, then an fsync of the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "CheckpointFallbackWarning",
    "atomic_write_bytes",
    "save_json",
    "save_tensors",
    "load_tensors",
    "schedule_to_dict",
    "schedule_from_dict",
    "model_fingerprint",
    "save_model_checkpoint",
    "load_model_checkpoint",
    "verify_model_checkpoint",
    "read_json",
    "save_training_state",
    "load_training_state",
    "optimizer_to_tensors",
    "optimizer_from_tensors",
]

METADATA_KEY = "pd_fast"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, truncated or not the one its JSON recorded."""


class CheckpointFallbackWarning(UserWarning):
    """Resume found the last training state damaged and continues from the one before it."""


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


def read_json(path: str | os.PathLike) -> Any:
    """The JSON object in `path`; CheckpointError naming the file if it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Atomically write `tensors` (moved to CPU, made contiguous, unshared) as safetensors;
    returns the SHA-256 (hex) of the file's bytes."""
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    data = _st_save(flat, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _read_checked(path: Path, sha256: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err})") from err
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path} is damaged: its SHA-256 is not the one recorded when it was written")
    return data


def load_tensors(
    path: str | os.PathLike, sha256: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on CPU, metadata) of a safetensors file, checked against `sha256` (hex) if given.
    CheckpointError naming the file if it is missing, damaged or not a safetensors file."""
    path = Path(path)
    data = _read_checked(path, sha256)
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or 8 + n > len(data):
            raise ValueError(f"{len(data)} bytes, header of {n}")
        header = json.loads(data[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        tensors = _st_load(data)
    except Exception as err:  # safetensors raises its own error type for a bad layout
        message = f"{path} is not a readable safetensors file (truncated, or another format)"
        raise CheckpointError(message) from err
    return tensors, header.get("__metadata__", {}) or {}


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
    digest = save_tensors(
        weights, _unwrap(model).state_dict(), {METADATA_KEY: json.dumps(info, sort_keys=True)}
    )
    save_json(stem.with_suffix(".json"), dict(info, sha256=digest))
    return weights


def _model_files(path: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """The weights file of a model checkpoint and its JSON twin's content (None if it has none)."""
    stem = _stem(path)
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise CheckpointError(f"path: no checkpoint weights at {weights}")
    json_path = stem.with_suffix(".json")
    info = read_json(json_path) if json_path.is_file() else None
    if info is not None and not isinstance(info, dict):
        raise CheckpointError(f"{json_path} is not a checkpoint description (a JSON object)")
    return weights, info


def verify_model_checkpoint(path: str | os.PathLike) -> None:
    """CheckpointError naming the file unless the model checkpoint at `path` is whole: readable,
    and equal to the SHA-256 its JSON twin recorded."""
    weights, info = _model_files(path)
    load_tensors(weights, (info or {}).get("sha256"))


def load_model_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the weights of a model checkpoint into `model` (strictly: same names and shapes) and
    return its description (steps, schedule, param, weighting, ...; `{}` for a foreign file).

    `path`: the `.safetensors` file, its `.json` twin, or their common stem. The schedule is
    rebuilt with `schedule_from_dict(info["schedule"])`.
    """
    weights, info = _model_files(path)
    tensors, metadata = load_tensors(weights, (info or {}).get("sha256"))
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
    if info is not None:
        return {k: v for k, v in info.items() if k != "sha256"}
    if METADATA_KEY in metadata:
        try:
            return json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{weights}: its {METADATA_KEY!r} metadata is not valid JSON") from err
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


def _state_paths(ckpt_dir: Path, stage: str) -> tuple[Path, Path]:
    return ckpt_dir / f"{stage}_state.json", ckpt_dir / f"{stage}_state.prev.json"


def _state_info(path: Path) -> dict[str, Any] | None:
    """A state JSON that parses and names its tensors file, else None."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("tensors_file"), str) else None


def _remove_unreferenced(ckpt_dir: Path, stage: str) -> None:
    """Remove the tensors files of `stage` that neither its state nor the previous one names, and
    temporary files of killed atomic writes."""
    keep = {info["tensors_file"] for p in _state_paths(ckpt_dir, stage) if (info := _state_info(p))}
    for stale in ckpt_dir.glob(f"{stage}_state-*.safetensors"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    for partial in ckpt_dir.glob(".*.tmp"):  # half-written by a killed atomic write
        partial.unlink(missing_ok=True)


def save_training_state(
    ckpt_dir: str | os.PathLike, stage: str, tensors: dict[str, Tensor], info: dict[str, Any]
) -> Path:
    """Commit the training state of `stage` ('teacher' or 'distill'): tensors file first (its
    SHA-256 recorded), the state it replaces kept as `<stage>_state.prev.json`, then the JSON
    `<stage>_state.json` naming the new file (atomic replace), then the tensors file that neither
    names any more is removed."""
    ckpt_dir = Path(ckpt_dir)
    json_path, prev_path = _state_paths(ckpt_dir, stage)
    old = _state_info(json_path) if json_path.is_file() else None
    name = f"{stage}_state-r{info.get('round', 0)}-i{info.get('iteration', 0)}.safetensors"
    digest = save_tensors(ckpt_dir / name, tensors)
    if old is not None and old["tensors_file"] != name:
        save_json(prev_path, old)
    info = dict(info, stage=stage, tensors_file=name, tensors_sha256=digest)
    save_json(json_path, _json_safe(info))
    _remove_unreferenced(ckpt_dir, stage)
    return json_path


def load_training_state(
    ckpt_dir: str | os.PathLike, stage: str, *, repair: bool = True
) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """(info, tensors) of the last committed state of `stage`, or None if there is none.

    The tensors file is checked against its SHA-256. If the state is damaged (its JSON or its
    tensors file missing, unreadable or altered) and the previous state is intact, that one is
    returned instead, with a `CheckpointFallbackWarning`; with neither intact, a CheckpointError
    names the damaged files. With `repair` (the default) a fallback is committed as the current
    state, and files left behind by a kill (an uncommitted tensors file, a temporary file) are
    removed; without it nothing is written, warned or removed (a check before a resume).
    """
    ckpt_dir = Path(ckpt_dir)
    json_path, prev_path = _state_paths(ckpt_dir, stage)
    if not json_path.is_file():
        return None
    problems: list[str] = []
    for path in (json_path, prev_path):
        if path is prev_path and not path.is_file():
            break
        try:
            info = read_json(path)
            if not isinstance(info, dict) or not isinstance(info.get("tensors_file"), str):
                raise CheckpointError(f"{path} is not a training state (no tensors_file)")
            tensors, _ = load_tensors(ckpt_dir / info["tensors_file"], info.get("tensors_sha256"))
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if repair:
            if problems:
                warnings.warn(
                    f"{problems[0]}; resuming from the state before it (round {info.get('round')}, "
                    f"iteration {info.get('iteration')})",
                    CheckpointFallbackWarning,
                    stacklevel=2,
                )
                save_json(json_path, info)
            _remove_unreferenced(ckpt_dir, stage)
        return info, tensors
    if not prev_path.is_file():
        problems.append("no earlier state is kept to fall back to")
    raise CheckpointError("; ".join(problems))
