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
from typing import Any

import torch

from .config import (
    GuidedConfig,
    RunConfig,
    config_class,
    defaults,
    field_names,
    flag,
)
from .flags import build_parser

__all__ = ["build_parser", "given_flags", "main", "resolve_config", "validate"]

NOT_FLAGS = ("out", "resume", "device", "threads", "guided", "no_progress", "debug")
GUIDED_ONLY = tuple(n for n in field_names(GuidedConfig) if n not in field_names(config_class("builtin")))
WHERE = {
    "builtin": "the built-in job",
    "guided": "--guided",
    "diffusers": "a diffusers --teacher",
    "text_to_image": "a latent pipeline --teacher",
}


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
    if cls.job == "text_to_image" and _is_ldm(given["teacher"]):
        for k in LDM_UNUSED:
            if k in given:
                raise ValueError(
                    f"{flag(k)} does not apply to an LDMPipeline --teacher (unconditional: no prompts, "
                    "no guidance, no stage 1)"
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


#: the text-to-image job's flags that only a text-conditioned teacher uses
LDM_UNUSED = (
    "w_min", "w_max", "guidance_iters", "guidance_lr", "guidance_dim", "eval_w", "prompts",
    "gradient_checkpointing",
)  # fmt: skip


def _is_ldm(teacher: str) -> bool:
    from ..integrations.latent import latent_pipeline_kind

    return latent_pipeline_kind(teacher) == "ldm"


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
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"--precision fp16 needs a CUDA device (its loss scaler is for GPUs), and the run is on "
            f"{device}: use --precision bf16 or fp32"
        )
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
