"""The run config: one frozen dataclass per job, validated once, round-tripped to `config.json`.

    BuiltinConfig      the built-in job: a built-in network trained on built-in or user data
    GuidedConfig       the guided job ([GD]): BuiltinConfig plus the guidance settings
    DiffusersConfig    a diffusers pipeline folder (a pixel-space UNet2DModel) as the teacher
    TextToImageConfig  a latent pipeline folder (Stable Diffusion, LDM) as the teacher
    config_class(job) -> the class of a job name ("builtin", "guided", "diffusers", "text_to_image")
    defaults(cls, quick) -> the field values of a new run before its flags
    cfg.to_dict() / config_from_dict(d, where)   what config.json holds: {"job": ..., every field}

Every field is a command-line flag of the same name (`--start-steps` is `start_steps`). A bad
value is a ValueError naming the flag, raised when the config is made (`__post_init__`), so a
config that exists is a valid one; `config_from_dict` refuses unknown and missing keys, so a
resume reads back exactly what the run was started with.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

SEED_MAX = 2**32 - 1  # scikit-learn's data sets take seeds below 2^32
FLOAT32_MAX = 3.4028234663852886e38
PARAMS = ("eps", "x", "v", "both")
PRECISIONS = ("fp32", "bf16", "fp16")
MODELS = ("mlp", "unet")


def flag(name: str) -> str:
    """The command-line flag of a field: `start_steps` -> `--start-steps`."""
    return "--" + name.replace("_", "-")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_ints(cfg: Any, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if not _is_int(v) or v < 1:
            raise ValueError(f"{flag(name)} must be a positive integer, got {v!r}")


def _positive_floats(cfg: Any, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if not _is_number(v) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{flag(name)} must be a positive finite number, got {v!r}")


def _choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in choices:
        raise ValueError(f"{flag(name)} must be one of {choices}, got {getattr(cfg, name)!r}")


def eval_ws(text: Any) -> list[tuple[str, float]]:
    """`--eval-w` ("0,1,2,4") as (name as written, value) pairs; ValueError unless each is a
    finite number >= 0 written with digits and at most one '.', without repeats."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--eval-w must be a comma-separated list of guidance weights, got {text!r}")
    out: list[tuple[str, float]] = []
    for token in (s.strip() for s in text.split(",")):
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", token):
            raise ValueError(f"--eval-w: each weight must be a number >= 0 such as 2 or 0.5, got {token!r}")
        value = float(token)
        if not math.isfinite(value) or any(value == v for _, v in out):
            raise ValueError(f"--eval-w: {token!r} is not finite or given twice")
        out.append((token, value))
    return out


def parse_resolution(text: str) -> int | tuple[int, int]:
    """`--resolution` as written: "N" (N x N pixels) -> N, "HxW" (height x width) -> (H, W);
    ValueError unless every side is an integer >= 2."""
    parts = text.strip().lower().split("x") if isinstance(text, str) else []
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--resolution must be N or HxW (e.g. 16 or 16x32), got {text!r}")
    sides = tuple(int(p) for p in parts)
    if min(sides) < 2:
        raise ValueError(f"--resolution: every side must be >= 2 pixels, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def resolution_text(resolution: int | tuple[int, ...] | list[int]) -> str:
    """A resolution as `--resolution` takes it: 16 -> "16", (16, 32) -> "16x32"."""
    return str(resolution) if _is_int(resolution) else "x".join(map(str, resolution))


def _check_resolution(v: Any) -> None:
    if v is None or (_is_int(v) and v >= 2):
        return
    if isinstance(v, tuple) and len(v) == 2 and all(_is_int(s) and s >= 2 for s in v):
        return
    raise ValueError(
        f"--resolution must be an integer >= 2 or a pair (height, width) of them (HxW), got {v!r}"
    )


@dataclass(frozen=True)
class RunConfig:
    """What every job has: the data, the seed and the distillation rounds. Defaults: tuned on the
    digits with 2 CPU cores (distilled from 128 steps, where the teacher's DDIM equals its 256, to 1
    in 7 rounds of 2000 iterations: the students' quality grows with every round's iterations)."""

    job: ClassVar[str] = ""
    # --quick: a smoke-sized run of the same job (about a minute on 2 CPU cores)
    quick_defaults: ClassVar[dict[str, Any]] = dict(
        start_steps=16, iters=100, last_rounds_factor=2.0, eval_max_steps=16, ckpt_every=100
    )

    data: str = "digits"
    # N (N x N pixels) or (H, W); None: the data's own size (a diffusers teacher: its sample_size)
    resolution: int | tuple[int, int] | None = None
    seed: int = 0
    quick: bool = False
    start_steps: int = 128
    end_steps: int = 1
    iters: int = 2000
    last_rounds_factor: float = 1.0
    lr: float = 6e-4
    batch_size: int = 256
    ckpt_every: int = 250
    eval_max_steps: int = 256
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if isinstance(self.resolution, list):  # config.json holds (H, W) as a JSON list
            object.__setattr__(self, "resolution", tuple(self.resolution))
        self.check()

    def check(self) -> None:
        """ValueError naming the flag of the first bad field."""
        _positive_ints(self, "iters", "batch_size", "start_steps", "end_steps", "eval_max_steps")
        if not _is_int(self.ckpt_every) or self.ckpt_every < 0:
            raise ValueError(
                f"--ckpt-every must be an integer >= 0 (0: at stage ends only), got {self.ckpt_every!r}"
            )
        _positive_floats(self, "lr", "last_rounds_factor")
        _choice(self, "precision", PRECISIONS)
        if not _is_int(self.seed) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"--seed must be an integer in [0, {SEED_MAX}], got {self.seed!r}")
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"--data must be a data set name or a path, got {self.data!r}")
        if not isinstance(self.quick, bool):
            raise ValueError(f"--quick must be true or false, got {self.quick!r}")
        ratio = self.start_steps // self.end_steps
        if self.start_steps % self.end_steps or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(
                f"--start-steps must be --end-steps times a power of 2 (>= 2), got {self.start_steps} and "
                f"{self.end_steps}"
            )
        _check_resolution(self.resolution)

    def to_dict(self) -> dict[str, Any]:
        """What config.json holds: the job's name and every field."""
        return {"job": self.job, **dataclasses.asdict(self)}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `changes` (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BuiltinConfig(RunConfig):
    """The built-in job: a built-in network (`--model`) trained as the teacher, or a `--teacher`
    checkpoint of one, distilled and evaluated."""

    job: ClassVar[str] = "builtin"
    quick_defaults: ClassVar[dict[str, Any]] = dict(RunConfig.quick_defaults, hidden=128, teacher_iters=800)

    teacher: str | None = None
    model: str = "mlp"
    param: str = "v"
    hidden: int = 256
    depth: int = 3
    ch: int = 32
    teacher_iters: int = 6000
    teacher_lr: float = 1e-3
    teacher_batch_size: int = 256

    def check(self) -> None:
        super().check()
        _positive_ints(self, "teacher_iters", "teacher_batch_size", "hidden", "depth", "ch")
        _positive_floats(self, "teacher_lr")
        _choice(self, "model", MODELS)
        _choice(self, "param", PARAMS)
        if self.teacher is not None and not isinstance(self.teacher, str):
            raise ValueError(f"--teacher must be a path, got {self.teacher!r}")

    def network_options(self) -> dict[str, int]:
        """The keyword arguments of `build_model` for this config's `--model`."""
        return dict(hidden=self.hidden, depth=self.depth) if self.model == "mlp" else dict(ch=self.ch)


@dataclass(frozen=True)
class GuidedConfig(BuiltinConfig):
    """The guided job ([GD], docs/spec.md section 8): a conditional teacher, stage 1 (a
    w-conditioned student) and stage 2 (progressive distillation with w per example)."""

    job: ClassVar[str] = "guided"
    # stage 1 of a quick run: a smoke test of the stage
    quick_defaults: ClassVar[dict[str, Any]] = dict(BuiltinConfig.quick_defaults, guidance_iters=200)
    # Stage 2 of a full run: 1000 iterations a round, 4x for the last two (the 2- and 1-step
    # students). On the default stage 1, 500 a round (2x) left the 8-step student at w = 0 at 1.155
    # and the 1-step one at 1.021 of their targets' references; 1000 (4x) brings them to 1.141 and
    # 0.970 (docs/results.md, guided job).
    full_defaults: ClassVar[dict[str, Any]] = dict(iters=1000, last_rounds_factor=4.0)

    p_uncond: float = 0.1
    w_min: float = 0.0
    w_max: float = 4.0
    # stage 1: 6000 iterations at 1e-3 bring the 8-step student at w = 0 from 1.27 to 1.16 of the
    # teacher's 256-step distance (2000 at 3e-4 before; docs/results.md, guided job)
    guidance_iters: int = 6000
    guidance_lr: float = 1e-3
    eval_w: str = "0,1,2,4"

    def check(self) -> None:
        super().check()
        for name in ("p_uncond", "w_min", "w_max", "guidance_lr"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"{flag(name)} must be a finite number, got {v!r}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"--p-uncond must lie in [0, 1), got {self.p_uncond!r}")
        if self.w_min < 0 or self.w_max < self.w_min:
            raise ValueError(
                f"--w-min and --w-max must satisfy 0 <= w-min <= w-max, got {self.w_min}, {self.w_max}"
            )
        for name in ("w_min", "w_max"):
            if abs(getattr(self, name)) > FLOAT32_MAX:
                raise ValueError(
                    f"{flag(name)} must be finite in float32 (at most 3.4e38), got {getattr(self, name)!r}"
                )
        if self.guidance_lr <= 0:
            raise ValueError(f"--guidance-lr must be positive, got {self.guidance_lr!r}")
        _positive_ints(self, "guidance_iters")
        eval_ws(self.eval_w)

    def ws(self) -> list[tuple[str, float]]:
        """`--eval-w` as (name as written, value) pairs."""
        return eval_ws(self.eval_w)


@dataclass(frozen=True)
class DiffusersConfig(RunConfig):
    """A diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`; a `UNet2DModel`) as
    the teacher: its students are `param` models, exported as `DDIMPipeline` folders."""

    job: ClassVar[str] = "diffusers"
    # a UNet costs more per example than the MLP: smaller batches in a quick run
    quick_defaults: ClassVar[dict[str, Any]] = dict(RunConfig.quick_defaults, batch_size=64)

    teacher: str = ""
    param: str = "v"
    reparam_iters: int | None = None

    def check(self) -> None:
        super().check()
        _choice(self, "param", PARAMS)
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError(
                f"--teacher must be the path of a diffusers pipeline folder, got {self.teacher!r}"
            )
        if self.reparam_iters is not None:
            _positive_ints(self, "reparam_iters")


@dataclass(frozen=True)
class TextToImageConfig(RunConfig):
    """A latent pipeline folder as the teacher (docs/spec.md section 10): a `StableDiffusionPipeline`
    gets guided distillation ([GD] stages 1 and 2) into students that take w and make one UNet call
    a step, exported as `StableDiffusionPipeline` folders; an `LDMPipeline` (unconditional) gets
    progressive distillation in latent space. `data`: a captioned image folder (metadata.jsonl or
    metadata.csv), or "digits" (the 8x8 digits with captions naming them)."""

    job: ClassVar[str] = "text_to_image"
    quick_defaults: ClassVar[dict[str, Any]] = dict(
        RunConfig.quick_defaults, batch_size=32, guidance_iters=100, eval_samples=16
    )
    full_defaults: ClassVar[dict[str, Any]] = dict(iters=1000, lr=1e-4, batch_size=64)

    teacher: str = ""
    param: str = "v"
    prompts: str | None = None
    # w = guidance_scale - 1: [0, 8] covers the guidance scales users sample with (1 to 9; 7.5)
    w_min: float = 0.0
    w_max: float = 8.0
    guidance_iters: int = 2000
    guidance_lr: float = 1e-4
    guidance_dim: int = 256
    eval_w: str = "0,2,6.5"
    eval_samples: int = 64
    gradient_checkpointing: bool = False

    def check(self) -> None:
        super().check()
        _choice(self, "param", PARAMS)
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError(f"--teacher must be the path of a pipeline folder, got {self.teacher!r}")
        if self.prompts is not None and (not isinstance(self.prompts, str) or not self.prompts):
            raise ValueError(f"--prompts must be the path of a text file, got {self.prompts!r}")
        for name in ("w_min", "w_max", "guidance_lr"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or abs(v) > FLOAT32_MAX:
                raise ValueError(f"{flag(name)} must be a finite number, got {v!r}")
        if self.w_min < 0 or self.w_max < self.w_min:
            raise ValueError(
                f"--w-min and --w-max must satisfy 0 <= w-min <= w-max, got {self.w_min}, {self.w_max}"
            )
        _positive_floats(self, "guidance_lr")
        _positive_ints(self, "guidance_iters", "guidance_dim", "eval_samples")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"--gradient-checkpointing is a switch, got {self.gradient_checkpointing!r}")
        if self.guidance_dim % 2:
            raise ValueError(f"--guidance-dim must be even (sines and cosines), got {self.guidance_dim}")
        eval_ws(self.eval_w)

    def ws(self) -> list[tuple[str, float]]:
        """`--eval-w` as (name as written, value) pairs."""
        return eval_ws(self.eval_w)


CONFIGS: dict[str, type[RunConfig]] = {
    c.job: c for c in (BuiltinConfig, GuidedConfig, DiffusersConfig, TextToImageConfig)
}


def config_class(job: str) -> type[RunConfig]:
    if job not in CONFIGS:
        raise ValueError(f"unknown job {job!r}; the jobs are {sorted(CONFIGS)}")
    return CONFIGS[job]


def field_names(cls: type[RunConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def defaults(cls: type[RunConfig], quick: bool) -> dict[str, Any]:
    """The field values of a new run of `cls` before its flags: the class's defaults, then its
    quick (or full-run) overrides."""
    values = {f.name: f.default for f in dataclasses.fields(cls)}
    values.update(cls.quick_defaults if quick else getattr(cls, "full_defaults", {}))
    values["quick"] = quick
    return values


def config_from_dict(d: Any, where: str) -> RunConfig:
    """The config that `to_dict` wrote; ValueError (one line naming `where`) for anything else: not
    an object, an unknown job, an unknown or a missing key, or a bad value."""
    if not isinstance(d, dict) or "job" not in d:
        raise ValueError(f"{where} is not the config of a pd_fast run (no 'job' key)")
    cls = config_class(d["job"]) if isinstance(d["job"], str) else None
    if cls is None:
        raise ValueError(f"{where}: 'job' must be a string, got {d['job']!r}")
    names = field_names(cls)
    unknown = [k for k in d if k != "job" and k not in names]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for a {cls.job} run")
    missing = [k for k in names if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r} of a {cls.job} run")
    try:
        return cls(**{k: d[k] for k in names})
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
