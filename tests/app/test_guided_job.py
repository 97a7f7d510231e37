"""The guided job's stages (`pd_fast.app.jobs.guided`) take the run's guidance range: stage 1 and
stage 2 each record in their training state the (w_min, w_max) that `--w-min` / `--w-max` set, as
config.json holds them. The tiny run stops once training is over (no evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pd_fast.app.cli import main
from pd_fast.app.data import digits
from pd_fast.app.jobs import guided


class _TrainingOver(Exception):
    pass


def test_both_guided_stages_record_the_runs_w_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = digits()
    path = tmp_path / "digits200.npz"
    np.savez(path, x=d.x[:200].numpy(), y=d.labels[:200].numpy())
    out = tmp_path / "out"
    argv = (
        f"--guided --data {path} --teacher-iters 4 --guidance-iters 2 --iters 2 --start-steps 4 "
        f"--end-steps 2 --hidden 16 --depth 1 --batch-size 16 --teacher-batch-size 16 --ckpt-every 0 "
        f"--no-progress --w-min 0.5 --w-max 3 --out {out}"
    ).split()

    def stop(*args: object) -> None:
        raise _TrainingOver

    monkeypatch.setattr(guided, "finish_training", stop)  # called once stage 2 has ended
    with pytest.raises(_TrainingOver):
        main(argv)
    config = json.loads((out / "config.json").read_text())
    assert (config["w_min"], config["w_max"]) == (0.5, 3.0)  # the flags
    for stage in ("guidance", "distill"):
        state = json.loads((out / "checkpoints" / f"{stage}_state.json").read_text())
        assert (state["config"]["w_min"], state["config"]["w_max"]) == (0.5, 3.0), stage
    assert (out / "checkpoints" / "student_2.safetensors").is_file()  # stage 2 ran to its end
