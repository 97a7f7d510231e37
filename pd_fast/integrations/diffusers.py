"""Hugging Face diffusers models in and out of pd_fast (docs/spec.md section 9).

- `from_diffusers(path, scheduler=None) -> (model, schedule, param)`: a `UNet2DModel` (a pipeline
  folder with `model_index.json`, `unet/` and `scheduler/`, or a bare model folder plus `scheduler=`)
  as a pd_fast model `model(z, t)` of continuous time, with the scheduler's own schedule.
- `to_diffusers(model, schedule, param, path, steps) -> Path`: such a model (e.g. a distilled
  student) written as a `DDIMPipeline` folder that samples in `steps` steps exactly as
  `pd_fast.sample(model, z, steps, schedule, param, clip=False)` does.

**Time.** A model trained on `T = num_train_timesteps` discrete timesteps `k = 0 .. T-1` is the
continuous-time model at `t = (k + 1) / T`: `model(z, t)` calls the network at the fractional
timestep `k = t*T - 1`. `t` arrives in z's dtype (fp32), so `t*T - 1` is computed in float64 and
snapped to the nearest integer when it lies within t's rounding of one: on the grid `t = i/N`
(N dividing T) the network then sees the exact integer timesteps diffusers gives it.
**Schedule.** `DiscreteSchedule(scheduler.alphas_cumprod)`: whatever the scheduler computed from its
config (`beta_schedule`, `trained_betas`, `rescale_betas_zero_snr`). A zero terminal `alpha_bar`
(`rescale_betas_zero_snr=True`), which `DiscreteSchedule` cannot hold, becomes
`ZERO_SNR_ALPHA_BAR = 2^-48` (`alpha_1 = 2^-24`, below fp32's resolution next to `sigma_1 = 1`).
**Export.** `DDIMScheduler(trained_betas=beta, timestep_spacing="trailing", set_alpha_to_one=True,
clip_sample=False, prediction_type=...)` with `cumprod(1 - beta)[k] = alpha_bar((k + 1) / T)`: its
N-step trailing grid is `t = i/N`, and its DDIM step (eta = 0) is docs/spec.md section 3's, for every
N dividing T (diffusers steps from timestep k to `k - T // N`).

**Latent pipelines.** `from_diffusers` gives a `StableDiffusionPipeline` or `LDMPipeline` folder to
`pd_fast.integrations.latent` (a `LatentPipeline`: the teacher and its autoencoder and text encoder,
docs/spec.md section 10), and `to_diffusers(..., pipeline=teacher)` writes a student as such a
pipeline; every other pipeline is refused in one line naming what is supported.

diffusers (and Pillow, which it needs) is an optional dependency: `pip install -e .[diffusers]`.
It is imported inside the functions, so importing this module does not import it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..schedules import DiscreteSchedule

if TYPE_CHECKING:
    from .latent import LatentPipeline

__all__ = [
    "DiffusersUNet",
    "from_diffusers",
    "to_diffusers",
    "schedule_from_scheduler",
    "export_betas",
    "is_diffusers_folder",
    "read_num_train_timesteps",
    "PREDICTION_TYPES",
]

#: diffusers' `prediction_type` -> pd_fast's `param` (docs/spec.md section 9)
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x"}
#: `alpha_bar` put in place of a zero terminal one (zero-terminal-SNR schedules)
ZERO_SNR_ALPHA_BAR = 2.0**-48
#: written next to an exported pipeline: how pd_fast made it
EXPORT_INFO = "pd_fast.json"


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this needs the optional dependency diffusers: pip install 'progressive-distillation[diffusers]' "
            "(or pip install -e .[diffusers] in a clone)"
        ) from err
    return diffusers


class DiffusersUNet(nn.Module):
    """A diffusers `UNet2DModel` as a pd_fast model of continuous time (docs/spec.md section 9).

    `forward(z, t, c=None)`: z (B, C, H, W); t (B,) (or 0-d) in [0, 1]; the network is called at
    the timestep `k = t*T - 1` (`timesteps(t)`) and its `.sample` is returned in z's dtype.
    `c` (B,) int64 class labels, passed as `class_labels`, is required by a class-conditional UNet
    (`num_class_embeds`) and refused by an unconditional one.
    """

    def __init__(self, unet: nn.Module, num_train_timesteps: int) -> None:
        super().__init__()
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps!r}")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps!r}")
        self.unet = unet
        self.num_train_timesteps = num_train_timesteps

    @property
    def conditional(self) -> bool:
        """Whether the UNet embeds class labels (`num_class_embeds` or a `class_embed_type`)."""
        return getattr(self.unet, "class_embedding", None) is not None

    def timesteps(self, t: Tensor) -> Tensor:
        """`k = t*T - 1` (float32, for the network), computed in float64; a k within t's rounding
        (`T * eps(t.dtype)`, at most 0.5) of an integer becomes that integer."""
        k = t.to(torch.float64) * self.num_train_timesteps - 1.0
        if t.is_floating_point():
            tol = min(0.5, self.num_train_timesteps * torch.finfo(t.dtype).eps)
            nearest = torch.round(k)
            k = torch.where(torch.abs(k - nearest) <= tol, nearest, k)
        return k.to(torch.float32)

    def batch_times(self, z: Tensor, t: Any) -> Tensor:
        """`t` as a (B,) tensor on z's device, after checking that z is (B, C, H, W)."""
        if not isinstance(z, Tensor) or z.ndim != 4:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must be a (B, C, H, W) tensor, got {shape}")
        t = torch.as_tensor(t, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        if t.shape != (z.shape[0],):
            raise ValueError(f"t must have shape ({z.shape[0]},) (the batch of z), got {tuple(t.shape)}")
        return t

    def forward(self, z: Tensor, t: Any, c: Tensor | None = None) -> Tensor:
        t = self.batch_times(z, t)
        if self.conditional and c is None:
            raise ValueError(
                "c: this UNet is class-conditional; call model(z, t, c) with labels c of shape (B,)"
            )
        if not self.conditional and c is not None:
            raise ValueError("c: this UNet is unconditional (no class embedding); call model(z, t)")
        dtype = self.unet.dtype
        out = self.unet(z.to(dtype), self.timesteps(t), class_labels=c).sample
        return out.to(z.dtype)


# ----- import ----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"path: cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"path: {path} does not hold a JSON object")
    return data


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a diffusers pipeline folder (`model_index.json`) or a bare `UNet2DModel`
    folder (`config.json` naming that class). Reads JSON only; does not import diffusers."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "model_index.json").is_file():
        return True
    config = path / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("_class_name") == "UNet2DModel"
        except (OSError, json.JSONDecodeError, AttributeError):
            return False
    return False


def read_num_train_timesteps(path: str | os.PathLike) -> int:
    """`num_train_timesteps` of a pipeline folder's scheduler (diffusers' default 1000 if unset).
    Reads JSON only; does not import diffusers."""
    config = Path(path) / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        raise ValueError(f"path: {path} has no scheduler/scheduler_config.json")
    value = _read_json(config).get("num_train_timesteps", 1000)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"path: {config} has num_train_timesteps={value!r}, not a positive integer")
    return value


def _load_scheduler(scheduler: Any) -> Any:
    """A diffusers scheduler instance, or one loaded from a folder holding `scheduler_config.json`."""
    if not isinstance(scheduler, (str, os.PathLike)):
        if not hasattr(scheduler, "config"):
            raise ValueError(
                f"scheduler must be a diffusers scheduler or its folder, got {type(scheduler)!r}"
            )
        return scheduler
    folder = Path(scheduler)
    config = folder / "scheduler_config.json"
    if not config.is_file():
        raise ValueError(f"scheduler: {folder} holds no scheduler_config.json")
    name = _read_json(config).get("_class_name")
    cls = getattr(_diffusers(), str(name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"scheduler: {config} names {name!r}, not a scheduler class of diffusers")
    return cls.from_pretrained(str(folder))


def _load_unet(folder: Path) -> nn.Module:
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"path: {folder} holds no config.json (a diffusers model folder)")
    name = _read_json(config).get("_class_name")
    if name != "UNet2DModel":
        raise ValueError(
            f"path: {config} describes a {name!r}; a model folder must hold a UNet2DModel (latent UNets come "
            "in their LDMPipeline or StableDiffusionPipeline folder)"
        )
    return _diffusers().UNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False)


def schedule_from_scheduler(scheduler: Any) -> DiscreteSchedule:
    """`DiscreteSchedule` of a diffusers scheduler's own `alphas_cumprod` (float64), a zero terminal
    value (zero terminal SNR) replaced by `ZERO_SNR_ALPHA_BAR` (docs/spec.md sections 1 and 9)."""
    acp = getattr(scheduler, "alphas_cumprod", None)
    if acp is None:
        raise ValueError(
            f"scheduler: {type(scheduler).__name__} has no alphas_cumprod (not a DDPM-style discrete "
            "schedule of T timesteps)"
        )
    acp = torch.as_tensor(acp).detach().to("cpu", torch.float64).clone()
    if acp.ndim == 1 and acp.numel() > 1 and float(acp[-1]) == 0.0:
        acp[-1] = ZERO_SNR_ALPHA_BAR
    try:
        return DiscreteSchedule(acp)
    except ValueError as err:
        raise ValueError(f"scheduler: its alphas_cumprod is not a schedule pd_fast can use: {err}") from err


def schedule_and_param(scheduler: Any) -> tuple[DiscreteSchedule, str]:
    """The schedule (`schedule_from_scheduler`) and `param` (from `prediction_type`) of a diffusers
    scheduler; an eps model on a zero-terminal-SNR schedule is refused (docs/spec.md section 9)."""
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler: prediction_type {prediction_type!r} is not one of {sorted(PREDICTION_TYPES)}"
        )
    param = PREDICTION_TYPES[prediction_type]
    schedule = schedule_from_scheduler(scheduler)
    if param == "eps" and float(schedule.alphas_cumprod[-1]) == ZERO_SNR_ALPHA_BAR:
        raise ValueError(
            "scheduler: an epsilon model on a zero-terminal-SNR schedule (rescale_betas_zero_snr) cannot "
            "predict x at t = 1 (x_hat = (z - sigma*eps)/alpha with alpha = 0; diffusers' DDIM gives NaN "
            "there too): such models need prediction_type 'v_prediction'"
        )
    return schedule, param


def from_diffusers(
    path: str | os.PathLike, scheduler: Any = None
) -> tuple[DiffusersUNet, DiscreteSchedule, str] | LatentPipeline:
    """A diffusers `UNet2DModel` as `(model, schedule, param)` (docs/spec.md section 9), or a latent
    pipeline as a `LatentPipeline` (docs/spec.md section 10).

    path: a pipeline folder (`model_index.json` naming `unet` and `scheduler`, as `save_pretrained`
    writes it), or a bare `UNet2DModel` folder, which needs `scheduler` (a diffusers scheduler, or a
    folder holding `scheduler_config.json`); `scheduler` also overrides a pipeline's own.
    Returns `model` (a `DiffusersUNet` in eval mode, `model(z, t)` or `model(z, t, c)` for a
    class-conditional UNet), `schedule = DiscreteSchedule(scheduler.alphas_cumprod)` and
    `param` from `prediction_type` (epsilon -> eps, v_prediction -> v, sample -> x).
    Sampling it with `pd_fast.sample(model, z, N, schedule, param, clip=False)` is diffusers'
    `DDIMPipeline` with `DDIMScheduler(timestep_spacing="trailing", clip_sample=False,
    set_alpha_to_one=True)` from the same config, for every N dividing T.
    A `StableDiffusionPipeline` or `LDMPipeline` folder gives a `LatentPipeline` instead: the teacher
    with the same `model`, `schedule` and `param` attributes, plus its autoencoder (and text encoder);
    see `pd_fast.integrations.latent`. Other pipelines (SDXL, inpainting, ControlNet, flow matching,
    ...) are refused with a ValueError naming what is supported.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"path: {folder} is not a folder (a diffusers pipeline or model folder)")
    if (folder / "model_index.json").is_file():
        from .latent import load_latent_pipeline, pipeline_kind

        index = _read_json(folder / "model_index.json")
        if pipeline_kind(folder, index) is not None:
            return load_latent_pipeline(folder, scheduler)
        for key in ("unet", "scheduler"):
            if key not in index or not (folder / key).is_dir():
                raise ValueError(
                    f"path: the pipeline in {folder} has no {key!r} component (a {key}/ folder named in "
                    "model_index.json); pd_fast imports UNet2DModel pipelines such as DDPMPipeline"
                )
        unet_folder = folder / "unet"
        if scheduler is None:
            scheduler = folder / "scheduler"
    elif (folder / "config.json").is_file():
        unet_folder = folder
        if scheduler is None:
            raise ValueError(
                f"scheduler: {folder} is a bare model folder (no model_index.json), which has no schedule: "
                "pass scheduler= (a diffusers scheduler or the folder of its scheduler_config.json)"
            )
    else:
        raise ValueError(
            f"path: {folder} holds neither model_index.json (a pipeline) nor config.json (a model)"
        )
    scheduler = _load_scheduler(scheduler)
    schedule, param = schedule_and_param(scheduler)
    unet = _load_unet(unet_folder)
    cfg = unet.config
    if cfg.out_channels != cfg.in_channels:
        raise ValueError(
            f"path: the UNet has {cfg.in_channels} input and {cfg.out_channels} output channels; pd_fast "
            "needs one prediction of the input's shape (learned-variance outputs are not supported)"
        )
    model = DiffusersUNet(unet, int(scheduler.config.num_train_timesteps)).eval()
    return model, schedule, param


# ----- export ----------------------------------------------------------------------------------


#: the diffusers networks that `to_diffusers` exports (to DDIMPipeline, LDMPipeline, StableDiffusionPipeline)
EXPORTED_UNETS = ("UNet2DModel", "UNet2DConditionModel")


def unwrap_unet(model: Any, schedule: Any) -> tuple[nn.Module, int]:
    """The diffusers UNet inside `model` (a `DiffusersUNet` or a subclass, possibly inside
    DistributedDataParallel, or a bare UNet with a `DiscreteSchedule`) and its `T`."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, DiffusersUNet):
        unet, T = model.unet, model.num_train_timesteps
    elif type(model).__name__ in EXPORTED_UNETS:
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError(
                f"model: a bare {type(model).__name__} has no number of timesteps of its own; pass it with a "
                "DiscreteSchedule, or as the wrapper that from_diffusers returns"
            )
        unet, T = model, schedule.num_train_timesteps
    else:
        raise ValueError(
            f"model: to_diffusers exports a diffusers {' or '.join(EXPORTED_UNETS)} (as from_diffusers "
            f"returns them), got {type(model).__name__}, which diffusers' pipelines cannot load"
        )
    if type(unet).__name__ not in EXPORTED_UNETS:
        raise ValueError(f"model: diffusers' pipelines need a {EXPORTED_UNETS}, got {type(unet).__name__}")
    return unet, T


def check_export_steps(steps: Any, num_train_timesteps: int) -> int:
    """`steps`, checked to be a positive integer dividing T (docs/spec.md section 9)."""
    T = num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if T % steps:
        divisors = [n for n in range(1, T + 1) if T % n == 0][:12]
        raise ValueError(
            f"steps: {steps} does not divide num_train_timesteps = {T}; diffusers' DDIMScheduler steps from "
            f"timestep k to k - {T} // N, so only N dividing {T} lie on its grid (e.g. {divisors})"
        )
    return steps


def prediction_type_of(param: str) -> str:
    """diffusers' `prediction_type` for pd_fast's `param` (eps, v or x)."""
    param_to_type = {v: k for k, v in PREDICTION_TYPES.items()}
    if param not in param_to_type:
        raise ValueError(
            f"param must be one of {sorted(param_to_type)} (diffusers prediction types), got {param!r}"
        )
    return param_to_type[param]


def ddim_scheduler(schedule: Any, num_train_timesteps: int, param: str) -> Any:
    """The exported scheduler (docs/spec.md section 9): `DDIMScheduler(trained_betas=export_betas(...),
    timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, prediction_type=...)`."""
    return _diffusers().DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        trained_betas=export_betas(schedule, num_train_timesteps).tolist(),
        prediction_type=prediction_type_of(param),
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        # unused by trailing spacing; 1 spares the StableDiffusionPipeline's rewrite of an "outdated" 0
        steps_offset=1,
    )


def write_export_info(folder: Path, info: dict) -> None:
    """`pd_fast.json` next to an exported pipeline: how pd_fast made it and how to sample it."""
    (folder / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n")


def export_alphas_cumprod(schedule: Any, num_train_timesteps: int) -> Tensor:
    """`alpha_bar((k + 1) / T)` for k = 0 .. T-1 (float64): the schedule on diffusers' integer grid."""
    T = num_train_timesteps
    if isinstance(schedule, DiscreteSchedule) and schedule.num_train_timesteps == T:
        return schedule.alphas_cumprod.clone()
    if not hasattr(schedule, "alpha_sigma"):
        raise ValueError(f"schedule must be a pd_fast schedule, got {type(schedule)!r}")
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    alpha, _ = schedule.alpha_sigma(t)
    return torch.as_tensor(alpha, dtype=torch.float64).cpu() ** 2


def export_betas(schedule: Any, num_train_timesteps: int) -> Tensor:
    """Betas (float64, length T) with `cumprod(1 - beta)[k] = alpha_bar((k + 1) / T)`
    (docs/spec.md section 9): `beta_k = 1 - alpha_bar_k / alpha_bar_(k-1)`, `alpha_bar_(-1) = 1`.

    diffusers rounds them to float32 and takes the product in float32: measured for T = 1000, its
    `alphas_cumprod` is within 3e-7 (relative) of the schedule for linear betas, and within 1.3e-5
    where a cosine schedule's betas come close to 1 (a float32 beta near 1 resolves `1 - beta` only
    to ~6e-8 absolute).
    """
    acp = export_alphas_cumprod(schedule, num_train_timesteps)
    if not bool(torch.isfinite(acp).all()) or bool((acp <= 0).any()) or bool((acp >= 1).any()):
        raise ValueError("schedule: alpha_bar on the export grid must lie in (0, 1)")
    if bool((acp.diff() >= 0).any()):
        raise ValueError("schedule: alpha_bar on the export grid must be strictly decreasing")
    previous = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    return 1.0 - acp / previous


def to_diffusers(
    model: nn.Module,
    schedule: Any,
    param: str,
    path: str | os.PathLike,
    steps: int,
    *,
    pipeline: LatentPipeline | str | os.PathLike | None = None,
) -> Path:
    """Write `model` as a diffusers `DDIMPipeline` folder (`model_index.json`, `unet/`,
    `scheduler/`, plus `pd_fast.json` recording `steps`), returning the folder.

    model: the `DiffusersUNet` of `from_diffusers` (or a student distilled from it), or a bare
    `UNet2DModel` with a `DiscreteSchedule`. The scheduler is `DDIMScheduler(trained_betas=
    export_betas(schedule, T), prediction_type=<param>, timestep_spacing="trailing",
    set_alpha_to_one=True, clip_sample=False)`, so that
    `DDIMPipeline.from_pretrained(path)(num_inference_steps=steps, generator=g, output_type="np")`
    gives `(pd_fast.sample(model, z, steps, schedule, param, clip=False) / 2 + 0.5).clip(0, 1)`
    (channels last), z being the `randn((B, C, H, W), generator=g)` the pipeline draws.
    `steps` must divide T: diffusers steps from timestep k to `k - T // steps`, so no other N is on
    its grid. Class-conditional UNets are refused (DDIMPipeline passes no labels).
    With `pipeline` (the `LatentPipeline` that `from_diffusers` gave for the teacher's folder, or that
    folder), the student becomes a `StableDiffusionPipeline` or `LDMPipeline` folder holding the
    teacher's other components unchanged (`pd_fast.integrations.latent.export_latent_pipeline`); a
    `UNet2DConditionModel` student needs it.
    """
    if callable(getattr(model, "check_guidance_band", None)):
        model.check_guidance_band()
    unet, T = unwrap_unet(model, schedule)
    steps = check_export_steps(steps, T)
    prediction_type_of(param)
    if pipeline is not None or type(unet).__name__ != "UNet2DModel":
        from .latent import export_latent_pipeline

        return export_latent_pipeline(unet, T, schedule, param, path, steps, pipeline)
    if unet.config.out_channels != unet.config.in_channels:
        raise ValueError("model: the UNet's output channels differ from its input channels")
    if getattr(unet, "class_embedding", None) is not None:
        raise ValueError(
            "model: a class-conditional UNet cannot be exported to DDIMPipeline (it passes no labels)"
        )
    scheduler = ddim_scheduler(schedule, T, param)
    out = Path(path)
    _diffusers().DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(out))
    info = {
        "steps": steps,
        "param": param,
        "num_train_timesteps": T,
        "sample": f"DDIMPipeline.from_pretrained(path)(num_inference_steps={steps}, output_type='np')",
    }
    write_export_info(out, info)
    return out


def exportable_steps(steps: list[int], num_train_timesteps: int) -> list[int]:
    """The step counts of `steps` that a DDIMScheduler of T timesteps can run (N dividing T)."""
    return [n for n in steps if num_train_timesteps % n == 0]


def default_start_steps(num_train_timesteps: int, cap: int) -> int:
    """The start of distillation for a teacher of T timesteps: the usual start `cap`, lowered to the
    largest power of two <= T, so the grid i/N is never finer than the teacher's. When T is a
    multiple of it (T = 1024, 256, ...) every round stays on diffusers' integer timesteps."""
    return min(cap, 2 ** int(math.floor(math.log2(num_train_timesteps))))
