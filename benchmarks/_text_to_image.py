"""The text-to-image case of `distill_step.py`: one iteration of [GD] stage 2 (a round of progressive
distillation of the w-conditioned student, 2N -> N = `--steps` steps) on a tiny random Stable
Diffusion pipeline (`pd_fast.integrations.tiny.save_sd` into a temporary folder, loaded with
`load_latent_pipeline`), its inputs made two ways:

- `pd_fast_cached`: as the text-to-image job trains: the latents (`encode_images`: the autoencoder's
  `latent_dist.mean` times `scaling_factor`) and the prompt embeddings (`encode_prompt`) of the
  whole data set computed once (`pd_fast.app.captioned.encode_cached`), each iteration drawing rows;
- `encode_every_step`: as diffusers' LCM distillation script trains: each iteration encodes its own
  images, `vae.encode(pixels).latent_dist.mean * scaling_factor` (the script takes `.sample()`, one
  draw of noise more; `.mean` keeps both paths' losses comparable), and its captions,
  `text_encoder(tokenizer(captions, padding="max_length", ...).input_ids)[0]`, under no grad.

The rest is one code path: the draws of the loop (examples, then t = i/N, then w ~ U[0, 8] from the
data generator; eps from the noise generator), `pd_fast.diffuse`, the teacher's target
`pd_fast.teacher_two_step` of the teacher with the condition bound, `lambda z, t: teacher(z, t, c, w)`,
the student `student(z_t, t, c, w)`, `pd_fast.fused_distill_loss`, backward, the gradient clipped at
norm 1 and an Adam step, as `pd_fast.app.training` runs a stage-2 round (`--t2i-precision bf16`: the
student under autocast with fp32 weights, the teacher as the loop's bf16 copy; the autoencoder and the
text encoder stay fp32 in both paths, as the job's cache is made).

`bench` measures the case for `distill_step.py` (same draws, then interleaved rounds and peak memory,
as its other cases), `summary` and `plot_panel` show it.

The data: the captioned 8x8 digits (`captioned_digits`, 1797 images and captions) fitted to the
autoencoder's 16x16 input. The pipeline: the tiny one's text encoder (2 layers of width 16, 8 tokens),
its UNet and autoencoder of `--t2i-ch` base channels (8: the tiny pipeline as `save_sd` writes it;
more makes the UNet's share of the iteration closer to a real one's). The teacher is the
w-conditioned UNet of `w_conditioned_student` with its w projection drawn small and nonzero (a
trained stage-1 student's is not zero); each path's student starts as a copy of it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import _common
import torch
from torch import Tensor, nn

import pd_fast
from pd_fast.app.training.precision import _autocast, _frozen  # the loop's own: what a stage does

IMPLS = ("pd_fast_cached", "encode_every_step")
PARAM, WEIGHTING, W_MIN, W_MAX, GRAD_CLIP = "v", "snr_trunc", 0.0, 8.0, 1.0
#: the largest relative difference of the two paths' per-example losses on the same draws. Their inputs
#: are equal, but the autoencoder's `latent_dist.mean` is a strided (channels-last) view where the
#: cache holds contiguous rows, and the UNet's convolutions round differently on the two layouts (on
#: CPU, with `.contiguous()` the losses are bitwise equal); the target amplifies that ~N-fold, so fp32
#: per-example losses differ by ~5e-5 and bf16 ones by up to ~5e-2 (bf16 itself is 7-20% from fp32)
TOLERANCE = {"fp32": 1e-3, "bf16": 0.25}


def missing() -> str | None:
    """Why the case cannot run here (diffusers or transformers not installed), or None."""
    absent = [name for name in ("diffusers", "transformers") if importlib.util.find_spec(name) is None]
    return f"{' and '.join(absent)} not installed (pip install -e .[diffusers])" if absent else None


class Setup:
    """The pipeline, the data (images and captions on the device, and their cache), the teacher,
    and per path a student (the same weights), its Adam and its generators (the same seeds)."""

    def __init__(self, batch: int, ch: int, steps: int, precision: str, device: torch.device) -> None:
        from pd_fast.app.captioned import captioned_digits, encode_cached
        from pd_fast.app.jobs.text_to_image import image_size
        from pd_fast.integrations import tiny
        from pd_fast.integrations.latent import load_latent_pipeline, quiet_libraries, w_conditioned_student

        self.batch, self.steps, self.precision, self.device = batch, steps, precision, device
        folder = tempfile.mkdtemp(prefix="pd_fast_bench_sd_")
        try:
            with quiet_libraries():
                widths = dict(block_out_channels=(ch, 2 * ch))
                tiny.save_sd(folder, unet=tiny.tiny_cond_unet(**widths), vae=tiny.tiny_vae(**widths))
            self.pipeline = load_latent_pipeline(folder).to(device)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        p = self.pipeline
        with warnings.catch_warnings():  # that the 8x8 digits are upscaled to 16x16: known
            warnings.simplefilter("ignore", UserWarning)
            data = captioned_digits(image_size(p)[0], int(p.autoencoder.config.in_channels))
        self.images, self.captions = data.images.to(device), data.captions
        encoded = encode_cached(data, p, None, "benchmark", batch_size=64, progress=False)
        self.latents, self.cond = encoded.latents.to(device), encoded.cond.to(device)
        teacher = w_conditioned_student(p.model)
        with torch.no_grad():
            proj = teacher.unet.time_embedding.cond_proj.weight
            proj.copy_(0.02 * torch.randn(proj.shape, generator=torch.Generator().manual_seed(1)))
        self.teacher = teacher.eval().requires_grad_(False)
        self.frozen = _frozen(self.teacher, precision)
        self.students = {n: copy.deepcopy(self.teacher).requires_grad_(True).train() for n in IMPLS}
        self.opts = {n: torch.optim.Adam(m.parameters(), lr=1e-4) for n, m in self.students.items()}
        self.gens = {name: self.generators() for name in IMPLS}

    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        return torch.Generator().manual_seed(2), torch.Generator(device=self.device).manual_seed(3)

    def describe(self) -> dict[str, Any]:
        p = self.pipeline

        def count(m: nn.Module) -> int:
            return sum(x.numel() for x in m.parameters())

        return {
            "unet_block_out_channels": list(p.model.unet.config.block_out_channels),
            "unet_parameters": count(self.teacher),
            "vae_block_out_channels": list(p.autoencoder.config.block_out_channels),
            "vae_encoder_parameters": count(p.autoencoder.encoder) + count(p.autoencoder.quant_conv),
            "text_encoder_parameters": count(p.text_encoder),
            "latent_shape": list(p.latent_shape), "image_shape": list(self.images.shape[1:]),
            "prompt_embedding_shape": list(self.cond.shape[1:]), "examples": len(self.captions),
            "param": PARAM, "weighting": WEIGHTING, "w_range": [W_MIN, W_MAX], "grad_clip": GRAD_CLIP,
            "latents": "latent_dist.mean * scaling_factor",
        }  # fmt: skip


Draws = tuple[Tensor, Tensor, Tensor, Tensor]


def draw(s: Setup, gens: tuple[torch.Generator, torch.Generator]) -> Draws:
    """The loop's draws: example indices (CPU), grid indices i (CPU), w (CPU float32), eps (device)."""
    cpu, dev = gens
    idx = torch.randint(0, len(s.captions), (s.batch,), generator=cpu)
    i = torch.randint(1, s.steps + 1, (s.batch,), generator=cpu)
    w = (W_MIN + (W_MAX - W_MIN) * torch.rand(s.batch, generator=cpu, dtype=torch.float64)).float()
    eps = torch.randn((s.batch, *s.latents.shape[1:]), generator=dev, device=s.device)
    return idx, i, w, eps


def cached_inputs(s: Setup, idx: Tensor) -> tuple[Tensor, Tensor]:
    """The project's inputs: rows of the latents and prompt embeddings computed once."""
    rows = idx.to(s.device)
    return s.latents[rows], s.cond[rows]


def encoded_inputs(s: Setup, idx: Tensor) -> tuple[Tensor, Tensor]:
    """The LCM script's inputs: the batch's images and captions encoded now."""
    p = s.pipeline
    pixels = s.images[idx.to(s.device)]
    captions = [s.captions[k] for k in idx.tolist()]
    with torch.no_grad():
        x = p.autoencoder.encode(pixels).latent_dist.mean * p.autoencoder.config.scaling_factor
        ids = p.tokenizer(
            captions, padding="max_length", max_length=p.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        c = p.text_encoder(ids.to(s.device))[0]
    return x, c


INPUTS = {"pd_fast_cached": cached_inputs, "encode_every_step": encoded_inputs}


def loss(s: Setup, student: nn.Module, x: Tensor, c: Tensor, i: Tensor, w: Tensor, eps: Tensor) -> Tensor:
    """The per-example loss of a stage-2 round: the target two DDIM steps of the teacher at (c, w)."""
    t = i.to(torch.float64) / s.steps  # on the CPU, as the loop keeps it: no device sync
    alpha_t, sigma_t = s.pipeline.schedule.alpha_sigma(t)
    z_t = pd_fast.diffuse(x, t, s.pipeline.schedule, eps)
    w_dev = w.to(s.device)

    def bound(z: Tensor, t_in: Tensor) -> Tensor:
        return s.frozen(z, t_in, c, w_dev)

    z_tpp, alpha_tpp, sigma_tpp = pd_fast.teacher_two_step(bound, z_t, t, s.steps, s.pipeline.schedule, PARAM)
    with _autocast(s.precision, s.device):
        out = student(z_t, t.to(device=s.device, dtype=z_t.dtype), c, w_dev)
    return pd_fast.fused_distill_loss(
        out.to(z_t.dtype), z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, PARAM, weighting=WEIGHTING
    )


def iteration(s: Setup, name: str) -> Callable[[], None]:
    """One training iteration of path `name` (its student, its optimizer, its draws)."""
    student, opt, inputs = s.students[name], s.opts[name], INPUTS[name]
    params = list(student.parameters())

    def run() -> None:
        idx, i, w, eps = draw(s, s.gens[name])
        x, c = inputs(s, idx)
        value = loss(s, student, x, c, i, w, eps).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()

    return run


def same_loss(s: Setup) -> dict[str, Any]:
    """The two paths on the same draws (a fresh pair of generators, so that the timed draws stay the
    same in both), one student: the largest absolute differences of their latents and prompt
    embeddings, and the largest relative difference of their per-example losses; ValueError past
    `TOLERANCE`."""
    idx, i, w, eps = draw(s, s.generators())
    student = s.students["pd_fast_cached"]
    inputs = [INPUTS[name](s, idx) for name in IMPLS]
    with torch.no_grad():
        a, b = (loss(s, student, x, c, i, w, eps).double() for x, c in inputs)
    diff = float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())
    if not diff <= TOLERANCE[s.precision]:
        raise ValueError(
            f"text-to-image: the cached and the encoding paths' losses differ by {diff:.3g} (relative) on "
            f"the same draws, past {TOLERANCE[s.precision]} for {s.precision}: they do not compute the same"
        )
    (x_a, c_a), (x_b, c_b) = inputs
    return {
        "latents_max_abs_diff": float((x_a - x_b).abs().max()),
        "embeddings_max_abs_diff": float((c_a - c_b).abs().max()),
        "loss_max_rel_diff": diff, "tolerance": TOLERANCE[s.precision], "batch": s.batch,
    }  # fmt: skip


# --- the measurement and its report ---------------------------------------------------------------


def bench(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The case for `distill_step.py`'s settings: the two paths' losses on the same draws, then
    their iterations in interleaved rounds and their peak memory; {"skipped": why} where the
    libraries are missing (and a `skipped: ...` line)."""
    why = missing()
    if why is not None:
        print(f"skipped: the text-to-image case: {why}", flush=True)
        return {"skipped": why}
    s = Setup(args.t2i_batch, args.t2i_ch, args.steps, args.t2i_precision, device)
    check = same_loss(s)
    runs = {name: iteration(s, name) for name in IMPLS}
    for name in IMPLS:  # untimed: allocator, kernels
        for _ in range(max(1, args.warmup)):
            runs[name]()
    _common.sync(device)
    samples, cpu_samples = _common.time_rounds(runs, device, args.iters, args.rounds)
    memory = {n: _common.peak_memory_mib(runs[n], device) if args.memory == "on" else None for n in IMPLS}
    rows = []
    for name in IMPLS:
        ms = statistics.median(samples[name])
        cpu_ms = statistics.median(cpu_samples[name]) if cpu_samples else None
        rows.append({
            "impl": name, "batch": s.batch, "steps": s.steps, "precision": s.precision,
            "ms_per_iter": _common.finite_or_none(ms), "iters_per_s": _common.finite_or_none(1e3 / ms),
            "cpu_ms_per_iter": _common.finite_or_none(cpu_ms),
            "ms_min": _common.finite_or_none(min(samples[name])),
            "ms_max": _common.finite_or_none(max(samples[name])),
            "peak_mib": _common.finite_or_none(memory[name], 4),
            "rounds": len(samples[name]), "iters_per_round": args.iters,
        })  # fmt: skip
    cpu_ratio = _common.median_ratio(cpu_samples, *IMPLS) if cpu_samples else None
    a, b = (samples[name] for name in IMPLS)
    ratio = {
        "batch": s.batch, "precision": s.precision,
        "cached_over_encoding": _common.finite_or_none(_common.median_ratio(samples, *IMPLS), 4),
        "cached_over_encoding_cpu_time": _common.finite_or_none(cpu_ratio, 4),
        "per_round": [_common.finite_or_none(x / y, 4) for x, y in zip(a, b, strict=True)],
    }  # fmt: skip
    same = {k: _common.finite_or_none(v, 3) if isinstance(v, float) else v for k, v in check.items()}
    return {"pipeline": s.describe(), "same_loss": same, "rows": rows, "ratio": ratio}


COLUMNS = [
    ("impl", "impl", "s"), ("batch", "batch", "d"), ("precision", "precision", "s"),
    ("ms_per_iter", "ms/iter", ".4g"), ("iters_per_s", "iter/s", ".4g"),
    ("cpu_ms_per_iter", "CPU ms/iter", ".4g"), ("peak_mib", "peak MiB", ".3g"),
]  # fmt: skip


def summary(section: dict[str, Any]) -> str:
    """The case as text: its table, the time ratio and the equal-loss check."""
    if "skipped" in section:
        return f"text-to-image: skipped ({section['skipped']})"
    q, same, unet = section["ratio"], section["same_loss"], section["pipeline"]["unet_block_out_channels"]
    cpu = q["cached_over_encoding_cpu_time"]
    return "\n".join([
        f"text-to-image, [GD] stage 2 on a tiny Stable Diffusion pipeline (UNet {unet}):",
        _common.table(section["rows"], COLUMNS),
        f"pd_fast_cached / encode_every_step: {q['cached_over_encoding']:.3f} (wall, median of rounds)"
        + ("" if cpu is None else f", {cpu:.3f} (CPU time)"),
        f"same draws: latents differ by {same['latents_max_abs_diff']:.3g}, embeddings by "
        f"{same['embeddings_max_abs_diff']:.3g}, per-example losses by {same['loss_max_rel_diff']:.3g} "
        f"(relative; at most {same['tolerance']})",
    ])  # fmt: skip


def plot_panel(ax: Any, section: dict[str, Any]) -> None:
    """The two paths' iterations per second on `ax`, the time ratio above them."""
    for j, (r, color) in enumerate(zip(section["rows"], ("tab:blue", "tab:gray"), strict=True)):
        ax.bar(j, r["iters_per_s"], 0.6, color=color)
    top = max(r["iters_per_s"] for r in section["rows"])
    q = section["ratio"]
    label = f"time x{q['cached_over_encoding']:.2f}"
    if q["cached_over_encoding_cpu_time"] is not None:
        label += f"\n(CPU time x{q['cached_over_encoding_cpu_time']:.2f})"
    ax.text(0.5, top * 1.02, label, ha="center", fontsize=7)
    ax.set_xticks([0, 1], ["pd_fast\ncached", "encode\nevery step"], fontsize=8)
    r = section["rows"][0]
    ax.set_title(f"text-to-image, batch {r['batch']}, {r['precision']}", fontsize=8)
    ax.set_ylim(0, 1.15 * top)
    ax.grid(True, axis="y", alpha=0.3)
