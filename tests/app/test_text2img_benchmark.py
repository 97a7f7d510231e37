"""benchmarks/text2img_teacher.py in its --tiny mode (about 20 s on one CPU thread): every step of
the recipe runs (diffusers' text-to-image training, the CLI's distillation, the scoring of decoded
samples, the timing in diffusers) and the JSON holds every row, interval and target."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The script imported as a module (its folder on sys.path, as when run directly); torch's
    thread count, which `main` sets, is restored afterwards."""
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module("text2img_teacher")
    finally:
        sys.path.remove(str(BENCHMARKS))
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("t2ibench")
    payload = bench.main(["--tiny", "--out", str(root / "work"), "--results", str(root / "results")])
    return payload, root


def test_the_word_tokenizer_gives_every_caption_word_one_token(bench, tmp_path) -> None:
    from _text2img_recipe import MAX_LENGTH, template_words, write_tokenizer

    from pd_fast.app.captioned import captioned_digits

    words = template_words()
    tokenizer = write_tokenizer(tmp_path, words)
    ids = {tokenizer(w, add_special_tokens=False).input_ids[0] for w in words}
    assert len(ids) == len(words)  # one distinct token a word
    for caption in set(captioned_digits().captions):
        tokens = tokenizer(caption).input_ids
        assert len(tokens) == len(caption.split()) + 2 <= MAX_LENGTH  # start, words, end: never truncated


def test_the_tiny_run_scores_every_model_w_and_n_with_intervals(tiny_run) -> None:
    payload, root = tiny_run
    saved = json.loads((root / "results" / "text2img_teacher.json").read_text())
    assert saved["rows"] == payload["rows"]
    assert (root / "results" / "text2img_teacher.png").read_bytes()[:4] == b"\x89PNG"
    assert (root / "work" / "data" / "metadata.jsonl").is_file()
    assert (root / "work" / "teacher" / "model_index.json").is_file()
    keys = {(r["model"], r["w"], r["steps"]) for r in payload["rows"]}
    expected = {("autoencoder", "-", 0)}
    for w in ("0", "2"):
        expected |= {("teacher_ddim", w, n) for n in (1, 2, 4, 8, 256)}
        expected |= {("teacher_dpmpp", w, n) for n in (1, 2, 4, 8)}
        expected |= {("student", w, n) for n in (1, 2, 4)}  # --tiny starts at 8 steps
    assert keys == expected
    for row in payload["rows"]:
        lo, hi = row["frechet_interval"]
        assert 0 <= lo <= hi and row["frechet"] > 0
        lo, hi = row["accuracy_interval"]
        assert 0 <= lo <= row["accuracy"] <= hi <= 1


def test_the_timing_counts_4_unet_evaluations_against_100_and_every_target_has_a_verdict(tiny_run) -> None:
    payload, _ = tiny_run
    (timing,) = payload["timing"]
    assert timing["unet_evaluations_per_image"] == {
        "student_4": 4, "teacher_50_guided": 100, "student_4_latent": 4, "teacher_50_guided_latent": 100,
    }  # fmt: skip
    assert timing["unet_forward_calls"] == {
        "student_4": 4, "teacher_50_guided": 50, "student_4_latent": 4, "teacher_50_guided_latent": 50,
    }  # guidance: one doubled batch  # fmt: skip
    assert timing["speedup"] > 0 and timing["speedup_latent"] > 0
    names = {t["name"] for t in payload["targets"]}
    assert {"accuracy_4_w2", "frechet_4_w2", "speedup_batch2"} <= names
    assert {
        f"student_{n}_beats_{b}_w{w}"
        for n in (1, 2, 4)
        for b in ("teacher_ddim", "teacher_dpmpp")
        for w in "02"
    } <= names
    assert all(
        isinstance(t["met"], bool) and t["text"].endswith(("met", "MISSED")) for t in payload["targets"]
    )


def test_stage1_benchmark_scores_a_student_that_is_still_the_teacher_as_the_teacher(tiny_run) -> None:
    """benchmarks/text2img_stage1.py on the tiny run's teacher: a student trained one step at a
    negligible learning rate in the teacher's own param is the teacher, so at w = 0 (the guided
    teacher is the conditional one) its samples score what the teacher's do, and at w = 2 they do not
    (the student has not learnt the guidance)."""
    import text2img_stage1

    _, root = tiny_run
    argv = [str(root / "work"), "--variant", "init:iters=1,lr=1e-12,param=eps", "--steps", "4"]
    argv += ["--eval-w", "0,2", "--eval-samples", "16", "--results", str(root / "stage1")]
    payload = text2img_stage1.main(argv)
    rows = {(r["model"], r["w"]): r for r in payload["rows"]}
    assert set(rows) == {(m, w) for m in ("teacher_256", "teacher_4", "init") for w in (0.0, 2.0)}
    assert rows[("teacher_256", 0.0)]["rms_to_teacher_256"] == 0
    student, teacher = rows[("init", 0.0)], rows[("teacher_4", 0.0)]
    assert student["rms_to_teacher_256"] == pytest.approx(teacher["rms_to_teacher_256"], rel=1e-5)
    assert student["frechet"] == pytest.approx(teacher["frechet"], rel=1e-4)
    guided = rows[("teacher_4", 2.0)]["rms_to_teacher_256"]
    assert abs(rows[("init", 2.0)]["rms_to_teacher_256"] - guided) > 1e-3
    saved = json.loads((root / "stage1" / "text2img_stage1.json").read_text())
    assert saved["rows"] == payload["rows"] and saved["variants"]["init"]["param"] == "eps"
