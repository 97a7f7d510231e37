"""Teacher training and progressive distillation: input checks, the
round structure of [PD] Algorithm 2 (time grid, LR annealing, EMA, gradient clipping, each round
starting from the previous student), the log, and a short distillation that beats DDIM at the
same step count by an independent Frechet distance, the fused (Triton) path against the torch
path, and an in-process crash-and-resume, bitwise, on CPU and CUDA."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import pd_fast
from pd_fast import progressive_distill, train_teacher
from tests._tiny import TinyMLP, eight_gaussians, frechet_distance

QUIET = dict(progress=False)


def _data(n: int = 64) -> torch.Tensor:
    return eight_gaussians(n, seed=0)


# ----- bad input -------------------------------------------------------------------------------


def _bad_data() -> dict[str, tuple[object, str]]:
    good = _data(8)
    nan, inf = good.clone(), good.clone()
    nan[3, 1] = float("nan")
    inf[5, 0] = float("inf")
    return {
        "1-D": (good[:, 0], "at least 2 dims"),
        "NaN": (nan, "NaN or infinite.*example 3"),
        "inf": (inf, "NaN or infinite.*example 5"),
        "above 1": (good * 1.5, r"\[-1, 1\]"),
        "below -1": (torch.cat([good, torch.tensor([[-1.01, 0.0]])]), r"\[-1, 1\]"),
        "integers": (torch.zeros(8, 2, dtype=torch.int64), "floating point"),
        "empty": (torch.zeros(0, 2), "at least one"),
        "not numeric": ("digits", "floating point|tensor or array"),
    }


@pytest.mark.parametrize("case", list(_bad_data()))
@pytest.mark.parametrize("entry", ["train_teacher", "progressive_distill"])
def test_bad_data_is_rejected_with_a_value_error_naming_data(entry: str, case: str) -> None:
    data, message = _bad_data()[case]
    with pytest.raises(ValueError, match=f"^data .*({message})"):
        if entry == "train_teacher":
            train_teacher(TinyMLP(), data, iters=1, **QUIET)
        else:
            progressive_distill(TinyMLP(), data, 2, 1, iters=1, **QUIET)


def test_data_as_a_numpy_array_in_range_is_accepted() -> None:
    students = progressive_distill(TinyMLP(), _data(16).numpy(), 2, 1, iters=1, batch_size=4, **QUIET)
    assert list(students) == [1]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(start_steps=6, end_steps=1), "start_steps"),
        (dict(start_steps=4, end_steps=4), "start_steps"),
        (dict(start_steps=4, end_steps=0), "end_steps"),
        (dict(param="z"), "param"),
        (dict(weighting="snr2"), "weighting"),
        (dict(iters=0), "iters"),
        (dict(lr=-1.0), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(last_rounds_factor=0.0), "last_rounds_factor"),
        (dict(grad_clip=float("nan")), "grad_clip"),
        (dict(schedule="cosine"), "schedule"),
    ],
)
def test_bad_settings_are_rejected_with_a_value_error_naming_them(kwargs: dict, name: str) -> None:
    args = dict(start_steps=4, end_steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        progressive_distill(
            TinyMLP(), _data(), args.pop("start_steps"), args.pop("end_steps"), **args, **QUIET
        )


@pytest.mark.parametrize(
    ("kwargs", "name"), [(dict(ema_decay=1.0), "ema_decay"), (dict(warmup=-1), "warmup")]
)
def test_bad_teacher_settings_are_rejected(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        train_teacher(TinyMLP(), _data(), iters=1, **kwargs, **QUIET)


# ----- the loop --------------------------------------------------------------------------------


class _TimeRecorder(TinyMLP):
    """Records, for every instance (deep copies included), the times it is called at, by mode
    (students train, teachers are in eval mode)."""

    calls_at: list[tuple[int, bool, float]] = []

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _TimeRecorder.calls_at.extend((id(self), self.training, round(v, 6)) for v in t.tolist())
        return super().forward(z, t)

    def seen(self, training: bool) -> set[float]:
        return {v for who, mode, v in _TimeRecorder.calls_at if who == id(self) and mode == training}


def test_students_train_on_the_grid_i_over_n_and_teachers_step_through_the_half_grid() -> None:
    # [PD] Algorithm 2: t = i/N, i uniform in 1..N; the teacher steps t -> t - 0.5/N -> t - 1/N
    _TimeRecorder.calls_at = []
    teacher = _TimeRecorder(seed=1)
    rounds: dict[int, torch.nn.Module] = {}
    progressive_distill(
        teacher, _data(), 8, 2, iters=12, batch_size=16, on_round_end=rounds.__setitem__, **QUIET
    )
    assert list(rounds) == [4, 2]
    assert teacher.seen(True) == set()
    assert teacher.seen(False) == {i / 8 for i in range(1, 9)}  # t = i/4 and t' = i/4 - 1/8
    assert rounds[4].seen(True) == {0.25, 0.5, 0.75, 1.0}
    assert rounds[4].seen(False) == {0.25, 0.5, 0.75, 1.0}  # round 2's teacher: i/2 and i/2 - 1/4
    assert rounds[2].seen(True) == {0.5, 1.0} and rounds[2].seen(False) == set()


def test_distillation_returns_a_student_per_round_and_leaves_the_teacher_untouched() -> None:
    teacher = TinyMLP(seed=3).train()
    before = copy.deepcopy(teacher.state_dict())
    students = progressive_distill(teacher, _data(), 8, 1, iters=3, batch_size=8, **QUIET)
    assert list(students) == [4, 2, 1]
    assert all(not s.training for s in students.values()) and teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    weights = [s.net[0].weight for s in [teacher, *students.values()]]
    assert all(not torch.equal(a, b) for a, b in zip(weights, weights[1:], strict=False))


@pytest.mark.parametrize("param", ["eps", "x", "v", "both"])
def test_every_param_and_a_discrete_schedule_train_to_finite_weights(param: str) -> None:
    schedule = pd_fast.DiscreteSchedule.from_betas("linear", 64)
    model = TinyMLP(out_dim=4 if param == "both" else 2)
    ema = train_teacher(model, _data(), schedule=schedule, param=param, iters=3, batch_size=8, **QUIET)
    students = progressive_distill(ema, _data(), 4, 1, schedule=schedule, param=param, iters=3, **QUIET)
    for m in [ema, *students.values()]:
        assert all(torch.isfinite(p).all() for p in m.parameters())


def test_round_lr_anneals_linearly_to_zero_and_last_rounds_get_extra_iterations(tmp_path: Path) -> None:
    progressive_distill(
        TinyMLP(), _data(), 8, 1, iters=10, last_rounds_factor=1.5, lr=2e-3, batch_size=8, out_dir=tmp_path,
        log_every=1, **QUIET,
    )  # fmt: skip
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"distill"}
    per_round = {s: [r for r in log if r["steps"] == s] for s in (4, 2, 1)}
    assert [len(v) for v in per_round.values()] == [10, 15, 15]
    for records in per_round.values():
        n = len(records)
        assert [r["iteration"] for r in records] == list(range(1, n + 1))
        assert [r["lr"] for r in records] == pytest.approx([2e-3 * (n - k) / n for k in range(n)], rel=1e-12)
        assert all(math.isfinite(r["loss"]) and r["grad_norm"] >= 0 for r in records)
    times = [r["time"] for r in log]
    assert times == sorted(times)


def test_teacher_ema_follows_its_warm_up_formula_and_lr_warms_up(tmp_path: Path) -> None:
    # one update: decay = min(ema_decay, (1 + 0) / (10 + 0)) = 0.1, so ema = 0.1 w_0 + 0.9 w_1
    model = TinyMLP(seed=5)
    w0 = copy.deepcopy(model.state_dict())
    ema = train_teacher(model, _data(), iters=1, ema_decay=0.999, lr=1e-2, **QUIET)
    w1 = model.state_dict()
    for name, value in ema.state_dict().items():
        if name == "freqs":
            assert torch.equal(value, w1[name])
        else:
            assert not torch.equal(w0[name], w1[name])
            torch.testing.assert_close(value, 0.1 * w0[name] + 0.9 * w1[name], rtol=1e-6, atol=1e-7)
    # ema_decay = 0: the EMA is the trained weights; the LR ramps up over `warmup` iterations
    model = TinyMLP(seed=6)
    ema = train_teacher(
        model, _data(), iters=6, warmup=4, lr=1e-2, ema_decay=0.0, out_dir=tmp_path, log_every=1, **QUIET
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ema.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
    info = json.loads((tmp_path / "checkpoints" / "teacher.json").read_text())
    assert info["param"] == "v" and info["schedule"]["kind"] == "cosine" and info["iteration"] == 6


def test_an_existing_run_needs_resume_and_the_same_settings(tmp_path: Path) -> None:
    teacher = TinyMLP(seed=7)
    first = progressive_distill(teacher, _data(), 4, 1, iters=4, batch_size=8, out_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="resume=True"):
        progressive_distill(teacher, _data(), 4, 1, iters=4, batch_size=8, out_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="batch_size"):
        progressive_distill(
            teacher, _data(), 4, 1, iters=4, batch_size=9, out_dir=tmp_path, resume=True, **QUIET
        )
    with pytest.raises(ValueError, match="teacher"):
        progressive_distill(
            TinyMLP(seed=8), _data(), 4, 1, iters=4, batch_size=8, out_dir=tmp_path, resume=True
        )
    # resuming a finished run trains nothing and returns the saved students
    TinyMLP.calls = 0
    again = progressive_distill(
        teacher, _data(), 4, 1, iters=4, batch_size=8, out_dir=tmp_path, resume=True, **QUIET
    )
    assert TinyMLP.calls == 0 and list(again) == [2, 1]
    for n in (2, 1):
        assert all(torch.equal(v, first[n].state_dict()[k]) for k, v in again[n].state_dict().items())


def _global_norm(tensors: list[torch.Tensor]) -> float:
    """sqrt(sum of squares) of all elements, in float64."""
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in tensors))


@pytest.mark.parametrize("grad_clip", [0.05, None])
def test_the_optimizer_steps_with_gradients_clipped_to_global_norm_grad_clip(
    grad_clip: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/spec.md section 6: clipping at a global norm. The raw gradients are read just before
    # the clipping call, the ones Adam steps with by an optimizer step pre-hook; both norms here.
    raw: list[float] = []
    seen: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def clip_and_record(params, *args, **kwargs):
        raw.append(_global_norm([q.grad for q in params if q.grad is not None]))
        return clip(params, *args, **kwargs)

    def before_step(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        seen.append(
            _global_norm([q.grad for g in opt.param_groups for q in g["params"] if q.grad is not None])
        )

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_record)
    handle = register_optimizer_step_pre_hook(before_step)
    try:
        settings = dict(batch_size=16, grad_clip=grad_clip, **QUIET)
        ema = train_teacher(TinyMLP(seed=4), _data(), iters=4, lr=1e-2, warmup=1, **settings)
        progressive_distill(ema, _data(), 4, 1, iters=3, lr=1e-2, **settings)
    finally:
        handle.remove()
    assert len(seen) == len(raw) == 4 + 3 + 3
    if grad_clip is None:
        assert seen == pytest.approx(raw, rel=1e-12)
    else:
        assert min(raw) > 2 * grad_clip  # every update is clipped, to the threshold (not below it)
        assert all(grad_clip * (1 - 1e-5) <= n <= grad_clip * (1 + 1e-6) for n in seen), seen


class _FirstWeights(TinyMLP):
    """Records, for every instance (deep copies included), its weights at its first call in
    training mode (a student before its first update)."""

    first: dict[int, dict[str, torch.Tensor]] = {}

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.training and id(self) not in _FirstWeights.first:
            _FirstWeights.first[id(self)] = copy.deepcopy(self.state_dict())
        return super().forward(z, t)


def test_each_round_starts_from_the_previous_rounds_final_student() -> None:
    # [PD] Algorithm 2: the student is a copy of the teacher, and after each round the student
    # becomes the teacher. So round k's student starts bitwise at round k-1's final student
    # (round 1's at the teacher), neither at the original teacher nor at fresh random weights.
    _FirstWeights.first = {}
    teacher = _FirstWeights(seed=9).eval()
    start = copy.deepcopy(teacher.state_dict())
    finals: list[tuple[int, dict[str, torch.Tensor]]] = []
    progressive_distill(
        teacher, _data(), 8, 1, iters=3, batch_size=8, lr=1e-2,
        on_round_end=lambda steps, s: finals.append((id(s), copy.deepcopy(s.state_dict()))), **QUIET,
    )  # fmt: skip
    assert len(finals) == 3 and id(teacher) not in _FirstWeights.first

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    previous = start
    for who, final in finals:
        assert same(_FirstWeights.first[who], previous)
        assert not same(final, previous)  # the round trained: the next start is a new point
        previous = final


# ----- it works --------------------------------------------------------------------------------


def test_a_short_distillation_beats_ddim_at_the_same_step_count() -> None:
    """8-Gaussians in 2-D: a teacher trained briefly, distilled 8 -> 4 -> 2 steps. The 2-step
    student is compared with the teacher's own DDIM at 2 and at 4 steps by the Frechet distance
    (NumPy/SciPy, independent of pd_fast) to fresh data."""
    data = eight_gaussians(4096, seed=10)
    reference = eight_gaussians(4096, seed=11).numpy()
    schedule = pd_fast.CosineSchedule()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and the cores are shared
    try:
        teacher = train_teacher(
            TinyMLP(hidden=64, seed=12), data, iters=300, batch_size=256, lr=2e-3, warmup=30, seed=1, **QUIET
        )
        students = progressive_distill(
            teacher, data, 8, 2, iters=80, batch_size=256, lr=1e-3, seed=2, **QUIET
        )
    finally:
        torch.set_num_threads(threads)
    z = torch.randn(4096, 2, generator=torch.Generator().manual_seed(13))

    def distance(model: torch.nn.Module, steps: int) -> float:
        with torch.no_grad():
            return frechet_distance(pd_fast.sample(model, z, steps, schedule, "v").numpy(), reference)

    ddim_2, ddim_4, ddim_8 = (distance(teacher, n) for n in (2, 4, 8))
    student_2 = distance(students[2], 2)
    floor = frechet_distance(eight_gaussians(4096, seed=14).numpy(), reference)
    print(
        f"FD: floor {floor:.4g}, DDIM 2/4/8 {ddim_2:.4g}/{ddim_4:.4g}/{ddim_8:.4g}, student 2 {student_2:.4g}"
    )
    assert np.isfinite(student_2)
    assert student_2 < 0.5 * ddim_2
    assert student_2 < ddim_4


# ----- the fused (Triton) path -----------------------------------------------------------------


def _tiny_job(device: str, **kwargs) -> list[torch.nn.Module]:
    data = _data(64)
    ema = train_teacher(TinyMLP(seed=1).to(device), data, iters=5, batch_size=8, **kwargs, **QUIET)
    students = progressive_distill(ema, data, 4, 1, iters=3, batch_size=8, **kwargs, **QUIET)
    return [ema, *students.values()]


def _max_difference(a: list[torch.nn.Module], b: list[torch.nn.Module]) -> float:
    return max(
        float((p.detach().cpu() - q.detach().cpu()).abs().max())
        for m, n in zip(a, b, strict=True)
        for p, q in zip(m.parameters(), n.parameters(), strict=True)
    )


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton path on CPU needs TRITON_INTERPRET=1"
)
def test_training_through_the_fused_triton_loss_matches_the_torch_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the path CUDA takes (fused loss kernel + its autograd.Function, fused sampler steps in the
    # teacher), here under the Triton interpreter on CPU, against the plain torch path
    monkeypatch.setenv("PD_FAST_BACKEND", "torch")
    plain = _tiny_job("cpu")
    monkeypatch.setenv("PD_FAST_BACKEND", "triton")
    fused = _tiny_job("cpu")
    assert _max_difference(plain, fused) < 1e-6


def test_run_crashed_mid_round_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, device: torch.device
) -> None:
    # in-process crash (the SIGKILL version, bitwise on CPU, is tests/app/test_resume.py); here also on CUDA
    data = _data(64)
    settings = dict(iters=6, batch_size=8, ckpt_every=2, **QUIET)

    def job(out: Path, crash_at: int | None) -> list[torch.nn.Module]:
        ema = train_teacher(TinyMLP(seed=1).to(device), data, out_dir=out, **settings)
        calls = {"n": 0, "crashed": 0}

        def crash(module: torch.nn.Module, args: tuple) -> None:
            if isinstance(module, TinyMLP):
                calls["n"] += 1
                if calls["n"] == crash_at:
                    calls["crashed"] += 1
                    raise KeyboardInterrupt

        handle = torch.nn.modules.module.register_module_forward_pre_hook(crash)
        try:
            students = progressive_distill(ema, data, 4, 1, out_dir=out, **settings)
        except KeyboardInterrupt:
            students = progressive_distill(ema, data, 4, 1, out_dir=out, resume=True, **settings)
        finally:
            handle.remove()
        assert calls["crashed"] == (crash_at is not None)
        return [ema, *students.values()]

    # round 1: 6 iterations x 3 calls; call 28 is the first of iteration 4 of round 2 (checkpoint at 2).
    # Bitwise, as the SIGKILL test: not restoring the data generator moves the weights by ~6e-8.
    # (On CUDA this rests on the Triton loss summing per-chunk partials, no atomics, and on cuBLAS
    # being bitwise reproducible within one process and stream.)
    whole, cut = job(tmp_path / "whole", None), job(tmp_path / "cut", 28)
    for a, b in zip(whole, cut, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
