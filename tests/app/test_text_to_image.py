"""The text-to-image job (`python -m pd_fast --teacher SD_DIR`, pd_fast.app.jobs.text_to_image) on
tiny Stable Diffusion and LDM pipelines built by the tests (nothing is downloaded): it runs end to
end, the exported students are diffusers pipelines whose samples are the ones the report scored,
a resume gives the same report, and bad inputs are refused before anything is written."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, LDMPipeline, StableDiffusionPipeline

from pd_fast.app.captioned import captioned_digits
from pd_fast.app.cli import main
from pd_fast.integrations.latent import guidance_band
from pd_fast.integrations.tiny import SD_BETAS, save_ldm, save_sd

TINY = (
    "--quick --start-steps 8 --iters 3 --guidance-iters 3 --eval-samples 4 --batch-size 8 --eval-w 0,2 "
    "--no-progress"
).split()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    teacher = save_sd(
        root / "sd",
        DDPMScheduler(**SD_BETAS, steps_offset=1, clip_sample=False, prediction_type="v_prediction"),
    )
    out = root / "run"
    assert main(["--teacher", str(teacher), *TINY, "--out", str(out)]) == 0
    return teacher, out


def test_the_job_reports_every_w_and_n_with_one_unet_call_a_student_step(sd_run) -> None:
    _, out = sd_run
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "stable_diffusion" and report["ws"] == ["0", "2"]
    rows = {(r["model"], r["steps"], r["w"]): r for r in report["rows"]}
    assert set(rows) == {
        (m, n, w) for w in ("0", "2") for n in (1, 2, 4, 8) for m in ("teacher", "student")
    } - {
        ("student", 8, "0"),
        ("student", 8, "2"),
    }
    for (model, n, w), row in rows.items():
        guided_teacher = model == "teacher" and w != "0"
        assert row["unet_calls_per_image"] == (2 * n if guided_teacher else n), (model, n, w)
        lo, hi = row["interval"]
        assert lo <= row["distance"] <= hi and row["distance"] > 0
    assert sorted(report["diffusers_exports"]) == ["1", "2", "4"]
    assert (out / "grid_w2.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "cache" / "encoded.safetensors").is_file()


def test_an_exported_student_samples_in_diffusers_what_the_report_scored(sd_run) -> None:
    """StableDiffusionPipeline.from_pretrained(student_2) at guidance_scale 1 + w, from the noise
    and prompts of the evaluation, gives the latents in samples.npz, with 2 UNet calls an image."""
    _, out = sd_run
    report = json.loads((out / "report.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(report["diffusers_exports"]["2"])
    pipe.set_progress_bar_config(disable=True)
    n = report["eval_samples"]
    z = torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(1))  # the job's: seed + 1
    prompts = captioned_digits().captions[:n]  # the evaluation prompts: the data's captions in order
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    got = pipe(prompts, num_inference_steps=2, guidance_scale=3.0, latents=z, output_type="latent").images
    with np.load(out / "samples.npz") as saved:
        expected = torch.from_numpy(saved["z_student_N2_w2"])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert calls == [n, n]  # one call a step for the whole batch: no guidance batch
    # the students read the w embedding's smooth band for --w-max (8); the pipeline feeds them all
    band = guidance_band(256, 8.0)
    proj = pipe.unet.time_embedding.cond_proj.weight
    assert proj[:, ~band].abs().max() == 0 and proj[:, band].abs().max() > 0


def test_each_row_holds_the_accuracy_of_the_named_digit_on_its_decoded_samples(sd_run) -> None:
    """--data digits: every row's `accuracy` lies in [0, 1] (inside its interval), and one row's equals
    the digits classifier's accuracy recomputed here from samples.npz: the teacher's AutoencoderKL
    decodes the latents, the luma weights make them gray, and a least-squares solve against the
    data's own 8 -> 16 upsampling (pd_fast.app.data.center_crop_resize of the 64 basis images)
    takes them back to 8 x 8; the labels are the data's (the prompts are its captions in order)."""
    from diffusers import AutoencoderKL

    from pd_fast.app.data import center_crop_resize, digits
    from pd_fast.app.evaluation import train_classifier

    teacher, out = sd_run
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] is not None
    for row in report["rows"]:
        lo, hi = row["accuracy_interval"]
        assert 0.0 <= lo <= row["accuracy"] <= hi <= 1.0, row
    row = next(r for r in report["rows"] if (r["model"], r["steps"], r["w"]) == ("student", 2, "2"))
    vae = AutoencoderKL.from_pretrained(teacher / "vae").eval()
    with np.load(out / "samples.npz") as saved:
        z = torch.from_numpy(saved["z_student_N2_w2"])
    with torch.no_grad():
        rgb = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    gray = (rgb * torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)).sum(1)
    basis = 0.5 * torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)  # 0.5: no clamping
    upsample = center_crop_resize(basis, 16).reshape(64, 256).T / 0.5  # (256, 64)
    solved = torch.linalg.lstsq(upsample, gray.double().reshape(len(z), 256).T).solution.T
    images = solved.reshape(-1, 1, 8, 8).clamp(-1, 1).float()
    data = digits()
    classifier, _ = train_classifier(data.x, data.labels, seed=0, cache_dir=str(out / "cache"))
    with torch.no_grad():
        predicted = classifier(images).argmax(1)
    assert row["accuracy"] == (predicted == data.labels[: len(z)]).float().mean().item()


def test_a_resume_of_a_finished_run_gives_the_same_report(sd_run) -> None:
    teacher, out = sd_run
    before = json.loads((out / "report.json").read_text())
    assert main(["--resume", "--out", str(out), "--no-progress"]) == 0
    after = json.loads((out / "report.json").read_text())
    assert [r["distance"] for r in after["rows"]] == [r["distance"] for r in before["rows"]]


def test_bad_inputs_are_refused_before_anything_is_written(sd_run, tmp_path, capsys) -> None:
    teacher, _ = sd_run
    cases = [
        (["--resolution", "16"], "--resolution does not apply to a latent pipeline --teacher"),
        (["--p-uncond", "0.2"], "--p-uncond needs --guided"),
        (["--guided"], "--guided trains on a conditional built-in network"),
        (["--start-steps", "2048"], "--start-steps 2048 is more than the teacher's T = 1000"),
        (["--data", str(tmp_path / "none")], "needs a captioned image folder or 'digits'"),
        (["--data", str(tmp_path)], "no metadata.jsonl or metadata.csv"),
        (["--w-min", "3", "--w-max", "1"], "0 <= w-min <= w-max"),
        (["--guidance-dim", "7"], "--guidance-dim must be even"),
    ]
    for k, (argv, message) in enumerate(cases):
        out = tmp_path / f"out{k}"
        capsys.readouterr()
        assert main(["--teacher", str(teacher), *TINY, *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert not out.exists(), argv


def test_an_ldm_teacher_is_distilled_in_latent_space_into_ldm_pipelines(tmp_path) -> None:
    teacher, out = save_ldm(tmp_path / "ldm"), tmp_path / "run"
    flags = "--quick --start-steps 8 --iters 3 --eval-samples 4 --batch-size 8 --no-progress".split()
    assert main(["--teacher", str(teacher), *flags, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "ldm" and {r["w"] for r in report["rows"]} == {None}
    pipe = LDMPipeline.from_pretrained(report["diffusers_exports"]["4"])
    assert pipe.unet.config.in_channels == 3


def test_an_ldm_teacher_refuses_the_flags_only_a_text_conditioned_teacher_uses(tmp_path, capsys) -> None:
    teacher = save_ldm(tmp_path / "ldm")
    cases = [
        ["--w-max", "2"], ["--w-min", "1"], ["--guidance-iters", "5"], ["--guidance-lr", "1e-3"],
        ["--guidance-dim", "8"], ["--eval-w", "0,1"], ["--prompts", str(tmp_path / "p.txt")],
        ["--gradient-checkpointing"],
    ]  # fmt: skip
    for k, argv in enumerate(cases):
        out = tmp_path / f"out{k}"
        capsys.readouterr()
        assert main(["--teacher", str(teacher), "--quick", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{argv[0]} does not apply to an LDMPipeline --teacher" in err[0], err
        assert not out.exists(), argv


def test_gradient_checkpointing_gives_the_same_gradients_and_the_job_turns_it_on(
    tmp_path, monkeypatch
) -> None:
    from pd_fast.app.config import TextToImageConfig
    from pd_fast.app.jobs import text_to_image
    from pd_fast.app.jobs.common import Run
    from pd_fast.integrations.latent import load_latent_pipeline, w_conditioned_student

    teacher = load_latent_pipeline(save_sd(tmp_path / "sd")).model

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        student = w_conditioned_student(teacher).train()
        with torch.no_grad():  # a trained student: its w embedding is not zero
            weight = student.unet.time_embedding.cond_proj.weight
            weight.copy_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
        if checkpointing:
            student.unet.enable_gradient_checkpointing()
        z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        cond = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(1))
        out = student(z, torch.tensor([0.2, 0.5, 0.9]), cond, torch.tensor([0.0, 1.0, 4.0]))
        out.square().mean().backward()
        return {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-5, atol=1e-7)
    seen = []
    monkeypatch.setattr(
        "pd_fast.app.training.distill_guidance",
        lambda *a, student, **kw: seen.append(student.unet.is_gradient_checkpointing) or student,
    )
    pipeline = load_latent_pipeline(tmp_path / "sd")
    cfg = TextToImageConfig(teacher=str(tmp_path / "sd"), gradient_checkpointing=True)
    encoded = types.SimpleNamespace(latents=None, cond=None, null_cond=None)  # the stub reads none
    text_to_image.stage_1(pipeline, encoded, cfg, Run(str(tmp_path), torch.device("cpu"), False, False))
    assert seen == [True]


def test_torchrun_trains_the_text_to_image_job_on_two_ranks_that_agree(sd_run, tmp_path) -> None:
    """Two gloo ranks: rank 0 encodes and caches the data, the other reads its cache; both train one
    DDP job and end with the same students (the report holds every rank's fingerprints)."""
    import os
    import subprocess
    import sys

    teacher, _ = sd_run
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pd_fast"]
    flags = [a if a != "8" or i != TINY.index("--start-steps") + 1 else "4" for i, a in enumerate(TINY)]
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [*command, "--teacher", str(teacher), *flags, "--out", str(out)],
        env=dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1"), cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    ranks = report["rank_fingerprints"]
    assert len(ranks) == 2 and ranks[0] == ranks[1] and set(ranks[0]) == {"student_2", "student_1"}
