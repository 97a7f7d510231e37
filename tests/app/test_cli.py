"""The main job (`python -m pd_fast`, pd_fast.app.cli) on a tiny configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pd_fast.app.cli import main
from pd_fast.app.data import load_data
from pd_fast.app.evaluation import make_evaluator
from pd_fast.app.evaluation.targets import main_targets

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


def test_tiny_job_keeps_the_scored_samples(tiny_run):
    """samples.npz holds every scored sample set, float32 in [-1, 1]; scoring them again with the
    run's classifier reproduces the report's distances (they are the samples that were scored)."""
    report = json.loads((tiny_run / "report.json").read_text())
    with np.load(tiny_run / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    expected = {f"x_teacher_ddim_N{n}" for n in (1, 2, 4)} | {f"x_student_ddim_N{n}" for n in (1, 2)}
    expected |= {f"x_teacher_{b}_N{n}" for n in (1, 2, 4) for b in ("dpmpp", "unipc")}
    assert set(arrays) == expected
    for x in arrays.values():
        assert x.dtype == np.float32 and x.shape == (report["eval_samples"], 1, 8, 8)
        assert np.abs(x).max() <= 1.0
    data = load_data("digits", seed=0)
    ev = make_evaluator(data.x, data.labels, seed=0, cache_dir=str(tiny_run))  # the run's classifier
    for row in report["rows"]:
        for key, name in (("teacher_ddim", "x_teacher_ddim"), ("student", "x_student_ddim")):
            if row[key] is not None:
                again = ev.distances(torch.from_numpy(arrays[f"{name}_N{row['steps']}"]))
                assert again["classifier"] == pytest.approx(row[key], rel=1e-6)
                assert again["pixel"] == pytest.approx(row[f"{key}_pixel"], rel=1e-6)
    for row in report["baselines"]["rows"]:
        for key in ("teacher_dpmpp", "teacher_unipc"):
            again = ev.distances(torch.from_numpy(arrays[f"x_{key}_N{row['steps']}"]))
            assert again["classifier"] == pytest.approx(row[key], rel=1e-6)
    assert not list(tiny_run.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_tiny_job_reports_intervals_comparisons_and_quality_checks(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    ci = {r["steps"]: r for r in report["intervals"]["rows"]}
    assert report["intervals"]["level"] == 0.95 and report["intervals"]["resamples"] == 1000
    for row in report["rows"]:
        for key in ("teacher_ddim", "student", "teacher_ddim_pixel", "student_pixel"):
            if row.get(key) is not None:
                lo, hi = ci[row["steps"]][key]
                assert 0.0 <= lo <= row[key] <= hi
    lo, hi = report["intervals"]["floor"]
    assert 0.0 <= lo <= report["floor"] <= hi
    comps = {(c["name"], c["space"]): c for c in report["comparisons"]["rows"]}
    assert report["comparisons"]["reference_steps"] == 4
    for n in (1, 2):
        for space in ("classifier", "pixel"):
            for name in (f"student_{n}_vs_teacher_ddim_4", f"student_{n}_vs_teacher_ddim_{n}"):
                c = comps[name, space]
                assert c["interval"][0] <= c["ratio"] and isinstance(c["significant"], bool)
    assert ("teacher_ddim_1_vs_teacher_ddim_4", "classifier") in comps
    target = {t["name"]: t for t in report["targets"]}["student_1_vs_teacher_4"]
    assert target["interval"] == comps["student_1_vs_teacher_ddim_4", "classifier"]["interval"]
    pr = report["precision_recall"]
    assert pr["k"] == 3 and pr["space"] == "classifier" and 0.5 < pr["data"]["recall"] <= 1.0
    assert [r["steps"] for r in pr["rows"]] == [1, 2, 4] and pr["rows"][2]["student"] is None
    memo = report["memorisation"]
    assert memo["training_examples"] == 1797 and memo["rows"][0]["student"]["median_ratio"] > 0
    base = report["baselines"]
    assert [r["steps"] for r in base["rows"]] == [1, 2, 4] and "T = 1024" in base["solvers"]["teacher_unipc"]
    ci = {r["steps"]: r for r in base["intervals"]["rows"]}
    for row in base["rows"]:
        for key in ("teacher_dpmpp", "teacher_unipc", "teacher_dpmpp_pixel", "teacher_unipc_pixel"):
            lo, hi = ci[row["steps"]][key]
            assert 0.0 <= lo <= row[key] <= hi
    # DPM-Solver++(2M)'s first step is DDIM's, and its last returns x_hat: at N <= 2 they are one sampler
    rows = {r["steps"]: r for r in report["rows"]}
    assert base["rows"][0]["teacher_dpmpp"] == pytest.approx(rows[1]["teacher_ddim"], rel=1e-5)
    assert base["rows"][1]["teacher_dpmpp"] == pytest.approx(rows[2]["teacher_ddim"], rel=1e-4)
    comps = {(c["name"], c["space"]) for c in base["comparisons"]["rows"]}
    assert {
        ("student_2_vs_teacher_unipc_2", "classifier"),
        ("teacher_dpmpp_4_vs_teacher_ddim_4", "pixel"),
    } <= comps


def test_printed_report_shows_intervals_and_significance(tiny_run, capsys):
    assert main(["--resume", "--out", str(tiny_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "95% interval over the 898 samples" in out and "[" in out
    assert "distilled vs teacher DDIM at the same N: significantly better at N = " in out
    assert "distilled vs teacher 4-step DDIM:" in out
    assert "k-NN precision / recall" in out and "memorisation" in out
    assert "Baselines: the teacher with training-free solvers" in out and "DPM-Solver++ 2M" in out


def test_resume_of_a_finished_run_gives_the_same_report(tiny_run):
    before = json.loads((tiny_run / "report.json").read_text())
    assert main(["--resume", "--out", str(tiny_run), "--no-progress"]) == 0
    after = json.loads((tiny_run / "report.json").read_text())
    for a, b in zip(before["rows"], after["rows"], strict=True):
        assert a["teacher_ddim"] == b["teacher_ddim"] and a["student"] == b["student"]


def test_teacher_checkpoint_skips_teacher_training(tiny_run, tmp_path):
    out = tmp_path / "from_teacher"
    ckpt = tiny_run / "checkpoints" / "teacher.safetensors"
    tiny = [
        a for i, a in enumerate(TINY) if not {a, TINY[i - 1]} & {"--teacher-iters", "--teacher-batch-size"}
    ]
    assert main(tiny + ["--out", str(out), "--teacher", str(ckpt)]) == 0
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


def test_the_report_targets_are_the_headline_claims() -> None:
    """8 steps within 1.05x of the teacher's 256 (interval's upper end within 1.10), 4 steps within
    1.15x, both with 0.05 more in pixel space, 1 step below the teacher's 4, and the 1-step recall
    at least 0.9 of the teacher's."""

    def row(steps: int, student: float | None, teacher: float, pixel: float | None = None) -> dict:
        r = dict(steps=steps, teacher_ddim=teacher, teacher_ddim_pixel=teacher)
        if student is not None:
            r.update(student=student, student_pixel=pixel if pixel is not None else student)
        return r

    def comparison(name: str, space: str, hi: float) -> dict:
        return dict(name=name, space=space, interval=[1.0, hi])

    rows = [row(1, 9.0, 500.0), row(4, 11.6, 20.0, 12.1), row(8, 10.4, 12.0, 10.95), row(256, None, 10.0)]
    comparisons = dict(
        rows=[
            comparison("student_8_vs_teacher_ddim_256", "classifier", 1.101),
            comparison("student_8_vs_teacher_ddim_256", "pixel", 1.149),
            comparison("student_4_vs_teacher_ddim_256", "classifier", 1.149),
        ]
    )
    pr = dict(
        rows=[dict(steps=1, student=dict(recall=0.449)), dict(steps=256, teacher_ddim=dict(recall=0.5))]
    )
    got = {t["name"]: t for t in main_targets(rows, comparisons, "classifier", pr)}
    assert got["student_8_vs_teacher_256"]["met"] and not got["student_8_vs_teacher_256"]["met_by_interval"]
    assert not got["student_4_vs_teacher_256"]["met"] and got["student_4_vs_teacher_256"]["met_by_interval"]
    assert (
        got["student_8_vs_teacher_256_pixel"]["met"]
        and got["student_8_vs_teacher_256_pixel"]["met_by_interval"]
    )
    assert not got["student_4_vs_teacher_256_pixel"]["met"]  # 1.21 > 1.15 + 0.05
    assert got["student_1_vs_teacher_4"]["met"]
    assert not got["student_1_recall_vs_teacher_256"]["met"]  # 0.898 < 0.9
