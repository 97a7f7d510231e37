"""Mixed precision in the one training loop (`precision` of `train_teacher`, `progressive_distill`
and `distill_guidance`): a bf16 or fp16 iteration's loss and gradient norm are fp32's within the
dtype's rounding, and a short bf16 run learns; the trained network runs under autocast on fp32
weights while the targets' network is a copy with bf16 parameters; fp16's loss scaler skips an
update with an infinite gradient without calling it divergence (a NaN loss, or updates skipped
without end, still stop training), and its state goes into the training state so that a resume
continues bitwise; fp32 is the plain fp32 update, bitwise; a resume with another precision is
refused; a precision not among the three is a ValueError naming it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import pd_fast
from pd_fast import distill_guidance, progressive_distill, train_teacher
from pd_fast.app.data import load_data
from pd_fast.app.models import ResidualMLP
from pd_fast.app.training import MAX_SKIPPED, TrainingDiverged
from pd_fast.app.training.precision import _frozen
from pd_fast.app.training.rng import _Generators
from tests._tiny import TinyMLP, eight_gaussians

QUIET = dict(progress=False)
TEACHER = dict(batch_size=16, lr=1e-3, warmup=1, **QUIET)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: faster, and the same reductions in every run
    yield
    torch.set_num_threads(threads)


def _conditional_teacher() -> ResidualMLP:
    """A conditional `ResidualMLP` whose output depends on z, t and c (its output layer, zero at
    init, moved by seeded noise)."""
    model = ResidualMLP((2,), hidden=16, depth=1, num_classes=3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _losses(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


def _first_record(stage: str, precision: str, out_dir: Path) -> tuple[float, float]:
    """The loss and gradient norm of the first iteration of `stage` (batch 128), from the log."""
    x = eight_gaussians(256, seed=0)
    run = dict(iters=1, batch_size=128, log_every=1, out_dir=out_dir, precision=precision, **QUIET)
    if stage == "teacher":
        train_teacher(TinyMLP(seed=0), x, warmup=1, **run)
    elif stage == "distill":  # 256 -> 128 steps: the targets amplify the teacher's rounding most
        progressive_distill(TinyMLP(seed=0), x, 256, 128, **run)
    else:
        labels = torch.arange(256) % 3
        distill_guidance(_conditional_teacher(), x, labels, **run)
    record = json.loads((out_dir / "log.jsonl").read_text().splitlines()[0])
    return record["loss"], record["grad_norm"]


# A half dtype of p significant bits (bf16 8, fp16 11) rounds each value by up to 2^-p (3.9e-3,
# 4.9e-4). The networks here round inputs and weights at each of a few layers, errors that partly
# cancel over the batch, and the guided target (1 + w) x_c - w x_u weighs its teacher's errors up to
# 2w + 1 = 9 times (w <= 4). bf16 measured: loss and gradient norm 0.1-0.3% off (teacher), <= 0.4%
# (distill), 0.7-1.2% (guidance); fp16 <= 0.06%. Five roundings, 5 * 2^-p, hold them all; a target
# of a network off the time grid or with rounded frequencies is 20-40% off, an fp16 gradient norm
# left scaled 2^16 times.
RTOL = {"bf16": 5 * 2.0**-8, "fp16": 5 * 2.0**-11}


# (precision, stage); no fp16 teacher: the scaler skips its first update (2^16 overflows there)
BF16, FP16 = ("teacher", "distill", "guidance"), ("distill", "guidance")
CASES = [("bf16", s) for s in BF16] + [("fp16", s) for s in FP16]


@pytest.mark.parametrize(("precision", "stage"), CASES)
def test_one_half_precision_iteration_has_fp32s_loss_and_gradient_norm_within_its_rounding(
    precision: str, stage: str, tmp_path: Path
) -> None:
    fp32 = _first_record(stage, "fp32", tmp_path / "fp32")
    half = _first_record(stage, precision, tmp_path / precision)
    assert half[0] != fp32[0]  # the network did run in the half dtype
    for got, want in zip(half, fp32, strict=True):
        assert abs(got - want) <= RTOL[precision] * want, (half, fp32)


def test_a_short_bf16_run_on_the_digits_lowers_the_loss(tmp_path: Path) -> None:
    model = ResidualMLP((1, 8, 8), hidden=32, depth=1, emb_dim=16)
    x = load_data("digits").x
    run = dict(iters=60, batch_size=64, lr=2e-3, warmup=5, log_every=1, out_dir=tmp_path, **QUIET)
    train_teacher(model, x, precision="bf16", **run)
    losses = _losses(tmp_path)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert len(losses) == 60 and last < 0.85 * first, (first, last)  # fp32 and bf16: 0.76 first


def test_the_trained_network_runs_under_autocast_on_fp32_weights_and_the_targets_on_bf16_copies() -> None:
    teacher, calls = TinyMLP(seed=0), []

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        weight = module.net[0].weight.dtype
        calls.append((torch.is_grad_enabled(), weight, torch.is_autocast_enabled("cpu"), args[1].dtype))

    teacher.register_forward_hook(record)  # deep copies (students, the half copy) keep it
    students = progressive_distill(teacher, eight_gaussians(64, seed=0), 4, 1, iters=2, batch_size=8,
                                   precision="bf16", **QUIET)  # fmt: skip
    student_calls = {c[1:] for c in calls if c[0]}
    target_calls = {c[1:] for c in calls if not c[0]}
    # both under autocast, t in fp32: the student's weights fp32, the target network's bf16
    assert student_calls == {(torch.float32, True, torch.float32)}
    assert target_calls == {(torch.bfloat16, True, torch.float32)}
    for model in (teacher, *students.values()):
        assert {p.dtype for p in model.parameters()} == {torch.float32}


class _Weights:
    """The weights `model` saw at each forward (a pre-hook): update k (1-based) was skipped iff
    forward k + 1 saw the weights of forward k (`skipped(final)`, with the weights after the run)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.seen = model, []
        model.register_forward_pre_hook(lambda m, args: self.seen.append(self._now()))

    def _now(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]

    def skipped(self) -> list[int]:
        seen = [*self.seen, self._now()]
        same = [all(map(torch.equal, a, b)) for a, b in zip(seen[:-1], seen[1:], strict=True)]
        return [k + 1 for k, s in enumerate(same) if s]


def _infinite_gradient_at(model: TinyMLP, updates: set[int] | None) -> None:
    """Make one weight's gradient infinite at the backward of the given updates (1-based; None: all)."""
    count = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        count.append(1)
        return torch.full_like(grad, math.inf) if updates is None or len(count) in updates else grad

    model.net[0].weight.register_hook(hook)


def test_fp16_skips_an_update_with_an_infinite_gradient_and_checkpoints_its_scaler(tmp_path: Path) -> None:
    bad, iters, data = 5, 12, eight_gaussians(64, seed=0)
    run = dict(iters=iters, ckpt_every=6, log_every=4, precision="fp16", **TEACHER)
    clean = TinyMLP(seed=0)
    clean_weights = _Weights(clean)
    train_teacher(clean, data, **run)
    model = TinyMLP(seed=0)
    weights = _Weights(model)
    _infinite_gradient_at(model, {bad})
    ema = train_teacher(model, data, out_dir=tmp_path, **run)  # no TrainingDiverged
    skipped = weights.skipped()
    # the scaler's own skips while its scale (2^16 at first) comes down to fit: updates 1 and 4
    assert bad not in clean_weights.skipped() and bad in skipped, (clean_weights.skipped(), skipped)
    assert all(torch.isfinite(p).all() for p in ema.parameters())
    info = json.loads((tmp_path / "checkpoints" / "teacher_state.json").read_text())
    scaler = info["scaler"]
    assert info["config"]["precision"] == "fp16"
    # each skip halved the initial 2^16; the updates taken since the last skip count toward growth
    assert scaler["scale"] == 2.0**16 / 2 ** len(skipped)
    assert scaler["_growth_tracker"] == iters - max(skipped)


def test_fp16_a_nan_loss_still_stops_training_naming_its_iteration() -> None:
    bad, model = 7, TinyMLP(seed=0)
    calls = []

    def nan_at_bad(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return output * math.nan if len(calls) == bad else output

    model.register_forward_hook(nan_at_bad)
    with pytest.raises(TrainingDiverged, match=f"at iteration {bad}: the loss is nan") as err:
        train_teacher(model, eight_gaussians(64, seed=0), iters=10, precision="fp16", **TEACHER)
    assert (err.value.stage, err.value.iteration) == ("teacher", bad)


def test_fp16_updates_skipped_without_end_are_divergence() -> None:
    """An infinite gradient at every scale (not an fp16 overflow) would leave the weights frozen
    for ever: `MAX_SKIPPED` skipped updates in a row stop training at the last of them."""
    model = TinyMLP(seed=0)
    _infinite_gradient_at(model, None)
    with pytest.raises(TrainingDiverged, match=f"skipped {MAX_SKIPPED} updates in a row") as err:
        train_teacher(model, eight_gaussians(64, seed=0), iters=MAX_SKIPPED + 10, precision="fp16", **TEACHER)
    assert err.value.iteration == MAX_SKIPPED


class _Stop(Exception):
    pass


def test_fp16_resume_continues_bitwise_with_the_scaler_state(tmp_path: Path) -> None:
    data = eight_gaussians(64, seed=0)
    run = dict(iters=8, ckpt_every=4, log_every=4, precision="fp16", **TEACHER)
    whole = TinyMLP(seed=0)
    _infinite_gradient_at(whole, {2})  # a skip before the checkpoint: a scale other than the initial
    ema_whole = train_teacher(whole, data, out_dir=tmp_path / "whole", **run)

    cut = TinyMLP(seed=0)
    _infinite_gradient_at(cut, {2})
    calls = []

    def stop_at_six(module: nn.Module, args: tuple) -> None:
        calls.append(1)
        if len(calls) == 6:
            raise _Stop

    cut.register_forward_pre_hook(stop_at_six)
    with pytest.raises(_Stop):
        train_teacher(cut, data, out_dir=tmp_path / "cut", **run)
    resumed = TinyMLP(seed=1)  # its weights come from the state of iteration 4
    ema_resumed = train_teacher(resumed, data, out_dir=tmp_path / "cut", resume=True, **run)

    def state(name: str) -> dict:
        return json.loads((tmp_path / name / "checkpoints" / "teacher_state.json").read_text())

    assert state("cut")["scaler"] == state("whole")["scaler"]
    assert state("whole")["scaler"]["scale"] < 2.0**16
    for a, b in ((whole, resumed), (ema_whole, ema_resumed)):
        assert all(map(torch.equal, a.state_dict().values(), b.state_dict().values()))


def test_fp32_is_the_plain_fp32_update_bitwise() -> None:
    """Two teacher updates written out by hand from the spec (docs/spec.md section 5: x, t ~ U(0, 1],
    eps, z_t, the loss against x, Adam on the clipped gradient at the warm-up LR) with the stage's
    seeded generators: `precision="fp32"` gives the same weights, bit for bit."""
    data, seed, lr, warmup, batch = eight_gaussians(64, seed=0), 3, 1e-3, 2, 16
    trained = TinyMLP(seed=0)
    train_teacher(trained, data, iters=2, batch_size=batch, lr=lr, warmup=warmup, seed=seed, precision="fp32",
                  **QUIET)  # fmt: skip

    model, schedule = TinyMLP(seed=0), pd_fast.CosineSchedule()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gens = _Generators.seeded(seed, 0, "teacher", torch.device("cpu"))
    for k in range(2):
        x = data[torch.randint(0, data.shape[0], (batch,), generator=gens.data)]
        t = 1.0 - torch.rand(batch, generator=gens.data, dtype=torch.float64)
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        z_t = pd_fast.diffuse(x, t, schedule, torch.randn(x.shape, generator=gens.noise))
        out = model(z_t, t.float())
        loss = pd_fast.fused_distill_loss(out, z_t, x, alpha_t, sigma_t, 1.0, 0.0, "v").mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.param_groups[0]["lr"] = lr * min(1.0, (k + 1) / warmup)
        opt.step()
    assert all(map(torch.equal, trained.state_dict().values(), model.state_dict().values()))
    assert _frozen(model, "fp32") is model  # the targets' network: the model itself


@pytest.mark.parametrize(("first", "then"), [("bf16", "fp32"), ("fp32", "fp16"), ("fp16", "bf16")])
def test_a_resume_with_another_precision_is_refused(first: str, then: str, tmp_path: Path) -> None:
    data = eight_gaussians(64, seed=0)
    train_teacher(TinyMLP(seed=0), data, iters=2, out_dir=tmp_path, precision=first, **TEACHER)
    info = json.loads((tmp_path / "checkpoints" / "teacher_state.json").read_text())
    # fp32 records nothing, as the states written before `precision` existed, which still resume
    assert info["config"].get("precision") == (None if first == "fp32" else first)
    assert ("scaler" in info) == (first == "fp16")
    run = dict(iters=2, out_dir=tmp_path, resume=True, **TEACHER)
    with pytest.raises(ValueError, match=f"precision='{first}', this call has precision='{then}'"):
        train_teacher(TinyMLP(seed=0), data, precision=then, **run)
    train_teacher(TinyMLP(seed=0), data, precision=first, **run)  # the same precision resumes


@pytest.mark.parametrize("precision", ["fp8", "float16", "FP16", None, 16])
def test_a_precision_not_among_the_three_is_a_value_error_naming_it(precision: object) -> None:
    x, labels = eight_gaussians(16, seed=0), torch.arange(16) % 3
    calls = [
        lambda: train_teacher(TinyMLP(), x, iters=1, precision=precision, **QUIET),
        lambda: progressive_distill(TinyMLP(), x, 2, 1, iters=1, precision=precision, **QUIET),
        lambda: distill_guidance(_conditional_teacher(), x, labels, iters=1, precision=precision, **QUIET),
    ]
    expected = f"precision must be one of 'fp32', 'bf16', 'fp16', got {precision!r}"
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(expected)):
            call()


def test_half_precision_wants_float32_master_weights() -> None:
    with pytest.raises(ValueError, match="precision='bf16' trains float32 master weights.*torch.float64"):
        train_teacher(TinyMLP().double(), eight_gaussians(16, seed=0), iters=1, precision="bf16", **QUIET)
