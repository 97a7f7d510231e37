"""The text-to-image recipe measured end to end on a CPU. Usage:
`python benchmarks/text2img_teacher.py [--quick | --tiny] [--threads 1] [--out DIR] [--results DIR]`
(needs `.[diffusers]`; nothing is downloaded).

1. **Teacher**: a tiny Stable-Diffusion-shaped pipeline trained with diffusers' own text-to-image
   recipe on the 8x8 digits upsampled to 16 x 16 RGB and captioned by templates naming the digit
   (`benchmarks/_text2img_recipe.py`: a word-level CLIPTokenizer, a frozen random CLIPTextModel, an
   AutoencoderKL trained here to 8 x 8 x 4 latents, a UNet2DConditionModel with eps prediction,
   10% empty captions, AdamW and EMA), saved with `StableDiffusionPipeline.save_pretrained`, and the
   data as an imagefolder (`metadata.jsonl`).
2. **Distillation** by the command a user runs, `python -m pd_fast --teacher DIR --data DIR ...`
   (`pd_fast.app.cli.main`): [GD] stage 1 (a w-conditioned v student) and stage 2 (halving its
   steps), students exported as `StableDiffusionPipeline` folders.
3. **Quality**, for w in `--eval-w` (`guidance_scale = 1 + w`) and N in {1, 2, 4, 8}, from the job's
   evaluation noise and prompts (the data's captions in order; `samples.npz` holds its latents): the
   students, the teacher with classifier-free guidance at 256 DDIM steps and at N DDIM steps (the
   job's samples), and the teacher with DPM-Solver++(2M) at N steps (`pd_fast.sample(...,
   sampler="dpmpp_2m", cond=, null_cond=, w=)`, the same guided prediction). Every sample set is
   decoded by the pipeline's AutoencoderKL (`D(z / scaling_factor)`, 16 x 16 RGB) and taken back to
   the digits' 8 x 8 grayscale (`pd_fast.app.evaluation.latent.digit_images`: clamped to [-1, 1],
   luma weights, then the pseudo-inverse of the data's bicubic 8 -> 16 upsampling, clamped), then
   scored by the project's evaluator: the Fréchet distance in the digits classifier's features
   against the digits, and the accuracy of the digit the prompt names (the same classifier), each
   with a 95% paired bootstrap interval (the rows resampled together for every set).
4. **Speed** in diffusers: the exported 4-step student in `StableDiffusionPipeline` (4 UNet calls)
   against the teacher's pipeline at 50 DDIM steps with guidance (100 UNet evaluations an image, in
   50 calls on the doubled batch), in alternating rounds, the median wall time per image; and the
   same calls with `output_type="latent"` (no decoding: the prompt encoding and the denoising loop),
   which shows what the autoencoder's decoding, shared by both, costs.
5. **Targets** (checked and printed; a miss is reported, never hidden): at every w >= 1 the 4-step
   student's accuracy within 2 points of the guided teacher's 256 steps, its Fréchet distance at
   most 1.3x the teacher's 256 and the 8-step student's at most 1.15x; at every w and N <= 4 the
   student's distance below the teacher's DDIM and DPM-Solver++(2M) at the same N; the 4-step
   student pipeline at least 15x faster per image than the teacher's 50-step guided pipeline.

Writes `text2img_teacher.json` and `.png` into `--results` (default benchmarks/results/; `--quick`
and `--tiny`: a new temporary folder, never the committed results).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch

STEPS = (1, 2, 4, 8)
REFERENCE = 256
NAME = "text2img_teacher"
QUICK = dict(
    vae_iters=400, teacher_iters=700, start_steps=16, guidance_iters=100, iters=60, eval_samples=200,
    eval_w="0,2", timing_rounds=3, timing_batches="1,16", resamples=100,
)  # fmt: skip
TINY = dict(
    vae_channels="8,16", unet_channels="8,16", vae_iters=3, teacher_iters=3, start_steps=8, guidance_iters=2,
    iters=2, eval_samples=16, eval_w="0,2", timing_rounds=1, timing_batches="2", resamples=20, batch=16,
)  # fmt: skip


def distill(teacher_dir: Path, data_dir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`python -m pd_fast --teacher DIR --data DIR ...` through `pd_fast.app.cli.main`."""
    import json

    from pd_fast.app.cli import main

    argv = ["--teacher", str(teacher_dir), "--data", str(data_dir), "--out", str(out), "--no-progress"]
    for flag in ("start_steps", "guidance_iters", "guidance_lr", "iters", "lr", "last_rounds_factor"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    argv += ["--batch-size", str(args.distill_batch), "--w-max", str(args.w_max), "--eval-w", args.eval_w]
    argv += ["--eval-samples", str(args.eval_samples), "--seed", str(args.seed)]
    argv += ["--threads", str(torch.get_num_threads()), "--ckpt-every", "0"]
    if main(argv) != 0:
        raise RuntimeError(f"python -m pd_fast {' '.join(argv)} failed")
    return json.loads((out / "report.json").read_text())


def evaluation_inputs(pipeline: Any, captions: list[str], n: int, seed: int) -> tuple:
    """The job's evaluation inputs: its prompts (the data's captions in order, repeated to n), its
    noise (`eval_noise(seed, ...)` on the CPU), the prompts' embeddings and the null condition, and
    the digit each prompt names."""
    from pd_fast.app.captioned import named_digit
    from pd_fast.app.jobs.common import eval_noise

    prompts = [captions[i % len(captions)] for i in range(n)]
    z = eval_noise(seed, (n, *pipeline.latent_shape), torch.device("cpu"))
    with torch.no_grad():
        cond = torch.cat([pipeline.encode_prompt(prompts[i : i + 256]) for i in range(0, n, 256)])
        null = pipeline.null_condition()
    return prompts, z, cond, null, torch.tensor([named_digit(p) for p in prompts])


def judges(work: Path, seed: int) -> tuple[Any, Any]:
    """The digits evaluator (Fréchet distance in its metric space) and classifier, cached in `work`."""
    from pd_fast.app.data import digits
    from pd_fast.app.evaluation import make_evaluator, train_classifier

    data = digits()
    evaluator = make_evaluator(data.x, data.labels, seed=seed, cache_dir=str(work))
    classifier, _ = train_classifier(data.x, data.labels, seed=seed, cache_dir=str(work))
    return evaluator, classifier


def judged(pipeline: Any, z: torch.Tensor, labels: torch.Tensor, evaluator: Any, classifier: Any) -> tuple:
    """Latents z decoded and taken to 8 x 8 (`decoded_digits`): their features in the evaluator's
    metric space, and per sample whether the classifier names the digit of `labels` (float64 0/1)."""
    images = decoded_digits(pipeline, z)
    with torch.no_grad():
        correct = (classifier(images).argmax(1) == labels).double().numpy()
    return evaluator.features(images)[evaluator.metric], correct


def sample_sets(run: Path, teacher_dir: Path, data_dir: Path, report: dict, args: argparse.Namespace) -> dict:
    """The latents of every scored set by (model, w, N): the job's (`samples.npz`: the students and
    the guided teacher's DDIM) and the teacher's DPM-Solver++(2M), sampled here from the job's noise
    and prompts; with the prompts and their named digits."""
    import pd_fast
    from pd_fast.app.captioned import load_captioned
    from pd_fast.integrations.latent import load_latent_pipeline

    pipeline = load_latent_pipeline(teacher_dir)
    captions = load_captioned(str(data_dir)).captions
    prompts, z, cond, null, labels = evaluation_inputs(pipeline, captions, report["eval_samples"], args.seed)
    sets: dict[tuple[str, str, int], torch.Tensor] = {}
    with np.load(run / "samples.npz") as saved:
        for key in saved.files:  # z_<model>_N<N>_w<w>
            model, n, w = key[2:].rsplit("_", 2)
            name = {"teacher": "teacher_ddim"}.get(model, model)
            sets[(name, w[1:], int(n[1:]))] = torch.from_numpy(saved[key])
    for w_name in report["ws"]:
        for n in STEPS:
            sets[("teacher_dpmpp", w_name, n)] = pd_fast.sample(
                pipeline.model, z, n, pipeline.schedule, pipeline.param, sampler="dpmpp_2m", cond=cond,
                null_cond=null, w=float(w_name),
            )  # fmt: skip
    return dict(sets=sets, pipeline=pipeline, prompts=prompts, labels=labels)


def score(got: dict, work: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every set decoded, taken to 8 x 8 and scored (module docstring, 3): rows with the Fréchet
    distance, the accuracy of the named digit and their intervals; the replicates for the ratios;
    the data's floor and the autoencoder's round trip of the data (the pipeline's own floor)."""
    from pd_fast.app.captioned import load_captioned
    from pd_fast.app.evaluation import bootstrap_frechet, bootstrap_interval
    from pd_fast.app.evaluation.metrics import frechet_distance, gaussian_stats

    evaluator, classifier = judges(work, args.seed)
    space, labels, pipeline = evaluator.metric, got["labels"], got["pipeline"]
    features, correct = {}, {}
    sets = dict(got["sets"])
    with torch.no_grad():  # the data (as the CLI read it) through the autoencoder and back
        sets[("autoencoder", "-", 0)] = pipeline.encode_images(
            load_captioned(str(work / "data")).images[: len(labels)]
        )
    for key, z in sets.items():
        features[key], correct[key] = judged(pipeline, z, labels, evaluator, classifier)
    n = len(labels)
    indices = np.random.default_rng(args.seed).integers(0, n, size=(args.resamples, n))
    replicates = bootstrap_frechet(features, evaluator.reference[space], indices)
    rows = []
    for key in features:
        point = frechet_distance(*gaussian_stats(features[key]), *evaluator.reference[space])
        acc_reps = correct[key][indices].mean(axis=1)
        rows.append(
            dict(
                model=key[0], w=key[1], steps=key[2], frechet=point,
                frechet_interval=list(bootstrap_interval(point, replicates[key])),
                accuracy=float(correct[key].mean()),
                accuracy_interval=[float(q) for q in np.quantile(acc_reps, [0.025, 0.975])],
            )
        )  # fmt: skip
    info = dict(
        space=space, samples=n, resamples=args.resamples, floor=evaluator.floor[space],
        classifier_accuracy=evaluator.info.get("classifier_accuracy"),
    )  # fmt: skip
    return rows, dict(replicates=replicates, correct=correct, indices=indices, info=info)


def decoded_digits(pipeline: Any, z: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Latents (n, 4, 8, 8) decoded by the pipeline's autoencoder and taken to the digits' 8 x 8
    grayscale (`pd_fast.app.evaluation.latent.digit_images`)."""
    from pd_fast.app.evaluation.latent import digit_images

    with torch.no_grad():
        return torch.cat(
            [digit_images(pipeline.decode_latents(z[i : i + batch])) for i in range(0, len(z), batch)]
        )


def comparisons(rows: list[dict], scored: dict, ws: list[str]) -> list[dict]:
    """Per w and N: each model's Fréchet distance over the guided teacher's 256-step one and its
    accuracy minus the teacher's, with paired 95% intervals (`ratio_interval`; the accuracy
    difference's percentile interval over the same resampled rows)."""
    from pd_fast.app.evaluation import ratio_interval

    by = {(r["model"], r["w"], r["steps"]): r for r in rows}
    reps, correct, idx = scored["replicates"], scored["correct"], scored["indices"]
    out = []
    for w in ws:
        ref = ("teacher_ddim", w, REFERENCE)
        for model in ("student", "teacher_ddim", "teacher_dpmpp"):
            for n in STEPS:
                key = (model, w, n)
                if key not in by:
                    continue
                ratio = ratio_interval(by[key]["frechet"], reps[key], by[ref]["frechet"], reps[ref])
                diff = (correct[key] - correct[ref])[idx].mean(axis=1)
                out.append(
                    dict(
                        model=model, w=w, steps=n, frechet_ratio=ratio[0],
                        frechet_ratio_interval=list(ratio[1:]),
                        accuracy_difference=float((correct[key] - correct[ref]).mean()),
                        accuracy_difference_interval=[float(q) for q in np.quantile(diff, [0.025, 0.975])],
                    )
                )  # fmt: skip
    return out


def time_pipelines(
    report: dict, teacher_dir: Path, prompts: list[str], args: argparse.Namespace
) -> list[dict]:
    """Wall time per image in diffusers (module docstring, 4): for each batch of `--timing-batches`,
    one untimed call of each pipeline (counting the UNet's evaluations), then `--timing-rounds`
    rounds alternating student and teacher; the median seconds per image of each."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from pd_fast.app.evaluation.latent import unet_calls

    student = StableDiffusionPipeline.from_pretrained(report["diffusers_exports"]["4"])
    teacher = StableDiffusionPipeline.from_pretrained(str(teacher_dir))
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    w = float(args.timing_w)
    runs = {
        "student_4": (student, dict(num_inference_steps=4)),
        "teacher_50_guided": (teacher, dict(num_inference_steps=50)),
        # the same calls without the autoencoder's decoding: the denoising alone
        "student_4_latent": (student, dict(num_inference_steps=4, output_type="latent")),
        "teacher_50_guided_latent": (teacher, dict(num_inference_steps=50, output_type="latent")),
    }
    out = []
    for batch in (int(b) for b in args.timing_batches.split(",")):
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        evals, calls = {}, {}

        def call(name: str, batch: int = batch) -> float:
            pipe, kw = runs[name]
            pipe.set_progress_bar_config(disable=True)
            gen = torch.Generator().manual_seed(args.seed)
            t0 = time.perf_counter()
            pipe(prompts[:batch], guidance_scale=1.0 + w, generator=gen, **{"output_type": "np", **kw})
            return time.perf_counter() - t0

        for name, (pipe, _) in runs.items():
            forward = []
            handle = pipe.unet.register_forward_pre_hook(lambda m, a, f=forward: f.append(1))
            with unet_calls(pipe.unet) as count:
                call(name)
            handle.remove()
            evals[name], calls[name] = count[0] / batch, len(forward)
        for _ in range(args.timing_rounds):
            for name in runs:
                seconds[name].append(call(name))
        per_image = {name: statistics.median(s) / batch for name, s in seconds.items()}
        out.append(
            dict(
                batch=batch, guidance_scale=1.0 + w, rounds=args.timing_rounds,
                seconds_per_image=per_image, unet_evaluations_per_image=evals, unet_forward_calls=calls,
                seconds=seconds, speedup=per_image["teacher_50_guided"] / per_image["student_4"],
                speedup_latent=per_image["teacher_50_guided_latent"] / per_image["student_4_latent"],
                decode_seconds_per_image=per_image["student_4"] - per_image["student_4_latent"],
            )
        )  # fmt: skip
    return out


def targets(rows: list[dict], compared: list[dict], timing: list[dict], ws: list[str]) -> list[dict]:
    """The verdicts of the module docstring's targets (5), each with its numbers and a line of text."""
    by = {(r["model"], r["w"], r["steps"]): r for r in rows}
    cmp = {(c["model"], c["w"], c["steps"]): c for c in compared}
    out = []

    def add(name: str, met: bool, text: str, **numbers: Any) -> None:
        out.append(dict(name=name, met=bool(met), text=f"{text}: {'met' if met else 'MISSED'}", **numbers))

    for w in ws:
        ref = by[("teacher_ddim", w, REFERENCE)]
        if float(w) >= 1 and ("student", w, 4) in cmp:
            c = cmp[("student", w, 4)]
            lo, hi = c["accuracy_difference_interval"]
            add(f"accuracy_4_w{w}", c["accuracy_difference"] >= -0.02,
                f"w={w}: 4-step student accuracy {by[('student', w, 4)]['accuracy']:.3f} vs teacher 256 "
                f"{ref['accuracy']:.3f} (difference {c['accuracy_difference']:+.3f} "
                f"[{lo:+.3f}, {hi:+.3f}], >= -0.02)",
                difference=c["accuracy_difference"])  # fmt: skip
        for n, limit in ((4, 1.3), (8, 1.15)):
            if float(w) >= 1 and ("student", w, n) in cmp:
                c = cmp[("student", w, n)]
                lo, hi = c["frechet_ratio_interval"]
                add(f"frechet_{n}_w{w}", c["frechet_ratio"] <= limit,
                    f"w={w}: {n}-step student FD / teacher 256 = {c['frechet_ratio']:.3f} "
                    f"[{lo:.3f}, {hi:.3f}] "
                    f"(<= {limit})", ratio=c["frechet_ratio"], limit=limit)  # fmt: skip
        for n in (1, 2, 4):
            s = by.get(("student", w, n))
            if s is None:
                continue
            for base in ("teacher_ddim", "teacher_dpmpp"):
                b = by[(base, w, n)]
                add(f"student_{n}_beats_{base}_w{w}", s["frechet"] < b["frechet"],
                    f"w={w}, N={n}: student FD {s['frechet']:.4g} < {base} {b['frechet']:.4g}",
                    student=s["frechet"], baseline=b["frechet"])  # fmt: skip
    for t in timing:
        add(f"speedup_batch{t['batch']}", t["speedup"] >= 15.0,
            f"batch {t['batch']}: 4-step student pipeline {t['speedup']:.1f}x faster per image than the "
            "teacher's 50-step guided pipeline (>= 15x)", speedup=t["speedup"])  # fmt: skip
    return out


def print_tables(payload: dict) -> None:
    by = {(r["model"], r["w"], r["steps"]): r for r in payload["rows"]}
    cmp = {(c["model"], c["w"], c["steps"]): c for c in payload["comparisons"]}

    def cell(model: str, w: str, n: int) -> dict[str, Any]:
        r = by.get((model, w, n))
        return {} if r is None else {f"{model}_fd": r["frechet"], f"{model}_acc": r["accuracy"]}

    info = payload["scoring"]
    print(f"\nFréchet distance ({info['space']} features of the digits classifier; "
          f"data floor {info['floor']:.3g}) "
          f"and accuracy of the named digit, {info['samples']} samples, decoded to 8x8")  # fmt: skip
    ae = by[("autoencoder", "-", 0)]
    print(f"the data through the autoencoder and back: FD {ae['frechet']:.3g}, accuracy {ae['accuracy']:.3f}")
    for w in payload["ws"]:
        ref = by[("teacher_ddim", w, REFERENCE)]
        lo, hi = ref["frechet_interval"]
        print(f"\nw = {w} (guidance_scale {1 + float(w):g}); teacher 256-step guided DDIM: "
              f"FD {ref['frechet']:.4g} "
              f"[{lo:.4g}, {hi:.4g}], accuracy {ref['accuracy']:.3f}")  # fmt: skip
        table = []
        for n in STEPS:
            row = {
                "steps": n,
                **cell("student", w, n),
                **cell("teacher_ddim", w, n),
                **cell("teacher_dpmpp", w, n),
            }
            c = cmp.get(("student", w, n))
            if c is not None:
                row["ratio"] = c["frechet_ratio"]
                row["ratio_ci"] = "[{:.2f}, {:.2f}]".format(*c["frechet_ratio_interval"])
            table.append(row)
        cols = [("steps", "N", "d"), ("student_fd", "student FD", ".4g"), ("student_acc", "acc", ".3f"),
                ("ratio", "/ teacher 256", ".3f"), ("ratio_ci", "[95%]", "s"),
                ("teacher_ddim_fd", "teacher DDIM", ".4g"), ("teacher_ddim_acc", "acc", ".3f"),
                ("teacher_dpmpp_fd", "DPM++(2M)", ".4g"), ("teacher_dpmpp_acc", "acc", ".3f")]  # fmt: skip
        print(_common.table(table, cols))
    for t in payload["timing"]:
        s = t["seconds_per_image"]
        print(f"\ndiffusers, batch {t['batch']}, guidance_scale {t['guidance_scale']:g}, "
              f"median of {t['rounds']} "
              f"alternating rounds: student 4 steps {1e3 * s['student_4']:.2f} ms/image "
              f"({t['unet_evaluations_per_image']['student_4']:g} UNet evaluations), teacher 50 steps guided "
              f"{1e3 * s['teacher_50_guided']:.2f} ms/image "
              f"({t['unet_evaluations_per_image']['teacher_50_guided']:g}); "
              f"{t['speedup']:.1f}x; without decoding (output_type='latent') "
              f"{1e3 * s['student_4_latent']:.2f} vs {1e3 * s['teacher_50_guided_latent']:.2f} ms/image, "
              f"{t['speedup_latent']:.1f}x; "
              f"the decoding {1e3 * t['decode_seconds_per_image']:.2f} ms/image")  # fmt: skip
    print()
    for t in payload["targets"]:
        print("target: " + t["text"])


def draw(payload: dict) -> Any:
    """The plot: per w, the Fréchet distance and the accuracy against N for the student, the
    teacher's DDIM and DPM-Solver++(2M), and the teacher's 256 steps as a line."""

    def fn(path: Path) -> str | None:
        plt = _common.pyplot()
        if plt is None:
            return "matplotlib is not installed"
        ws = payload["ws"]
        by = {(r["model"], r["w"], r["steps"]): r for r in payload["rows"]}
        fig, axes = plt.subplots(2, len(ws), figsize=(3.4 * len(ws), 6), squeeze=False)
        for j, w in enumerate(ws):
            for i, (field, label) in enumerate((("frechet", "Fréchet distance"), ("accuracy", "accuracy"))):
                ax = axes[i, j]
                for model, style in (("student", "o-"), ("teacher_ddim", "s--"), ("teacher_dpmpp", "^:")):
                    pts = [(n, by[(model, w, n)][field]) for n in STEPS if (model, w, n) in by]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), style, label=model)
                ax.axhline(by[("teacher_ddim", w, REFERENCE)][field], color="gray", lw=1, label="teacher 256")
                ax.set_xscale("log", base=2)
                ax.set_xlabel("N (steps)")
                ax.set_ylabel(label)
                if field == "frechet":
                    ax.set_yscale("log")
                    ax.set_title(f"w = {w}")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return None

    return fn


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (under 5 minutes on 2 cores)")
    p.add_argument("--tiny", action="store_true", help="a smoke run of every step (the tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64, help="the teacher's and the autoencoder's batch")
    p.add_argument("--vae-channels", default="16,32", help="AutoencoderKL block_out_channels")
    p.add_argument("--vae-iters", type=int, default=1200)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-kl", type=float, default=1e-3, help="weight of the KL term (per image element)")
    p.add_argument("--unet-channels", default="16,32", help="UNet2DConditionModel block_out_channels")
    p.add_argument("--teacher-iters", type=int, default=5000)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--p-empty", type=float, default=0.1, help="proportion of empty captions")
    p.add_argument("--start-steps", type=int, default=64)
    p.add_argument("--guidance-iters", type=int, default=4000)
    p.add_argument("--guidance-lr", type=float, default=2e-3)
    p.add_argument("--iters", type=int, default=600, help="distillation iterations per round")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--last-rounds-factor", type=float, default=2.0)
    p.add_argument("--distill-batch", type=int, default=64)
    p.add_argument("--w-max", type=float, default=4.0)
    p.add_argument("--eval-w", default="0,1,2,4")
    p.add_argument("--eval-samples", type=int, default=898, help="the evaluator's sample count")
    p.add_argument("--resamples", type=int, default=500, help="bootstrap resamples")
    p.add_argument("--timing-batches", default="1,16,64", help="prompts per pipeline call, comma separated")
    p.add_argument("--timing-rounds", type=int, default=7)
    p.add_argument("--timing-w", type=float, default=2.0)
    p.add_argument("--out", default=None, help="work folder (default runs/text2img_teacher-<time>)")
    p.add_argument("--results", default=None, help="default benchmarks/results/ (quick, tiny: a temp folder)")
    args = p.parse_args(argv)
    given = {a.split("=")[0][2:].replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
    for name, value in (TINY if args.tiny else QUICK if args.quick else {}).items():
        if name not in given:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import diffusers
    import transformers
    from _text2img_recipe import build_teacher

    from pd_fast.integrations.latent import quiet_libraries

    args = parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    threads = _common.set_threads(args.threads)
    short = args.quick or args.tiny
    work = Path(args.out) if args.out else None
    if work is None:
        work = (
            Path(tempfile.mkdtemp(prefix=f"{NAME}_"))
            if short
            else Path("runs") / time.strftime(f"{NAME}-%Y%m%d-%H%M%S")
        )
    work.mkdir(parents=True, exist_ok=True)
    results = _common.out_dir(Path(args.results) if args.results else None, short)
    t_start, load_start, seconds = time.perf_counter(), _common.loadavg(), {}
    with quiet_libraries():
        data_dir, teacher_dir, teacher_info = build_teacher(work, args)
    seconds["teacher"] = time.perf_counter() - t_start
    report = distill(teacher_dir, data_dir, work / "run", args)
    seconds["distill"] = time.perf_counter() - t_start - seconds["teacher"]
    t0 = time.perf_counter()
    with quiet_libraries():
        got = sample_sets(work / "run", teacher_dir, data_dir, report, args)
    rows, scored = score(got, work, args)
    compared = comparisons(rows, scored, report["ws"])
    seconds["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with quiet_libraries():
        timing = time_pipelines(report, teacher_dir, got["prompts"], args)
    seconds["timing"] = time.perf_counter() - t0
    payload = {
        "benchmark": NAME,
        "date": _common.now_utc(),
        "machine": _common.machine(torch.device("cpu")),
        "threads": threads,
        "loadavg_start": load_start,
        "loadavg_end": _common.loadavg(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
        "teacher": teacher_info,
        "distillation": {
            "settings": report["settings"],
            "exports": sorted(int(n) for n in report["diffusers_exports"]),
            "seconds": {k: v for k, v in report.items() if k.endswith("_seconds")},
        },
        "ws": report["ws"],
        "scoring": scored["info"],
        "decoding": "D(z / scaling_factor) by the pipeline's AutoencoderKL (16x16 RGB), clamped to [-1, 1], "
        "luma weights to gray, the pseudo-inverse of the data's bicubic 8->16 upsampling, clamped "
        "(pd_fast.app.evaluation.latent.digit_images)",
        "dpmpp": "pd_fast.sample(..., sampler='dpmpp_2m', cond=, null_cond=, w=) on the teacher (guided)",
        "rows": rows,
        "comparisons": compared,
        "timing": timing,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    payload["targets"] = targets(rows, compared, timing, report["ws"])
    payload["wall_s"] = round(time.perf_counter() - t_start, 1)
    print_tables(payload)
    _common.write_results(results, NAME, payload, draw(payload), payload["wall_s"])
    print(f"work folder: {work} (teacher, data, run)")
    return payload


if __name__ == "__main__":
    main()
