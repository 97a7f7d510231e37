"""`python -m pd_fast` (console script `pd-distill`): the main job.

Teacher training -> progressive distillation ([PD] Algorithm 2) -> evaluation, on scikit-learn's
8x8 digits by default. Writes into `--out DIR` (default `runs/<timestamp>`):

- `report.json`: `{"metric", "floor", "rows": [{"steps", "teacher_ddim", "student",
  "sample_seconds", ...}], ...}` (Fréchet distances; see `pd_fast.app.evaluation`), and beside
  them `intervals` (95% intervals mirroring `rows`), `comparisons` (ratios to the teacher with
  their intervals and `significant`), `precision_recall` and `memorisation`
  (`pd_fast.app.evaluation.sample_statistics`),
- `baselines` in `report.json`: the teacher sampled with DPM-Solver++(2M) (this project's
  `sampler="dpmpp_2m"`) and with diffusers' UniPC (where diffusers is installed) at every N, from
  the same noise, scored the same way, with intervals, precision/recall and paired ratios to each
  student (`pd_fast.app.evaluation.evaluate_baselines`, `baseline_statistics`),
- `samples.npz`: the scored samples, `x_teacher_ddim_N<N>`, `x_student_ddim_N<N>`,
  `x_teacher_dpmpp_N<N>` and `x_teacher_unipc_N<N>` (float32 in [-1, 1], all from the same noise),
- `quality_vs_steps.png` (with error bars), `samples.png`,
- `checkpoints/` (teacher, one student per round, training state) and `log.jsonl`, written by
  `pd_fast.training`; `config.json` (this run's settings) and `model.json` (the network's config).

A killed run continues with the same command plus `--resume` (or `--resume --out DIR`; `--resume`
alone picks the newest run under `runs/`): the run's saved settings are reused and training
continues from its last checkpoint.

`--guided` runs guided distillation instead (a conditional teacher, [GD] stages 1 and 2, and
its own report, samples and grids): see `pd_fast.app.guided`.

Every flag, the data, the teacher file, the device and the output folder are checked (`validate`)
before anything is written; a bad one is a one-line error and exit code 2 (`--debug` adds the
traceback). The run then holds an exclusive lock on `DIR/run.lock` (fcntl; its PID inside) until
it ends, however it ends: a second run into the same folder fails at once, naming the holder.

Under `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK set) the job initialises the process group
itself (gloo on CPU; NCCL on CUDA, rank r on `cuda:LOCAL_RANK`) and trains with
DistributedDataParallel, each rank on its shard of the data; rank 0 alone holds the lock, writes,
evaluates and reports (the report records the world size and every rank's final weights'
fingerprints).

`--teacher DIR` with a diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`; needs
`pip install -e .[diffusers]`) distills that `UNet2DModel` instead (`_run_diffusers`): the data is
fitted to the UNet's channels and `sample_size`; `--start-steps` defaults to 128 (16 with
`--quick`, which also uses batches of 64) lowered to the largest power of two <= T; the students
are v models (`--param`), and an eps or x teacher first gets a student of that param that learns
its own start-steps DDIM (`pd_fast.app.reparam`; `--reparam-iters`, default 2 x `--iters`);
everything is evaluated as the exported pipelines sample (no clipping; the scored samples go to
`samples.npz` as above), and every student whose N divides T is written to
`OUT/diffusers/student_<N>/` (a `DDIMPipeline` folder).
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

# Tuned on the digits with this machine's 2 CPU cores: a teacher of 6000 iterations, distilled from
# 128 steps (its DDIM quality there equals 256 steps) to 1 in 7 rounds of 2000 iterations (the
# students' quality grows with the iterations of every round: README, notes on the recipe).
DEFAULTS: dict[str, Any] = dict(
    data="digits",
    model="mlp",
    param="v",
    hidden=256,
    depth=3,
    ch=32,
    teacher_iters=6000,
    teacher_lr=1e-3,
    teacher_batch_size=256,
    start_steps=128,
    end_steps=1,
    iters=2000,
    last_rounds_factor=1.0,
    lr=6e-4,
    batch_size=256,
    ckpt_every=250,
    eval_max_steps=256,
    seed=0,
)
# --quick: a smoke-sized run of the same pipeline (about a minute on 2 CPU cores).
QUICK: dict[str, Any] = dict(
    hidden=128,
    teacher_iters=800,
    start_steps=16,
    iters=100,
    last_rounds_factor=2.0,
    eval_max_steps=16,
    ckpt_every=100,
)
# --quick with a diffusers teacher: a UNet costs more per example than the MLP, so smaller batches.
QUICK_DIFFUSERS: dict[str, Any] = dict(batch_size=64)
# Settings that define a run (saved in config.json, reused by --resume).
RUN_KEYS = tuple(DEFAULTS) + ("teacher", "quick", "resolution", "reparam_iters")
SEED_MAX = 2**32 - 1  # scikit-learn's data sets take seeds below 2^32
LOCK_FILE = "run.lock"


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
        type=int,
        help="center-crop and resize every image to this many pixels a side (default: keep the size; "
        "for a diffusers teacher, its sample_size)",
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
    p.add_argument(
        "--teacher",
        metavar="CKPT|DIR",
        help="teacher checkpoint (.safetensors), or a diffusers pipeline folder (model_index.json, unet/, "
        "scheduler/: a UNet2DModel); skips teacher training",
    )
    p.add_argument(
        "--reparam-iters",
        type=int,
        help="diffusers teacher of another param than --param: iterations of the stage in which the "
        "student learns the teacher's own start-steps DDIM (default 2 x --iters)",
    )
    p.add_argument("--teacher-iters", type=int, help="teacher training iterations (default 6000)")
    p.add_argument("--teacher-lr", type=float, help="teacher learning rate")
    p.add_argument("--teacher-batch-size", type=int, help="teacher batch size")
    p.add_argument(
        "--model",
        choices=("mlp", "unet"),
        help="network: residual MLP (default; flattens images) or a small UNet for images",
    )
    p.add_argument("--param", choices=("eps", "x", "v", "both"), help="network output (default v)")
    p.add_argument("--hidden", type=int, help="MLP width")
    p.add_argument("--depth", type=int, help="MLP residual blocks")
    p.add_argument("--ch", type=int, help="UNet base channels")
    p.add_argument(
        "--eval-max-steps",
        type=int,
        help="evaluate the teacher with DDIM up to this many steps (default 256; never below --start-steps)",
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
    g = p.add_argument_group("guided distillation (Meng et al., 2023)")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _latest_run() -> str | None:
    runs = sorted(
        d for d in glob.glob(os.path.join("runs", "*")) if os.path.isfile(os.path.join(d, "config.json"))
    )
    return runs[-1] if runs else None


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The run's settings (defaults, then --quick, then flags; with --resume, the saved ones) and
    its output folder."""
    from .guided import GUIDED_DEFAULTS, GUIDED_KEYS, GUIDED_QUICK, GUIDED_STAGE2

    given = {
        k: v
        for k, v in vars(args).items()
        if (k in RUN_KEYS or k in GUIDED_KEYS) and v is not None and v is not False
    }
    out = args.out
    if args.resume:
        out = out or _latest_run()
        if out is None:
            raise ValueError("--resume: no --out given and no run under runs/ to resume")
        _check_free(out)
        cfg_path = os.path.join(out, "config.json")
        if not os.path.isfile(cfg_path):
            raise ValueError(f"--resume: {out} holds no config.json (not a pd_fast run)")
        saved = _read_config(cfg_path)
        if saved is None:
            raise ValueError(f"--resume: {cfg_path} is not the config.json of a pd_fast run")
        if args.guided and not saved.get("guided"):
            raise ValueError(f"--resume: the run in {out} is not a guided run; drop --guided")
        extra = [k for k in given if k in GUIDED_KEYS and k not in saved]
        if extra:
            raise ValueError(
                f"--resume: --{extra[0].replace('_', '-')} needs --guided, and the run in {out} is not guided"
            )
        for k, v in given.items():
            if k in saved and saved[k] != v:
                raise ValueError(f"--resume: the run in {out} has {k}={saved[k]!r}, this command has {v!r}")
        return saved, out
    settings = dict(DEFAULTS)
    if args.quick:
        settings.update(QUICK)
    if args.guided:
        settings.update(GUIDED_DEFAULTS)
        settings.update(GUIDED_QUICK if args.quick else GUIDED_STAGE2)
    else:
        extra = [k for k in given if k in GUIDED_KEYS]
        if extra:
            raise ValueError(f"--{extra[0].replace('_', '-')} needs --guided")
    settings.update(given)
    settings.setdefault("teacher", None)
    settings.setdefault("resolution", None)
    settings.setdefault("reparam_iters", None)
    settings["quick"] = bool(args.quick)
    if _diffusers_teacher(settings["teacher"]):
        from ..integrations.diffusers import default_start_steps, read_num_train_timesteps

        if args.quick:
            settings.update({k: v for k, v in QUICK_DIFFUSERS.items() if k not in given})
        if "start_steps" not in given:
            T = read_num_train_timesteps(settings["teacher"])
            settings["start_steps"] = default_start_steps(T, settings["start_steps"])
    if out is None:
        out = _default_out()
    _check_free(out)
    if glob.glob(os.path.join(out, "checkpoints", "*_state.json")):
        raise ValueError(
            f"--out {out} already holds a run: add --resume to continue it, or choose another --out"
        )
    return settings, out


def _default_out() -> str:
    """`runs/<date>-<time>-<pid>[-<k>]`: unique among runs started in the same second on one
    machine (the PID), also by one process (k = 2, 3, ... while the folder exists)."""
    base = os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    out, k = base, 2
    while os.path.exists(out):
        out, k = f"{base}-{k}", k + 1
    return out


def _read_config(path: str) -> dict[str, Any] | None:
    """The settings in a run's config.json; None if it is not a pd_fast run's (ValueError naming
    the file if it is not JSON)."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(saved, dict) or not set(RUN_KEYS) <= set(saved):
        return None
    return saved


def _check_settings(s: dict[str, Any]) -> None:
    for key in (
        "teacher_iters",
        "iters",
        "batch_size",
        "teacher_batch_size",
        "start_steps",
        "end_steps",
        "hidden",
        "depth",
        "ch",
        "eval_max_steps",
    ):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {s[key]!r}")
    ckpt_every = s["ckpt_every"]
    if isinstance(ckpt_every, bool) or not isinstance(ckpt_every, int) or ckpt_every < 0:
        raise ValueError(f"--ckpt-every must be an integer >= 0 (0: at stage ends only), got {ckpt_every!r}")
    for key in ("lr", "teacher_lr", "last_rounds_factor"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{key.replace('_', '-')} must be a positive finite number, got {v!r}")
    seed = s["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"--seed must be an integer in [0, {SEED_MAX}], got {seed!r}")
    for key, choices in (("model", ("mlp", "unet")), ("param", ("eps", "x", "v", "both"))):
        if s[key] not in choices:
            raise ValueError(f"--{key} must be one of {choices}, got {s[key]!r}")
    if not isinstance(s["data"], str) or not s["data"]:
        raise ValueError(f"--data must be a data set name or a path, got {s['data']!r}")
    if s["teacher"] is not None and not isinstance(s["teacher"], str):
        raise ValueError(f"--teacher must be a path, got {s['teacher']!r}")
    ratio = s["start_steps"] // s["end_steps"]
    if s["start_steps"] % s["end_steps"] or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"--start-steps must be --end-steps times a power of 2 (>= 2), got {s['start_steps']} and "
            f"{s['end_steps']}"
        )
    if s.get("reparam_iters") is not None and (
        isinstance(s["reparam_iters"], bool)
        or not isinstance(s["reparam_iters"], int)
        or s["reparam_iters"] < 1
    ):
        raise ValueError(f"--reparam-iters must be a positive integer, got {s['reparam_iters']!r}")
    resolution = s.get("resolution")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2
    ):
        raise ValueError(f"--resolution must be an integer >= 2, got {resolution!r}")
    if s.get("guided"):
        from .guided import check_guided_settings

        check_guided_settings(s)


def _device(name: str | None, local_rank: int | None = None) -> torch.device:
    """The training device; under torchrun (`local_rank` given) a CUDA device is `cuda:<local_rank>`."""
    if name is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise ValueError(f"--device: {err}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:INDEX], got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available")
        if local_rank is not None:
            if dev.index is not None:
                raise ValueError(
                    f"--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda"
                )
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {dev}: there are {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _load_teacher(
    path: str, model_cfg: dict[str, Any], settings: dict[str, Any]
) -> tuple[torch.nn.Module, dict]:
    """A teacher from a checkpoint: the network's config from `model.json` of the run that wrote it
    (two folders up) if there is one, else from this run's flags."""
    from .checkpoint import load_model_checkpoint
    from .models import model_from_config

    run_model = Path(path).resolve().parent.parent / "model.json"
    if run_model.is_file():
        model_cfg = json.loads(run_model.read_text())["model"]
    model = model_from_config(model_cfg, seed=settings["seed"])
    info = load_model_checkpoint(path, model)
    return model, info


def _check_teacher(path: str, info: dict[str, Any], settings: dict[str, Any]) -> None:
    """A student checkpoint (its JSON gives its steps N) is a teacher only from N steps on."""
    steps = info.get("steps")
    if steps is not None and steps != settings["start_steps"]:
        raise ValueError(
            f"--teacher {path} is a student of {steps} steps (its JSON says so), not a teacher: "
            f"distilling it from --start-steps {settings['start_steps']} would use it at a step count it "
            f"was not trained for; pass --start-steps {steps} to distill it further, or a teacher checkpoint"
        )


def _check_teacher_fits(path: str, teacher: torch.nn.Module, config: dict[str, Any], data: Any) -> None:
    """The teacher takes this run's data (one example through it) and, for a guided run (`config`
    has num_classes), is conditional on as many classes as the data has."""
    classes, theirs = config.get("num_classes"), getattr(teacher, "config", {}).get("num_classes")
    if classes is not None and theirs is None:
        raise ValueError(f"--teacher {path} is unconditional, and --guided needs a conditional one")
    if classes is not None and theirs != classes:
        raise ValueError(f"--teacher {path} has {theirs} classes, and the labels of --data have {classes}")
    c = torch.zeros(1, dtype=torch.long) if theirs is not None else None
    try:
        with torch.no_grad():
            teacher(data.x[:1], torch.full((1,), 0.5), c)
    except ValueError as err:
        raise ValueError(f"--teacher {path} does not take --data {data.name}: {err}") from err


def _memory(device: torch.device) -> int:
    """Bytes of memory of `device` (all of it, not what is free)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _check_memory(settings: dict[str, Any], shape: tuple[int, ...], device: torch.device) -> None:
    """A batch must fit in memory: at least its x, noise, z_t and the network output in float32."""
    per_example = 4 * 4 * math.prod(shape)
    flags = [("--batch-size", settings["batch_size"])]
    if not settings["teacher"]:
        flags.append(("--teacher-batch-size", settings["teacher_batch_size"]))
    for flag, batch in flags:
        need, have = batch * per_example, _memory(device)
        if need > have:
            raise ValueError(
                f"{flag} {batch}: one batch of examples of shape {shape} takes at least "
                f"{need / 2**30:.4g} GiB, more than the {have / 2**30:.4g} GiB of memory of {device}"
            )


def _check_out(out: str, resume: bool) -> None:
    """`out` can be created and written, holds no foreign config.json, and no run holds its lock."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {parent}")
    config = path / "config.json"
    if not resume and config.is_file() and _read_config(str(config)) is None:
        raise ValueError(f"--out {out} holds a config.json that is not a pd_fast run's; choose another --out")


def _check_resume(
    out: str, x: torch.Tensor, model: torch.nn.Module, student: torch.nn.Module | None = None
) -> None:
    """Before a resume: the run's training states are intact, were trained on this data, and fit
    this model (the network of config.json; `student`: the w-conditioned network of a guided run's
    later stages); the students of finished rounds are intact."""
    from . import checkpoint as ckpt
    from .training import data_fingerprint

    ckpt_dir = Path(out) / "checkpoints"
    stages = [("teacher", "model/", model), ("distill", "student/", student or model)]
    if student is not None:
        stages.insert(1, ("guidance", "student/", student))
    fingerprint = None
    for stage, prefix, net in stages:
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        state = ckpt.load_training_state(ckpt_dir, stage, repair=False)
        if state is None:
            continue
        info, tensors = state
        config = info.get("config", {})
        if list(config.get("data_shape", [])) != list(x.shape):
            raise ValueError(
                f"--resume: the {stage} state in {ckpt_dir} was trained on data of shape "
                f"{tuple(config.get('data_shape', []))}, the data now has shape {tuple(x.shape)}"
            )
        if "data" in config:
            fingerprint = fingerprint or data_fingerprint(x)
            if config["data"] != fingerprint:
                raise ValueError(
                    f"--resume: the data differ from those the run in {out} trained on: same shape "
                    f"{tuple(x.shape)}, different values (was the data file changed?)"
                )
        for key, value in tensors.items():
            if key.startswith(prefix) and shapes.get(key[len(prefix) :]) != tuple(value.shape):
                raise ValueError(
                    f"--resume: the {stage} state in {ckpt_dir} does not fit the network of config.json "
                    f"(tensor {key[len(prefix) :]!r}: {tuple(value.shape)} there, "
                    f"{shapes.get(key[len(prefix) :])} now); was config.json edited?"
                )
        for stem in (info.get("completed") or {}).values():
            ckpt.verify_model_checkpoint(ckpt_dir / stem)


@dataclass
class Job:
    """A validated run: its settings and folder, and what the checks already loaded."""

    settings: dict[str, Any]
    out: str
    device: torch.device
    resume: bool
    threads: int | None
    data: Any  # pd_fast.app.data.Dataset
    teacher: tuple[torch.nn.Module, dict[str, Any]] | None  # a --teacher checkpoint, loaded


def validate(args: argparse.Namespace, device: torch.device) -> Job:
    """Every check before the run writes anything: the flags (or the saved settings of a resume),
    the output folder, the data (on resume: the run's own), the network, the teacher file, and
    that a batch fits the device's memory. ValueError with a one-line message otherwise."""
    from .data import load_data
    from .models import build_model

    settings, out = resolve_settings(args)
    _check_settings(settings)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise ValueError(f"--threads must be >= 1, got {threads}")
    _check_out(out, args.resume)
    guided = bool(settings.get("guided"))
    if guided and _diffusers_teacher(settings["teacher"]):
        raise ValueError(
            f"--teacher {settings['teacher']} is a diffusers pipeline folder, and --guided trains on a "
            "conditional built-in network: pass a --teacher checkpoint of a --guided run, or none"
        )
    if _diffusers_teacher(settings["teacher"]):  # a diffusers folder: its own checks, its own run
        _diffusers_inputs(settings)
        _check_memory(settings, (1,), device)
        return Job(settings, out, device, args.resume, threads, None, None)
    data = load_data(settings["data"], seed=settings["seed"], resolution=settings.get("resolution"))
    if len(data) < 4:
        raise ValueError(f"--data needs at least 4 examples (evaluation splits it in two), got {len(data)}")
    kwargs = (
        dict(hidden=settings["hidden"], depth=settings["depth"])
        if settings["model"] == "mlp"
        else dict(ch=settings["ch"])
    )
    if guided:
        from .guided import guided_classes

        if data.labels is None:
            raise ValueError(
                f"--guided needs a labelled data set, and --data {settings['data']} has no labels"
            )
        kwargs["num_classes"] = guided_classes(data.labels, settings["data"])
    model = build_model(
        settings["model"], data.shape, param=settings["param"], seed=settings["seed"], **kwargs
    )
    teacher = None
    if settings["teacher"]:
        path = settings["teacher"]
        if not os.path.isfile(path):
            raise ValueError(f"--teacher {path}: no such file")
        if not path.endswith(".safetensors"):
            raise ValueError(f"--teacher {path}: expected a .safetensors checkpoint")
        try:
            teacher = _load_teacher(path, model.config, settings)
        except ValueError as err:
            raise ValueError(f"--teacher: {err}") from err
        _check_teacher(path, teacher[1], settings)
        _check_teacher_fits(path, teacher[0], model.config, data)
    _check_memory(settings, data.shape, device)
    if args.resume:
        from .models import w_conditioned_from

        base = teacher[0] if teacher is not None else model
        _check_resume(out, data.x, base, w_conditioned_from(base) if guided else None)
    return Job(settings, out, device, args.resume, threads, data, teacher)


def _check_free(out: str) -> None:
    """ValueError naming the holder's PID if a run holds the lock of `out`."""
    holder = _lock_holder(Path(out) / LOCK_FILE)
    if holder is not None:
        raise ValueError(
            f"--out {out} is in use by another run (PID {holder}); wait for it or choose another --out"
        )


def _lock_holder(path: Path) -> str | None:
    """The PID written in a lock file that another process holds, or None if it is free (or absent)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return None


class RunLock:
    """An exclusive `fcntl.flock` on `<out>/run.lock`, with this process's PID written inside; the
    kernel releases it when the process ends, however it ends."""

    def __init__(self, out: str) -> None:
        self.path = Path(out) / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise ValueError(
                f"--out {out} is in use by another run (PID {holder}); wait for it or choose another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_run(job: Job) -> RunLock:
    """Create the run folder, take its lock and write config.json (rank 0, after `validate`)."""
    from .checkpoint import save_json

    os.makedirs(job.out, exist_ok=True)
    lock = RunLock(job.out)
    try:
        if not job.resume:
            save_json(os.path.join(job.out, "config.json"), job.settings)
    except BaseException:
        lock.release()
        raise
    return lock


def run(
    settings: dict[str, Any],
    out: str,
    device: torch.device,
    resume: bool,
    progress: bool,
    *,
    data: Any = None,
    teacher: tuple[torch.nn.Module, dict[str, Any]] | None = None,
) -> dict:
    """The main job; returns the report (also written to `out/report.json`; under torchrun, rank 0
    alone evaluates and reports, the other ranks return {}). `data` and `teacher`: as `validate`
    loaded them (loaded here if None)."""
    from ..schedules import CosineSchedule
    from .checkpoint import save_json, schedule_from_dict
    from .data import load_data
    from .evaluation import (
        BASELINES,
        UNIPC_TRAIN_STEPS,
        baseline_statistics,
        evaluate_baselines,
        evaluate_models,
        sample_statistics,
    )
    from .models import build_model
    from .report import (
        format_baselines,
        format_comparisons,
        format_quality_checks,
        format_table,
        write_samples,
    )
    from .training import part_ranks, rank_fingerprints, train_teacher

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if _diffusers_teacher(settings["teacher"]):
        return _run_diffusers(settings, out, device, resume, progress)
    if data is None:
        data = load_data(settings["data"], seed=settings["seed"], resolution=settings.get("resolution"))
    if len(data) < 4:
        raise ValueError(f"--data needs at least 4 examples (evaluation splits it in two), got {len(data)}")
    kwargs = (
        dict(hidden=settings["hidden"], depth=settings["depth"])
        if settings["model"] == "mlp"
        else dict(ch=settings["ch"])
    )
    model = build_model(
        settings["model"], data.shape, param=settings["param"], seed=settings["seed"], **kwargs
    )
    param, schedule = settings["param"], CosineSchedule()
    x = data.x.to(device)
    if rank == 0:
        print(
            f"data: {data.name}, {len(data)} examples of shape {data.shape}; model: {settings['model']} "
            f"({sum(p.numel() for p in model.parameters()):,} parameters), param={param}; "
            f"device {device}; out {out}"
        )

    t0 = time.perf_counter()
    if settings["teacher"]:
        model, info = (
            teacher if teacher is not None else _load_teacher(settings["teacher"], model.config, settings)
        )
        param = info.get("param", param)
        if "schedule" in info:
            schedule = schedule_from_dict(info["schedule"])
        teacher = model.to(device).eval()
        if rank == 0:
            print(f"teacher: loaded {settings['teacher']} (param={param})")
    else:
        teacher = train_teacher(
            model.to(device),
            x,
            schedule=schedule,
            param=param,
            iters=settings["teacher_iters"],
            batch_size=settings["teacher_batch_size"],
            lr=settings["teacher_lr"],
            seed=settings["seed"],
            out_dir=out,
            ckpt_every=settings["ckpt_every"],
            resume=resume,
            progress=progress,
        )
    if rank == 0:
        save_json(
            os.path.join(out, "model.json"), {"model": teacher.config, "param": param, "data": data.name}
        )
    timings["teacher_train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    students = _distill(
        teacher, x, settings["start_steps"], settings["end_steps"], schedule, param, settings, out, resume,
        progress,
    )  # fmt: skip
    timings["distill_train_seconds"] = time.perf_counter() - t0
    models = {"teacher": teacher, **{f"student_{n}": s for n, s in students.items()}}
    fingerprints = rank_fingerprints(models) if world > 1 else None
    part_ranks()  # training is over: the ranks part together, and rank 0 alone goes on
    if rank != 0:
        return {}

    t0 = time.perf_counter()
    evaluator, teacher_steps, z = _evaluation_setup(
        data, settings, settings["start_steps"], students, out, device
    )
    rows, samples = evaluate_models(teacher, students, evaluator, schedule, param, teacher_steps, z)
    timings["eval_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    statistics = sample_statistics(evaluator, samples, seed=settings["seed"], rows=rows)
    timings["statistics_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline_rows, baseline_samples = evaluate_baselines(
        teacher, evaluator, schedule, param, teacher_steps, z
    )
    baselines = dict(
        solvers={k: v.format(T=UNIPC_TRAIN_STEPS) for k, v in BASELINES.items()},
        unipc=None if not baseline_samples["teacher_unipc"] else "diffusers",
        rows=baseline_rows,
        **baseline_statistics(
            evaluator, samples, rows, baseline_samples, baseline_rows, seed=settings["seed"]
        ),
    )
    if not baseline_samples["teacher_unipc"]:
        baselines["solvers"]["teacher_unipc"] = "skipped: diffusers is not installed"
    timings["baseline_seconds"] = time.perf_counter() - t0
    timings["total_seconds"] = time.perf_counter() - t_start

    report: dict[str, Any] = {
        **_report_head(evaluator, rows, data, settings, device),
        "world_size": world,
        **evaluator.info,
        **timings,
    }
    report["targets"] = _targets(
        rows, statistics["comparisons"], evaluator.metric, statistics.get("precision_recall")
    )
    report.update(statistics)
    report["baselines"] = baselines
    if world > 1:
        report["rank_fingerprints"] = fingerprints
    save_json(os.path.join(out, "report.json"), report)
    write_samples(os.path.join(out, "samples.npz"), {**samples, **baseline_samples})
    _write_figures(report, samples, students, data, out)
    print(format_table(report))
    print(format_comparisons(report))
    print(format_quality_checks(report))
    print(format_baselines(report))
    for line in report["targets"]:
        print(line["text"] + (f"; {line['interval_text']}" if "interval_text" in line else ""))
    print(
        f"time: teacher {timings['teacher_train_seconds']:.1f}s, "
        f"distillation {timings['distill_train_seconds']:.1f}s, "
        f"evaluation {timings['eval_seconds']:.1f}s (+ intervals and checks "
        f"{timings['statistics_seconds']:.1f}s, baselines {timings['baseline_seconds']:.1f}s), "
        f"total {timings['total_seconds']:.1f}s"
    )
    print(f"wrote {out}/report.json, samples.npz, quality_vs_steps.png, samples.png, checkpoints/")
    return report


def _distill(
    teacher: Any,
    x: Any,
    start: int,
    end: int,
    schedule: Any,
    param: str,
    settings: dict[str, Any],
    out: str,
    resume: bool,
    progress: bool,
) -> dict[int, Any]:
    """`progressive_distill` from `start` steps down to `end` with the run's settings."""
    from .training import progressive_distill

    return progressive_distill(
        teacher, x, start, end, schedule=schedule, param=param, iters=settings["iters"],
        last_rounds_factor=settings["last_rounds_factor"], batch_size=settings["batch_size"],
        lr=settings["lr"], seed=settings["seed"], out_dir=out, ckpt_every=settings["ckpt_every"],
        resume=resume, progress=progress,
    )  # fmt: skip


def _evaluation_setup(
    data: Any, settings: dict[str, Any], start: int, students: dict[int, Any], out: str, device: torch.device
) -> tuple[Any, list[int], torch.Tensor]:
    """The evaluator, the teacher's step counts to score (powers of 2 up to the larger of
    `eval_max_steps` and `start`, and every student's N) and the shared starting noise z."""
    from .evaluation import make_evaluator

    evaluator = make_evaluator(data.x, data.labels, seed=settings["seed"], cache_dir=out)
    n_max = max(settings["eval_max_steps"], start)
    teacher_steps = sorted({2**k for k in range(n_max.bit_length()) if 2**k <= n_max} | set(students))
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    z = torch.randn((evaluator.n_samples,) + data.shape, generator=gen).to(device)
    return evaluator, teacher_steps, z


def _write_figures(
    report: dict[str, Any], samples: dict[str, dict[int, torch.Tensor]], students: dict, data: Any, out: str
) -> None:
    """`quality_vs_steps.png`, and `samples.png`: the teacher at each student's N and at its largest
    N, and the students."""
    from .report import plot_quality, plot_samples

    plot_quality(report, os.path.join(out, "quality_vs_steps.png"))
    grid_steps = [n for n in sorted(samples["teacher"]) if n in students or n == max(samples["teacher"])]
    shown = {"teacher": {n: samples["teacher"][n] for n in grid_steps}, "student": samples["student"]}
    plot_samples(shown, os.path.join(out, "samples.png"), data=data.x)


def _report_head(
    evaluator: Any, rows: list[dict], data: Any, settings: dict[str, Any], device: torch.device
) -> dict:
    """The report fields every job shares: the metric, its floor, the rows, the data and the run."""
    return {
        "metric": f"frechet_{evaluator.metric}",
        "floor": evaluator.floor[evaluator.metric],
        "rows": rows,
        "space": evaluator.metric,
        "floors": evaluator.floor,
        "spaces": list(evaluator.floor),
        "data": data.name,
        "eval_samples": evaluator.n_samples,
        "settings": settings,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _add_interval(target: dict, comparison: dict | None, limit: float) -> None:
    """Add a comparison's interval to a target: `interval`, `interval_limit` and `met_by_interval`
    (the whole interval within `limit`: below it for a strict target)."""
    if comparison is None:
        return
    lo, hi = comparison["interval"]
    strict = target["name"] == "student_1_vs_teacher_4"
    met = hi is not None and (hi < limit if strict else hi <= limit)
    target.update(interval=[lo, hi], interval_limit=limit, met_by_interval=met)
    target["interval_text"] = (
        f"ratio {target['ratio']:.3f}, 95% interval [{lo:.3f}, {'inf' if hi is None else f'{hi:.3f}'}]: "
        f"{'all' if met else 'not all'} {'<' if strict else '<='} {limit}"
    )


def _diffusers_teacher(path: str | None) -> bool:
    """Whether `--teacher` names a diffusers folder (JSON only: diffusers is not imported here)."""
    if not path or not os.path.isdir(path):
        return False
    from ..integrations.diffusers import is_diffusers_folder

    if not is_diffusers_folder(path):
        return False
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise ValueError(
            f"--teacher: {path} is a bare UNet2DModel folder without a schedule; give the pipeline folder "
            "that save_pretrained writes (model_index.json, unet/, scheduler/)"
        )
    return True


def _diffusers_inputs(settings: dict[str, Any]) -> tuple[Any, Any, str, Any]:
    """The diffusers teacher (wrapped), its schedule and param, and the data fitted to its UNet;
    ValueError with a one-line message if they do not fit (run by `validate` before anything is
    written, and again by the run)."""
    from ..integrations.diffusers import PREDICTION_TYPES, from_diffusers
    from .data import load_data

    path, param = settings["teacher"], settings["param"]
    if param not in PREDICTION_TYPES.values():
        raise ValueError(
            f"--param {param}: a diffusers UNet predicts one of {sorted(PREDICTION_TYPES.values())} "
            "(its output has the input's channels)"
        )
    teacher, schedule, teacher_param = from_diffusers(path)
    if teacher.conditional:
        raise ValueError(
            f"--teacher: {path} holds a class-conditional UNet; the distillation loop is unconditional"
        )
    cfg = teacher.unet.config
    size = (cfg.sample_size,) * 2 if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    resolution = settings.get("resolution")
    if resolution is not None and (resolution, resolution) != size:
        raise ValueError(
            f"--resolution {resolution} differs from the teacher's sample_size {cfg.sample_size} "
            "(its pipelines sample at sample_size)"
        )
    if size[0] == size[1]:
        resolution = size[0]
    data = load_data(settings["data"], seed=settings["seed"], resolution=resolution, channels=cfg.in_channels)
    if data.shape != (cfg.in_channels, *size):
        raise ValueError(
            f"--data: examples of shape {data.shape}, the teacher's UNet takes {(cfg.in_channels, *size)}"
        )
    if len(data) < 4:
        raise ValueError(f"--data needs at least 4 examples (evaluation splits it in two), got {len(data)}")
    return teacher, schedule, teacher_param, data


def _merge_rows(teacher_rows: list[dict], student_rows: list[dict]) -> list[dict]:
    """One row per step count: the teacher's columns from `teacher_rows`, the students' from
    `student_rows` (the two are evaluated with different params)."""
    rows = {r["steps"]: dict(r) for r in teacher_rows}
    for r in student_rows:
        row = rows.setdefault(r["steps"], dict(r))
        row.update({k: v for k, v in r.items() if k.startswith("student")})
        row["sample_seconds"] = r["sample_seconds"]
    return [rows[n] for n in sorted(rows)]


def _run_diffusers(
    settings: dict[str, Any], out: str, device: torch.device, resume: bool, progress: bool
) -> dict:
    """The main job for a diffusers teacher (module docstring); returns the report."""
    import copy

    from ..integrations.diffusers import to_diffusers
    from .checkpoint import load_model_checkpoint, save_json, save_model_checkpoint, schedule_to_dict
    from .evaluation import evaluate_models
    from .reparam import reparameterize
    from .report import format_table, write_samples

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    teacher, schedule, teacher_param, data = _diffusers_inputs(settings)
    path, param = settings["teacher"], settings["param"]
    T = teacher.num_train_timesteps
    start, end = settings["start_steps"], settings["end_steps"]
    teacher = teacher.to(device).eval()
    x = data.x.to(device)
    print(
        f"data: {data.name}, {len(data)} examples of shape {data.shape}; teacher: diffusers UNet2DModel "
        f"{path} ({sum(p.numel() for p in teacher.parameters()):,} parameters), param={teacher_param}, "
        f"T={T}; students param={param}; device {device}; out {out}"
    )
    model_info = {"kind": "diffusers", "path": os.path.abspath(path), "num_train_timesteps": T}
    save_json(
        os.path.join(out, "model.json"),
        {"model": model_info, "param": param, "teacher_param": teacher_param, "data": data.name},
    )

    t0 = time.perf_counter()
    current, first_students, reparam_info = teacher, {}, None
    if param != teacher_param:
        reparam_iters = settings.get("reparam_iters") or 2 * settings["iters"]
        stem = Path(out) / "checkpoints" / f"reparam_{start}"
        if resume and stem.with_suffix(".safetensors").is_file():
            current = copy.deepcopy(teacher)
            reparam_info = load_model_checkpoint(stem, current)
            current.eval()
        else:
            current, losses = reparameterize(
                teacher,
                x,
                start,
                schedule=schedule,
                teacher_param=teacher_param,
                param=param,
                iters=reparam_iters,
                batch_size=settings["batch_size"],
                lr=settings["lr"],
                seed=settings["seed"],
                progress=progress,
            )
            reparam_info = {
                "steps": start,
                "schedule": schedule_to_dict(schedule),
                "param": param,
                "teacher_param": teacher_param,
                "iters": reparam_iters,
                "loss_first_10": sum(losses[:10]) / len(losses[:10]),
                "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
            }
            save_model_checkpoint(stem, current, reparam_info)
        first_students[start] = current
        print(
            f"{teacher_param} -> {param}: a {param} student learned the teacher's {start}-step DDIM "
            f"(loss {reparam_info['loss_first_10']:.4g} -> {reparam_info['loss_last_10']:.4g})"
        )
    timings["reparam_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    students = _distill(current, x, start, end, schedule, param, settings, out, resume, progress)
    students = {**first_students, **students}
    timings["distill_train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluator, teacher_steps, z = _evaluation_setup(data, settings, start, students, out, device)
    # clip=False: what the exported DDIMPipelines (clip_sample=False) and the teacher's DDIM give
    t_rows, t_samples = evaluate_models(
        teacher, {}, evaluator, schedule, teacher_param, teacher_steps, z, clip=False
    )
    s_rows, s_samples = evaluate_models(teacher, students, evaluator, schedule, param, [], z, clip=False)
    rows = _merge_rows(t_rows, s_rows)
    timings["eval_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exports, skipped = {}, []
    for n in sorted(students):
        if T % n:
            skipped.append(n)
            continue
        folder = os.path.join(out, "diffusers", f"student_{n}")
        to_diffusers(students[n], schedule, param, folder, n)
        exports[str(n)] = folder
    timings["export_seconds"] = time.perf_counter() - t0
    timings["total_seconds"] = time.perf_counter() - t_start

    report: dict[str, Any] = {
        **_report_head(evaluator, rows, data, settings, device),
        "clip": False,
        "teacher_param": teacher_param,
        "param": param,
        "num_train_timesteps": T,
        "reparam": reparam_info,
        "diffusers_exports": exports,
        "not_exported_steps": skipped,
        **evaluator.info,
        **timings,
    }
    report["targets"] = _targets(rows)
    save_json(os.path.join(out, "report.json"), report)
    samples = {"teacher": t_samples["teacher"], "student": s_samples["student"]}
    write_samples(os.path.join(out, "samples.npz"), samples)
    _write_figures(report, samples, students, data, out)
    print(format_table(report))
    for line in report["targets"]:
        print(line["text"])
    print(
        f"time: {teacher_param} -> {param} {timings['reparam_seconds']:.1f}s, "
        f"distillation {timings['distill_train_seconds']:.1f}s, evaluation {timings['eval_seconds']:.1f}s, "
        f"export {timings['export_seconds']:.1f}s, total {timings['total_seconds']:.1f}s"
    )
    if skipped:
        print(f"not exported (N does not divide T = {T}): {', '.join(map(str, skipped))} steps")
    print(
        f"wrote {out}/report.json, samples.npz, quality_vs_steps.png, samples.png, checkpoints/, diffusers/"
    )
    for n, folder in exports.items():
        print(f"  DDIMPipeline.from_pretrained({folder!r})(num_inference_steps={n})")
    return report


def _targets(
    rows: list[dict],
    comparisons: dict | None = None,
    space: str | None = None,
    precision_recall: dict | None = None,
) -> list[dict]:
    """The quality targets, where the rows allow them: student(8) <= 1.05 x teacher(256) with the
    upper end of the ratio's 95% interval <= 1.10, student(4) <= 1.15 x teacher(256) (its interval
    against the same 1.15), the same in pixel space with 0.05 more (when the main metric is
    another space), student(1) < teacher(4); each with the interval of its ratio in its space
    where `comparisons` (of `sample_statistics`) holds it; and the 1-step student's k-NN recall at
    least 0.9 x the teacher's at 256 steps, where `precision_recall` holds both."""
    by = {r["steps"]: r for r in rows}
    compared = {(c["space"], c["name"]): c for c in (comparisons or {}).get("rows", [])}
    out = []
    spaces = [("", space, 0.0)] + ([("_pixel", "pixel", 0.05)] if space not in (None, "pixel") else [])
    for suffix, name, slack in spaces:
        ref = by.get(256, {}).get("teacher_ddim" + suffix)
        for n, factor, interval_limit in ((8, 1.05, 1.10), (4, 1.15, 1.15)):
            s = by.get(n, {}).get("student" + suffix)
            if s is None or ref is None:
                continue
            ratio = s / ref
            factor, interval_limit = round(factor + slack, 6), round(interval_limit + slack, 6)
            where = " in pixel space" if suffix else ""
            out.append(
                dict(
                    name=f"student_{n}_vs_teacher_256{suffix}",
                    ratio=ratio,
                    limit=factor,
                    met=ratio <= factor,
                    text=f"target: {n}-step student / teacher 256-step DDIM{where} = {ratio:.3f} "
                    f"(<= {factor}: {'met' if ratio <= factor else 'MISSED'})",
                )
            )
            _add_interval(out[-1], compared.get((name, f"student_{n}_vs_teacher_ddim_256")), interval_limit)
    s1, t4 = by.get(1, {}).get("student"), by.get(4, {}).get("teacher_ddim")
    if s1 is not None and t4 is not None:
        out.append(
            dict(
                name="student_1_vs_teacher_4",
                ratio=s1 / t4,
                limit=1.0,
                met=s1 < t4,
                text=f"target: 1-step student {s1:.4g} < teacher 4-step DDIM {t4:.4g}: "
                f"{'met' if s1 < t4 else 'MISSED'}",
            )
        )
        _add_interval(out[-1], compared.get((space, "student_1_vs_teacher_ddim_4")), 1.0)
    pr = {r["steps"]: r for r in (precision_recall or {}).get("rows", [])}
    r1, r256 = pr.get(1, {}).get("student"), pr.get(256, {}).get("teacher_ddim")
    if r1 is not None and r256 is not None and r256["recall"] > 0:
        ratio = r1["recall"] / r256["recall"]
        out.append(
            dict(
                name="student_1_recall_vs_teacher_256",
                ratio=ratio,
                limit=0.9,
                met=ratio >= 0.9,
                text=f"target: 1-step student's recall {r1['recall']:.3f} = {ratio:.3f} x the teacher's "
                f"256-step {r256['recall']:.3f} (>= 0.9: {'met' if ratio >= 0.9 else 'MISSED'})",
            )
        )
    return out


def _torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun, else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        return None
    try:
        rank, world, local = (int(os.environ[n]) for n in names)
    except ValueError as err:
        raise ValueError(f"torchrun: RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err})") from err
    return rank, world, local


def _agree(error: BaseException | None) -> BaseException | None:
    """Under torchrun: the first rank's error, if any rank has one (every rank takes the same way)."""
    if not dist.is_initialized():
        return error
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, None if error is None else f"{type(error).__name__}: {error}")
    first = next((r for r, e in enumerate(everyone) if e is not None), None)
    if first is None:
        return None
    if error is not None and first == dist.get_rank():
        return error  # this rank's error is the first: it says it
    return _OtherRank(f"rank {first}: {everyone[first]}")


class _OtherRank(ValueError):
    """Another rank failed its checks; this rank stops without a message of its own."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"pd-distill: warning: {message}", file=sys.stderr)


def _one_line(err: BaseException, out: str | None) -> str:
    if isinstance(err, FloatingPointError):
        return (
            f"{err} (continue with: python -m pd_fast --resume --out {out}; a run's settings cannot "
            "change on resume, so if a setting such as the learning rate caused it, start a new run)"
        )
    if isinstance(err, RuntimeError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"out of memory ({first}): try a smaller --batch-size or --teacher-batch-size"
    return " ".join(str(err).split()) or type(err).__name__


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code. Under torchrun the process ends here, through
    `os._exit` once its output is flushed and its process group destroyed: torch's gloo can abort
    in the interpreter's own teardown (`terminate called without an active exception`) after a
    job that did everything right."""
    code = _main(argv)
    if all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.out
    lock: RunLock | None = None
    ranks = None
    previous = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            from .training import part_ranks

            ranks = _torchrun_ranks()
            device = _device(args.device, None if ranks is None else ranks[2])
            if ranks is not None:
                if device.type == "cuda":
                    torch.cuda.set_device(device)
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                if args.out is None and not args.resume:  # one folder for all ranks: rank 0's name
                    names = [_default_out()]
                    dist.broadcast_object_list(names, src=0)
                    args.out = names[0]
            rank = 0 if ranks is None else ranks[0]
            error: BaseException | None = None
            try:
                job = validate(args, device)
                out = job.out
            except (ValueError, OSError) as err:
                error = err
            error = _agree(error)  # every rank has validated before rank 0 writes
            if error is not None:
                part_ranks()
                raise error
            try:
                if rank == 0:
                    lock = open_run(job)
            except (ValueError, OSError) as err:
                error = err
            error = _agree(error)
            if error is not None:
                part_ranks()
                raise error
            if job.threads is not None:
                torch.set_num_threads(job.threads)
            from .guided import run_guided

            (run_guided if job.settings.get("guided") else run)(
                job.settings,
                job.out,
                device,
                resume=job.resume,
                progress=not args.no_progress and sys.stderr.isatty(),
                data=job.data,
                teacher=job.teacher,
            )
    except _OtherRank:
        return 2
    except (ValueError, OSError, FloatingPointError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _out_of_memory(err):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"pd-distill: error: {_one_line(err, out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m pd_fast --resume --out {out}", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(previous)
        if lock is not None:
            lock.release()
        if ranks is not None and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
