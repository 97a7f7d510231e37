"""The command line's guards (`pd_fast.app.cli`), each reached directly: every input a diffusers
teacher's job refuses is refused by `validate`, before the run folder exists (the run does not
repeat those checks after writing it), and Ctrl-C (a real SIGINT) ends a run with exit code 130, a
line saying how to resume it, and the folder's lock released."""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from pd_fast.app.cli import main
from pd_fast.app.run_dir import LOCK_FILE, lock_holder

# the tiny built-in run of tests/app/test_faults.py
TINY = (
    "--teacher-iters 30 --iters 4 --start-steps 4 --eval-max-steps 4 --hidden 32 --depth 1 "
    "--batch-size 32 --teacher-batch-size 32 --ckpt-every 10 --no-progress"
).split()


def _one_line_error(err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pd-distill: error: "), err
    assert needle in lines[0], (needle, lines[0])


def _pipeline(folder: Path, bare: bool = False, **unet: object) -> str:
    """A diffusers pipeline folder of a tiny random UNet2DModel (8x8, 1 channel), or its bare UNet."""
    diffusers = pytest.importorskip("diffusers")  # the test extra installs it
    torch.manual_seed(0)
    config = dict(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, add_attention=False,
    )  # fmt: skip
    net = diffusers.UNet2DModel(**{**config, **unet})
    if bare:
        net.save_pretrained(str(folder))
    else:
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=16)
        diffusers.DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(str(folder))
    return str(folder)


def test_every_refused_diffusers_teacher_input_is_refused_before_the_run_folder_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pipe = _pipeline(tmp_path / "pipe")
    base = ["--teacher", pipe, "--quick", "--no-progress"]
    arrays = {"three.npy": (3, 8, 8), "two_channels.npy": (10, 2, 8, 8), "flat.npy": (10, 64)}
    for name, shape in arrays.items():
        np.save(tmp_path / name, np.zeros(shape, np.float32))
    cases = [
        # refused when the job is chosen (resolve_config)
        (["--teacher", _pipeline(tmp_path / "bare", bare=True)], "bare UNet2DModel"),
        (base + ["--guided"], "--guided trains on a conditional built-in network"),
        # refused by the job's own checks (jobs/diffusers_teacher.prepare)
        (base + ["--param", "both"], "--param both"),
        (["--teacher", _pipeline(tmp_path / "cond", num_class_embeds=3), "--quick"], "class-conditional"),
        (base + ["--resolution", "16"], "sample_size 8"),
        (base + ["--data", "moons"], "not images"),
        (base + ["--data", str(tmp_path / "flat.npy")], "not images"),
        (base + ["--data", str(tmp_path / "two_channels.npy")], "2 channels"),
        (base + ["--start-steps", "2048"], "--start-steps 2048 is more than the teacher's T = 16"),
        (base + ["--data", str(tmp_path / "three.npy")], "at least 4 examples"),
        (base + ["--batch-size", "1000000000000"], "--batch-size 1000000000000"),
    ]
    for k, (argv, needle) in enumerate(cases):
        out = tmp_path / f"out{k}"
        capsys.readouterr()
        assert main(argv + ["--out", str(out), "--no-progress"]) == 2, argv
        _one_line_error(capsys.readouterr().err, needle)
        assert not out.exists(), argv


def test_ctrl_c_exits_130_with_the_resume_line_and_releases_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pd_fast.app.training import loop

    out = tmp_path / "run"
    real, updates = loop._update, []

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        updates.append(1)
        if len(updates) == 3:
            assert lock_holder(out / LOCK_FILE) == str(os.getpid())  # the run holds its folder
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, delivered as the terminal does
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_update", interrupted)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a shell
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # not the 1 thread a CPU run sets: the run must put it back
    try:
        capsys.readouterr()
        code = main(TINY + ["--out", str(out)])
        threads_after = torch.get_num_threads()
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 130 and len(updates) == 3
    resume_line = f"interrupted; continue with: python -m pd_fast --resume --out {out}"
    assert err.strip().splitlines()[-1] == resume_line
    assert (out / "config.json").is_file()  # what the resume line resumes
    assert threads_after == 2
    # the lock went with the run: another open file description can take it exclusively
    fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_ctrl_c_before_the_run_folder_exists_says_nothing_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pd_fast.app import cli

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt  # Ctrl-C while the data are being checked

    monkeypatch.setattr(cli, "validate", interrupted)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(TINY) == 130  # no --out: none was chosen yet
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted; nothing was written"
    assert not (tmp_path / "runs").exists()
