"""The main job (`python -m pd_fast`, pd_fast.app.cli) on a tiny configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pd_fast.app.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = (
    "--teacher-iters 30 --iters 4 --start-steps 4 --eval-max-steps 4 --hidden 32 --depth 1 "
    "--batch-size 32 --teacher-batch-size 32 --ckpt-every 10 --no-progress"
).split()


def _is_png(path: Path) -> bool:
    import matplotlib.image

    if path.read_bytes()[:8] != PNG_SIGNATURE:
        return False
    img = matplotlib.image.imread(path)
    return img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(TINY + ["--out", str(out)]) == 0
    return out


def test_tiny_job_writes_report_plots_and_checkpoints(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    assert isinstance(report["metric"], str) and report["metric"] == "frechet_classifier"
    assert isinstance(report["floor"], float) and report["floor"] >= 0
    assert [r["steps"] for r in report["rows"]] == [1, 2, 4]
    for row in report["rows"]:
        assert isinstance(row["steps"], int)
        assert isinstance(row["teacher_ddim"], float) and np.isfinite(row["teacher_ddim"])
        assert isinstance(row["sample_seconds"], float) and row["sample_seconds"] > 0
    students = {r["steps"]: r["student"] for r in report["rows"]}
    assert students[4] is None and isinstance(students[2], float) and isinstance(students[1], float)
    assert _is_png(tiny_run / "quality_vs_steps.png") and _is_png(tiny_run / "samples.png")
    for name in ("teacher", "student_2", "student_1"):
        assert (tiny_run / "checkpoints" / f"{name}.safetensors").is_file()


def test_resume_of_a_finished_run_gives_the_same_report(tiny_run):
    before = json.loads((tiny_run / "report.json").read_text())
    assert main(["--resume", "--out", str(tiny_run), "--no-progress"]) == 0
    after = json.loads((tiny_run / "report.json").read_text())
    for a, b in zip(before["rows"], after["rows"], strict=True):
        assert a["teacher_ddim"] == b["teacher_ddim"] and a["student"] == b["student"]


def test_teacher_checkpoint_skips_teacher_training(tiny_run, tmp_path):
    out = tmp_path / "from_teacher"
    ckpt = tiny_run / "checkpoints" / "teacher.safetensors"
    assert main(TINY + ["--out", str(out), "--teacher", str(ckpt)]) == 0
    report = json.loads((out / "report.json").read_text())
    first = json.loads((tiny_run / "report.json").read_text())
    # same teacher weights, same evaluation noise: the teacher column is reproduced exactly
    assert [r["teacher_ddim"] for r in report["rows"]] == [r["teacher_ddim"] for r in first["rows"]]
    assert not (out / "checkpoints" / "teacher_state.json").exists()


def test_existing_run_without_resume_and_bad_data_are_errors(tiny_run, tmp_path, capsys):
    assert main(TINY + ["--out", str(tiny_run)]) == 2
    assert "--resume" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((10, 2), 3.0))
    assert main(TINY + ["--out", str(tmp_path / "o"), "--data", str(bad)]) == 2
    assert "[-1, 1]" in capsys.readouterr().err
    assert main(TINY + ["--out", str(tmp_path / "o2"), "--start-steps", "6", "--end-steps", "4"]) == 2
    assert "power of 2" in capsys.readouterr().err


def test_module_entry_point_prints_help():
    res = subprocess.run(
        [sys.executable, "-m", "pd_fast", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0 and "--start-steps" in res.stdout and "--resume" in res.stdout
