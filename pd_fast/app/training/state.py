"""A stage's training state in `out_dir/checkpoints/` (`pd_fast.app.checkpoint`): loading it to
resume (settings and data checked against the stage's config), committing it, the stage's model
checkpoints, and the modules' tensors inside it."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import checkpoint as ckpt
from .distributed import _gather_rng
from .stage import _Stage


def _load_state(stage: _Stage, resume: bool) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """The committed state of this stage if resuming, with the generators, the clock and the
    log set back to it; ValueError if one exists and resume is False, or if it was written
    with other settings. Starts the stage's clock."""
    state = _committed(stage, resume)
    elapsed = 0.0
    if state is not None:
        info, tensors = state
        stage.gens.restore(tensors, stage.ctx.rank)
        elapsed = float(info["elapsed"])
        stage.last_commit = (int(info["round"]), int(info["iteration"]))
        if stage.last_commit < stage.cfg.end:
            stage.log.truncate(int(info["log_bytes"]))
    else:
        stage.log.drop_phase(stage.name)
    stage.t0 = time.perf_counter() - elapsed
    return state


def _committed(stage: _Stage, resume: bool) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """The stage's last committed training state if `resume` (None without one or an out_dir);
    ValueError, with the log closed, for a state not to be overwritten or not to be continued."""
    if stage.ckpt_dir is None:
        return None
    if not resume:
        if (stage.ckpt_dir / f"{stage.name}_state.json").is_file():
            stage.log.close()
            raise ValueError(
                f"out_dir {stage.ckpt_dir.parent} already holds a {stage.name} checkpoint: pass "
                "resume=True to continue it, or choose another out_dir"
            )
        return None
    try:
        state = ckpt.load_training_state(stage.ckpt_dir, stage.name)
    except ValueError:
        stage.log.close()
        raise
    if state is None:
        return None
    # an fp32 config records no precision (states from before it existed); compare it all the same
    saved = {"precision": "fp32"} | state[0].get("config", {})
    for key, value in ({"precision": "fp32"} | stage.cfg.to_dict()).items():
        if key == "data" and key not in saved:
            continue  # a state written before the data's fingerprint was recorded
        if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(value)):
            stage.log.close()
            if key == "data":
                raise ValueError(
                    f"resume: out_dir holds a {stage.name} run on other data: same shape "
                    f"{tuple(stage.cfg.data_shape)}, different values (fingerprint "
                    f"{str(saved[key])[:12]}... when it was written, {str(value)[:12]}... now)"
                )
            raise ValueError(
                f"resume: out_dir holds a {stage.name} run with {key}={saved.get(key)!r}, "
                f"this call has {key}={value!r}"
            )
    return state


def _save_state(
    stage: _Stage,
    round_: int,
    iteration: int,
    modules: dict[str, nn.Module],
    opt: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Commit the training state (a collective call under DDP: every rank's generators); fp16's
    loss `scaler` goes with the optimizer."""
    rng = _gather_rng(stage.gens, stage.ctx)
    if stage.ctx.main and stage.ckpt_dir is not None:
        tensors, scalars = dict(rng), None
        for prefix, module in modules.items():
            tensors.update(_put(prefix, module.state_dict()))
        if opt is not None:
            opt_tensors, scalars = ckpt.optimizer_to_tensors(opt)
            tensors.update(opt_tensors)
        info = {
            "config": stage.cfg.to_dict(),
            "round": round_,
            "iteration": iteration,
            "optimizer": scalars,
            "elapsed": time.perf_counter() - stage.t0,
            "log_bytes": stage.log.size(),
            **stage.cfg.progress_info(round_, iteration),
        } | ({} if scaler is None else {"scaler": scaler.state_dict()})
        ckpt.save_training_state(stage.ckpt_dir, stage.name, tensors, info)
    stage.last_commit = (round_, iteration)
    stage.ctx.barrier()


def _save_model(
    stage: _Stage, stem: str, model: nn.Module, steps: int | None, round_: int, iteration: int
) -> None:
    """Write the model checkpoint `<stem>.safetensors|json` (rank 0, when there is an out_dir)."""
    if stage.ctx.main and stage.ckpt_dir is not None:
        cfg = stage.cfg
        info = {
            "steps": steps,
            "schedule": ckpt.schedule_to_dict(cfg.schedule),
            "param": cfg.param,
            "weighting": cfg.weighting,
            "round": round_,
            "iteration": iteration,
        }
        ckpt.save_model_checkpoint(stage.ckpt_dir / stem, model, info)


def _load_module(module: nn.Module, prefix: str, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Load the `prefix/` tensors of a training state into `module`; ValueError if they do not fit."""
    try:
        module.load_state_dict(_take(prefix, tensors))
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(
            f"resume: the {prefix} weights in {info.get('tensors_file')} do not fit this model "
            f"(was the model or its settings changed?): {detail[:300]}"
        ) from err


def _take(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors stored under `prefix/`, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def _put(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def _intact(stem: Path) -> bool:
    """Whether the model checkpoint `stem` exists and passes its SHA-256 check (warns if damaged)."""
    if not stem.with_suffix(".safetensors").is_file():
        return False
    try:
        ckpt.verify_model_checkpoint(stem)
    except ckpt.CheckpointError as err:
        message = f"{err}; writing it again from the training state"
        warnings.warn(message, ckpt.CheckpointFallbackWarning, stacklevel=3)
        return False
    return True
