"""[GD] stage 1 of the text-to-image recipe on its own: how close the w-conditioned student gets to
the guided teacher, per training setting. Usage:
`python benchmarks/text2img_stage1.py WORK [--variant NAME:iters=4000,lr=2e-3,band=1 ...]
[--steps 64] [--eval-w 1,2,4] [--eval-samples 898] [--threads 1] [--results DIR]`

WORK is a work folder of `benchmarks/text2img_teacher.py` (its `teacher/` and `data/`). Each
variant trains a stage-1 student as the text-to-image job does (`distill_guidance` on the data's
cached latents and prompt embeddings, w ~ U[0, --w-max], batch 64, seed 0) with its own settings:
`iters`, `lr`, `band` (1: the student reads `guidance_band(256, w_max)`, as the job's; 0: every
feature of the w embedding), `param` (v, or the teacher's own eps) and `weighting` (default: as the
job weighs, in the teacher's space for another param, `snr_trunc` for its own). For each w of
`--eval-w`, from the job's evaluation noise and prompts: the teacher's guided DDIM at 256 and at
`--steps` steps, and each student's DDIM at `--steps` steps, decoded and scored as
`text2img_teacher.py` scores (Fréchet distance in the digits classifier's features, accuracy of the
named digit), with the mean RMS latent distance to the teacher's 256-step sample from the same
noise and prompt. Writes `text2img_stage1.json` into
`--results` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common
import torch

NAME = "text2img_stage1"
KEYS = {"iters": int, "lr": float, "band": int, "param": str, "weighting": str}
DEFAULT_VARIANT = "band:iters=4000,lr=2e-3,band=1"


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:key=value,...` -> (NAME, settings); keys from KEYS, the others left to defaults."""
    name, _, body = text.partition(":")
    settings: dict[str, Any] = dict(iters=1500, lr=3e-4, band=1, param="v", weighting=None)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"--variant {text}: unknown key {key!r} (one of {', '.join(KEYS)})")
        settings[key] = KEYS[key](value)
    return name, settings


def train(pipeline: Any, encoded: Any, settings: dict[str, Any], w_max: float) -> torch.nn.Module:
    from pd_fast.app.reparam import TEACHER_WEIGHTING
    from pd_fast.app.training import distill_guidance
    from pd_fast.integrations.latent import w_conditioned_student

    student = w_conditioned_student(pipeline.model, 256, w_max=w_max if settings["band"] else None)
    weighting = settings["weighting"] or (
        "snr_trunc" if settings["param"] == pipeline.param else TEACHER_WEIGHTING[pipeline.param]
    )
    return distill_guidance(
        pipeline.model, encoded.latents, cond=encoded.cond, null_cond=encoded.null_cond, student=student,
        teacher_param=pipeline.param, weighting=weighting, w_min=0.0, w_max=w_max, iters=settings["iters"],
        batch_size=64, lr=settings["lr"], bounded=False, schedule=pipeline.schedule, param=settings["param"],
        seed=0, progress=False,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from text2img_teacher import evaluation_inputs, judged, judges

    import pd_fast
    from pd_fast.app.captioned import encode_cached, load_captioned
    from pd_fast.app.evaluation.latent import rms_distances
    from pd_fast.app.evaluation.metrics import frechet_distance, gaussian_stats
    from pd_fast.app.jobs.text_to_image import teacher_id
    from pd_fast.integrations.latent import load_latent_pipeline, quiet_libraries

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", help="a work folder of text2img_teacher.py")
    p.add_argument("--variant", action="append", help=f"NAME:key=value,... (default {DEFAULT_VARIANT})")
    p.add_argument("--steps", type=int, default=64, help="the DDIM steps of every compared sample")
    p.add_argument("--eval-w", default="1,2,4")
    p.add_argument("--w-max", type=float, default=4.0)
    p.add_argument("--eval-samples", type=int, default=898)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None, help="default benchmarks/results/")
    args = p.parse_args(argv)
    variants = dict(parse_variant(v) for v in (args.variant or [DEFAULT_VARIANT]))
    threads, t_start = _common.set_threads(args.threads), time.perf_counter()
    work, ws = Path(args.work), [float(w) for w in args.eval_w.split(",")]
    with quiet_libraries():
        pipeline = load_latent_pipeline(work / "teacher")
    data = load_captioned(str(work / "data"))
    encoded = encode_cached(data, pipeline, None, teacher_id(pipeline), 64, False)
    _, z, cond, null, labels = evaluation_inputs(pipeline, data.captions, args.eval_samples, 0)  # the job's
    evaluator, classifier = judges(work, 0)

    def scored(model: str, w: float, x: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
        features, correct = judged(pipeline, x, labels, evaluator, classifier)
        frechet = frechet_distance(*gaussian_stats(features), *evaluator.reference[evaluator.metric])
        rms = float(rms_distances(x, reference).mean())
        return dict(model=model, w=w, frechet=frechet, accuracy=float(correct.mean()), rms_to_teacher_256=rms)

    def teacher(w: float, n: int) -> torch.Tensor:
        with torch.no_grad():
            return pd_fast.sample(pipeline.model, z, n, pipeline.schedule, pipeline.param, cond=cond,
                                  null_cond=null, w=w)  # fmt: skip

    rows, references = [], {}
    for w in ws:
        references[w] = teacher(w, 256)
        rows.append(scored("teacher_256", w, references[w], references[w]))
        rows.append(scored(f"teacher_{args.steps}", w, teacher(w, args.steps), references[w]))
    seconds = {}
    for name, settings in variants.items():
        t0 = time.perf_counter()
        student = train(pipeline, encoded, settings, args.w_max)
        seconds[name] = time.perf_counter() - t0
        for w in ws:

            def model(z_: torch.Tensor, t: torch.Tensor, s: Any = student, w: float = w) -> torch.Tensor:
                return s(z_, t, cond, torch.full((len(z_),), w))

            with torch.no_grad():
                x = pd_fast.sample(model, z, args.steps, pipeline.schedule, settings["param"])
            rows.append(scored(name, w, x, references[w]))
    payload = {
        "benchmark": NAME, "date": _common.now_utc(), "machine": _common.machine(torch.device("cpu")),
        "threads": threads, "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("results", "variant")},
        "variants": variants, "train_seconds": seconds, "rows": rows,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    cols = [("model", "model", "s"), ("w", "w", "g"), ("frechet", "FD", ".4g"), ("accuracy", "acc", ".3f"),
            ("rms_to_teacher_256", "RMS to teacher 256", ".4f")]  # fmt: skip
    print(_common.table(rows, cols))
    results = Path(args.results) if args.results else _common.RESULTS
    _common.write_results(results, NAME, payload, lambda path: "the table is the result", payload["wall_s"])
    return payload


if __name__ == "__main__":
    main()
