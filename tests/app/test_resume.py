"""Checkpoints and resume: round trips of model, optimizer and training
state files, atomic commits, the layout of the state files that existing run folders hold, and a
run killed with SIGKILL (once mid-teacher, once mid-round) that resumes to final weights bitwise
equal to an uninterrupted run."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import pd_fast
from pd_fast.app import checkpoint as ckpt
from tests._tiny import TinyMLP, eight_gaussians
from tests.app import _train_worker


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----- round trips -----------------------------------------------------------------------------


def test_model_checkpoint_round_trip_restores_weights_and_description(tmp_path: Path) -> None:
    trained, fresh = TinyMLP(seed=1), TinyMLP(seed=2)
    assert not _state_dicts_equal(trained, fresh)
    schedule = pd_fast.DiscreteSchedule.from_betas("scaled_linear", 50)
    info = {"steps": 4, "schedule": ckpt.schedule_to_dict(schedule), "param": "both", "weighting": "snr+1"}
    path = ckpt.save_model_checkpoint(tmp_path / "student_4", trained, info)
    assert path.name == "student_4.safetensors" and (tmp_path / "student_4.json").is_file()
    loaded = pd_fast.load_model_checkpoint(path, fresh)
    assert _state_dicts_equal(trained, fresh)
    assert loaded == json.loads(json.dumps(info))
    rebuilt = pd_fast.schedule_from_dict(loaded["schedule"])
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for got, want in zip(rebuilt.alpha_sigma(t), schedule.alpha_sigma(t), strict=True):
        assert torch.equal(got, want)
    # a lone .safetensors file describes itself through its metadata
    (tmp_path / "student_4.json").unlink()
    assert ckpt.load_model_checkpoint(tmp_path / "student_4", TinyMLP(seed=3)) == loaded
    cosine = ckpt.schedule_from_dict(ckpt.schedule_to_dict(pd_fast.CosineSchedule(-15.0, 12.5)))
    assert (cosine.logsnr_min, cosine.logsnr_max) == (-15.0, 12.5)


def test_model_checkpoint_rejects_a_model_of_another_shape(tmp_path: Path) -> None:
    ckpt.save_model_checkpoint(tmp_path / "m", TinyMLP(hidden=32), {"steps": 1})
    with pytest.raises(ValueError, match="path"):
        ckpt.load_model_checkpoint(tmp_path / "m.safetensors", TinyMLP(hidden=16))
    with pytest.raises(ValueError, match="path"):
        ckpt.load_model_checkpoint(tmp_path / "missing.safetensors", TinyMLP())


def test_adam_state_round_trip_continues_exactly_like_the_original(tmp_path: Path) -> None:
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(16, generator=torch.Generator().manual_seed(1))

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        (model(x, t) ** 2).mean().backward()
        opt.step()

    model = TinyMLP(seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        step(model, opt)
    tensors, scalars = ckpt.optimizer_to_tensors(opt)
    assert any(k.endswith("/exp_avg_sq") for k in tensors)
    ckpt.save_tensors(
        tmp_path / "opt.safetensors", {**tensors, **{"model/" + k: v for k, v in model.state_dict().items()}}
    )
    ckpt.save_json(tmp_path / "opt.json", scalars)

    twin = TinyMLP(seed=5)
    loaded, _ = ckpt.load_tensors(tmp_path / "opt.safetensors")
    twin.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model/")})
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1.0)
    ckpt.optimizer_from_tensors(twin_opt, loaded, json.loads((tmp_path / "opt.json").read_text()))
    for _ in range(2):
        step(model, opt)
        step(twin, twin_opt)
    assert _state_dicts_equal(model, twin)


def test_training_state_commit_survives_a_kill_between_its_two_writes(tmp_path: Path) -> None:
    for i in (2, 4, 8):
        tensors = {"a": torch.full((3,), float(i))}
        ckpt.save_training_state(tmp_path, "distill", tensors, {"round": 1, "iteration": i})
    # the state and the one it replaced (kept to fall back to) remain, nothing older
    assert sorted(p.name for p in tmp_path.glob("distill_state-*")) == [
        "distill_state-r1-i4.safetensors",
        "distill_state-r1-i8.safetensors",
    ]
    # a kill after the tensors file of iteration 12 but before its JSON: the old state stands
    ckpt.save_tensors(tmp_path / "distill_state-r1-i12.safetensors", {"a": torch.full((3,), 3.0)})
    info, tensors = ckpt.load_training_state(tmp_path, "distill")
    assert info["iteration"] == 8 and torch.equal(tensors["a"], torch.full((3,), 8.0))
    assert not (tmp_path / "distill_state-r1-i12.safetensors").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert ckpt.load_training_state(tmp_path, "teacher") is None


def test_training_state_files_keep_the_layout_that_existing_run_folders_hold(tmp_path: Path) -> None:
    # a run folder written by an earlier version resumes only if the state JSON, its config keys
    # (compared key by key on resume), the tensor names and the log records keep this layout
    data = eight_gaussians(32, seed=0)
    common = dict(batch_size=8, out_dir=tmp_path, ckpt_every=2, log_every=1, progress=False)
    ema = pd_fast.train_teacher(TinyMLP(seed=1), data, iters=3, **common)
    pd_fast.progressive_distill(ema, data, 4, 1, iters=3, **common)
    shared = {"batch_size", "data", "data_shape", "grad_clip", "lr", "param", "schedule", "seed", "weighting"}
    expected = {
        "teacher": (shared | {"ema_decay", "iters", "warmup", "world_size"}, {"complete"}, {"model", "ema"}),
        "distill": (
            shared | {"end_steps", "round_iters", "start_steps", "teacher", "world_size"},
            {"completed"},
            set(),
        ),
    }
    for stage, (config_keys, own_keys, modules) in expected.items():
        info, tensors = ckpt.load_training_state(tmp_path / "checkpoints", stage)
        common_keys = {"config", "round", "iteration", "optimizer", "elapsed", "log_bytes", "stage"}
        assert set(info) == common_keys | own_keys | {"tensors_file", "tensors_sha256"}
        assert set(info["config"]) == config_keys
        assert {k.split("/")[0] for k in tensors} == modules | {"rng"} | ({"optim"} if modules else set())
        assert {"rng/0/data", "rng/0/noise", "rng/0/torch_cpu"} <= set(tensors)
    info, _ = ckpt.load_training_state(tmp_path / "checkpoints", "distill")
    assert info["completed"] == {"2": "student_2", "1": "student_1"} and info["round"] == 2
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    keys = ["phase", "round", "steps", "iteration", "loss", "lr", "grad_norm", "time"]
    assert all(list(r) == keys for r in records) and len(records) == 3 + 3 + 3
    model_info = json.loads((tmp_path / "checkpoints" / "student_1.json").read_text())
    assert set(model_info) == {"steps", "schedule", "param", "weighting", "round", "iteration", "sha256"}


# ----- kill -9 and resume ----------------------------------------------------------------------


def _context() -> multiprocessing.context.BaseContext:
    """A forkserver that has imported torch and pd_fast once: its children start in milliseconds
    (a fresh interpreter would spend seconds importing torch, and torch._dynamo, which Adam
    imports at its first step), and it has run no OpenMP region, so forking from it is safe."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "pd_fast", "tests.app._train_worker"])
    return ctx


def _worker(out: Path, resume: bool = False, sleep: float = 0.0) -> multiprocessing.Process:
    proc = _context().Process(target=_train_worker.run, args=(str(out), resume, sleep))
    proc.start()
    return proc


def _state(out: Path, stage: str) -> dict | None:
    path = out / "checkpoints" / f"{stage}_state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _kill_when(proc: multiprocessing.Process, ready, timeout: float = 60.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not proc.is_alive():
            raise AssertionError(f"worker ended (exit code {proc.exitcode}) before it could be killed")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint appeared in time")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


def _finish(proc: multiprocessing.Process, out: Path) -> dict:
    proc.join(timeout=120)
    assert proc.exitcode == 0, f"worker failed with exit code {proc.exitcode}"
    return json.loads((out / "result.json").read_text())


def _log_without_time(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for r in records:
        del r["time"]
    return records


def test_killed_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path) -> None:
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    reference = _worker(ref_dir)  # runs alongside the kill sequence

    # kill 1: mid teacher training, after a checkpoint
    proc = _worker(run_dir, sleep=0.05)
    _kill_when(proc, lambda: (s := _state(run_dir, "teacher")) is not None and s["iteration"] >= 7)
    killed_at = _state(run_dir, "teacher")["iteration"]
    assert killed_at < 40 and _state(run_dir, "distill") is None

    # kill 2: mid round 2 (4 -> 2 steps), after a checkpoint inside the round
    proc = _worker(run_dir, resume=True, sleep=0.02)
    _kill_when(
        proc, lambda: (s := _state(run_dir, "distill")) is not None and s["round"] == 1 and s["iteration"] > 0
    )
    state = _state(run_dir, "distill")
    assert state["round"] == 1 and 0 < state["iteration"] < 30

    resumed = _finish(_worker(run_dir, resume=True), run_dir)
    full = _finish(reference, ref_dir)
    # the last process really resumed: it ran fewer forward passes than the whole job
    assert 0 < resumed["forward_calls"] < full["forward_calls"]

    names = ["teacher", "student_4", "student_2", "student_1"]
    for name in names:
        got = (run_dir / "checkpoints" / f"{name}.safetensors").read_bytes()
        want = (ref_dir / "checkpoints" / f"{name}.safetensors").read_bytes()
        assert got == want, f"{name} differs after kill and resume"
    # the log continues where each checkpoint left it: no lost or repeated records
    assert _log_without_time(run_dir) == _log_without_time(ref_dir)
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if "state-" in p.name)
    # each stage's last state and the one before it (kept to fall back to)
    assert leftovers == [
        "distill_state-r2-i24.safetensors",
        "distill_state-r3-i0.safetensors",
        "teacher_state-r0-i35.safetensors",
        "teacher_state-r0-i40.safetensors",
    ]
