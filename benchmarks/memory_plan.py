"""The memory plan for guided distillation of Stable Diffusion-size UNets: which batch sizes per GPU
fit. Usage: `python benchmarks/memory_plan.py [--quick] [--out DIR]` (needs diffusers; nothing is
downloaded, no GPU is used).

The step planned: a frozen teacher UNet in bf16 and a trained student UNet, the same UNet with a
guidance embedding (`time_cond_proj_dim=256`), AdamW and an fp32 EMA of the student, mixed
precision (bf16 autocast over fp32 master weights), with or without diffusers' gradient
checkpointing (`unet.enable_gradient_checkpointing()`), on cached latents and cached prompt
embeddings. SD 1.5 (512 px: latents 4 x 64 x 64, prompts 77 x 768) and SD 2.1 (768 px: 4 x 96 x 96,
77 x 1024), from their published `unet/config.json` (written below, built on the meta device).

Computed (arithmetic on shapes, nothing allocated):
- parameter counts (SD 1.5 must give the published 859,520,964; the student adds `cond_proj`);
- bytes per rank: student fp32 weights 4 B/param, fp32 gradients 4, Adam's two moments 8, fp32 EMA
  4; teacher bf16 2 B/param. DDP (`gradient_as_bucket_view=True`): every rank holds all of it.
  FSDP2 (`fully_shard` per down/mid/up block, `MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32)`): the student's 20 B/param divided by the ranks, the teacher whole, the
  largest block unsharded at 10 B/param (two bf16 all-gathers, current and prefetched; its bf16
  gradients and their fp32 copy for the reduce-scatter);
- the cached data per example and for `--examples` examples (they live on the CPU or disk);
- the attention score tensors that the classic (non-SDPA) attention would store, per example.

Measured on this machine's CPU (`--threads` torch threads):
- the student's forward and backward at scaled-down widths (the same blocks, layers and heads;
  block_out_channels scaled by 1/k for k in `--scales`, rounded up so that the heads divide every
  level; GroupNorm groups gcd(32, channels)), in fp32 and in bf16 autocast (norms upcast to fp32 as
  CUDA's autocast does; CPU's runs them in bf16), at batch 1 and 2. Memory is every tensor storage
  an op creates (a TorchDispatchMode), alive from its creation until Python reports it freed,
  recorded after every op: `saved` is what is alive when the forward ends, `peak` the most at once.
  Per op, batch 2 minus batch 1 is what one example adds there, twice batch 1 minus batch 2 what no
  example changes (gradients alive then, autocast's bf16 copies of the weights); the runs are
  aligned op by op (a reshape that is a view at batch 1 copies at batch 2). Attention runs through
  diffusers' default `AttnProcessor2_0` (torch SDPA): on the CPU its flash kernel saves q, k, v, the
  output and the log-sum-exp as CUDA's flash and memory-efficient kernels do; no L x L scores.
- the teacher's no-grad forward (bf16 weights) on 2 x batch (conditional and unconditional);
- AdamW's step (`foreach=True`, torch's default on CUDA; on the CPU it loops): its temporaries.

Extrapolation to full width w = 1 (w = channels / 320), per op: the bytes one example adds fitted
as `a + b w` (least squares over the widths), the batch-independent bytes as `c w + d w^2`. Tensors
of convolutions, norms, projections and q/k/v scale with width; what does not (the log-sum-exp,
heads x L per attention; the prompt embeddings; the time embedding) is held by `a`, the heads
being the real ones at every width. The peak at batch B is then the most over the ops of
`fixed + B per_example`. The classic attention's scores (heads x L x L') are computed, not fitted;
one measurement at the smallest width checks that computation. With `--latent-scale k` (--quick)
the measurement runs at 1/k of the latent side and per-example bytes are multiplied by k^2.

The plan: usable = capacity x (1 - 10%) - 1 GiB (allocator fragmentation, cuBLAS/NCCL workspaces,
CUDA context); peak(B) = the most over the step's phases (teacher forwards, student forward and
backward, optimizer step); the largest B with peak(B) <= usable, for 24, 40, 80 and 141 GiB cards,
DDP and FSDP2 over 2, 4, 8 ranks, with and without checkpointing. Where batch 1 does not fit with
DDP a line says why and what would. Writes `memory_plan.json` and `memory_plan.png` into `--out`
(default `benchmarks/results/`; a `--quick` run writes into a new temporary folder).

JSON: `machine`, `date`, `wall_s`, `settings`; `computed` and `measured` (which is which);
`assumptions`; `gpus_gib`, `usable_gib`; `models.<sd15|sd21>`: `parameters`, `config`,
`static_bytes_ddp`, `fsdp2_bytes_per_rank`, `data`, `attention_per_example`, `measured` (a row per
part, precision, checkpointing and width), `extrapolated` (per part: `envelope` [fixed, per example]
pairs at full width, `per_example_worst`, `worst_fit`, `saved_fit`; `adamw_temp_bytes_per_param`);
`attention_check`; `plan` (a row per model, checkpointing and strategy: `max_batch_<GiB>`, also with
fused AdamW); `verdicts`.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch
from _live_memory import LiveBytes, Trace, cuda_norm_policy, envelope
from torch import nn

GIB = 2**30
GPUS_GIB = (24, 40, 80, 141)
MARGIN_FRACTION = 0.10
MARGIN_FIXED_GIB = 1.0
GUIDANCE_DIM = 256  # the student's guidance embedding: time_cond_proj_dim
FSDP_RANKS = (2, 4, 8)
FSDP_UNIT_BYTES = 10  # per parameter of the largest unsharded unit (see the docstring)
BASE_CHANNELS = 320
PRECISIONS = ("fp32", "bf16")
MODELS = ("sd15", "sd21")
PUBLISHED_PARAMS = {"sd15": 859_520_964}

_COMMON = {
    "act_fn": "silu",
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
# unet/config.json of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1
# (diffusers' "attention_head_dim" is the number of heads here).
SD_UNETS: dict[str, dict[str, Any]] = {
    "sd15": {**_COMMON, "cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64},
    "sd21": {
        **_COMMON, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "sample_size": 96,
        "use_linear_projection": True, "upcast_attention": True, "dual_cross_attention": False,
        "num_class_embeds": None, "only_cross_attention": False,
    },
}  # fmt: skip
TITLES = {"sd15": "SD 1.5 (512 px)", "sd21": "SD 2.1 (768 px)"}
TEXT_TOKENS = 77


def latent_shape(name: str) -> tuple[int, int, int]:
    side = SD_UNETS[name]["sample_size"]
    return (4, side, side)


def text_shape(name: str) -> tuple[int, int]:
    return (TEXT_TOKENS, SD_UNETS[name]["cross_attention_dim"])


def heads_per_level(config: dict[str, Any]) -> list[int]:
    heads = config["attention_head_dim"]
    levels = len(config["block_out_channels"])
    return list(heads) if isinstance(heads, (list, tuple)) else [heads] * levels


# --- the UNets ------------------------------------------------------------------------------------


def scaled_channels(name: str, k: int) -> int:
    """The first level's channels for width 1/k: 320/k rounded up until every level's heads divide
    its channels."""
    config = SD_UNETS[name]
    mults = [c // BASE_CHANNELS for c in config["block_out_channels"]]
    c0 = math.ceil(BASE_CHANNELS / k)
    while any((m * c0) % h for m, h in zip(mults, heads_per_level(config), strict=True)):
        c0 += 1
    return c0


def unet_config(name: str, c0: int = BASE_CHANNELS, guidance: bool = True) -> dict[str, Any]:
    """The published config with block_out_channels scaled to start at `c0` (GroupNorm groups
    gcd(32, c0); heads unchanged), and the student's guidance embedding if `guidance`."""
    config = dict(SD_UNETS[name])
    config["block_out_channels"] = tuple(c * c0 // BASE_CHANNELS for c in config["block_out_channels"])
    config["norm_num_groups"] = math.gcd(config["norm_num_groups"], c0)
    if guidance:
        config["time_cond_proj_dim"] = GUIDANCE_DIM
    return config


def build_unet(config: dict[str, Any], device: str = "cpu") -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**config)


def bf16(unet: nn.Module) -> nn.Module:
    """The UNet cast to bf16 (diffusers' note that no module is kept in fp32 silenced)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return unet.to(torch.bfloat16)
    finally:
        logging.set_verbosity(level)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters of the teacher (the published UNet), the student (plus `cond_proj`), and of the
    largest top-level block (an FSDP2 unit), counted on the meta device."""
    teacher = build_unet(unet_config(name, guidance=False), "meta")
    student = build_unet(unet_config(name), "meta")
    blocks = [*student.down_blocks, student.mid_block, *student.up_blocks]
    return {
        "teacher": n_params(teacher),
        "student": n_params(student),
        "cond_proj": n_params(student.time_embedding.cond_proj),
        "largest_unit": max(n_params(b) for b in blocks),
    }


# --- bytes, computed ------------------------------------------------------------------------------


def static_bytes(student: int, teacher: int) -> dict[str, int]:
    """Bytes every DDP rank holds for the whole step: the student's fp32 weights, gradients, Adam's
    exp_avg and exp_avg_sq, the fp32 EMA, and the frozen teacher in bf16."""
    parts = {
        "student_fp32_weights": 4 * student,
        "student_fp32_grads": 4 * student,
        "adam_moments_fp32": 8 * student,
        "ema_fp32": 4 * student,
        "teacher_bf16": 2 * teacher,
    }
    parts["total"] = sum(parts.values())
    return parts


def fsdp_bytes(counts: dict[str, int], ranks: int) -> dict[str, int]:
    """Bytes per rank under FSDP2 (`fully_shard` of the student per block): the student's weights,
    grads, Adam moments and EMA sharded over `ranks`, the teacher whole, the largest unit unsharded."""
    parts = {
        "student_sharded": 20 * counts["student"] // ranks,
        "teacher_bf16": 2 * counts["teacher"],
        "unsharded_unit": FSDP_UNIT_BYTES * counts["largest_unit"],
    }
    parts["total"] = sum(parts.values())
    return parts


def data_bytes(name: str, examples: int) -> dict[str, Any]:
    """The cached latents and prompt embeddings: per example in fp32 and in 16-bit, and for
    `examples` of them; where they live; and what one step keeps on the GPU per example."""
    latent, text = math.prod(latent_shape(name)), math.prod(text_shape(name))
    per16 = 2 * (latent + text)
    return {
        "latent_shape": list(latent_shape(name)),
        "text_shape": list(text_shape(name)),
        "per_example_fp32": 4 * (latent + text),
        "per_example_16bit": per16,
        "examples": examples,
        "dataset_16bit": per16 * examples,
        "dataset_fp32": 4 * (latent + text) * examples,
        "where": "CPU RAM (pinned) or a memory-mapped file on disk; each step copies its batch to the GPU",
        # on the GPU per example: the batch (16-bit) and ~8 latent-sized fp32 tensors of the step
        # (x, eps, z_t, the teacher's z_t' and z_t'', the target, the student's output, its grad)
        "step_tensors_per_example": per16 + 8 * 4 * latent,
    }


def attention_layers(name: str, side: int, c0: int = BASE_CHANNELS) -> list[dict[str, int]]:
    """Every attention of the UNet (first level `c0` channels) at latent side `side`: heads, query
    length L, key length (L for self-attention, 77 for cross-attention), channels."""
    config = unet_config(name, c0)
    heads, chans = heads_per_level(config), config["block_out_channels"]
    n, layers = len(chans), config["layers_per_block"]
    where = []  # (level, transformer blocks at that level) for down, mid and up blocks
    where += [(i, layers) for i, b in enumerate(config["down_block_types"]) if b.startswith("CrossAttn")]
    where += [(n - 1, 1)]
    where += [
        (n - 1 - j, layers + 1) for j, b in enumerate(config["up_block_types"]) if b.startswith("CrossAttn")
    ]
    out = []
    for level, count in where:
        length = (side // 2**level) ** 2
        for _ in range(count):
            for keys in (length, TEXT_TOKENS):
                out.append({"heads": heads[level], "L": length, "keys": keys, "channels": chans[level]})
    return out


def attention_bytes(name: str, side: int, c0: int = BASE_CHANNELS) -> dict[str, int]:
    """Per example: SDPA's saved output (fp32) and log-sum-exp (fp32, heads x L per attention), and
    the scores the classic attention would save instead (heads x L x keys: 4 B in fp32; in bf16
    autocast on CUDA 6 B, the fp32 softmax output and its bf16 copy for the next matmul)."""
    layers = attention_layers(name, side, c0)
    scores = sum(a["heads"] * a["L"] * a["keys"] for a in layers)
    return {
        "attention_layers": len(layers),
        "sdpa_logsumexp": sum(4 * a["heads"] * a["L"] for a in layers),
        "sdpa_output_fp32": sum(4 * a["L"] * a["channels"] for a in layers),
        "classic_scores_fp32": 4 * scores,
        "classic_scores_bf16_autocast": 6 * scores,
    }


# --- activations, measured ------------------------------------------------------------------------


def inputs(name: str, batch: int, side: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    text = text_shape(name)
    return {
        "sample": torch.randn((batch, 4, side, side), generator=gen),
        "timestep": torch.rand(batch, generator=gen) * 999,
        "encoder_hidden_states": torch.randn((batch, *text), generator=gen),
    }


def student_memory(unet: nn.Module, name: str, batch: int, side: int, precision: str) -> dict[str, Any]:
    """Bytes created and alive at the end of the student's forward (`saved`), at the peak over its
    forward and backward (`peak`), and after every op (`trace`), for one batch (inputs and weights
    excluded)."""
    gen = torch.Generator().manual_seed(batch)
    args = inputs(name, batch, side, gen)
    cond = torch.randn((batch, GUIDANCE_DIM), generator=gen)
    target = torch.randn(args["sample"].shape, generator=gen)
    for p in unet.parameters():
        p.grad = None
    gc.collect()
    mode = LiveBytes()
    with cuda_norm_policy(unet), mode:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = unet(**args, timestep_cond=cond).sample
        loss = (out.float() - target).pow(2).mean()
        saved = mode.now
        loss.backward()
    return {"saved": saved, "peak": mode.peak, "trace": Trace(mode)}


def teacher_memory(teacher: nn.Module, name: str, batch: int, side: int) -> dict[str, Any]:
    """Peak bytes and trace of the bf16 teacher's no-grad forward on 2 x `batch` (cond and uncond)."""
    args = inputs(name, 2 * batch, side, torch.Generator().manual_seed(batch))
    args = {k: v.to(torch.bfloat16) if k != "timestep" else v for k, v in args.items()}
    gc.collect()
    mode = LiveBytes()
    with mode, torch.no_grad():
        teacher(**args)
    return {"saved": 0, "peak": mode.peak, "trace": Trace(mode)}


def adam_step_bytes(unet: nn.Module) -> float:
    """Peak bytes per parameter that AdamW's step (foreach, CUDA's default) creates, the moments
    already allocated (a first step runs before the measured one)."""
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, foreach=True)  # the default on CUDA
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    gc.collect()
    mode = LiveBytes()
    with mode:
        opt.step()
    for p in unet.parameters():
        p.grad = None
    return mode.peak / n_params(unet)


def memory_row(base: dict[str, Any], got: dict[int, dict[str, Any]], begin: float) -> dict[str, Any]:
    """One measured row: bytes at batch 1 and 2, and the most that one more example adds at any op."""
    t1 = got[1]["trace"]
    return {
        **base, "saved_b1": got[1]["saved"], "saved_b2": got[2]["saved"],
        "peak_b1": got[1]["peak"], "peak_b2": got[2]["peak"], "ops": len(t1.ops),
        "per_example_worst": float((got[2]["trace"].aligned_to(t1) - t1.bytes).max()),
        "seconds": round(time.perf_counter() - begin, 1),
    }  # fmt: skip


def measure_width(name: str, c0: int, side: int, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every measurement at one width: the student at batch 1 and 2, each precision, with and
    without checkpointing; the teacher's forward at batch 1 and 2 (bf16); AdamW's step. Returns
    the rows and the traces, keyed (part, precision, checkpointing)."""
    torch.manual_seed(0)
    student = build_unet(unet_config(name, c0)).train()
    teacher = bf16(build_unet(unet_config(name, c0, guidance=False))).eval().requires_grad_(False)
    base = {"model": name, "channels": c0, "width": c0 / BASE_CHANNELS, "side": side}
    rows, traces = [], {}
    for ckpt in (False, True):
        if ckpt:
            student.enable_gradient_checkpointing()
        for precision in args.precisions:
            begin = time.perf_counter()
            got = {b: student_memory(student, name, b, side, precision) for b in (1, 2)}
            rows.append(memory_row({**base, "part": "student", "precision": precision, "checkpointing": ckpt,
                                    "params": n_params(student)}, got, begin))  # fmt: skip
            traces[("student", precision, ckpt)] = (got[1]["trace"], got[2]["trace"])
    student.disable_gradient_checkpointing()
    begin = time.perf_counter()
    got = {b: teacher_memory(teacher, name, b, side) for b in (1, 2)}
    rows.append(memory_row({**base, "part": "teacher", "precision": "bf16", "checkpointing": False,
                            "params": n_params(teacher)}, got, begin))  # fmt: skip
    traces[("teacher", "bf16", False)] = (got[1]["trace"], got[2]["trace"])
    rows.append({**base, "part": "adamw_step", "precision": "fp32", "checkpointing": False,
                 "params": n_params(student), "bytes_per_param": adam_step_bytes(student)})  # fmt: skip
    return rows, traces


def attention_check(name: str, side: int) -> dict[str, Any]:
    """The classic attention's scores, measured against their computation: bytes saved per example
    at the smallest width of `name` and latent side `side`, fp32, without checkpointing, with
    diffusers' `AttnProcessor` (scores stored) minus with `AttnProcessor2_0` (SDPA); computed: the
    scores minus what SDPA saves in their place (its output and log-sum-exp)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    c0 = scaled_channels(name, 16)
    torch.manual_seed(0)
    unet = build_unet(unet_config(name, c0)).train()
    per_example = {}
    for label, processor in (("classic", AttnProcessor()), ("sdpa", AttnProcessor2_0())):
        unet.set_attn_processor(processor)
        got = [student_memory(unet, name, b, side, "fp32")["saved"] for b in (1, 2)]
        per_example[label] = got[1] - got[0]
    computed = attention_bytes(name, side, c0)
    return {
        "model": name,
        "channels": c0,
        "side": side,
        "measured_difference": per_example["classic"] - per_example["sdpa"],
        "computed_difference": computed["classic_scores_fp32"]
        - computed["sdpa_logsumexp"]
        - computed["sdpa_output_fp32"],
    }


# --- extrapolation to full width ------------------------------------------------------------------


def fit_line(widths: list[float], values: list[float]) -> dict[str, Any]:
    """Least squares `values = a + b w` and its value at w = 1; with one width, `b w` alone."""
    if len(widths) == 1:
        a, b = 0.0, values[0] / widths[0]
    else:
        mw, mv = sum(widths) / len(widths), sum(values) / len(values)
        b = sum((w - mw) * (v - mv) for w, v in zip(widths, values, strict=True))
        b /= sum((w - mw) ** 2 for w in widths)
        a = mv - b * mw
    residual = max(abs(a + b * w - v) / abs(v) for w, v in zip(widths, values, strict=True))
    return {"a": a, "b": b, "full": a + b, "max_rel_residual": residual}


def timeline_fit(series: list[tuple[float, Trace, Trace]], pixel_factor: int) -> dict[str, Any]:
    """Full width from the traces at batch 1 and 2 of every measured width w, aligned op by op:
    per op, the bytes one example adds (`a + b w`, least squares, times `pixel_factor`) and the
    batch-independent bytes (`c w + d w^2`: weights' copies and gradients), both at w = 1; then
    the pairs that can hold the peak (`envelope`)."""
    ref = series[0][1]
    w = np.array([s[0] for s in series])
    b1 = np.stack([t1.aligned_to(ref) for _, t1, _ in series])
    b2 = np.stack([t2.aligned_to(ref) for _, _, t2 in series])
    per, fixed = (b2 - b1) * pixel_factor, 2 * b1 - b2
    if len(w) == 1:
        per_full, fixed_full = per[0] / w[0], fixed[0] / w[0] ** 2
    else:
        per_full = np.linalg.lstsq(np.stack([np.ones_like(w), w], 1), per, rcond=None)[0].sum(0)
        fixed_full = np.linalg.lstsq(np.stack([w, w**2], 1), fixed, rcond=None)[0].sum(0)
    return {"envelope": envelope(fixed_full, per_full), "per_example_worst": float(per_full.max())}


def extrapolate(rows: list[dict[str, Any]], traces: dict, pixel_factor: int) -> dict[str, Any]:
    """Full-width bytes of one model from its measurements: per part (student per precision and
    checkpointing, teacher), the peak's pairs (`timeline_fit`), the fit of the worst per-example
    bytes and of the per-example bytes saved at the end of the forward over the widths (`fit_line`,
    its residual showing how linear they are); AdamW's temporaries per parameter."""
    out: dict[str, Any] = {"parts": []}
    for key in sorted({k for k in traces}, key=str):
        part, precision, ckpt = key
        got = [r for r in rows if (r["part"], r["precision"], r["checkpointing"]) == key]
        widths = [r["width"] for r in got]
        series = [(r["width"], *t) for r, t in zip(got, traces[key], strict=True)]
        entry = {"part": part, "precision": precision, "checkpointing": ckpt, "widths": widths,
                 **timeline_fit(series, pixel_factor)}  # fmt: skip
        entry["worst_fit"] = fit_line(widths, [pixel_factor * r["per_example_worst"] for r in got])
        if part == "student":
            entry["saved_fit"] = fit_line(
                widths, [pixel_factor * (r["saved_b2"] - r["saved_b1"]) for r in got]
            )
        out["parts"].append(entry)
    adam = [r["bytes_per_param"] for r in rows if r["part"] == "adamw_step"]
    out["adamw_temp_bytes_per_param"] = sum(adam) / len(adam)
    return out


def part_fit(ext: dict[str, Any], part: str, precision: str, ckpt: bool) -> dict[str, Any]:
    return next(
        p for p in ext["parts"] if (p["part"], p["precision"], p["checkpointing"]) == (part, precision, ckpt)
    )


# --- the plan -------------------------------------------------------------------------------------


def usable_bytes(gib: float) -> float:
    return gib * GIB * (1 - MARGIN_FRACTION) - MARGIN_FIXED_GIB * GIB


def phases(
    counts: dict[str, int],
    ext: dict[str, Any],
    step_tensors: int,
    ckpt: bool,
    ranks: int,
    fused: bool = False,
) -> dict[str, list[tuple[float, float]]]:
    """The step's phases per rank as lines (bytes whatever the batch, bytes per example), the
    phase's peak at batch B being the most of `fixed + B per` over its lines: the teacher's
    forwards, the student's forward and backward (bf16 autocast), the optimizer step. `ranks` 1 is
    DDP (the measured pairs at full width), more is FSDP2 over that many ranks (every grad shard and
    the largest unit counted throughout, the worst per-example bytes). `fused`: AdamW(fused=True),
    whose step makes no temporaries."""
    ns, nt = counts["student"], counts["teacher"]
    student, teacher = part_fit(ext, "student", "bf16", ckpt), part_fit(ext, "teacher", "bf16", False)
    adam_temp = 0.0 if fused else ext["adamw_temp_bytes_per_param"]
    shard = ns / ranks
    held = 16 * shard + 2 * nt  # fp32 weights, Adam moments, EMA (sharded under FSDP2); the teacher
    if ranks == 1:
        lines = [(held + g, a + step_tensors) for g, a in student["envelope"]]
    else:
        gathered = 4 * shard + FSDP_UNIT_BYTES * counts["largest_unit"]
        lines = [(held + gathered, student["per_example_worst"] + step_tensors)]
    return {
        "student": lines,
        "teacher": [(held + g, a + step_tensors) for g, a in teacher["envelope"]],
        "optimizer": [(held + (4 + adam_temp) * shard, 0.0)],
    }


def peak_bytes(lines: list[tuple[float, float]], batch: int) -> float:
    return max(fixed + batch * per for fixed, per in lines)


def max_batch(parts: dict[str, Any], usable: float) -> int:
    """The largest batch whose every phase fits in `usable` bytes (0: not even one example)."""
    lines = [line for phase in parts.values() for line in phase]
    if any(fixed > usable for fixed, _ in lines):
        return 0
    return max(0, min(math.floor((usable - fixed) / per) for fixed, per in lines if per > 0))


def plan_rows(name: str, counts: dict[str, int], ext: dict[str, Any], data: dict[str, Any]) -> list[dict]:
    """Per checkpointing and strategy (DDP, FSDP2 over 2, 4, 8 ranks): the bytes per rank and the
    largest batch per GPU for every card."""
    rows = []
    for ckpt in (False, True):
        for ranks in (1, *FSDP_RANKS):
            parts = phases(counts, ext, data["step_tensors_per_example"], ckpt, ranks)
            row = {
                "model": name, "checkpointing": ckpt, "ranks": ranks,
                "strategy": "DDP" if ranks == 1 else f"FSDP2 x{ranks}",
                "peak_b1_gib": max(peak_bytes(p, 1) for p in parts.values()) / GIB,
                "phase_b1": max(parts, key=lambda k: peak_bytes(parts[k], 1)),
                "act_gib_per_example": max(per for _, per in parts["student"]) / GIB,
                "optimizer_phase_gib": parts["optimizer"][0][0] / GIB,
            }  # fmt: skip
            fused = phases(counts, ext, data["step_tensors_per_example"], ckpt, ranks, fused=True)
            for gib in GPUS_GIB:
                row[f"max_batch_{gib}"] = max_batch(parts, usable_bytes(gib))
                row[f"max_batch_{gib}_fused_adamw"] = max_batch(fused, usable_bytes(gib))
            rows.append(row)
    return rows


def verdicts(plan: list[dict[str, Any]]) -> list[str]:
    """A line for every card and model where batch 1 does not fit with DDP: why, and what would."""
    lines = []
    for gib, name in ((g, n) for g in GPUS_GIB for n in MODELS):
        key = f"max_batch_{gib}"
        mine = [r for r in plan if r["model"] == name]
        ddp = [r for r in mine if r["ranks"] == 1]
        if not ddp or any(r[key] > 0 for r in ddp):
            continue
        why = "; ".join(f"ckpt {'on' if r['checkpointing'] else 'off'}: {r['peak_b1_gib']:.1f} GiB"
                        f" at batch 1, its peak in the {r['phase_b1']} phase" for r in ddp)  # fmt: skip
        fits = [f"{r['strategy']} ckpt {'on' if r['checkpointing'] else 'off'}: batch {r[key]}"
                for r in mine if r["ranks"] > 1 and r[key] > 0]  # fmt: skip
        fused = [f"ckpt {'on' if r['checkpointing'] else 'off'}: batch {r[key + '_fused_adamw']}"
                 for r in ddp if r[key + "_fused_adamw"] > 0]  # fmt: skip
        lines.append(
            f"{TITLES[name]} on {gib} GiB ({usable_bytes(gib) / GIB:.1f} usable): batch 1 does not fit with"
            f" DDP ({why}). Needed: FSDP2's fully_shard of the student (weights, grads, Adam moments and EMA"
            " sharded across ranks): "
            + ("; ".join(fits) if fits else "not enough with 8 ranks either")
            + (
                ". A DDP with AdamW(fused=True) (no step temporaries) would fit " + "; ".join(fused)
                if fused
                else ""
            )
        )
    return lines


# --- the run --------------------------------------------------------------------------------------


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_names(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names or any(n not in choices for n in names):
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}, got {text!r}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=parse_names(MODELS), default=list(MODELS))
    p.add_argument(
        "--scales",
        type=parse_ints,
        default=None,
        help="measure at widths 1/k of the real one (default 16,8,4; --quick 16,8)",
    )
    p.add_argument(
        "--latent-scale",
        type=int,
        default=None,
        help="measure at 1/k of the latent side, per-example bytes x k^2 (default 1; --quick 4)",
    )
    p.add_argument(
        "--precisions",
        type=parse_names(PRECISIONS),
        default=None,
        help="fp32,bf16 (the plan uses bf16 autocast; default both, --quick bf16)",
    )
    p.add_argument("--examples", type=int, default=100_000, help="cached examples in the data set")
    p.add_argument(
        "--attention-check",
        choices=("on", "off"),
        default="on",
        help="measure the classic attention's stored scores against their computation",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/; --quick: a new temporary folder)",
    )
    p.add_argument("--quick", action="store_true", help="fewer, smaller measurements: seconds on 2 CPU cores")
    return p


def settle(args: argparse.Namespace) -> argparse.Namespace:
    for name, full, small in (
        ("scales", [16, 8, 4], [16, 8]),
        ("latent_scale", 1, 4),
        ("precisions", list(PRECISIONS), ["bf16"]),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    if "bf16" not in args.precisions:
        raise ValueError("--precisions must include bf16: the plan is for bf16 autocast")
    if args.latent_scale < 1 or any(
        SD_UNETS[n]["sample_size"] % (8 * args.latent_scale) for n in args.models
    ):
        raise ValueError(
            f"--latent-scale must divide the latent side by a multiple of 8, got {args.latent_scale}"
        )
    if args.examples < 1:
        raise ValueError(f"--examples must be >= 1, got {args.examples}")
    args.out = _common.out_dir(args.out, args.quick)
    return args


def measure_model(name: str, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The measurements at every width: rows, and per (part, precision, checkpointing) the traces
    at batch 1 and 2 of each width."""
    side = SD_UNETS[name]["sample_size"] // args.latent_scale
    rows: list[dict[str, Any]] = []
    traces: dict[tuple, list] = {}
    for k in sorted(set(args.scales), reverse=True):
        got, got_traces = measure_width(name, scaled_channels(name, k), side, args)
        rows += got
        for key, pair in got_traces.items():
            traces.setdefault(key, []).append(pair)
        print(f"  {name} width 1/{k}: {sum(r.get('seconds', 0) for r in got):.0f} s", flush=True)
    return rows, traces


def model_summary(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything computed about one model, and its measured activations extrapolated."""
    counts = parameter_counts(name)
    rows, traces = measure_model(name, args)
    return {
        "parameters": counts,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in SD_UNETS[name].items()},
        "static_bytes_ddp": static_bytes(counts["student"], counts["teacher"]),
        "fsdp2_bytes_per_rank": {str(r): fsdp_bytes(counts, r) for r in FSDP_RANKS},
        "data": data_bytes(name, args.examples),
        "attention_per_example": attention_bytes(name, SD_UNETS[name]["sample_size"]),
        "measured": rows,
        "extrapolated": extrapolate(rows, traces, args.latent_scale**2),
    }


# --- tables and plot ------------------------------------------------------------------------------

BYTES_COLUMNS = [
    ("model", "model", "s"), ("teacher", "teacher params", ",d"), ("student", "student params", ",d"),
    ("cond_proj", "+cond_proj", ",d"), ("unit", "largest block", ",d"),
    ("student_fp32_weights", "weights fp32", ".2f"), ("student_fp32_grads", "grads fp32", ".2f"),
    ("adam_moments_fp32", "Adam m+v", ".2f"), ("ema_fp32", "EMA fp32", ".2f"),
    ("teacher_bf16", "teacher bf16", ".2f"), ("total", "DDP total", ".2f"),
    *[(f"fsdp{r}", f"FSDP2 x{r}", ".2f") for r in FSDP_RANKS],
]  # fmt: skip
DATA_COLUMNS = [
    ("model", "model", "s"), ("latent", "latent", "s"), ("text", "prompt emb", "s"),
    ("kib16", "KiB/ex 16-bit", ".1f"), ("kib32", "KiB/ex fp32", ".1f"),
    ("gib16", "GiB 16-bit", ".1f"), ("gib32", "GiB fp32", ".1f"),
]  # fmt: skip
ACT_COLUMNS = [
    ("model", "model", "s"), ("precision", "precision", "s"), ("ckpt", "ckpt", "s"),
    ("source", "source", "s"), ("channels", "ch0", "d"), ("worst", "MiB/ex", ".1f"),
    ("saved", "saved MiB/ex", ".1f"), ("a", "a MiB", ".1f"), ("residual", "fit resid", ".1e"),
    ("peak_b1", "peak b1 MiB", ".0f"),
]  # fmt: skip
OTHER_COLUMNS = [
    ("model", "model", "s"), ("teacher", "teacher MiB/ex", ".1f"), ("adam", "AdamW temp B/param", ".2f"),
    ("layers", "attentions", "d"), ("lse", "SDPA lse MiB/ex", ".1f"),
    ("classic", "classic scores GiB/ex (bf16)", ".2f"),
]  # fmt: skip
PLAN_COLUMNS = [
    ("model", "model", "s"), ("ckpt", "ckpt", "s"), ("strategy", "strategy", "s"),
    ("peak_b1_gib", "batch 1 GiB", ".1f"), ("act_gib_per_example", "GiB/ex", ".2f"),
    *[(f"fit_{g}", f"{g} GiB", "s") for g in GPUS_GIB],
]  # fmt: skip


def print_computed(models: dict[str, Any]) -> None:
    """Parameters, bytes per rank and the cached data: computed."""
    rows, data = [], []
    for name, m in models.items():
        c, d = m["parameters"], m["data"]
        rows.append({"model": TITLES[name], "teacher": c["teacher"], "student": c["student"],
                     "cond_proj": c["cond_proj"], "unit": c["largest_unit"],
                     **{k: v / GIB for k, v in m["static_bytes_ddp"].items()},
                     **{f"fsdp{r}": b["total"] / GIB
                        for r, b in m["fsdp2_bytes_per_rank"].items()}})  # fmt: skip
        data.append({"model": TITLES[name], "latent": "x".join(map(str, d["latent_shape"])),
                     "text": "x".join(map(str, d["text_shape"])), "kib16": d["per_example_16bit"] / 2**10,
                     "kib32": d["per_example_fp32"] / 2**10, "gib16": d["dataset_16bit"] / GIB,
                     "gib32": d["dataset_fp32"] / GIB})  # fmt: skip
    print("\n## Parameters and bytes per rank (computed; GiB)\n")
    print(_common.table(rows, BYTES_COLUMNS))
    examples = next(iter(models.values()))["data"]["examples"]
    print(f"\n## Cached data (computed), per example and for {examples:,} examples: in CPU RAM (pinned) "
          "or a memory-mapped file; each step copies its batch to the GPU\n")  # fmt: skip
    print(_common.table(data, DATA_COLUMNS))


def activation_rows(models: dict[str, Any], scale: int) -> list[dict[str, Any]]:
    """Per example (the most one example adds at any op, and what it leaves saved at the end of the
    forward): each measured width, then the fit at full width with its peak at batch 1."""
    rows = []
    for name, m in models.items():
        for fit in (f for f in m["extrapolated"]["parts"] if f["part"] == "student"):
            key = ("student", fit["precision"], fit["checkpointing"])
            base = {
                "model": name,
                "precision": fit["precision"],
                "ckpt": "on" if fit["checkpointing"] else "off",
            }
            for r in m["measured"]:
                if (r["part"], r["precision"], r["checkpointing"]) == key:
                    rows.append({**base, "source": "measured", "channels": r["channels"],
                                 "worst": scale * r["per_example_worst"] / 2**20,
                                 "saved": scale * (r["saved_b2"] - r["saved_b1"]) / 2**20})  # fmt: skip
            worst = fit["worst_fit"]
            rows.append({**base, "source": "fit, w = 1", "channels": BASE_CHANNELS,
                         "worst": fit["per_example_worst"] / 2**20,
                         "saved": fit["saved_fit"]["full"] / 2**20,
                         "a": worst["a"] / 2**20, "residual": worst["max_rel_residual"],
                         "peak_b1": peak_bytes(fit["envelope"], 1) / 2**20})  # fmt: skip
    return rows


def print_measured(models: dict[str, Any], check: dict[str, Any] | None, latent_scale: int) -> None:
    """The student's activations per example (measured widths and the fit), the teacher's forward
    and AdamW's temporaries (measured), the attention tensors (computed), and the check."""
    scaled = f" (measured at 1/{latent_scale} of the latent side, shown x{latent_scale**2})"
    print("\n## Student activations per example, forward + backward" + (scaled if latent_scale > 1 else ""))
    print("MiB/ex: the most one example adds at any op; saved: alive at the end of the forward; fit: per"
          " op, a + b w over the widths w = ch0/320\n(a, resid: of the MiB/ex column); peak b1: batch 1"
          " at full width, gradients and autocast's weight copies included\n")  # fmt: skip
    print(_common.table(activation_rows(models, latent_scale**2), ACT_COLUMNS))
    rows = []
    for name, m in models.items():
        ext, att = m["extrapolated"], m["attention_per_example"]
        teacher = part_fit(ext, "teacher", "bf16", False)["per_example_worst"]
        rows.append({"model": TITLES[name], "teacher": teacher / 2**20,
                     "adam": ext["adamw_temp_bytes_per_param"], "layers": att["attention_layers"],
                     "lse": att["sdpa_logsumexp"] / 2**20,
                     "classic": att["classic_scores_bf16_autocast"] / GIB})  # fmt: skip
    print("\n## Teacher forward (measured: bf16, no grad, cond + uncond), AdamW temporaries (measured),"
          " attention tensors per example (computed)\n")  # fmt: skip
    print(_common.table(rows, OTHER_COLUMNS))
    if check:
        print(f"\nclassic attention check ({check['model']}, ch0 {check['channels']}, latent side "
              f"{check['side']}, fp32): stored scores measured {check['measured_difference'] / 2**20:.1f}"
              f" MiB/ex, computed {check['computed_difference'] / 2**20:.1f} MiB/ex")  # fmt: skip


def print_plan(plan: list[dict[str, Any]]) -> None:
    usable = ", ".join(f"{g}: {usable_bytes(g) / GIB:.1f}" for g in GPUS_GIB)
    print(f"\n## Largest batch per GPU (bf16 autocast; usable GiB = capacity x 0.9 - 1: {usable})\n")
    rows = [{**r, "model": TITLES[r["model"]], "ckpt": "on" if r["checkpointing"] else "off",
             **{f"fit_{g}": str(r[f"max_batch_{g}"] or "none") for g in GPUS_GIB}} for r in plan]  # fmt: skip
    print(_common.table(rows, PLAN_COLUMNS))
    for line in verdicts(plan):
        print(line)


def plot(models: dict[str, Any], path: Path, title: str) -> str | None:
    """Largest batch per GPU against the GPU's memory, per model: DDP and FSDP2 over 8 ranks, with
    and without checkpointing; the four cards marked."""
    plt = _common.pyplot()
    if plt is None:
        return "matplotlib is not installed"
    memory = [12 + 0.5 * i for i in range(281)]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items(), strict=True):
        for ckpt, ranks in ((False, 1), (True, 1), (False, 8), (True, 8)):
            parts = phases(
                m["parameters"], m["extrapolated"], m["data"]["step_tensors_per_example"], ckpt, ranks
            )
            label = f"{'DDP' if ranks == 1 else 'FSDP2 x8'}, ckpt {'on' if ckpt else 'off'}"
            batches = [max_batch(parts, usable_bytes(g)) for g in memory]
            ax.plot(memory, batches, "-" if ranks == 1 else "--", color=f"C{int(ckpt)}", label=label)
        for g in GPUS_GIB:
            ax.axvline(g, color="gray", lw=0.6, ls=":")
        ax.set_title(TITLES[name], fontsize=9)
        ax.set_xlabel("GPU memory (GiB)")
        ax.set_ylabel("largest batch per GPU")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


ASSUMPTIONS = [
    "student: fp32 weights, fp32 grads, AdamW moments, fp32 EMA (20 B/param); teacher bf16 (2 B/param)",
    "mixed precision = bf16 autocast; CUDA's autocast policy for norms emulated on the CPU (fp32 outputs)",
    "attention = diffusers' AttnProcessor2_0 (torch SDPA, flash / memory-efficient): no L x L scores stored;"
    " the classic AttnProcessor's scores are computed separately and not in the plan",
    "per op, activations per example scale as a + b w with width w at fixed heads, batch-independent bytes"
    " as c w + d w^2 (fits over the measured widths); with --latent-scale k, per-example bytes x k^2",
    "DDP with gradient_as_bucket_view=True (the default False adds a 4 B/param bucket copy of the grads)",
    "FSDP2: fully_shard per down/mid/up block, MixedPrecisionPolicy(bf16 params, fp32 reduce); the largest"
    " block unsharded at 10 B/param (two bf16 all-gathers, its bf16 grads and their fp32 copy); the teacher"
    " whole on every rank; every grad shard counted in the backward",
    "optimizer step: AdamW foreach (CUDA's default), temporaries measured; fused=True would need none",
    "EMA update per tensor (diffusers' EMAModel default): temporaries of one tensor, not counted",
    "teacher: no-grad forwards on 2 x batch (cond + uncond), grads already freed (zero_grad(set_to_none))",
    "per example also ~8 latent-sized fp32 tensors of the step and the 16-bit batch on the GPU",
    f"usable = capacity x (1 - {MARGIN_FRACTION}) - {MARGIN_FIXED_GIB} GiB (allocator fragmentation,"
    " cuBLAS/cuDNN/NCCL workspaces, CUDA context); capacities taken as 24, 40, 80, 141 GiB",
    "CPU memory is every storage an op creates (TorchDispatchMode), not the allocator's rounding: kernels'"
    " internal workspaces are not seen",
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Compute, measure and plan; returns what it writes to `memory_plan.json`."""
    args = settle(build_parser().parse_args(argv))
    wall_start = time.perf_counter()
    threads = _common.set_threads(args.threads)
    load_start, date = _common.loadavg(), _common.now_utc()
    machine = _common.machine(torch.device("cpu"))
    print(
        f"# memory_plan: measured on {machine['cpu_model']} ({threads} torch threads), torch "
        f"{machine['torch']}; {date}, load average {load_start}"
    )
    models = {name: model_summary(name, args) for name in args.models}
    check = None
    if args.attention_check == "on":
        name = args.models[0]
        check = attention_check(name, SD_UNETS[name]["sample_size"] // (2 * args.latent_scale))
    plan = [r for n, m in models.items() for r in plan_rows(n, m["parameters"], m["extrapolated"], m["data"])]
    for name, published in PUBLISHED_PARAMS.items():
        if name in models:
            got = models[name]["parameters"]["teacher"]
            print(
                f"\n{TITLES[name]} UNet: {got:,} parameters (published {published:,}: "
                f"{'equal' if got == published else 'DIFFERENT'})"
            )
    print_computed(models)
    print_measured(models, check, args.latent_scale)
    print_plan(plan)
    wall = time.perf_counter() - wall_start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "benchmark": "memory_plan", "machine": machine, "date": date, "loadavg_start": load_start,
        "loadavg_end": _common.loadavg(), "wall_s": round(wall, 1), "settings": settings,
        "computed": ["parameters", "static_bytes_ddp", "fsdp2_bytes_per_rank", "data",
                     "attention_per_example", "plan (from the measured activations)"],
        "measured": f"activations, teacher forward, AdamW temporaries: on the CPU ({machine['cpu_model']})",
        "assumptions": ASSUMPTIONS, "gpus_gib": list(GPUS_GIB),
        "usable_gib": {str(g): usable_bytes(g) / GIB for g in GPUS_GIB},
        "models": models, "attention_check": check, "plan": plan, "verdicts": verdicts(plan),
        "notes": [n for n in [_common.load_note(threads)] if n],
    }  # fmt: skip
    title = (f"activations measured on {machine['cpu_model']}, extrapolated to full width; bf16 autocast;"
             f" usable = capacity x {1 - MARGIN_FRACTION:g} - {MARGIN_FIXED_GIB:g} GiB")  # fmt: skip
    _common.write_results(args.out, "memory_plan", payload, lambda path: plot(models, path, title), wall)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
