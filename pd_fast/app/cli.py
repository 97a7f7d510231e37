"""`python -m pd_fast` (console script `pd-distill`): flags -> run config -> job.

The job follows from the flags: `--guided` is the guided job, a diffusers pipeline folder as
`--teacher` the diffusers-teacher job, anything else the built-in job (`pd_fast.app.jobs`). A flag
that does not apply to the chosen job is refused. Every flag, the data, the teacher and the output
folder are checked (`validate`: the config, then the job's `prepare`) before anything is written;
a bad one is a one-line error and exit code 2 (`--debug` adds the traceback). Rank 0 then creates
the run folder, holds its lock until the run ends, however it ends, and writes `config.json`
(`pd_fast.app.run_dir`). `--resume` (with `--out DIR`, or alone for the newest run under `runs/`)
continues a killed run from its last checkpoint with the config it was started with.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from typing import Any, NoReturn

import torch

from .config import (
    GuidedConfig,
    RunConfig,
    config_class,
    defaults,
    field_names,
    flag,
    parse_resolution,
)

NOT_FLAGS = ("out", "resume", "device", "threads", "guided", "no_progress", "debug")
GUIDED_ONLY = tuple(n for n in field_names(GuidedConfig) if n not in field_names(config_class("builtin")))
WHERE = {
    "builtin": "the built-in job",
    "guided": "--guided",
    "diffusers": "a diffusers --teacher",
    "text_to_image": "a latent pipeline --teacher",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a flag it cannot parse reported as one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pd-distill",
        description="Progressive distillation (Salimans & Ho, 2022) end to end: train a teacher, distill it "
        "down to a few sampling steps, and evaluate every step count against the data.",
    )
    p.add_argument(
        "--data",
        help="'digits' (default), 'moons', 'eight_gaussians', a .npy/.npz path "
        "holding (N, D), (N, H, W) or (N, C, H, W) in [-1, 1], a folder of PNG/JPEG images, or "
        "cifar10:PATH (the CIFAR-10 python archive cifar-10-python.tar.gz)",
    )
    p.add_argument(
        "--resolution",
        type=_resolution,
        metavar="N|HxW",
        help="center-crop every image to this aspect ratio and resize it to N x N (or H x W, e.g. 16x32) "
        "pixels (default: keep the size; for a diffusers teacher, its sample_size)",
    )
    p.add_argument("--out", help="output folder (default runs/<timestamp>)")
    p.add_argument("--quick", action="store_true", help="a small, fast run (start 16 steps, short training)")
    p.add_argument(
        "--start-steps", type=int, help="teacher sampling steps at the start of distillation (default 128)"
    )
    p.add_argument("--end-steps", type=int, help="steps of the last student (default 1)")
    p.add_argument(
        "--iters",
        type=int,
        help="distillation iterations per round (default 2000, with --guided 1000; the last "
        "two rounds run --last-rounds-factor times as many)",
    )
    p.add_argument(
        "--last-rounds-factor",
        type=float,
        help="iteration multiplier of the last two rounds (default 1, with --guided 4; the paper's is 2)",
    )
    p.add_argument("--lr", type=float, help="distillation learning rate (annealed linearly to 0 each round)")
    p.add_argument("--batch-size", type=int, help="distillation batch size")
    _network_flags(p.add_argument_group("the teacher and the network"))
    p.add_argument(
        "--eval-max-steps",
        type=int,
        help="evaluate the teacher with DDIM up to this many steps (default 256; never below --start-steps; "
        "a diffusers teacher: at most its T, the steps beyond are left out)",
    )
    p.add_argument("--ckpt-every", type=int, help="save the training state every this many iterations")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default 1 on CPU: these "
        "small networks run fastest single-threaded, and many times faster when the cores are shared)",
    )
    p.add_argument("--seed", type=int, help="seed of the weights, the data order and the noise")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run in --out (or the newest under runs/) from its last checkpoint",
    )
    _guided_flags(
        p.add_argument_group("guided distillation (Meng et al., 2023): --guided and latent teachers")
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _resolution(text: str) -> int | tuple[int, int]:
    try:
        return parse_resolution(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--resolution").lstrip(": ")) from err


def _network_flags(g: Any) -> None:
    """The teacher (a checkpoint or a diffusers folder) and the built-in network's flags."""
    g.add_argument(
        "--teacher",
        metavar="CKPT|DIR",
        help="teacher checkpoint (.safetensors), or a diffusers pipeline folder (model_index.json, unet/, "
        "scheduler/: a UNet2DModel); skips teacher training",
    )
    g.add_argument(
        "--reparam-iters",
        type=int,
        help="diffusers teacher of another param than --param: iterations of the stage in which the "
        "student learns the teacher's own start-steps DDIM (default 2 x --iters)",
    )
    g.add_argument("--teacher-iters", type=int, help="teacher training iterations (default 6000)")
    g.add_argument("--teacher-lr", type=float, help="teacher learning rate")
    g.add_argument("--teacher-batch-size", type=int, help="teacher batch size")
    g.add_argument(
        "--model",
        choices=("mlp", "unet"),
        help="network: residual MLP (default; flattens images) or a small UNet for images",
    )
    g.add_argument("--param", choices=("eps", "x", "v", "both"), help="network output (default v)")
    g.add_argument("--hidden", type=int, help="MLP width")
    g.add_argument("--depth", type=int, help="MLP residual blocks")
    g.add_argument("--ch", type=int, help="UNet base channels")


def _guided_flags(g: Any) -> None:
    g.add_argument(
        "--guided",
        action="store_true",
        help="train a conditional teacher, distill its classifier-free guidance into a w-conditioned "
        "student (stage 1), then distill that down to --end-steps (stage 2); needs labelled data",
    )
    g.add_argument("--p-uncond", type=float, help="probability of dropping a label in teacher training (0.1)")
    g.add_argument("--w-min", type=float, help="smallest guidance weight the student learns (default 0)")
    g.add_argument("--w-max", type=float, help="largest guidance weight the student learns (default 4)")
    g.add_argument("--guidance-iters", type=int, help="stage 1 iterations (default 6000)")
    g.add_argument("--guidance-lr", type=float, help="stage 1 learning rate (default 1e-3, annealed to 0)")
    g.add_argument("--eval-w", help="guidance weights to evaluate, comma-separated (default 0,1,2,4)")
    g.add_argument(
        "--prompts",
        metavar="FILE",
        help="latent teacher: evaluation prompts, one a line (default: the data's captions)",
    )
    g.add_argument("--guidance-dim", type=int, help="latent teacher: size of the student's w embedding (256)")
    g.add_argument("--eval-samples", type=int, help="latent teacher: samples per evaluated set (64)")


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields that the command line sets (flags left out are None, or False)."""
    return {k: v for k, v in vars(args).items() if k not in NOT_FLAGS and v is not None and v is not False}


def choose_job(args: argparse.Namespace) -> str:
    from .jobs.diffusers_teacher import is_diffusers_teacher
    from .jobs.text_to_image import is_latent_pipeline

    diffusers = is_diffusers_teacher(args.teacher)
    latent = diffusers and is_latent_pipeline(args.teacher)
    if args.guided and diffusers:
        raise ValueError(
            f"--teacher {args.teacher} is a diffusers pipeline folder, and --guided trains on a "
            "conditional built-in network: pass a --teacher checkpoint of a --guided run, or none"
        )
    return "guided" if args.guided else "text_to_image" if latent else "diffusers" if diffusers else "builtin"


def refuse_foreign(given: dict[str, Any], cls: type[RunConfig], resumed: str | None = None) -> None:
    """ValueError naming the first flag that `cls`'s job does not take."""
    names = field_names(cls)
    for k in given:
        if k in names:
            continue
        if k in GUIDED_ONLY:
            raise ValueError(
                f"{flag(k)} needs --guided" + (f", and the run in {resumed} is not guided" if resumed else "")
            )
        raise ValueError(f"{flag(k)} does not apply to {WHERE[cls.job]}")


def refuse_unused(given: dict[str, Any], cls: type[RunConfig]) -> None:
    """ValueError naming a flag that a new run of the built-in or guided job would ignore: a teacher
    training flag beside a --teacher checkpoint, and another network's size."""
    if cls.job == "text_to_image":
        for k in ("resolution", "eval_max_steps"):
            if k in given:
                raise ValueError(
                    f"{flag(k)} does not apply to a latent pipeline --teacher (images are fitted to "
                    "its autoencoder; the teacher's reference is 256 guided DDIM steps)"
                )
    if cls.job in ("diffusers", "text_to_image"):
        return
    for k in ("teacher_iters", "teacher_lr", "teacher_batch_size"):
        if given.get("teacher") and k in given:
            raise ValueError(f"{flag(k)} does not apply with a --teacher checkpoint (no teacher is trained)")
    model = given.get("model", "mlp")
    for k in ("hidden", "depth") if model == "unet" else ("ch",):
        if k in given:
            raise ValueError(f"{flag(k)} does not apply to --model {model}")


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, str]:
    """The run's config (the job's defaults, then --quick, then the flags; with --resume, the
    run's own) and its output folder."""
    from .run_dir import check_free, default_out, holds_run, latest_run, read_config

    given = given_flags(args)
    if args.resume:
        out = args.out or latest_run()
        if out is None:
            raise ValueError("--resume: no --out given and no run under runs/ to resume")
        check_free(out)
        cfg = read_config(out)
        if args.guided and cfg.job != "guided":
            raise ValueError(f"--resume: the run in {out} is not a guided run; drop --guided")
        refuse_foreign(given, type(cfg), resumed=out)
        for k, v in given.items():
            if getattr(cfg, k) != v:
                raise ValueError(
                    f"--resume: the run in {out} has {k}={getattr(cfg, k)!r}, this command has {v!r}"
                )
        return cfg, out
    cls = config_class(choose_job(args))
    refuse_foreign(given, cls)
    refuse_unused(given, cls)
    values = defaults(cls, args.quick)
    if cls.job in ("diffusers", "text_to_image") and "start_steps" not in given:
        from ..integrations.diffusers import default_start_steps, read_num_train_timesteps

        values["start_steps"] = default_start_steps(
            read_num_train_timesteps(args.teacher), values["start_steps"]
        )
    cfg = cls(**{**values, **given})
    out = args.out or default_out()
    check_free(out)
    if holds_run(out):
        raise ValueError(
            f"--out {out} already holds a run: add --resume to continue it, or choose another --out"
        )
    return cfg, out


def validate(args: argparse.Namespace, device: torch.device) -> tuple[RunConfig, Any, Any]:
    """Every check before the run writes anything: the config, the output folder, and the job's own
    (`prepare`: data, teacher, memory, resume). Returns the config, the run and the job's inputs."""
    from .jobs import job_module
    from .jobs.common import Run
    from .run_dir import check_out

    cfg, out = resolve_config(args)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_out(out, args.resume)
    run = Run.start(out, device, args.resume, progress=not args.no_progress and sys.stderr.isatty())
    return cfg, run, job_module(cfg.job).prepare(cfg, run)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code. Under torchrun the process ends here, through
    `os._exit` once its output is flushed and its process group destroyed: torch's gloo can abort
    in the interpreter's own teardown (`terminate called without an active exception`) after a
    job that did everything right."""
    import os

    code = _main(argv)
    if all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    from . import launch

    args = build_parser().parse_args(argv)
    lock, ranks, previous = None, None, torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = launch.show_warning
            ranks = launch.torchrun_ranks()
            device = launch.device(args.device, None if ranks is None else ranks[2])
            if ranks is not None:
                args.out = launch.start_group(device, args.out, args.resume)
            cfg, run, inputs = launch.together(lambda: validate(args, device))  # before rank 0 writes
            args.out = run.out
            lock = launch.together(lambda: _open(cfg, run))
            threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
            if threads is not None:
                torch.set_num_threads(threads)
            from .jobs import job_module

            job_module(cfg.job).run(cfg, run, inputs)
    except launch.OtherRank:
        return 2
    except (ValueError, OSError, FloatingPointError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not launch.out_of_memory(err):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"pd-distill: error: {launch.one_line(err, args.out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        started = lock is not None or (args.resume and args.out is not None)
        resume = f"continue with: python -m pd_fast --resume --out {args.out}"
        print(f"\ninterrupted; {resume if started else 'nothing was written'}", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(previous)
        if lock is not None:
            lock.release()
        if ranks is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


def _open(cfg: RunConfig, run: Any) -> Any:
    """Rank 0 creates the run folder, takes its lock and writes config.json."""
    from .run_dir import open_run

    return open_run(run.out, cfg, run.resume) if run.main else None


if __name__ == "__main__":
    sys.exit(main())
