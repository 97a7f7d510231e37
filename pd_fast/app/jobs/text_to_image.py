"""The text-to-image job (`python -m pd_fast --teacher SD_DIR --data DIR`): guided distillation of a
latent, text-conditioned pipeline (docs/spec.md sections 8 and 10).

The teacher is a `StableDiffusionPipeline` folder, sampled with classifier-free guidance at two
UNet calls a step. The data (a captioned image folder, or "digits": the 8x8 digits with captions
naming them) are encoded once into latents and prompt embeddings and cached in the run folder.
[GD] stage 1 trains a w-conditioned copy of the teacher's UNet (`time_cond_proj_dim`, its
`cond_proj` starting at zero) on the guided target for w ~ U[w_min, w_max]; stage 2 halves its
steps from `--start-steps` to `--end-steps` with w per example. Every student whose N divides T is
exported as a `StableDiffusionPipeline` folder (`OUT/diffusers/student_<N>/`) that samples with one
UNet call a step at `guidance_scale = 1 + w`. An `LDMPipeline` (unconditional latent) teacher gets
stage 2 alone, in latent space, exported as `LDMPipeline` folders.

The report (`report.json`, printed): for each w of `--eval-w` and N in {1, 2, 4, 8}, the distance in
latent space of the student's N-step samples to the teacher's 256-step guided DDIM sample from the
same noise and prompt, beside the teacher's own N-step guided DDIM distance, with bootstrap
intervals, and the UNet calls per image; with `--data digits`, also the digits classifier's
accuracy of the digit each prompt names, on the decoded samples; `grid_w<w>.png`, decoded samples
with their prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TextToImageConfig
from .common import Run, finish_training, parameters, save_model_json

EVAL_STEPS = (1, 2, 4, 8)
REFERENCE_STEPS = 256


def is_latent_pipeline(path: str) -> bool:
    """Whether the pipeline folder `path` is a latent one (an autoencoder or a text encoder among
    its components in model_index.json). Reads JSON only."""
    try:
        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and any(k in index for k in ("vae", "vqvae", "text_encoder"))


@dataclass
class Inputs:
    """What the checks loaded: the teacher pipeline, the captioned data fitted to its autoencoder,
    and the evaluation prompts."""

    pipeline: Any  # pd_fast.integrations.latent.LatentPipeline
    data: Any  # pd_fast.app.captioned.Captioned
    prompts: list[str]
    exported: list[int]  # the students' N that will be exported (N divides T)
    kept: list[int]  # and those that stay checkpoints


def prepare(cfg: TextToImageConfig, run: Run) -> Inputs:
    """Every check before the run writes: the teacher folder, the data (fitted to the autoencoder's
    input size), one example through the autoencoder, the text encoder and the UNet, and the step
    counts against the teacher's T."""
    from ...integrations.latent import load_latent_pipeline

    pipeline = load_latent_pipeline(cfg.teacher)
    from .diffusers_teacher import check_steps

    # a start-steps student of another param: an LDM's (a guided student changes param in stage 1)
    param = pipeline.param if pipeline.kind == "ldm" else cfg.param
    exported, kept = check_steps(cfg, pipeline.model.num_train_timesteps, param)
    data = _load_data(cfg, pipeline)
    with torch.no_grad():  # one example all the way through, before anything is written
        z0 = pipeline.encode_images(data.images[:1])
        cond = pipeline.encode_prompt(data.captions[:1]) if pipeline.kind != "ldm" else None
        args = () if cond is None else (cond,)
        pipeline.model(z0, torch.full((1,), 0.5), *args)
    return Inputs(pipeline, data, _prompts(cfg, data), exported, kept)


def image_size(pipeline: Any) -> tuple[int, int]:
    """The autoencoder's input size for the UNet's latents: latent size x 2^(downsamplings)."""
    _, h, w = pipeline.latent_shape
    factor = 2 ** (len(pipeline.autoencoder.config.block_out_channels) - 1)
    return h * factor, w * factor


def _load_data(cfg: TextToImageConfig, pipeline: Any) -> Any:
    from ..captioned import captioned_digits, load_captioned

    size = image_size(pipeline)
    resolution = size[0] if size[0] == size[1] else size
    channels = int(pipeline.autoencoder.config.in_channels)
    if cfg.data == "digits":
        return captioned_digits(resolution, channels)
    if not os.path.isdir(cfg.data):
        raise ValueError(
            f"--data {cfg.data}: a text-to-image teacher needs a captioned image folder or 'digits'"
        )
    return load_captioned(cfg.data, resolution, channels)


def _prompts(cfg: TextToImageConfig, data: Any) -> list[str]:
    """`--prompts` (one a line), or the data's captions, repeated to `eval_samples`."""
    if cfg.prompts is None:
        base = data.captions
    else:
        try:
            with open(cfg.prompts, encoding="utf-8") as f:
                base = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--prompts {cfg.prompts}: {err}") from err
        if not base:
            raise ValueError(f"--prompts {cfg.prompts} holds no prompts")
    return [base[i % len(base)] for i in range(cfg.eval_samples)]


def teacher_id(pipeline: Any) -> str:
    """What identifies the teacher for the latent cache: its autoencoder's, text encoder's and
    UNet's weights (SHA-256 over their state dicts)."""
    from ..checkpoint import model_fingerprint

    parts = [pipeline.autoencoder, pipeline.model] + (
        [pipeline.text_encoder] if pipeline.text_encoder else []
    )
    return hashlib.sha256(json.dumps([model_fingerprint(p) for p in parts]).encode()).hexdigest()


def run(cfg: TextToImageConfig, run: Run, inputs: Inputs) -> dict:
    """The job (module docstring); returns the report (also written to `report.json`)."""
    from .diffusers_teacher import export, export_plan

    pipeline, data = inputs.pipeline.to(run.device), inputs.data
    teacher = pipeline.model
    run.say(
        f"data: {data.name}, {len(data)} captioned images of shape {tuple(data.images.shape[1:])}; teacher: "
        f"{pipeline.kind} {cfg.teacher} ({parameters(teacher)}), param={pipeline.param}, "
        f"T={teacher.num_train_timesteps}; students param={cfg.param}; device {run.device}; out {run.out}"
    )
    kind = "LDMPipelines" if pipeline.kind == "ldm" else "StableDiffusionPipelines"
    run.say(
        export_plan(inputs.exported, inputs.kept, teacher.num_train_timesteps).replace("DDIMPipelines", kind)
    )
    save_model_json(
        run, {"model": {"kind": pipeline.kind, "path": os.path.abspath(cfg.teacher)}, "param": cfg.param}
    )
    with run.timed("encode_seconds"):
        encoded = encode(pipeline, data, cfg, run)
    guided = pipeline.kind != "ldm"
    with run.timed("guidance_train_seconds"):
        first = (
            stage_1(pipeline, encoded, cfg, run) if guided else reparameterized(pipeline, encoded, cfg, run)
        )
    with run.timed("distill_train_seconds"):
        students = stage_2(first, pipeline, encoded, cfg, run)
    fingerprints = finish_training(run, {f"student_{n}": m for n, m in students.items()})
    if not run.main:
        return {}
    with run.timed("eval_seconds"):
        rows, samples = evaluate(pipeline, students, inputs.prompts, cfg, run)
    with run.timed("export_seconds"):
        T = pipeline.model.num_train_timesteps
        exports, skipped = export(students, pipeline.schedule, cfg.param, run, T, pipeline=pipeline)
    run.total()
    report = build_report(cfg, run, rows, exports, skipped, pipeline, len(data))
    if fingerprints is not None:
        report["rank_fingerprints"] = fingerprints
    write_outputs(report, samples, inputs.prompts, pipeline, cfg, run)
    print_report(report, run)
    return report


def encode(pipeline: Any, data: Any, cfg: TextToImageConfig, run: Run) -> Any:
    """The data's latents and prompt embeddings (`pd_fast.app.captioned.encode_cached`): rank 0
    computes and caches them in the run folder, the other ranks then read its cache."""
    from ..captioned import encode_cached
    from ..training.distributed import _dist_context

    def cached() -> Any:
        return encode_cached(
            data, pipeline, run.path("cache"), teacher_id(pipeline), cfg.batch_size, run.progress,
            conditional=pipeline.kind != "ldm",
        )  # fmt: skip

    encoded = cached() if run.main else None
    _dist_context().barrier()
    return encoded if run.main else cached()


def stage_1(pipeline: Any, encoded: Any, cfg: TextToImageConfig, run: Run) -> nn.Module:
    """[GD] stage 1: the teacher's UNet with a w embedding (`cond_proj` at zero) learns the
    teacher's guided prediction for w ~ U[w_min, w_max], read in the teacher's param and learnt in
    the students' (`--param`)."""
    from ...integrations.latent import w_conditioned_student
    from ..reparam import TEACHER_WEIGHTING
    from ..training import distill_guidance

    student = w_conditioned_student(pipeline.model, cfg.guidance_dim, w_max=cfg.w_max)
    if cfg.gradient_checkpointing:  # diffusers' own; the round students of stage 2 copy it
        student.unet.enable_gradient_checkpointing()
    # a student of another param learns best with the loss in the teacher's own space (pd_fast.app.reparam)
    weighting = "snr_trunc" if pipeline.param == cfg.param else TEACHER_WEIGHTING[pipeline.param]
    return distill_guidance(
        pipeline.model, encoded.latents, cond=encoded.cond, null_cond=encoded.null_cond, student=student,
        teacher_param=pipeline.param, weighting=weighting, w_min=cfg.w_min, w_max=cfg.w_max,
        iters=cfg.guidance_iters, batch_size=cfg.batch_size, lr=cfg.guidance_lr, bounded=False,
        **_common(cfg, run, pipeline.schedule),
    )  # fmt: skip


def reparameterized(pipeline: Any, encoded: Any, cfg: TextToImageConfig, run: Run) -> nn.Module:
    """An unconditional teacher of another param than `--param` first gets a `--param` student of
    its own start-steps DDIM (`jobs.diffusers_teacher.reparameterize_teacher`); else the teacher."""
    from .diffusers_teacher import reparameterize_teacher

    first, _ = reparameterize_teacher(
        pipeline.model, encoded.latents, pipeline.schedule, pipeline.param, cfg, run
    )
    return first.get(cfg.start_steps, pipeline.model)


def stage_2(
    first: nn.Module, pipeline: Any, encoded: Any, cfg: TextToImageConfig, run: Run
) -> dict[int, nn.Module]:
    """Progressive distillation of the stage-1 student, w per example (of an unconditional teacher
    without), in latent space."""
    from ..training import progressive_distill

    guided = pipeline.kind != "ldm"
    cond = dict(cond=encoded.cond, w_min=cfg.w_min, w_max=cfg.w_max) if guided else {}
    return progressive_distill(
        first, encoded.latents, cfg.start_steps, cfg.end_steps, iters=cfg.iters,
        last_rounds_factor=cfg.last_rounds_factor, batch_size=cfg.batch_size, lr=cfg.lr, bounded=False,
        **cond, **_common(cfg, run, pipeline.schedule),
    )  # fmt: skip


def _common(cfg: TextToImageConfig, run: Run, schedule: Any) -> dict[str, Any]:
    return dict(
        schedule=schedule,
        param=cfg.param,
        seed=cfg.seed,
        ckpt_every=cfg.ckpt_every,
        precision=cfg.precision,
        **run.training(),
    )


def evaluate(
    pipeline: Any, students: dict[int, nn.Module], prompts: list[str], cfg: TextToImageConfig, run: Run
) -> tuple[list[dict], dict]:
    """The report's rows (`pd_fast.app.evaluation.latent`): the evaluation prompts, encoded, and one
    noise z (drawn on the CPU from `seed + 1`) shared by every sample set."""
    from ..evaluation.latent import evaluate_latent
    from .common import eval_noise

    z = eval_noise(cfg.seed, (len(prompts), *pipeline.latent_shape), run.device)
    cond = null = None
    if pipeline.kind != "ldm":
        with torch.no_grad():
            cond = torch.cat(
                [pipeline.encode_prompt(prompts[i : i + 32]) for i in range(0, len(prompts), 32)]
            )
            null = pipeline.null_condition()
    rows, samples = evaluate_latent(
        pipeline.model, students, pipeline.schedule, pipeline.param, cfg.param, z, cond, null, cfg.ws(),
        seed=cfg.seed,
    )  # fmt: skip
    if cfg.data == "digits" and cond is not None:
        digit_accuracy(rows, samples, pipeline, prompts, cfg, run)
    return rows, samples


def digit_accuracy(
    rows: list[dict], samples: dict, pipeline: Any, prompts: list[str], cfg: TextToImageConfig, run: Run
) -> None:
    """With the captioned digits as data: each row's `accuracy` of the digit its prompt names, by the
    digits classifier (trained once, cached in the run folder) on the decoded samples taken back to
    8 x 8 grayscale (`pd_fast.app.evaluation.latent.add_digit_accuracy`). Skipped, with a note,
    where some `--prompts` line names no digit."""
    from ..captioned import named_digit
    from ..data import digits
    from ..evaluation import train_classifier
    from ..evaluation.latent import add_digit_accuracy

    named = [named_digit(p) for p in prompts]
    if None in named:
        run.say(f"no digit accuracy: the prompt {prompts[named.index(None)]!r} names no digit")
        return
    data = digits()
    classifier, _ = train_classifier(data.x, data.labels, seed=cfg.seed, cache_dir=run.path("cache"))

    def decode(z: torch.Tensor) -> torch.Tensor:
        return pipeline.decode_latents(z.to(run.device))

    add_digit_accuracy(rows, samples, decode, torch.tensor(named), classifier, seed=cfg.seed)


def build_report(
    cfg: TextToImageConfig,
    run: Run,
    rows: list[dict],
    exports: dict,
    skipped: list[int],
    pipeline: Any,
    n_data: int,
) -> dict[str, Any]:
    return {
        "metric": "latent_rms_distance_to_teacher_256_guided_ddim",
        "accuracy": "digits classifier accuracy of the digit the prompt names, on decoded samples"
        if any("accuracy" in r for r in rows)
        else None,
        "rows": rows,
        "ws": [name for name, _ in cfg.ws()] if pipeline.kind != "ldm" else [None],
        "kind": pipeline.kind,
        "teacher_param": pipeline.param,
        "param": cfg.param,
        "num_train_timesteps": pipeline.model.num_train_timesteps,
        "data_examples": n_data,
        "eval_samples": cfg.eval_samples,
        "diffusers_exports": exports,
        "not_exported_steps": skipped,
        "settings": cfg.to_dict(),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "world_size": run.world,
        **run.timings,
    }


def write_outputs(
    report: dict, samples: dict, prompts: list[str], pipeline: Any, cfg: TextToImageConfig, run: Run
) -> None:
    """`report.json`, `samples.npz` (every sample set's latents) and a grid of decoded samples per w."""
    import io

    import numpy as np

    from ..checkpoint import atomic_write_bytes, save_json
    from ..report import plot_prompt_grid

    save_json(run.path("report.json"), report)
    buf = io.BytesIO()
    np.savez(buf, **{f"z_{k}": v.numpy().astype(np.float32) for k, v in samples.items()})
    atomic_write_bytes(run.path("samples.npz"), buf.getvalue())
    for w in report["ws"]:
        columns = [(f"student N={n}", samples.get(f"student_N{n}_w{w}")) for n in EVAL_STEPS]
        columns.append((f"teacher N={REFERENCE_STEPS}", samples[f"teacher_N{REFERENCE_STEPS}_w{w}"]))
        decoded = [
            (title, pipeline.decode_latents(x[:8].to(run.device)).float().cpu())
            for title, x in columns
            if x is not None
        ]
        plot_prompt_grid(decoded, prompts[:8], f"w = {w}", run.path(f"grid_w{w}.png"))


def print_report(report: dict, run: Run) -> None:
    from ..report import format_latent_table

    print(format_latent_table(report))
    t = run.timings
    print(
        f"time: encoding {t['encode_seconds']:.1f}s, stage 1 {t['guidance_train_seconds']:.1f}s, stage 2 "
        f"{t['distill_train_seconds']:.1f}s, evaluation {t['eval_seconds']:.1f}s, "
        f"export {t['export_seconds']:.1f}s, total {t['total_seconds']:.1f}s"
    )
    if report["not_exported_steps"]:
        print(
            f"not exported (N does not divide T): {', '.join(map(str, report['not_exported_steps']))} steps"
        )
    print(f"wrote {run.out}/report.json, samples.npz, grid_w*.png, checkpoints/, diffusers/")
    for n, folder in report["diffusers_exports"].items():
        pipe = "LDMPipeline" if report["kind"] == "ldm" else "StableDiffusionPipeline"
        guidance = "" if report["kind"] == "ldm" else "prompt, guidance_scale=1 + w, "
        print(f"  {pipe}.from_pretrained({folder!r})({guidance}num_inference_steps={n})")
