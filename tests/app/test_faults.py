"""Faults and bad inputs of the main job and the training API, one section per failure it must
survive: two runs into one folder, a diverging loss, flags set to 0, damaged checkpoints, changed
data, raw tracebacks, a stale log, late validation, side effects of failed runs, cryptic messages,
a student passed as teacher, and torchrun. Every user-caused failure of `python -m pd_fast` must be
one line on stderr with exit code 2, found before anything is written; nothing already written may
be lost or mixed."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import pd_fast
from pd_fast.app import checkpoint as ckpt
from pd_fast.app.cli import build_parser, main, resolve_config
from pd_fast.app.training import progressive_distill, train_teacher
from tests._tiny import TinyMLP, eight_gaussians

ROOT = Path(__file__).resolve().parents[2]
TINY = (
    "--teacher-iters 30 --iters 4 --start-steps 4 --eval-max-steps 4 --hidden 32 --depth 1 "
    "--batch-size 32 --teacher-batch-size 32 --ckpt-every 10 --no-progress"
).split()
# TINY beside a --teacher checkpoint: no teacher is trained, so its training flags are refused there
TINY_STUDENT = [
    a for i, a in enumerate(TINY) if not {a, TINY[i - 1]} & {"--teacher-iters", "--teacher-batch-size"}
]
QUIET = dict(progress=False)


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of `python -m pd_fast ARGS`, run in this process."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def _one_line_error(err: str, *needles: str) -> str:
    """The single `pd-distill: error:` line of stderr, which must contain every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("pd-distill: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run on the digits (teacher states at iterations 10, 20, 30)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run to damage (its lock file left behind, as a run leaves it)."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tensor_offset(path: Path, prefix: str) -> int:
    """A byte offset inside the data of the first tensor named `prefix...` of a safetensors file."""
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    name = sorted(k for k in header if k.startswith(prefix) and k != "__metadata__")[0]
    begin, end = header[name]["data_offsets"]
    return 8 + header_len + (begin + end) // 2


def _weights(*modules: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def _log(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


class _Fault:
    """A forward hook on every TinyMLP: counts calls in training mode (the model being trained)
    and, at call `at` of them, raises `_Crash` or turns the output into NaN."""

    def __init__(self, at: int | None, kind: str = "crash") -> None:
        self.at, self.kind, self.calls = at, kind, 0
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not (isinstance(module, TinyMLP) and module.training):
            return None
        self.calls += 1
        if self.calls != self.at:
            return None
        if self.kind == "crash":
            raise _Crash(f"injected at training call {self.calls}")
        return output * float("nan")

    def __enter__(self) -> _Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


class _Crash(RuntimeError):
    pass


TEACHER = dict(iters=25, batch_size=16, lr=3e-3, warmup=3, ema_decay=0.8, ckpt_every=7, log_every=3, **QUIET)
DISTILL = dict(iters=12, batch_size=16, lr=1e-3, ckpt_every=5, log_every=2, **QUIET)


def _job(out: Path | None, data: torch.Tensor, resume: bool = False) -> list[dict[str, torch.Tensor]]:
    """Teacher (25 updates) + distillation 4 -> 2 -> 1 (12 + 12 updates) into `out`: final weights."""
    ema = train_teacher(TinyMLP(seed=2), data, seed=3, out_dir=out, resume=resume, **TEACHER)
    students = progressive_distill(ema, data, 4, 1, seed=3, out_dir=out, resume=resume, **DISTILL)
    return _weights(ema, *students.values())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, torch.Tensor]]]:
    """The uninterrupted `_job` (its folder and final weights)."""
    out = tmp_path_factory.mktemp("reference")
    return out, _job(out, eight_gaussians(128, seed=1))


# ----- 1. two runs into one folder -------------------------------------------------------------


def test_a_second_run_into_a_locked_folder_fails_at_once_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "x"
    out.mkdir()
    with open(out / "run.lock", "w") as lock:  # a run holding the folder: flock + its PID
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        t0 = time.perf_counter()
        code, err = _cli(capsys, *TINY, "--out", str(out), "--seed", "7")
        assert time.perf_counter() - t0 < 30  # at once: no training
    assert code == 2
    _one_line_error(err, "in use", f"PID {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written


def test_two_concurrent_runs_into_one_folder_do_not_mix(tmp_path: Path) -> None:
    out = tmp_path / "x"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "pd_fast", *TINY, "--out", str(out)]
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").is_file():  # the first run has started writing
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, mid-run, for as long as the second takes
        try:
            second = subprocess.run(
                command + ["--seed", "7"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
        finally:
            os.kill(first.pid, signal.SIGCONT)
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 2
    _one_line_error(second.stderr, f"PID {first.pid}")
    assert first.returncode == 0, stderr
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert json.loads((out / "report.json").read_text())["settings"]["seed"] == 0
    # the lock ended with its holder: the folder is free again
    assert resolve_config(build_parser().parse_args(["--resume", "--out", str(out)]))[1] == str(out)


def test_default_run_folders_differ_for_runs_started_in_the_same_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20250101-120000")
    args = build_parser().parse_args(TINY)
    first = resolve_config(args)[1]
    os.makedirs(first)  # a run started in that second by this process
    again = resolve_config(args)[1]  # this process, the same second, once more
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)  # another process, the same second
    other = resolve_config(args)[1]
    assert len({first, again, other}) == 3


# ----- 2. a diverging loss ---------------------------------------------------------------------


def test_a_nan_loss_stops_the_job_with_a_one_line_error_and_no_nan_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "nan"
    code, err = _cli(capsys, *TINY, "--out", str(out), "--teacher-lr", "1e30")
    assert code == 2
    _one_line_error(err, "diverged", "teacher", "iteration ", "--resume")
    ckpt_dir = out / "checkpoints"
    assert not (ckpt_dir / "teacher.safetensors").exists() and not (ckpt_dir / "teacher_state.json").exists()
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in _log(out))


@pytest.mark.parametrize("stage", ["teacher", "distill"])
def test_the_api_refuses_to_return_nan_models(stage: str) -> None:
    data = eight_gaussians(64, seed=0)
    with pytest.raises(FloatingPointError, match=f"diverged in {stage}"):
        if stage == "teacher":
            train_teacher(TinyMLP(), data, iters=30, lr=1e30, warmup=1, batch_size=16, **QUIET)
        else:
            progressive_distill(TinyMLP(), data, 4, 1, iters=30, lr=1e30, batch_size=16, **QUIET)


@pytest.mark.parametrize(
    ("at", "stage", "where", "iteration", "saved"),
    [
        # teacher: update 16 of 25 (checkpoints at 7, 14): found at the log record of 18
        (16, "teacher", "teacher", 16, (0, 14)),
        # distillation: round 2 (4 -> 2 ... 2 -> 1 is round 2), training call 12 + 8 = its update 8
        # (checkpoints at 5 and 10): found at the log record of 8
        (20, "distill", "distill round 2/2 (2->1 steps)", 8, (1, 5)),
    ],
)
def test_a_transient_nan_names_where_it_happened_and_resumes_to_the_uninterrupted_run(
    reference: tuple[Path, list],
    tmp_path: Path,
    at: int,
    stage: str,
    where: str,
    iteration: int,
    saved: tuple,
) -> None:
    data = eight_gaussians(128, seed=1)
    calls_before = 25 if stage == "distill" else 0
    with (
        _Fault(calls_before + at if stage == "distill" else at, "nan"),
        pytest.raises(FloatingPointError) as err,
    ):
        _job(tmp_path, data)
    assert f"in {where} at iteration {iteration}:" in str(err.value)
    assert (err.value.stage, err.value.iteration) == (stage, iteration)
    info, tensors = ckpt.load_training_state(tmp_path / "checkpoints", stage)
    assert (info["round"], info["iteration"]) == saved  # nothing after the last finite state
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    for path in (tmp_path / "checkpoints").glob("*.safetensors"):
        loaded, _ = ckpt.load_tensors(path)
        assert all(torch.isfinite(v).all() for v in loaded.values() if v.is_floating_point()), path
    # the fault is gone: resume continues from the last finite state to the uninterrupted result
    assert _same(_job(tmp_path, data, resume=True), reference[1])
    assert _log(tmp_path) == _log(reference[0])


# ----- 3. flags set to 0 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        "--iters",
        "--teacher-iters",
        "--start-steps",
        "--end-steps",
        "--batch-size",
        "--lr",
        "--teacher-lr",
        "--last-rounds-factor",
    ],
)
def test_a_flag_set_to_zero_is_refused_not_replaced_by_its_default(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "zero"
    code, err = _cli(capsys, *TINY, "--out", str(out), flag, "0")
    assert code == 2
    _one_line_error(err, flag)
    assert not out.exists()


def test_ckpt_every_zero_means_checkpoints_at_stage_ends_only() -> None:
    cfg, _ = resolve_config(build_parser().parse_args(TINY + ["--ckpt-every", "0", "--out", "x"]))
    assert cfg.ckpt_every == 0


# ----- 4. damaged checkpoints ------------------------------------------------------------------


def test_a_flipped_byte_in_a_model_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    ckpt.save_model_checkpoint(tmp_path / "student_8", TinyMLP(seed=1), {"steps": 8})
    _flip_byte(tmp_path / "student_8.safetensors", _tensor_offset(tmp_path / "student_8.safetensors", "net."))
    with pytest.raises(ValueError, match="student_8.safetensors is damaged"):
        ckpt.load_model_checkpoint(tmp_path / "student_8", TinyMLP(seed=2))


def test_a_flipped_byte_in_the_only_state_is_an_error_naming_the_file(tmp_path: Path) -> None:
    ckpt.save_training_state(tmp_path, "teacher", {"model/w": torch.ones(16)}, {"round": 0, "iteration": 5})
    _flip_byte(
        tmp_path / "teacher_state-r0-i5.safetensors",
        _tensor_offset(tmp_path / "teacher_state-r0-i5.safetensors", "model/"),
    )
    with pytest.raises(ValueError, match="teacher_state-r0-i5.safetensors is damaged.*no earlier state"):
        ckpt.load_training_state(tmp_path, "teacher")


def test_a_flipped_student_weight_in_a_killed_runs_state_falls_back_and_ends_as_uninterrupted(
    reference: tuple[Path, list], tmp_path: Path
) -> None:
    data = eight_gaussians(128, seed=1)
    with _Fault(25 + 12 + 11), pytest.raises(_Crash):  # killed at update 11 of round 2 (states at 5, 10)
        _job(tmp_path, data)
    state = json.loads((tmp_path / "checkpoints" / "distill_state.json").read_text())
    damaged = tmp_path / "checkpoints" / state["tensors_file"]
    assert damaged.name == "distill_state-r1-i10.safetensors"
    _flip_byte(damaged, _tensor_offset(damaged, "student/"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _job(tmp_path, data, resume=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, ckpt.CheckpointFallbackWarning)]
    assert len(messages) == 1 and damaged.name in messages[0] and "iteration 5" in messages[0]
    assert _same(resumed, reference[1])
    assert _log(tmp_path) == _log(reference[0])


def test_resume_of_a_run_with_a_flipped_student_is_a_one_line_error_naming_it(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    student = run_copy / "checkpoints" / "student_2.safetensors"
    _flip_byte(student, _tensor_offset(student, ""))
    code, err = _cli(capsys, "--resume", "--out", str(run_copy), "--no-progress")
    assert code == 2
    _one_line_error(err, "student_2.safetensors", "damaged")


# ----- 5. other data on resume -----------------------------------------------------------------


def test_resume_on_other_data_of_the_same_shape_is_refused(tmp_path: Path) -> None:
    data = eight_gaussians(128, seed=1)
    with _Fault(20), pytest.raises(_Crash):  # killed mid teacher, after its checkpoint at 14
        _job(tmp_path, data)
    other = data.clone()
    other[5, 1] = -other[5, 1]
    with pytest.raises(ValueError, match=r"other data: same shape \(128, 2\), different values"):
        _job(tmp_path, other, resume=True)
    _job(tmp_path, data, resume=True)  # the run's own data still resume


def test_cli_resume_with_the_data_file_changed_is_refused(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    # config.json pointed at another array of the digits' shape
    from pd_fast.app.data import digits

    other = run_copy.parent / "other.npy"
    np.save(other, -digits().x.numpy())
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(dict(config, data=str(other))))
    code, err = _cli(capsys, "--resume", "--out", str(run_copy), "--no-progress")
    assert code == 2
    _one_line_error(err, "data differ", "same shape")


# ----- 6. one-line errors instead of tracebacks ------------------------------------------------


def test_bad_inputs_are_one_line_errors_with_exit_code_2_and_write_nothing(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher = finished / "checkpoints" / "teacher.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(teacher.read_bytes()[:200])
    empty_npy, bad_npz = tmp_path / "empty.npy", tmp_path / "bad.npz"
    empty_npy.write_bytes(b"")
    bad_npz.write_bytes(b"PK\x03\x04 not really a zip archive")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["--teacher", str(truncated)], "truncated.safetensors"),
        (["--data", str(empty_npy)], "empty.npy"),
        (["--data", str(bad_npz)], "bad.npz"),
        (["--device", "meta"], "--device"),
        (["--batch-size", "1000000000000"], "--batch-size"),
        (["--out", str(a_file)], "is a file"),
        (["--out", "/proc/pd_fast_run"], "/proc/pd_fast_run"),
    ]
    for extra, needle in cases:
        out = tmp_path / "out"
        tiny = TINY_STUDENT if "--teacher" in extra else TINY
        args = [*tiny, "--out", str(out), *extra] if "--out" not in extra else [*tiny, *extra]
        code, err = _cli(capsys, *args)
        assert code == 2, extra
        _one_line_error(err, needle)
        assert not out.exists(), extra
    # --debug shows the traceback
    code, err = _cli(capsys, *TINY, "--out", str(tmp_path / "out"), "--device", "meta", "--debug")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("pd-distill: error:")


def test_bad_labels_teachers_and_guided_flags_are_one_line_errors_that_write_nothing(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Labels a guided job cannot use (not 0..K-1, one class, negative, huge, float, two label
    arrays), teachers that do not fit the data, a float32-infinite --w-max, a bad --eval-w, and
    guided flags on the resume of an unguided run: each is a one-line error naming its cause."""
    from pd_fast.app.checkpoint import save_json, save_model_checkpoint
    from pd_fast.app.data import digits
    from pd_fast.app.models import ResidualMLP

    d = digits()
    x, y = d.x[:60].numpy(), d.labels[:60].numpy()

    def npz(name: str, **arrays: np.ndarray) -> str:
        np.savez(tmp_path / name, x=x, **arrays)
        return str(tmp_path / name)

    moons_run = tmp_path / "moons_run"  # a teacher of 2-D points, with its run's model.json
    net = ResidualMLP((2,), hidden=32, depth=1)
    save_json(moons_run / "model.json", {"model": net.config, "param": "v", "data": "moons"})
    save_model_checkpoint(moons_run / "checkpoints" / "teacher", net, {"param": "v"})
    teacher = str(finished / "checkpoints" / "teacher.safetensors")
    cases = [
        (["--guided", "--data", npz("y35.npz", y=np.where(y % 2, 3, 5))], "class 0 is missing"),
        (["--guided", "--data", npz("gap.npz", y=np.where(y == 4, 5, y))], "class 4 is missing"),
        (["--guided", "--data", npz("one.npz", y=np.zeros_like(y))], "at least 2 classes"),
        (["--guided", "--data", npz("neg.npz", y=y - 1)], "class indices >= 0, got range [-1, 8]"),
        (["--data", npz("huge.npz", y=y.astype(np.uint64) + 2**63)], "class indices >= 0"),
        (["--guided", "--data", npz("float.npz", y=y.astype(np.float32))], "got float32 of shape (60,)"),
        (["--guided", "--data", npz("both.npz", y=y, labels=y)], "both 'y' and 'labels'"),
        (["--guided", "--teacher", teacher], "is unconditional, and --guided needs a conditional one"),
        (["--teacher", str(moons_run / "checkpoints" / "teacher.safetensors")], "does not take --data"),
        (["--guided", "--w-max", "1e300"], "--w-max must be finite in float32"),
        (["--guided", "--eval-w", "."], "--eval-w"),
        (["--guided", "--eval-w", "\u00b2"], "--eval-w"),
    ]
    for extra, needle in cases:
        out = tmp_path / "out"
        tiny = TINY_STUDENT if "--teacher" in extra else TINY
        code, err = _cli(capsys, *tiny, "--out", str(out), *extra)
        assert code == 2, extra
        _one_line_error(err, needle)
        assert not out.exists(), extra
    code, err = _cli(capsys, "--resume", "--out", str(finished), "--p-uncond", "0.5", "--no-progress")
    assert code == 2
    _one_line_error(err, "--p-uncond needs --guided", "not guided")


def test_a_flag_argparse_cannot_parse_is_one_line_too(capsys: pytest.CaptureFixture) -> None:
    for argv in (["--p-uncond", "abc"], ["--iters", "1.5"], ["--no-such-flag"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        _one_line_error(capsys.readouterr().err, argv[0], "--help lists the flags")


def test_a_missing_state_tensors_file_falls_back_or_is_a_one_line_error(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt_dir = run_copy / "checkpoints"
    (ckpt_dir / "teacher_state-r0-i30.safetensors").unlink()
    reference = json.loads((run_copy / "report.json").read_text())["rows"]
    code, err = _cli(capsys, "--resume", "--out", str(run_copy), "--no-progress")
    # the state of iteration 20 was kept: the teacher retrains 20 -> 30 to the same weights
    assert (
        code == 0 and "pd-distill: warning:" in err and "teacher_state-r0-i30.safetensors is missing" in err
    )
    rows = json.loads((run_copy / "report.json").read_text())["rows"]
    assert [(r["teacher_ddim"], r["student"]) for r in rows] == [
        (r["teacher_ddim"], r["student"]) for r in reference
    ]
    state = json.loads((ckpt_dir / "teacher_state.json").read_text())
    prev = json.loads((ckpt_dir / "teacher_state.prev.json").read_text())
    (ckpt_dir / state["tensors_file"]).unlink()
    (ckpt_dir / prev["tensors_file"]).unlink()
    code, err = _cli(capsys, "--resume", "--out", str(run_copy), "--no-progress")
    assert code == 2
    _one_line_error(err, state["tensors_file"], prev["tensors_file"], "missing")


@pytest.mark.parametrize("edit", [dict(hidden=64), dict(model="unet")])
def test_a_network_edited_in_config_json_before_resume_is_a_one_line_error(
    edit: dict, run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(dict(config, **edit)))
    code, err = _cli(capsys, "--resume", "--out", str(run_copy), "--no-progress")
    assert code == 2
    _one_line_error(err, "config.json")


def test_the_api_names_a_model_that_does_not_fit_its_state(tmp_path: Path) -> None:
    data = eight_gaussians(64, seed=0)
    train_teacher(TinyMLP(hidden=32), data, iters=4, batch_size=8, out_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="teacher_state-r0-i4.safetensors do not fit this model"):
        train_teacher(TinyMLP(hidden=16), data, iters=4, batch_size=8, out_dir=tmp_path, resume=True, **QUIET)


# ----- 7. the log ------------------------------------------------------------------------------


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_killed_before_its_first_checkpoint_leaves_no_stale_log_lines(
    reference: tuple[Path, list], tmp_path: Path, resume: bool
) -> None:
    data = eight_gaussians(128, seed=1)
    with _Fault(6), pytest.raises(_Crash):  # teacher: log records at 3 (and none yet at 6)
        _job(tmp_path, data)
    assert [r["iteration"] for r in _log(tmp_path)] == [3]
    assert not (tmp_path / "checkpoints" / "teacher_state.json").exists()
    with _Fault(25 + 4), pytest.raises(_Crash):  # distillation: records at 2, no checkpoint yet
        _job(tmp_path, data, resume=resume)
    assert not (tmp_path / "checkpoints" / "distill_state.json").exists()
    assert _same(_job(tmp_path, data, resume=True), reference[1])
    assert _log(tmp_path) == _log(reference[0])


# ----- 8. late validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--lr", "-1"], "--lr"),
        (["--last-rounds-factor", "-1"], "--last-rounds-factor"),
        (["--seed", str(2**64 - 1)], "--seed"),
    ],
)
def test_bad_distillation_flags_are_refused_before_the_teacher_trains(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "late"
    t0 = time.perf_counter()
    code, err = _cli(capsys, *TINY, "--out", str(out), *flags)
    assert code == 2 and time.perf_counter() - t0 < 20
    _one_line_error(err, needle)
    assert not out.exists()


# ----- 9. side effects of failed runs ----------------------------------------------------------


def test_a_failed_run_leaves_no_folder_so_a_bare_resume_finds_the_real_run(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    real = Path("runs") / "20200101-000000"
    shutil.copytree(finished, real)
    code, _ = _cli(capsys, *TINY, "--lr", "-1")  # default --out: runs/<now>
    assert code == 2
    assert sorted(os.listdir("runs")) == [real.name]
    assert resolve_config(build_parser().parse_args(["--resume"]))[1] == str(real)


def test_a_foreign_config_json_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "config.json").write_text('{"their": "settings"}\n')
    code, err = _cli(capsys, *TINY, "--out", str(out))
    assert code == 2
    _one_line_error(err, "config.json")
    assert (out / "config.json").read_text() == '{"their": "settings"}\n'
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_nan_flag_leaves_no_temporary_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nan_flag"
    code, err = _cli(capsys, *TINY, "--out", str(out), "--teacher-lr", "nan")
    assert code == 2
    _one_line_error(err, "--teacher-lr")
    assert not out.exists()


# ----- 10. messages that name what is wrong ----------------------------------------------------


def test_damaged_json_files_are_named(run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = run_copy / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    code, err = _cli(capsys, "--resume", "--out", str(run_copy), "--no-progress")
    assert code == 2
    _one_line_error(err, "config.json", "not valid JSON")
    config.write_text(text)
    ckpt.save_training_state(tmp_path, "distill", {"a": torch.ones(2)}, {"round": 1, "iteration": 4})
    (tmp_path / "distill_state.json").write_text("{")
    with pytest.raises(ValueError, match="distill_state.json is not valid JSON"):
        ckpt.load_training_state(tmp_path, "distill")


def test_a_teacher_that_is_not_safetensors_and_an_npz_that_is_not_zip_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fake = tmp_path / "teacher.safetensors"
    fake.write_bytes(bytes(range(256)) * 4)
    code, err = _cli(capsys, *TINY_STUDENT, "--out", str(tmp_path / "a"), "--teacher", str(fake))
    assert code == 2
    line = _one_line_error(err, "teacher.safetensors", "not a readable safetensors file")
    assert "codec" not in line
    npz = tmp_path / "data.npz"
    npz.write_bytes(b"\x93NUMPY plainly not a zip archive")
    code, err = _cli(capsys, *TINY, "--out", str(tmp_path / "b"), "--data", str(npz))
    assert code == 2
    line = _one_line_error(err, "data.npz", "not a .npz file")
    assert "pickle" not in line


def test_api_refusals_are_value_errors_naming_the_argument(backend: str) -> None:
    model, schedule = TinyMLP(), pd_fast.CosineSchedule()
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match="schedule"):
        pd_fast.sample(model, z, 4, None, "v")
    with pytest.raises(ValueError, match="schedule"):
        pd_fast.teacher_two_step(model, z, 0.5, 2, None, "v")
    with pytest.raises(ValueError, match="seed"):
        pd_fast.sample(model, z, 4, schedule, "v", seed=1.5)
    empty = torch.zeros(0, 2)
    with pytest.raises(ValueError, match="z_t .*at least one"):
        pd_fast.fused_distill_loss(empty, empty, empty, 0.6, 0.8, 0.7, 0.5, "v")
    with pytest.raises(ValueError, match="z_t .*at least one"):
        pd_fast.distill_loss(empty, empty, empty, 0.6, 0.8, "v")
    with pytest.raises(ValueError, match="logsnr_min"):
        pd_fast.CosineSchedule(-1e4, 1e4)
    with pytest.raises(ValueError, match="seed"):
        train_teacher(TinyMLP(), eight_gaussians(8, seed=0), iters=1, seed=1.5, **QUIET)


# ----- 11. a student passed as teacher ---------------------------------------------------------


def test_a_student_checkpoint_is_refused_as_teacher_unless_distilled_from_its_own_steps(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pd_fast.app.cli import validate

    student = finished / "checkpoints" / "student_2.safetensors"
    code, err = _cli(capsys, *TINY_STUDENT, "--out", str(tmp_path / "s"), "--teacher", str(student))
    assert code == 2
    _one_line_error(err, "student of 2 steps", "--start-steps 2")
    assert not (tmp_path / "s").exists()
    args = build_parser().parse_args(
        [*TINY_STUDENT, "--out", str(tmp_path / "s"), "--teacher", str(student), "--start-steps", "2"]
    )
    _, _, inputs = validate(args, torch.device("cpu"))
    assert inputs.teacher is not None and inputs.teacher[1]["steps"] == 2


# ----- 12. torchrun ----------------------------------------------------------------------------


def _torchrun(tmp_path: Path, flags: str, out: Path) -> subprocess.CompletedProcess:
    """`python -m pd_fast FLAGS --no-progress --out OUT` on 2 ranks under torchrun; it must succeed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pd_fast"]
    res = subprocess.run(
        command + flags.split() + ["--no-progress", "--out", str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of the tensors in name order (the definition of
    `pd_fast.app.checkpoint.model_fingerprint`, written out independently)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_torchrun_trains_one_ddp_job_that_rank_0_alone_writes(tmp_path: Path) -> None:
    out = tmp_path / "tr"
    flags = "--teacher-iters 40 --iters 6 --start-steps 4 --eval-max-steps 4 --hidden 32 --depth 1"
    flags += " --ckpt-every 10"
    res = _torchrun(tmp_path, "--quick " + flags, out)
    assert res.stdout.count("wrote ") == 1  # rank 0 alone reports
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    rank0, rank1 = report["rank_fingerprints"]
    assert rank0 == rank1 and set(rank0) == {"teacher", "student_2", "student_1"}  # the ranks ended identical
    for name, fingerprint in rank0.items():
        with safe_open(out / "checkpoints" / f"{name}.safetensors", "pt") as f:
            assert _fingerprint({k: f.get_tensor(k) for k in f.keys()}) == fingerprint, name
    info, _ = ckpt.load_training_state(out / "checkpoints", "distill")
    assert info["config"]["world_size"] == 2 and info["round"] == 2


def test_torchrun_runs_the_guided_job_on_ranks_that_end_identical(tmp_path: Path) -> None:
    """`--guided` under torchrun: teacher, stage 1 and stage 2 on two DDP ranks; rank 0 alone
    reports, and every model (the checkpoints as written) is the same on both ranks."""
    out = tmp_path / "tg"
    flags = "--guided --quick --teacher-iters 40 --guidance-iters 6 --iters 6 --start-steps 4 --hidden 32"
    flags += " --depth 1 --ckpt-every 10 --eval-w 0,1"
    res = _torchrun(tmp_path, flags, out)
    assert res.stdout.count("wrote ") == 1 and res.stdout.count("data: ") == 1  # rank 0 alone reports
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    rank0, rank1 = report["rank_fingerprints"]
    assert rank0 == rank1 and set(rank0) == {"teacher", "guided", "student_2", "student_1"}
    for name, fingerprint in rank0.items():
        with safe_open(out / "checkpoints" / f"{name}.safetensors", "pt") as f:
            assert _fingerprint({k: f.get_tensor(k) for k in f.keys()}) == fingerprint, name
