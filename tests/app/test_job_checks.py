"""The checks a resume makes before anything runs (`pd_fast.app.jobs.checks.check_resume`), reached
directly: the students of finished rounds are verified against their SHA-256 here, not only when
distillation loads them later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pd_fast.app.checkpoint import CheckpointError
from pd_fast.app.jobs.checks import check_resume
from pd_fast.app.training import progressive_distill, train_teacher
from tests._tiny import TinyMLP, eight_gaussians


def test_the_resume_check_names_a_damaged_student_of_a_finished_round(tmp_path: Path) -> None:
    data = eight_gaussians(64, seed=0)
    quiet = dict(batch_size=16, out_dir=tmp_path, progress=False)
    teacher = train_teacher(TinyMLP(seed=0), data, iters=2, warmup=1, **quiet)
    progressive_distill(teacher, data, 4, 1, iters=2, **quiet)
    check_resume(str(tmp_path), data, TinyMLP(seed=0))  # whole: no error
    student = tmp_path / "checkpoints" / "student_2.safetensors"
    raw = bytearray(student.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + header_len])["net.0.weight"]["data_offsets"]
    raw[8 + header_len + (begin + end) // 2] ^= 0x01
    student.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="student_2.safetensors is damaged"):
        check_resume(str(tmp_path), data, TinyMLP(seed=0))
