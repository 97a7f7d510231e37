"""Teacher training and progressive distillation under DistributedDataParallel:
2 CPU processes with the gloo backend. The ranks must end with identical weights, rank 0 alone
writes checkpoints and the log, and a run crashed mid-teacher and mid-round resumes to the same
weights as an uninterrupted run."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pd_fast
from pd_fast.app import checkpoint as ckpt
from tests._tiny import TinyMLP, eight_gaussians
from tests.app import _ddp_worker

WORLD = 2


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs tests/app/_ddp_worker.py on 2 ranks (forked from a forkserver that imported torch once)."""
    out = tmp_path_factory.mktemp("ddp")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "torch._dynamo", "torch.distributed", "pd_fast", "tests.app._ddp_worker"]
    )
    procs = [
        ctx.Process(target=_ddp_worker.run, args=(rank, WORLD, str(out / "store"), str(out)))
        for rank in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORLD, (
        "a rank failed (its traceback is in the captured stderr)"
    )
    return out


def test_ranks_end_with_identical_weights(ddp_run: Path) -> None:
    for run in ("a", "b"):
        rank0, rank1 = (load_file(ddp_run / run / f"rank{r}.safetensors") for r in range(WORLD))
        assert rank0.keys() == rank1.keys() and any(k.startswith("student_1/") for k in rank0)
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), key


def test_rank_0_alone_writes_checkpoints_and_log_with_every_ranks_rng(ddp_run: Path) -> None:
    ckpt_dir = ddp_run / "a" / "checkpoints"
    names = {p.name for p in ckpt_dir.iterdir()}
    assert {
        f"{n}.{ext}" for n in ("teacher", "student_2", "student_1") for ext in ("safetensors", "json")
    } <= names
    log = [json.loads(line) for line in (ddp_run / "a" / "log.jsonl").read_text().splitlines()]
    keys = [(r["phase"], r["round"], r["iteration"]) for r in log]
    assert len(keys) == len(set(keys)) == 8 + 2 * 4  # teacher 15 iters every 2 (+ last), 2 rounds x 4
    info, tensors = ckpt.load_training_state(ckpt_dir, "distill")
    assert info["config"]["world_size"] == WORLD and info["round"] == 2
    # each rank draws from its own generators: their states differ
    assert not torch.equal(tensors["rng/0/data"], tensors["rng/1/data"])
    assert not torch.equal(tensors["rng/0/noise"], tensors["rng/1/noise"])


def test_crashed_and_resumed_ddp_run_equals_the_uninterrupted_one(ddp_run: Path) -> None:
    a, b = (load_file(ddp_run / run / "rank0.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in ("teacher", "student_2", "student_1"):
        got = (ddp_run / "b" / "checkpoints" / f"{name}.safetensors").read_bytes()
        assert got == (ddp_run / "a" / "checkpoints" / f"{name}.safetensors").read_bytes(), name
    assert _log_without_time(ddp_run / "a") == _log_without_time(ddp_run / "b")


def _log_without_time(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_iteration(ddp_run: Path) -> None:
    stopped = [json.loads((ddp_run / "c" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # TEACHER checkpoints every 5 and logs every 2 iterations: the NaN of iteration 7 is found at 8
    assert stopped == [{"stage": "teacher", "round": 0, "iteration": 7}] * WORLD
    info, _ = ckpt.load_training_state(ddp_run / "c" / "checkpoints", "teacher")
    assert info["iteration"] == 5 and not (ddp_run / "c" / "checkpoints" / "teacher.safetensors").exists()


def test_resuming_with_another_world_size_is_rejected(ddp_run: Path) -> None:
    teacher = TinyMLP(seed=0)
    pd_fast.load_model_checkpoint(ddp_run / "a" / "checkpoints" / "teacher.safetensors", teacher)
    with pytest.raises(ValueError, match="world_size"):
        pd_fast.progressive_distill(
            teacher, eight_gaussians(256, seed=1), 4, 1, out_dir=ddp_run / "a", resume=True, progress=False,
            seed=3, **{k: v for k, v in _ddp_worker.DISTILL.items() if k not in ("ckpt_every", "log_every")},
        )  # fmt: skip


def test_barrier_under_nccl_names_the_rank_device(monkeypatch):
    """Under NCCL a barrier must name the rank's own device (else NCCL guesses device 0 on every
    rank); gloo takes none. Checked through stand-ins, as no GPU is needed for the logic."""
    from pd_fast.app.training import distributed

    calls = []
    monkeypatch.setattr(distributed.dist, "barrier", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(distributed.torch.cuda, "current_device", lambda: 3)
    ctx = distributed._Dist(rank=1, world=2)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    ctx.barrier()
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    ctx.barrier()
    assert calls == [{"device_ids": [3]}, {}]
