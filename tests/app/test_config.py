"""The typed run config (pd_fast.app.config) and how the command line turns flags into it: one
frozen dataclass per job, validated when made, round-tripped through config.json with unknown and
missing keys refused, and flags that a job would ignore refused before anything is written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pd_fast.app.cli import build_parser, main, resolve_config
from pd_fast.app.config import (
    BuiltinConfig,
    DiffusersConfig,
    GuidedConfig,
    TextToImageConfig,
    config_from_dict,
)

EXAMPLES = [
    BuiltinConfig(),
    BuiltinConfig(model="unet", ch=16, quick=True, teacher="t.safetensors", lr=1e-3),
    GuidedConfig(w_max=2.5, eval_w="0,0.5", precision="bf16"),
    DiffusersConfig(teacher="some/pipeline", param="eps", reparam_iters=7, resolution=16),
    TextToImageConfig(teacher="sd", gradient_checkpointing=True, eval_w="0,7.5", w_max=9.0),
]


@pytest.mark.parametrize("cfg", EXAMPLES, ids=lambda c: c.job)
def test_a_config_survives_config_json_unchanged(cfg, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    back = config_from_dict(json.loads(path.read_text()), str(path))
    assert type(back) is type(cfg) and back == cfg
    assert set(cfg.to_dict()) == {"job"} | {f.name for f in dataclasses.fields(cfg)}


def test_unknown_missing_and_foreign_keys_are_one_line_errors_naming_them() -> None:
    d = GuidedConfig().to_dict()
    with pytest.raises(ValueError, match=r"where\.json: unknown key 'lr_typo' for a guided run"):
        config_from_dict({**d, "lr_typo": 1.0}, "where.json")
    del d["w_max"]
    with pytest.raises(ValueError, match=r"missing key 'w_max' of a guided run"):
        config_from_dict(d, "where.json")
    with pytest.raises(ValueError, match=r"unknown key 'w_max' for a builtin run"):
        config_from_dict({**BuiltinConfig().to_dict(), "w_max": 4.0}, "where.json")
    with pytest.raises(ValueError, match="no 'job' key"):
        config_from_dict({k: v for k, v in BuiltinConfig().to_dict().items() if k != "job"}, "where.json")
    with pytest.raises(ValueError, match="unknown job 'nope'"):
        config_from_dict({**BuiltinConfig().to_dict(), "job": "nope"}, "where.json")
    with pytest.raises(ValueError, match="where.json: --iters must be a positive integer, got 1.5"):
        config_from_dict({**BuiltinConfig().to_dict(), "iters": 1.5}, "where.json")


def test_a_config_is_frozen_and_checked_whenever_it_is_made() -> None:
    cfg = BuiltinConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.iters = 5  # type: ignore[misc]
    bad = [
        (BuiltinConfig, dict(iters=0), "--iters must be a positive integer"),
        (BuiltinConfig, dict(teacher_iters=True), "--teacher-iters must be a positive integer"),
        (BuiltinConfig, dict(lr=float("nan")), "--lr must be a positive finite number"),
        (BuiltinConfig, dict(ckpt_every=-1), "--ckpt-every must be an integer >= 0"),
        (BuiltinConfig, dict(seed=2**32), "--seed must be an integer in"),
        (BuiltinConfig, dict(model="cnn"), "--model must be one of"),
        (BuiltinConfig, dict(start_steps=12, end_steps=4), "times a power of 2"),
        (BuiltinConfig, dict(resolution=1), "--resolution must be an integer >= 2"),
        (GuidedConfig, dict(p_uncond=1.0), r"--p-uncond must lie in \[0, 1\)"),
        (GuidedConfig, dict(w_min=3.0, w_max=2.0), "0 <= w-min <= w-max"),
        (GuidedConfig, dict(eval_w="1,1"), "given twice"),
        (DiffusersConfig, dict(teacher=""), "--teacher must be the path of a diffusers pipeline folder"),
        (DiffusersConfig, dict(teacher="p", reparam_iters=0), "--reparam-iters must be a positive integer"),
    ]
    for cls, changes, message in bad:
        with pytest.raises(ValueError, match=message):
            cls(**changes)
    with pytest.raises(ValueError, match="--iters"):
        cfg.replace(iters=-3)


def test_each_job_starts_from_its_defaults_then_quick_then_the_flags() -> None:
    def cfg(*argv: str):
        return resolve_config(build_parser().parse_args([*argv, "--out", "never-written"]))[0]

    full, quick = cfg(), cfg("--quick")
    assert (full.iters, full.start_steps, full.hidden, full.teacher_iters) == (2000, 128, 256, 6000)
    assert (quick.iters, quick.start_steps, quick.hidden, quick.teacher_iters) == (100, 16, 128, 800)
    assert quick.quick and not full.quick and quick.last_rounds_factor == 2.0
    guided, guided_quick = cfg("--guided"), cfg("--guided", "--quick")
    assert isinstance(guided, GuidedConfig)
    assert (guided.iters, guided.last_rounds_factor, guided.guidance_iters) == (1000, 4.0, 6000)
    assert (guided_quick.iters, guided_quick.last_rounds_factor, guided_quick.guidance_iters) == (
        100,
        2.0,
        200,
    )
    assert cfg("--guided", "--quick", "--iters", "7").iters == 7  # a flag wins over --quick
    assert not Path("never-written").exists()


def test_flags_a_job_would_ignore_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher = tmp_path / "teacher.safetensors"  # never read: the flags are refused first
    teacher.write_bytes(b"")
    cases = [
        (["--reparam-iters", "5"], "--reparam-iters does not apply to the built-in job"),
        (["--w-max", "2"], "--w-max needs --guided"),
        (
            ["--teacher", str(teacher), "--teacher-iters", "5"],
            "--teacher-iters does not apply with a --teacher",
        ),
        (["--model", "unet", "--hidden", "8"], "--hidden does not apply to --model unet"),
        (["--ch", "8"], "--ch does not apply to --model mlp"),
        (["--guided", "--reparam-iters", "3"], "--reparam-iters does not apply to --guided"),
    ]
    for argv, message in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert not out.exists(), argv


def test_flags_of_a_unet_or_a_checkpoint_are_refused_with_a_diffusers_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from diffusers import DDPMScheduler

    from tests.app.test_diffusers import save_pipeline

    folder = tmp_path / "pipe"
    save_pipeline(folder, DDPMScheduler())
    for argv, message in (
        (["--model", "unet"], "--model does not apply to a diffusers --teacher"),
        (["--hidden", "64"], "--hidden does not apply to a diffusers --teacher"),
        (["--teacher-iters", "9"], "--teacher-iters does not apply to a diffusers --teacher"),
    ):
        out = tmp_path / "out"
        capsys.readouterr()
        assert main(["--teacher", str(folder), *argv, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert not out.exists()


def test_resume_reads_the_config_back_and_refuses_an_edited_one(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    saved = BuiltinConfig(iters=3).to_dict()
    (out / "config.json").write_text(json.dumps(saved))
    cfg, where = resolve_config(build_parser().parse_args(["--resume", "--out", str(out)]))
    assert where == str(out) and cfg == BuiltinConfig(iters=3)
    with pytest.raises(ValueError, match=r"the run in .* has iters=3, this command has 4"):
        resolve_config(build_parser().parse_args(["--resume", "--out", str(out), "--iters", "4"]))
    (out / "config.json").write_text(json.dumps({**saved, "itres": 3}))
    assert main(["--resume", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'itres'" in err and len(err.strip().splitlines()) == 1


def test_precision_reaches_every_stage_and_fp16_needs_cuda(tmp_path: Path, capsys) -> None:
    """--precision bf16 trains every stage of a run in bf16 (its training states record it); fp16
    on a CPU is one line, before anything is written."""
    out = tmp_path / "bf16"
    tiny = "--quick --teacher-iters 4 --iters 2 --start-steps 4 --eval-max-steps 4 --hidden 16 --depth 1"
    assert main([*tiny.split(), "--precision", "bf16", "--out", str(out), "--no-progress"]) == 0
    states = sorted((out / "checkpoints").glob("*_state.json"))
    assert {p.name for p in states} == {"teacher_state.json", "distill_state.json"}
    for path in states:
        assert json.loads(path.read_text())["config"]["precision"] == "bf16", path.name
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    capsys.readouterr()
    assert main([*tiny.split(), "--precision", "fp16", "--out", str(tmp_path / "fp16"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp16 needs a CUDA device" in err[0]
    assert not (tmp_path / "fp16").exists()
