"""Guided distillation ([GD], docs/spec.md section 8) in the training loop and the `--guided` job:
the conditional teacher's label dropout (rate, determinism), the stage 1 and stage 2 losses against
an independent computation with `pd_ref` (float64 NumPy), stage 1's resume, bitwise, and a tiny
end-to-end `python -m pd_fast --guided` run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import pd_fast
import pd_ref
from pd_fast import NULL_LABEL, distill_guidance, progressive_distill, train_teacher
from pd_fast.app.models import ResidualMLP, w_conditioned_from
from tests._tiny import eight_gaussians

QUIET = dict(progress=False)
CLASSES = 3


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = eight_gaussians(n, seed=0)
    # a quarter of the examples have label 0, the rest 1 and 2 (frequencies the dropout test checks)
    labels = torch.tensor([0 if i % 4 == 0 else 1 + i % 2 for i in range(n)])
    return x, labels


def _perturbed(net: nn.Module, seed: int = 1, scale: float = 0.3) -> nn.Module:
    """`net` with every weight moved by seeded noise: an 'trained' network whose output depends
    on z, t, c (and w)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return net


class _Calls:
    """Records the inputs and output of every call of the top-level `ResidualMLP`s; raises
    `_Stop` at the `stop_at`-th call of a w-conditioned one."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[bool, tuple, torch.Tensor]] = []
        self.stop_at, self.student_calls = stop_at, 0

    def __enter__(self) -> _Calls:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not isinstance(module, ResidualMLP):
                return
            student = bool(module.config.get("w_conditioned"))
            self.calls.append((student, tuple(a.detach().clone() for a in args), output.detach().clone()))
            if student:
                self.student_calls += 1
                if self.student_calls == self.stop_at:
                    raise _Stop

        self.handle = nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


class _Stop(Exception):
    pass


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _ref_fn(net: nn.Module, *extra: torch.Tensor):
    """`net` as a pd_ref model: float64 arrays in, float64 out (the net runs in float32)."""

    def fn(z: np.ndarray, t: np.ndarray, *c: np.ndarray) -> np.ndarray:
        args = [
            torch.as_tensor(z, dtype=torch.float32),
            torch.as_tensor(np.broadcast_to(t, z.shape[:1]).copy()).float(),
        ]
        args += [torch.as_tensor(np.asarray(v)).long() for v in c] + list(extra)
        with torch.no_grad():
            return net(*args).double().numpy()

    return fn


def _hand_loss(z_t: np.ndarray, t: np.ndarray, out: np.ndarray, x_tilde: np.ndarray) -> float:
    """docs/spec.md section 5 by hand for param v, weighting snr_trunc: the batch mean of
    `max(alpha^2 / sigma^2, 1) * mean((alpha z_t - sigma v - x_tilde)^2)`."""
    alpha, sigma = pd_ref.CosineSchedule().alpha_sigma(t)
    x_hat = alpha[:, None] * z_t - sigma[:, None] * out
    weight = np.maximum(alpha**2 / sigma**2, 1.0)
    return float(np.mean(weight * np.mean((x_hat - x_tilde) ** 2, axis=1)))


# ----- the conditional teacher ------------------------------------------------------------------


def test_teacher_drops_labels_at_the_rate_p_uncond_and_keeps_the_class_frequencies():
    x, labels = _data()
    model = ResidualMLP((2,), hidden=16, depth=1, num_classes=CLASSES)
    with _Calls() as rec:
        train_teacher(model, x, labels=labels, p_uncond=0.3, iters=20, batch_size=64, warmup=0, **QUIET)
    cs = torch.cat([args[2] for student, args, _ in rec.calls if not student and len(args) == 3])
    assert cs.shape == (20 * 64,) and len(rec.calls) == 20  # every training call got labels
    n, dropped = cs.numel(), float((cs == NULL_LABEL).float().mean())
    sd = math.sqrt(0.3 * 0.7 / n)
    assert abs(dropped - 0.3) < 4 * sd
    kept = cs[cs != NULL_LABEL]
    assert set(kept.tolist()) <= {0, 1, 2}
    share0 = float((kept == 0).float().mean())  # a quarter of the data has label 0
    assert abs(share0 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / kept.numel())


def test_teacher_label_dropout_is_deterministic_and_p_uncond_zero_keeps_every_label():
    x, labels = _data()

    def run(seed: int, p: float) -> tuple[torch.Tensor, dict]:
        model = ResidualMLP((2,), hidden=16, depth=1, num_classes=CLASSES)
        with _Calls() as rec:
            ema = train_teacher(
                model, x, labels=labels, p_uncond=p, iters=5, batch_size=32, seed=seed, **QUIET
            )
        return torch.cat([args[2] for _, args, _ in rec.calls]), ema.state_dict()

    (c1, w1), (c2, w2), (c3, _) = run(0, 0.5), run(0, 0.5), run(1, 0.5)
    assert torch.equal(c1, c2) and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not torch.equal(c1, c3)
    c0, _ = run(0, 0.0)
    assert not bool((c0 == NULL_LABEL).any())


def test_conditional_teacher_rejects_bad_labels():
    x, labels = _data(8)
    model = ResidualMLP((2,), hidden=8, depth=1, num_classes=CLASSES)
    for bad, match in (
        (labels[:5], "labels must have shape"),
        (labels.float(), "integer class labels"),
        (labels - 2, ">= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            train_teacher(model, x, labels=bad, iters=1, **QUIET)
    with pytest.raises(ValueError, match="p_uncond"):
        train_teacher(model, x, labels=labels, p_uncond=1.0, iters=1, **QUIET)


# ----- stage 1 and stage 2: one step's loss, by hand --------------------------------------------


def test_sampling_a_built_in_network_checks_labels_against_its_classes_before_calling_it():
    """`sample`, `Sampler` and `teacher_two_step` refuse a label the network does not have with one
    ValueError before the first call (on a GPU the embedding would fail with a device assert)."""
    from pd_fast.app.models import build_model

    net = build_model("mlp", (1, 8, 8), param="v", seed=0, num_classes=10, hidden=16, depth=1)
    z, sched = torch.randn(2, 1, 8, 8), pd_fast.CosineSchedule()
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(1))
    pattern = r"labels must be < 10 \(the model's classes\) or -1, got max 10"
    with pytest.raises(ValueError, match=pattern):
        pd_fast.sample(net, z, 2, sched, "v", labels=torch.tensor([3, 10]), w=1.0)
    with pytest.raises(ValueError, match=pattern):
        pd_fast.Sampler(net, (1, 8, 8), 2, sched, "v")(z, labels=10)
    with pytest.raises(ValueError, match=pattern):
        pd_fast.teacher_two_step(net, z, 1.0, 2, sched, "v", labels=10)
    assert not calls
    with pytest.raises(ValueError, match="the model takes no labels"):  # a Sampler knows its model's rules
        pd_fast.Sampler(lambda z, t: z * 0, (1, 8, 8), 2, sched, "v")(z, labels=1)
    with pytest.raises(ValueError, match="labels must be an int or integers"):
        pd_fast.sample(net, z, 2, sched, "v", labels=[[1], [2, 3]])
    pd_fast.sample(net, z, 2, sched, "v", labels=torch.tensor([9, -1]), w=1.0)  # in range: fine
    assert calls


def test_a_w_conditioned_network_refuses_a_nan_or_negative_w_on_the_cpu():
    net = w_conditioned_from(ResidualMLP((1, 8, 8), hidden=16, depth=1, num_classes=10))
    z, t, c = torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5), torch.tensor([1, 2])
    for w in (float("nan"), -1.0, torch.tensor([0.5, float("inf")])):
        with pytest.raises(ValueError, match="w must be finite and >= 0"):
            net(z, t, c, w)
    assert torch.isfinite(net(z, t, c, torch.tensor([0.0, 4.0]))).all()


def test_an_empty_batch_samples_to_an_empty_batch_with_the_built_in_networks():
    """As with any model: no examples in, none out (the MLP used to fail reshaping 0 elements)."""
    from pd_fast.app.models import build_model

    for kind, kwargs in (("mlp", dict(hidden=16, depth=1)), ("unet", dict(ch=8))):
        net = build_model(kind, (1, 8, 8), param="v", seed=0, num_classes=10, **kwargs)
        labels = torch.zeros(0, dtype=torch.long)
        out = pd_fast.sample(
            net, torch.zeros(0, 1, 8, 8), 2, pd_fast.CosineSchedule(), "v", labels=labels, w=1.0
        )
        assert out.shape == (0, 1, 8, 8)


def test_stage1_loss_is_the_weighted_error_to_the_guided_teacher(tmp_path):
    """The logged loss of stage 1's first iteration equals the loss computed from the student's
    recorded inputs with pd_ref: x_tilde = pd_ref.guided_x_eps of the teacher's outputs with the
    label and with the null label, at the example's w."""
    x, labels = _data(32)
    teacher = _perturbed(ResidualMLP((2,), hidden=16, depth=1, num_classes=CLASSES))
    with _Calls() as rec:
        distill_guidance(
            teacher, x, labels, w_min=0.5, w_max=3.0, iters=1, batch_size=16, out_dir=tmp_path,
            log_every=1, **QUIET,
        )  # fmt: skip
    [(z_t, t, c, w)], [out] = [a for s, a, _ in rec.calls if s], [o for s, _, o in rec.calls if s]
    assert bool(((w >= 0.5) & (w <= 3.0)).all()) and float(w.std()) > 0.1  # w ~ U[0.5, 3] per example
    assert set(c.tolist()) <= {0, 1, 2}  # stage 1 never drops a label
    z64, t64 = _np(z_t), _np(t)
    alpha, sigma = pd_ref.CosineSchedule().alpha_sigma(t64)
    f = _ref_fn(teacher)
    out_c, out_u = f(z64, t64, _np(c)), f(z64, t64, np.full(c.shape, NULL_LABEL))
    x_w, _ = pd_ref.guided_x_eps(z64, out_c, out_u, alpha, sigma, "v", w=_np(w))
    logged = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert logged == pytest.approx(_hand_loss(z64, t64, _np(out), x_w), rel=1e-4)


def test_stage2_loss_uses_two_steps_of_the_w_conditioned_model_at_each_label_and_w(tmp_path):
    """The logged loss of guided distillation's first iteration equals the one computed with
    pd_ref.teacher_target of the previous model at the example's label and w (one per example)."""
    x, labels = _data(32)
    guided = _perturbed(w_conditioned_from(ResidualMLP((2,), hidden=16, depth=1, num_classes=CLASSES)))
    with _Calls() as rec:
        progressive_distill(
            guided, x, 4, 2, labels=labels, w_min=1.0, w_max=2.0, iters=1, batch_size=8,
            out_dir=tmp_path, log_every=1, **QUIET,
        )  # fmt: skip
    student_args = [a for s, a, o in rec.calls if s and a[0].requires_grad is False]
    z_t, t, c, w = rec.calls[-1][1]  # the student's call comes after the two target calls
    out = rec.calls[-1][2]
    assert len(student_args) == 3 and bool(((w >= 1.0) & (w <= 2.0)).all())
    assert torch.equal(c, rec.calls[0][1][2]) and torch.equal(w, rec.calls[0][1][3])  # target at (c, w)
    assert set((2 * _np(t)).round(9).tolist()) <= {1.0, 2.0}  # the grid of N = 2
    x_tilde = np.stack(
        [
            pd_ref.teacher_target(
                _ref_fn(guided, w[i : i + 1]), _np(z_t)[i : i + 1], _np(t)[i : i + 1], 2,
                pd_ref.CosineSchedule(), "v", labels=int(c[i]), w=0.0,
            )[0]
            for i in range(len(c))
        ]
    )  # fmt: skip
    logged = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert logged == pytest.approx(_hand_loss(_np(z_t), _np(t), _np(out), x_tilde), rel=1e-4)


def test_guided_distillation_needs_a_w_conditioned_teacher():
    x, labels = _data(8)
    teacher = ResidualMLP((2,), hidden=8, depth=1, num_classes=CLASSES)
    with pytest.raises(ValueError, match="w-conditioned"):
        progressive_distill(teacher, x, 4, 2, labels=labels, iters=1, **QUIET)
    with pytest.raises(ValueError, match="w_max"):
        distill_guidance(teacher, x, labels, w_min=2.0, w_max=1.0, iters=1, **QUIET)


# ----- stage 1 resume ---------------------------------------------------------------------------


def test_stage1_killed_and_resumed_ends_bitwise_equal(tmp_path):
    x, labels = _data(32)
    teacher = _perturbed(ResidualMLP((2,), hidden=16, depth=1, num_classes=CLASSES))
    kw = dict(iters=12, batch_size=16, ckpt_every=5, **QUIET)
    whole = distill_guidance(teacher, x, labels, out_dir=tmp_path / "a", **kw)
    with pytest.raises(_Stop), _Calls(stop_at=8):  # after the checkpoint at iteration 5
        distill_guidance(teacher, x, labels, out_dir=tmp_path / "b", **kw)
    with pytest.raises(ValueError, match="resume=True"):
        distill_guidance(teacher, x, labels, out_dir=tmp_path / "b", **kw)
    resumed = distill_guidance(teacher, x, labels, out_dir=tmp_path / "b", resume=True, **kw)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = ((tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("a", "b"))
    strip = [{k: v for k, v in json.loads(r).items() if k != "time"} for r in log_a]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "time"} for r in log_b]
    with pytest.raises(ValueError, match="w_max"):  # other settings: refused
        distill_guidance(teacher, x, labels, out_dir=tmp_path / "b", resume=True, w_max=3.0, **kw)


# ----- the --guided job -------------------------------------------------------------------------


def test_tiny_guided_job_writes_report_grids_and_named_samples(tmp_path):
    """`python -m pd_fast --guided` end to end on 200 digits: every (model, sampler, N, w) scored,
    samples.npz named `x_<model>_<sampler>_N<N>_w<w>` / `y_...` (w as in the flag), and the
    report's Frechet distances, accuracies, precision / recall and nearest-training distances
    reproduced from those samples."""
    from pd_fast.app.cli import main
    from pd_fast.app.data import digits
    from pd_fast.app.evaluation import (
        knn_precision_recall,
        make_evaluator,
        nearest_distances,
        train_classifier,
    )

    d = digits()
    path = tmp_path / "digits200.npz"
    np.savez(path, x=d.x[:200].numpy(), y=d.labels[:200].numpy())
    out = tmp_path / "out"
    argv = (
        f"--guided --data {path} --teacher-iters 20 --guidance-iters 4 --iters 2 --start-steps 8 "
        f"--hidden 16 --depth 1 --batch-size 16 --teacher-batch-size 16 --ckpt-every 0 --no-progress "
        f"--eval-w 0,0.5 --out {out}"
    ).split()
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    expected = {("teacher", "ddim", n, w) for n in (256, 8, 4, 2, 1) for w in ("0", "0.5")}
    expected |= {
        ("student", s, n, w) for s in ("ddim", "stochastic") for n in (4, 2, 1) for w in ("0", "0.5")
    }
    assert {(r["model"], r["sampler"], r["steps"], r["w"]) for r in report["rows"]} == expected
    with np.load(out / "samples.npz") as f:
        arrays = {k: f[k] for k in f.files}
    names = {f"{m}_{s}_N{n}_w{w}" for m, s, n, w in expected}
    assert set(arrays) == {f"x_{k}" for k in names} | {f"y_{k}" for k in names}
    n = report["eval_samples"]
    assert n == 100 and report["classes"] == 10
    ev = make_evaluator(d.x[:200], d.labels[:200], seed=0, cache_dir=str(out))
    classifier, _ = train_classifier(d.x[:200], d.labels[:200], seed=0, cache_dir=str(out))
    for r in report["rows"]:
        key = f"{r['model']}_{r['sampler']}_N{r['steps']}_w{r['w']}"
        xs, ys = arrays[f"x_{key}"], arrays[f"y_{key}"]
        assert xs.dtype == np.float32 and xs.shape == (n, 1, 8, 8) and np.abs(xs).max() <= 1.0
        assert np.array_equal(ys, np.arange(n) % 10)
        assert ev.distances(torch.from_numpy(xs))["classifier"] == pytest.approx(r["frechet"], rel=1e-6)
        with torch.no_grad():
            acc = float((classifier(torch.from_numpy(xs)).argmax(1).numpy() == ys).mean())
        assert acc == pytest.approx(r["accuracy"], abs=1e-9)
        lo, hi = r["interval"]
        assert 0 <= lo <= r["frechet"] <= hi
        fake = ev.features(torch.from_numpy(xs))["classifier"]  # k-NN P/R of this very sample set
        p, rec = knn_precision_recall(ev.reference_features["classifier"], fake, 3)
        assert (r["precision"], r["recall"]) == pytest.approx((p, rec), abs=1e-12)
        nearest = nearest_distances(torch.from_numpy(xs), d.x[:200])  # memorisation of this sample set
        assert r["memorisation"]["median_distance"] == pytest.approx(float(np.median(nearest)), rel=1e-12)
    assert report["memorisation"]["training_examples"] == 200
    data = report["precision_recall_data"]
    p, rec = knn_precision_recall(ev.reference_features["classifier"], ev.held_out_features["classifier"], 3)
    assert data["k"] == 3 and (data["precision"], data["recall"]) == pytest.approx((p, rec), abs=1e-12)
    assert not np.array_equal(arrays["x_teacher_ddim_N4_w0"], arrays["x_teacher_ddim_N4_w0.5"])
    for w in ("0", "0.5"):
        assert (out / f"grid_w{w}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stem in ("teacher", "guided", "student_4", "student_2", "student_1"):
        assert (out / "checkpoints" / f"{stem}.safetensors").is_file()
    assert {t["name"] for t in report["targets"]} >= {"student_4_frechet", "student_1_vs_teacher_4"}


def test_guided_rows_carry_the_knn_precision_recall_and_memorisation_of_their_samples(tmp_path):
    """A teacher whose x-prediction is a real training digit of the requested class samples copies of
    the training set: its rows' precision and recall are those of `knn_precision_recall` on exactly
    those digits (high precision, and precision and recall differ, so a swap shows), and the
    memorisation check flags every sample (distance 0). A student that averages two digits of the
    class copies none, and its rows say so."""
    from pd_fast import CosineSchedule
    from pd_fast.app.data import digits
    from pd_fast.app.evaluation import knn_precision_recall, make_evaluator, train_classifier
    from pd_fast.app.evaluation.guided import evaluate_guided

    d = digits()
    x, labels = d.x[:400], d.labels[:400]
    ev = make_evaluator(x, labels, seed=0, cache_dir=str(tmp_path))
    classifier, _ = train_classifier(x, labels, seed=0, cache_dir=str(tmp_path))
    pool = [x[labels == c] for c in range(10)]

    def teacher(z, t, c):  # noqa: ANN001, ANN202
        """x-prediction: digit number (row mod the class's count) of class c (class 0 for null)."""
        picks = []
        for k, i in enumerate(c.tolist()):
            members = pool[max(i, 0)]
            picks.append(members[k % len(members)])
        return torch.stack(picks)

    def student(z, t, c, w):  # noqa: ANN001, ANN202
        """x-prediction: the mean of two neighbouring digits of class c."""
        picks = []
        for k, i in enumerate(c.tolist()):
            members = pool[i]
            picks.append(0.5 * (members[k % len(members)] + members[(k + 1) % len(members)]))
        return torch.stack(picks)

    n = ev.n_samples
    y = torch.arange(n) % 10
    z = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    rows, samples = evaluate_guided(
        teacher, {1: student}, ev, classifier, CosineSchedule(), "x", z, y, [("0", 0.0)]
    )
    for r in rows:
        if r["model"] != "teacher":
            continue
        xs, _ = samples[f"{r['model']}_{r['sampler']}_N{r['steps']}_w{r['w']}"]
        p, rec = knn_precision_recall(ev.reference_features["classifier"], ev.features(xs)["classifier"], 3)
        assert (r["precision"], r["recall"]) == pytest.approx((p, rec), abs=1e-12)
        assert r["precision"] > 0.8 and abs(r["precision"] - r["recall"]) > 0.01
        memo = r["memorisation"]
        assert memo["median_distance"] == 0.0 and memo["median_ratio"] == 0.0
        assert memo["below_held_out_p01"] == 1.0
    students = [r for r in rows if r["model"] == "student"]
    assert len(students) == 2  # ddim and stochastic at N = 1
    for r in students:
        assert r["memorisation"]["median_ratio"] > 0.5 and r["memorisation"]["below_held_out_p01"] < 0.5


def test_guided_job_interrupted_in_stage_2_and_resumed_ends_bitwise_equal(tmp_path, monkeypatch):
    """`python -m pd_fast --guided` stopped by Ctrl-C in stage 2, then `--resume --out` alone:
    every model it writes is byte-identical to an uninterrupted run's."""
    from pd_fast.app.cli import main
    from pd_fast.app.data import digits
    from pd_fast.app.training import loop

    d = digits()
    path = tmp_path / "digits200.npz"
    np.savez(path, x=d.x[:200].numpy(), y=d.labels[:200].numpy())
    argv = (
        f"--guided --data {path} --teacher-iters 20 --guidance-iters 4 --iters 6 --start-steps 8 "
        f"--hidden 16 --depth 1 --batch-size 16 --teacher-batch-size 16 --ckpt-every 3 --no-progress "
        f"--eval-w 0,1"
    ).split()
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(argv + ["--out", str(whole)]) == 0
    real, calls = loop._update, []  # where the loop looks `_update` up

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 20 + 4 + 6 + 5:  # teacher, stage 1, round 1 of stage 2, then 5 into round 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_update", interrupted)
    assert main(argv + ["--out", str(cut)]) == 130
    assert not (cut / "checkpoints" / "student_2.safetensors").exists()  # it stopped inside round 2
    monkeypatch.setattr(loop, "_update", real)
    assert main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    for name in ("teacher", "guided", "student_4", "student_2", "student_1"):
        want = (whole / "checkpoints" / f"{name}.safetensors").read_bytes()
        assert (cut / "checkpoints" / f"{name}.safetensors").read_bytes() == want, name
    rows = [json.loads((run / "report.json").read_text())["rows"] for run in (whole, cut)]
    assert [[{k: v for k, v in r.items() if k != "sample_seconds"} for r in rs] for rs in rows] == [
        [{k: v for k, v in r.items() if k != "sample_seconds"} for r in rows[0]]
    ] * 2
