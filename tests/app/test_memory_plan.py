"""benchmarks/memory_plan.py: the published parameter count of SD 1.5's UNet, the byte arithmetic
of the plan against hand computations, the CPU memory tracer on tensors of known size, and a
`--quick` run writing the documented JSON (SD 1.5 only, about 10 s on 2 cores)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
GIB = 2**30


@pytest.fixture
def mp(monkeypatch):
    """benchmarks/memory_plan.py imported as a module (its folder on sys.path, as when run
    directly); torch's thread count, which `main` sets, is restored afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("_common", "_live_memory", "memory_plan"):
        sys.modules.pop(name, None)
    threads = torch.get_num_threads()
    yield importlib.import_module("memory_plan")
    torch.set_num_threads(threads)


def test_sd15_unet_has_the_published_859_520_964_parameters_and_sd21_865_910_724(mp):
    sd15, sd21 = mp.parameter_counts("sd15"), mp.parameter_counts("sd21")
    assert sd15["teacher"] == 859_520_964  # runwayml/stable-diffusion-v1-5 unet, as published
    assert sd21["teacher"] == 865_910_724
    # the guidance embedding: Linear(256 -> 320 = block_out_channels[0], no bias)
    assert sd15["cond_proj"] == sd21["cond_proj"] == 256 * 320
    assert sd15["student"] == 859_520_964 + 81_920


def test_unets_are_built_on_the_meta_device_without_memory(mp):
    unet = mp.build_unet(mp.unet_config("sd15"), "meta")
    assert all(p.is_meta for p in unet.parameters())


def test_ddp_and_fsdp2_bytes_of_sd15_match_a_hand_computation(mp):
    student, teacher = 859_602_884, 859_520_964
    st = mp.static_bytes(student, teacher)
    assert st["student_fp32_weights"] == st["student_fp32_grads"] == st["ema_fp32"] == 3_438_411_536
    assert st["adam_moments_fp32"] == 6_876_823_072
    assert st["teacher_bf16"] == 1_719_041_928
    assert st["total"] == 18_911_099_608  # 20 B x student + 2 B x teacher
    counts = {"student": student, "teacher": teacher, "largest_unit": 258_330_880}
    # 20 B x student / 4 + 2 B x teacher + 10 B x the largest unit
    assert mp.fsdp_bytes(counts, 4)["total"] == 4_298_014_420 + 1_719_041_928 + 2_583_308_800


def test_cached_data_bytes_of_sd15_match_a_hand_computation(mp):
    d = mp.data_bytes("sd15", 100_000)
    # 4 x 64 x 64 latent + 77 x 768 prompt embedding = 16,384 + 59,136 values
    assert d["per_example_16bit"] == 151_040 and d["per_example_fp32"] == 302_080
    assert d["dataset_16bit"] == 15_104_000_000


def test_classic_attention_scores_of_sd15_match_a_hand_computation(mp):
    att = mp.attention_bytes("sd15", 64)
    # 16 transformer blocks (2+2+2 down, 1 mid, 3+3+3 up), self- and cross-attention each, 8 heads;
    # 5 at 64x64 tokens, 5 at 32x32, 5 at 16x16, 1 at 8x8
    tokens = [4096] * 5 + [1024] * 5 + [256] * 5 + [64]
    scores = sum(8 * n * (n + 77) for n in tokens)
    assert att["attention_layers"] == 32
    assert att["classic_scores_fp32"] == 4 * scores
    assert att["sdpa_logsumexp"] == sum(4 * 8 * n * 2 for n in tokens)


def test_plan_row_matches_a_hand_computation(mp):
    ns, nt, unit = 859_602_884, 859_520_964, 258_330_880
    counts = {"student": ns, "teacher": nt, "largest_unit": unit}
    per, step = 1.5 * GIB, 1_000_000
    ext = {"adamw_temp_bytes_per_param": 4.0, "parts": [
        {"part": "student", "precision": "bf16", "checkpointing": False,
         "envelope": [[2.0 * ns, per], [4.0 * ns, 0.1 * GIB]], "per_example_worst": per},
        {"part": "teacher", "precision": "bf16", "checkpointing": False,
         "envelope": [[0.0, 0.05 * GIB]], "per_example_worst": 0.05 * GIB},
    ]}  # fmt: skip
    usable = 80 * GIB * 0.9 - GIB
    assert mp.usable_bytes(80) == usable
    # DDP: 16 B/param held (weights, Adam, EMA) + teacher bf16, then 2 B/param copies + B x per
    held = 16 * ns + 2 * nt
    ddp = mp.phases(counts, ext, step, ckpt=False, ranks=1)
    assert mp.max_batch(ddp, usable) == math.floor((usable - held - 2 * ns) / (per + step))
    assert mp.peak_bytes(ddp["optimizer"], 7) == held + 8 * ns  # grads + foreach temporaries
    # FSDP2 x4: a quarter of the student's 20 B/param, grads counted whole, the largest block x 10 B
    fsdp = mp.phases(counts, ext, step, ckpt=False, ranks=4)
    fixed = 16 * ns / 4 + 2 * nt + 4 * ns / 4 + 10 * unit
    assert mp.max_batch(fsdp, usable) == math.floor((usable - fixed) / (per + step))
    assert mp.max_batch(ddp, mp.usable_bytes(24)) == 0  # the optimizer step alone needs 20.8 GiB


def test_scaled_widths_keep_the_heads_and_divide_every_level(mp):
    assert mp.scaled_channels("sd15", 16) == 24  # 320/16 = 20 is not a multiple of 8 heads
    assert mp.scaled_channels("sd21", 16) == 20  # heads 5, 10, 20, 20 divide 20, 40, 80, 80
    config = mp.unet_config("sd21", 20)
    assert config["block_out_channels"] == (20, 40, 80, 80) and config["norm_num_groups"] == 4
    assert config["attention_head_dim"] == (5, 10, 20, 20)


def test_live_bytes_counts_allocations_once_and_sees_them_freed(mp):
    from _live_memory import LiveBytes

    mode = LiveBytes()
    with mode:
        x = torch.ones(1000)  # 4,000 bytes
        view = x[10:].t()  # a view: nothing
        y = x * 2  # 4,000 more
        x.add_(1)  # in place: nothing
        del x, view
        z = y.to(torch.bfloat16)  # 2,000
        del y
    assert mode.peak == 8_000  # x and y
    assert mode.now == 2_000 and z.numel() == 1000
    assert max(mode.trace) == mode.peak


def test_runs_are_aligned_across_a_few_extra_ops(mp):
    from _live_memory import align, envelope

    ref, other = [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 30, 31, 3, 4, 5, 6, 7, 8, 9]
    assert align(ref, other).tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 10]
    assert align([1, 2, 9, 4, 5, 6, 7], [1, 2, 8, 8, 4, 5, 6, 7]).tolist() == [0, 1, 3, 4, 5, 6, 7]
    # the pairs (fixed, per example) that can hold max(fixed + B per) for some B >= 0
    fixed, per = np.array([5.0, 1.0, 3.0, 0.0]), np.array([0.0, 2.0, 1.0, 1.5])
    assert envelope(fixed, per) == [[1.0, 2.0], [3.0, 1.0], [5.0, 0.0]]


def test_quick_run_writes_the_documented_json_and_plot(mp, tmp_path):
    payload = mp.main(["--quick", "--models", "sd15", "--attention-check", "off", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "memory_plan.json").read_text())
    assert written["benchmark"] == "memory_plan" and written["wall_s"] == payload["wall_s"]
    assert written["machine"]["cpu_model"] and written["date"].endswith("+00:00")
    assert written["settings"]["quick"] and written["settings"]["latent_scale"] == 4
    assert written["computed"] and written["measured"] and written["assumptions"]
    assert written["gpus_gib"] == [24, 40, 80, 141]
    assert set(written["usable_gib"]) == {"24", "40", "80", "141"}
    m = written["models"]["sd15"]
    assert m["parameters"]["teacher"] == 859_520_964
    for key in ("static_bytes_ddp", "fsdp2_bytes_per_rank", "data", "attention_per_example", "measured"):
        assert m[key]
    parts = m["extrapolated"]["parts"]
    assert {(p["part"], p["checkpointing"]) for p in parts} == {
        ("student", False), ("student", True), ("teacher", False)}  # fmt: skip
    for p in parts:
        assert p["per_example_worst"] > 0 and p["envelope"]
    student = {p["checkpointing"]: p for p in parts if p["part"] == "student"}
    assert student[True]["per_example_worst"] < student[False]["per_example_worst"]  # checkpointing saves
    assert len(written["plan"]) == 8  # checkpointing off/on x DDP, FSDP2 x2, x4, x8
    for row in written["plan"]:
        batches = [row[f"max_batch_{g}"] for g in (24, 40, 80, 141)]
        assert all(isinstance(b, int) and b >= 0 for b in batches) and batches == sorted(batches)
    assert (tmp_path / "memory_plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_never_writes_into_the_committed_results(mp):
    args = mp.settle(mp.build_parser().parse_args(["--quick"]))
    assert args.out != BENCHMARKS / "results" and args.scales == [16, 8] and args.precisions == ["bf16"]
    with pytest.raises(ValueError, match="bf16"):
        mp.settle(mp.build_parser().parse_args(["--precisions", "fp32"]))
