"""Latent diffusion pipelines in and out of pd_fast: Stable Diffusion and LDM (docs/spec.md section 10).

`from_diffusers(path)` (`pd_fast.integrations.diffusers`) sends the folders of two latent pipelines here:
- `StableDiffusionPipeline`: `UNet2DConditionModel` + `AutoencoderKL` + `CLIPTextModel` + `CLIPTokenizer`;
- `LDMPipeline`: `UNet2DModel` + `VQModel` (unconditional),
each with a DDPM-family scheduler (one with `alphas_cumprod`), and returns a `LatentPipeline`: the
teacher as a pd_fast model (`model`, `schedule`, `param`, as for pixel pipelines) and what a job needs
around it: `encode_prompt`, `null_condition`, `encode_images`, `decode_latents`. Everything else
(SDXL, inpainting UNets, ControlNet, flow-matching pipelines such as SD3 and Flux, an autoencoder
whose channels are not the UNet's) is refused with one ValueError line naming what is supported.

**The teacher.** `CrossAttentionUNet(unet, T)`: `model(z, t, cond)` calls the UNet at timestep
`t*T - 1` (docs/spec.md section 9) with `encoder_hidden_states=cond`, `cond` the `(B, L, D)` of
`encode_prompt`. **The w-conditioned student** ([GD] stage 1, docs/spec.md section 10):
`w_conditioned_student(teacher, embedding_dim=256, w_max)` is a copy of the teacher's UNet with
`time_cond_proj_dim = embedding_dim`, the teacher's weights and `time_embedding.cond_proj` at zero,
so it equals the teacher for every w; it is called `student(z, t, cond, w)` with
`timestep_cond = guidance_embedding(w, embedding_dim)`, as `StableDiffusionPipeline` embeds
`guidance_scale - 1`, of which it reads only the features smooth over [0, w_max] (`guidance_band`; both in
`pd_fast.integrations.w_embedding`).
**Export.** `export_latent_pipeline` (through `to_diffusers(..., pipeline=teacher)`) writes the
student with the teacher's autoencoder, text encoder and tokenizer and the DDIMScheduler of
docs/spec.md section 9, as a `StableDiffusionPipeline` (no safety checker) or `LDMPipeline` folder.

diffusers and transformers are optional dependencies (`pip install -e .[diffusers]`), imported
inside the functions: importing this module imports neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .diffusers import (
    DiffusersUNet,
    _diffusers,
    _load_scheduler,
    _read_json,
    ddim_scheduler,
    schedule_and_param,
    write_export_info,
)
from .w_embedding import guidance_band, guidance_embedding, guidance_frequencies

__all__ = [
    "LatentPipeline",
    "CrossAttentionUNet",
    "guidance_frequencies",
    "guidance_embedding",
    "guidance_band",
    "w_conditioned_student",
    "pipeline_kind",
    "latent_pipeline_kind",
    "load_latent_pipeline",
    "export_latent_pipeline",
    "numpy_images",
    "SUPPORTED",
    "DEFAULT_GUIDANCE_DIM",
]

#: what `from_diffusers` imports, said in every refusal
SUPPORTED = (
    "pd_fast imports UNet2DModel pipelines (DDPMPipeline, DDIMPipeline), LDMPipeline (UNet2DModel + "
    "VQModel) and StableDiffusionPipeline (UNet2DConditionModel + AutoencoderKL + CLIPTextModel + "
    "CLIPTokenizer), with a DDPM-family scheduler"
)
#: `time_cond_proj_dim` of the w-conditioned student (docs/spec.md section 10)
DEFAULT_GUIDANCE_DIM = 256
#: model_index.json components a latent pipeline may hold besides its own (not loaded)
IGNORED_COMPONENTS = ("scheduler", "safety_checker", "feature_extractor", "image_encoder")
#: component name -> accepted classes, per kind
KINDS = {
    "stable_diffusion": {
        "unet": ("UNet2DConditionModel",),
        "vae": ("AutoencoderKL",),
        "text_encoder": ("CLIPTextModel",),
        "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    },
    "ldm": {"unet": ("UNet2DModel",), "vqvae": ("VQModel",)},
}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Stable Diffusion pipelines need the optional dependency transformers: pip install "
            "'progressive-distillation[diffusers]' (or pip install -e .[diffusers] in a clone)"
        ) from err
    return transformers


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers' and transformers' progress bars and notices off while they load or save a pipeline
    (a job's stderr carries its own progress and one-line errors), as they were afterwards; also a
    decorator (`load_latent_pipeline`, `export_latent_pipeline`)."""
    libraries = [_diffusers().utils.logging] + (
        [_transformers().utils.logging] if _has_transformers() else []
    )
    states = [(lib.is_progress_bar_enabled(), lib.get_verbosity()) for lib in libraries]
    for lib in libraries:
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, (bar, verbosity) in zip(libraries, states, strict=True):
            lib.set_verbosity(verbosity)
            if bar:
                lib.enable_progress_bar()


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


# ----- the cross-attention UNet -------------------------------------------------------------------


class CrossAttentionUNet(DiffusersUNet):
    """A diffusers `UNet2DConditionModel` as a pd_fast model of continuous time (docs/spec.md
    sections 9 and 10): `forward(z, t, cond, w=None)`.

    z (B, C, H, W) latents; t (B,) or 0-d in [0, 1], the network called at `k = t*T - 1`
    (`timesteps(t)`, as `DiffusersUNet`); cond (B, L, D) or (1, L, D) (broadcast over the batch):
    `encoder_hidden_states`, from `LatentPipeline.encode_prompt`. A UNet with `time_cond_proj_dim`
    (the w-conditioned student) needs `w` (float, 0-d or (B,): docs/spec.md section 8's w, the
    pipeline's `guidance_scale - 1`), passed as `timestep_cond = guidance_embedding(w, d)`; any other
    UNet refuses `w` (its guidance is the sampler's two calls per step). Returns `.sample` in z's dtype.
    """

    def __init__(self, unet: nn.Module, num_train_timesteps: int) -> None:
        super().__init__(unet, num_train_timesteps)
        dim = unet.config.time_cond_proj_dim
        # computed once on the CPU as the pipeline computes them, moved once to the data's device
        self._frequencies = None if dim is None else guidance_frequencies(int(dim))
        #: the w embedding's features the UNet reads (`guidance_band`), None for all of them
        self.guidance_mask: Tensor | None = None

    @property
    def conditional(self) -> bool:
        """Always: the UNet is called with a text condition."""
        return True

    @property
    def guidance_dim(self) -> int | None:
        """`time_cond_proj_dim`: the size of the w embedding, None for a UNet without one."""
        dim = self.unet.config.time_cond_proj_dim
        return None if dim is None else int(dim)

    def _condition(self, cond: Any, z: Tensor) -> Tensor:
        width = self.unet.config.cross_attention_dim
        if not isinstance(cond, Tensor) or cond.ndim != 3 or cond.shape[0] not in (1, z.shape[0]):
            shape = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(
                f"cond must be a ({z.shape[0]}, L, {width}) tensor (encode_prompt's), or (1, L, {width}), "
                f"got {shape}"
            )
        if isinstance(width, int) and cond.shape[2] != width:
            raise ValueError(f"cond: the UNet attends to {width} features, got {cond.shape[2]}")
        return cond.expand(z.shape[0], -1, -1)

    def _timestep_cond(self, w: Any, z: Tensor) -> Tensor:
        w = torch.as_tensor(w, device=z.device)
        if w.ndim == 0:
            w = w.expand(z.shape[0])
        if w.shape != (z.shape[0],) or w.is_complex() or w.dtype == torch.bool:
            raise ValueError(f"w must be a float, 0-d or ({z.shape[0]},), got shape {tuple(w.shape)}")
        if self._frequencies.device != z.device:
            self._frequencies = self._frequencies.to(z.device)
        emb = guidance_embedding(w, self.guidance_dim, self._frequencies)
        if self.guidance_mask is not None:
            if self.guidance_mask.device != z.device:
                self.guidance_mask = self.guidance_mask.to(z.device)
            emb = emb * self.guidance_mask  # the other columns of cond_proj stay zero: no gradient
        return emb

    def check_guidance_band(self) -> None:
        """ValueError where `cond_proj` weighs a feature outside `guidance_mask`: diffusers'
        pipeline feeds it every feature, so the exported UNet would not be this model."""
        if self.guidance_mask is None:
            return
        weight = self.unet.time_embedding.cond_proj.weight
        outside = ~self.guidance_mask.to(weight.device)
        if bool(weight.detach()[:, outside].any()):
            raise ValueError(
                "model: its w embedding weighs features outside guidance_mask, which diffusers' pipeline "
                "would feed it; zero those columns of time_embedding.cond_proj or set guidance_mask to None"
            )

    def forward(self, z: Tensor, t: Any, cond: Tensor | None = None, w: Any = None) -> Tensor:
        t = self.batch_times(z, t)
        if cond is None:
            raise ValueError(
                "cond: this UNet is text-conditioned; call model(z, t, cond) with cond from encode_prompt "
                "(null_condition() for the unconditional output)"
            )
        cond = self._condition(cond, z)
        dtype = self.unet.dtype
        kwargs = {}
        if self.guidance_dim is not None:
            if w is None:
                raise ValueError(
                    f"w: this UNet is w-conditioned (time_cond_proj_dim = {self.guidance_dim}); call "
                    "model(z, t, cond, w)"
                )
            kwargs["timestep_cond"] = self._timestep_cond(w, z).to(dtype)
        elif w is not None:
            raise ValueError(
                "w: this UNet has no w embedding (time_cond_proj_dim); guide it in the sampler, with "
                "its conditional and null-condition outputs"
            )
        out = self.unet(z.to(dtype), self.timesteps(t), encoder_hidden_states=cond.to(dtype), **kwargs)
        return out.sample.to(z.dtype)


def w_conditioned_student(
    teacher: CrossAttentionUNet, embedding_dim: int = DEFAULT_GUIDANCE_DIM, w_max: float | None = None
) -> CrossAttentionUNet:
    """[GD] stage 1's student in diffusers' own terms (docs/spec.md section 10): a new
    `UNet2DConditionModel` of the teacher's config with `time_cond_proj_dim = embedding_dim`, holding
    the teacher's weights, and `time_embedding.cond_proj` (bias-free) at zero, so that
    `student(z, t, cond, w) == teacher(z, t, cond)` exactly for every w until it is trained.
    `w_max` (the largest w it will learn): it reads only `guidance_band(embedding_dim, w_max)`
    (`guidance_mask`; the other columns of `cond_proj` get no gradient and stay zero, so diffusers'
    pipeline, which feeds every feature, computes the same); None: every feature.
    On the teacher's device and dtype, in the teacher's train/eval mode; the teacher is untouched."""
    if not isinstance(teacher, CrossAttentionUNet):
        raise ValueError(
            f"teacher must be the CrossAttentionUNet of a Stable Diffusion pipeline, got {type(teacher)!r}"
        )
    if teacher.guidance_dim is not None:
        raise ValueError(
            f"teacher: its UNet already embeds w (time_cond_proj_dim = {teacher.guidance_dim}); a "
            "w-conditioned model is distilled further as it is"
        )
    band = None if w_max is None else guidance_band(embedding_dim, w_max)  # checks both
    guidance_frequencies(embedding_dim)  # checks embedding_dim
    unet = teacher.unet
    new = type(unet).from_config(unet.config, time_cond_proj_dim=embedding_dim)
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if list(missing) != ["time_embedding.cond_proj.weight"] or unexpected:
        raise ValueError(
            f"teacher: its weights do not fit a UNet with time_cond_proj_dim (missing {missing}, unexpected "
            f"{unexpected})"
        )
    with torch.no_grad():
        new.time_embedding.cond_proj.weight.zero_()
    with quiet_libraries():  # no notice about modules kept in float32: none are, and the dtype is kept
        new.to(device=unet.device, dtype=unet.dtype).train(teacher.training)
    student = CrossAttentionUNet(new, teacher.num_train_timesteps).train(teacher.training)
    student.guidance_mask = band if band is None else band.to(unet.device)
    return student


# ----- what a folder holds (JSON only) -------------------------------------------------------------


def _components(index: dict) -> dict[str, str]:
    """model_index.json's components, name -> class (entries saved as None, e.g. no safety checker,
    left out)."""
    return {
        name: value[1]
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1] is not None
    }


def _family_refusal(components: dict[str, str]) -> str | None:
    """What the folder is, for pipelines pd_fast knows it cannot import; None otherwise."""
    scheduler = components.get("scheduler", "")
    if scheduler.startswith("FlowMatch") or "transformer" in components:
        what = components.get("transformer", scheduler)
        return f"a flow-matching pipeline ({what}; e.g. SD3, Flux), not a DDPM-family diffusion model"
    if "text_encoder_2" in components or "tokenizer_2" in components:
        return "a Stable Diffusion XL pipeline (two text encoders)"
    if "controlnet" in components:
        return "a ControlNet pipeline (a second network conditions the UNet)"
    return None


def _kind_of(components: dict[str, str]) -> str | None:
    """ "stable_diffusion", "ldm", "pixel" (a UNet2DModel and its scheduler only) or None."""
    own = {k: v for k, v in components.items() if k not in IGNORED_COMPONENTS}
    if own == {"unet": "UNet2DModel"}:
        return "pixel"
    for kind, wanted in KINDS.items():
        if set(own) == set(wanted) and all(own[k] in wanted[k] for k in wanted):
            return kind
    return None


def _config(folder: Path, name: str) -> dict:
    path = folder / name / "config.json"
    if not path.is_file():
        raise ValueError(f"path: {folder} has no {name}/config.json; {SUPPORTED}")
    return _read_json(path)


def _channel_refusal(folder: Path, kind: str) -> str | None:
    """Why the components' channels do not fit each other (configs only); None if they do."""
    unet = _config(folder, "unet")
    c_in, c_out = unet.get("in_channels", 4), unet.get("out_channels", 4)
    if c_in != c_out:
        return (
            f"a UNet of {c_in} input and {c_out} output channels (an inpainting UNet takes 9: latents, mask "
            "and masked image)"
        )
    if unet.get("addition_embed_type") or unet.get("class_embed_type") or unet.get("num_class_embeds"):
        return "a UNet with added or class embeddings, which the pipelines pd_fast exports do not pass"
    if kind == "ldm":
        vq = _config(folder, "vqvae")
        latent = vq.get("vq_embed_dim") or vq.get("latent_channels", 3)
        return None if latent == c_in else f"a VQModel of {latent} latent channels for a UNet of {c_in}"
    vae = _config(folder, "vae")
    if vae.get("latent_channels", 4) != c_in:
        return f"an AutoencoderKL of {vae.get('latent_channels', 4)} latent channels for a UNet of {c_in}"
    width, hidden = unet.get("cross_attention_dim"), _config(folder, "text_encoder").get("hidden_size")
    if isinstance(width, int) and width != hidden:
        return f"a UNet attending to {width} features and a text encoder of {hidden}"
    return None


def pipeline_kind(folder: str | os.PathLike, index: dict) -> str | None:
    """ "stable_diffusion" or "ldm" for the latent pipelines this module imports, None for a
    pixel-space UNet2DModel pipeline (`from_diffusers`' own); a ValueError of one line naming what is
    supported for anything else. `index` is the folder's model_index.json. Reads JSON only."""
    folder = Path(folder)
    components = _components(index)
    name = index.get("_class_name", "pipeline")
    why = _family_refusal(components)
    kind = _kind_of(components) if why is None else None
    if kind == "pixel":
        return None
    if why is None and kind is None:
        listed = ", ".join(f"{k}={v}" for k, v in sorted(components.items()))
        why = f"a {name} of components {listed or 'none'}"
    if why is None:
        why = _channel_refusal(folder, kind)
    if why is not None:
        raise ValueError(f"path: {folder} holds {why}; {SUPPORTED}")
    return kind


def latent_pipeline_kind(path: str | os.PathLike) -> str | None:
    """`pipeline_kind` of a folder: "stable_diffusion", "ldm", or None for a pixel-space pipeline or
    a bare model folder (no model_index.json); refuses what `pipeline_kind` refuses. JSON only."""
    index = Path(path) / "model_index.json"
    return pipeline_kind(path, _read_json(index)) if index.is_file() else None


# ----- import ----------------------------------------------------------------------------------


@dataclass(eq=False)
class LatentPipeline:
    """A latent diffusion pipeline imported into pd_fast (docs/spec.md section 10): the teacher and
    the frozen parts around it. `from_diffusers(path)` returns it for a latent pipeline folder.

    kind: "stable_diffusion" or "ldm". model: the teacher in eval mode, a `CrossAttentionUNet`
    (`model(z, t, cond)`) or, for LDM, a `DiffusersUNet` (`model(z, t)`). schedule, param: as
    `from_diffusers` gives them for pixel pipelines. autoencoder: the `AutoencoderKL` or `VQModel`;
    text_encoder, tokenizer: the `CLIPTextModel` and `CLIPTokenizer` (None for LDM), all in eval mode
    with gradients off. source: the folder. Images are (B, 3, H, W) in [-1, 1].
    """

    kind: str
    model: DiffusersUNet
    schedule: Any
    param: str
    autoencoder: nn.Module
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    source: Path | None = None

    @property
    def scaling_factor(self) -> float:
        """The autoencoder's `scaling_factor`: latents are `scaling_factor * E(x)`."""
        return float(self.autoencoder.config.scaling_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents the pipeline samples (the UNet's `in_channels`, `sample_size`)."""
        cfg = self.model.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg.in_channels), int(h), int(w)

    def to(self, device: Any) -> LatentPipeline:
        """Moves the teacher, the autoencoder and the text encoder to `device`; returns self."""
        for part in (self.model, self.autoencoder, self.text_encoder):
            if part is not None:
                part.to(device)
        return self

    def encode_prompt(self, prompts: list[str] | str) -> Tensor:
        """The text condition (B, L, D), exactly `StableDiffusionPipeline.encode_prompt(prompts, ...)`'s
        `prompt_embeds` (one image per prompt, no clip skip): tokens padded and truncated to the
        tokenizer's `model_max_length`, the text encoder's last hidden state, on its device and dtype."""
        if self.text_encoder is None:
            raise ValueError(f"encode_prompt: a {self.kind} pipeline is unconditional (no text encoder)")
        if isinstance(prompts, str):
            prompts = [prompts]
        strings = isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts)
        if not strings or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        with torch.no_grad():
            hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return hidden.to(dtype=self.text_encoder.dtype, device=device)

    def null_condition(self) -> Tensor:
        """The null condition (1, L, D): the embedding of the empty prompt, which the pipeline uses for
        classifier-free guidance without a negative prompt (docs/spec.md section 10)."""
        return self.encode_prompt([""])

    def encode_images(self, x: Tensor) -> Tensor:
        """Latents `z0 = scaling_factor * E(x)` of images x (B, 3, H, W) in [-1, 1] (docs/spec.md section
        10): `AutoencoderKL`: `latent_dist.mean` (deterministic); `VQModel`: the encoder's output before
        quantisation (`VQModel.encode(x).latents`). In the autoencoder's dtype and on its device."""
        channels = self.autoencoder.config.in_channels
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a (B, {channels}, H, W) tensor of images in [-1, 1], got {shape}")
        ae = self.autoencoder
        with torch.no_grad():
            out = ae.encode(x.to(device=ae.device, dtype=ae.dtype))
            h = out.latents if self.kind == "ldm" else out.latent_dist.mean
        return h * self.scaling_factor

    def decode_latents(self, z: Tensor) -> Tensor:
        """Images (B, 3, H, W), about [-1, 1] and not clamped, of latents z, as the pipeline decodes
        them: `D(z / scaling_factor)` (`VQModel.decode` quantises first, as in `LDMPipeline`).
        `numpy_images` of it is the pipeline's `output_type="np"`."""
        ae = self.autoencoder
        with torch.no_grad():
            return ae.decode(z.to(device=ae.device, dtype=ae.dtype) / self.scaling_factor).sample


def numpy_images(x: Tensor) -> Any:
    """Images in [-1, 1] as the pipelines' `output_type="np"`: `(x/2 + 0.5).clamp(0, 1)`, float32
    NumPy, channels last."""
    return (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


@quiet_libraries()
def load_latent_pipeline(path: str | os.PathLike, scheduler: Any = None) -> LatentPipeline:
    """A `StableDiffusionPipeline` or `LDMPipeline` folder as a `LatentPipeline` (module docstring);
    `scheduler` (a diffusers scheduler or its folder) overrides the folder's own. Refuses other
    folders as `pipeline_kind` does."""
    folder = Path(path)
    kind = latent_pipeline_kind(folder)
    if kind is None:
        raise ValueError(f"path: {folder} is a pixel-space pipeline; from_diffusers imports it")
    scheduler = _load_scheduler(folder / "scheduler" if scheduler is None else scheduler)
    schedule, param = schedule_and_param(scheduler)
    T = int(scheduler.config.num_train_timesteps)
    diffusers = _diffusers()
    load = {"low_cpu_mem_usage": False}
    if kind == "ldm":
        unet = diffusers.UNet2DModel.from_pretrained(str(folder / "unet"), **load)
        vq = diffusers.VQModel.from_pretrained(str(folder / "vqvae"), **load)
        model = DiffusersUNet(unet, T).eval()
        return LatentPipeline(kind, model, schedule, param, _frozen(vq), source=folder)
    transformers = _transformers()
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(folder / "unet"), **load)
    vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae"), **load)
    text_encoder = transformers.CLIPTextModel.from_pretrained(str(folder / "text_encoder"))
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = CrossAttentionUNet(unet, T).eval()
    parts = (_frozen(vae), _frozen(text_encoder), tokenizer)
    return LatentPipeline(kind, model, schedule, param, *parts, source=folder)


# ----- export ----------------------------------------------------------------------------------


def _latent_channels(pipeline: LatentPipeline) -> int:
    cfg = pipeline.autoencoder.config
    if pipeline.kind == "ldm":
        return int(getattr(cfg, "vq_embed_dim", None) or cfg.latent_channels)
    return int(cfg.latent_channels)


def _check_student(unet: nn.Module, pipeline: LatentPipeline) -> None:
    """The student's UNet fits the pipeline: its class, channels and (Stable Diffusion) text width."""
    wanted = KINDS[pipeline.kind]["unet"][0]
    if type(unet).__name__ != wanted:
        raise ValueError(
            f"model: a {pipeline.kind} pipeline's student is a {wanted}, got {type(unet).__name__}"
        )
    cfg, channels = unet.config, _latent_channels(pipeline)
    if cfg.in_channels != channels or cfg.out_channels != channels:
        raise ValueError(
            f"model: the UNet has {cfg.in_channels} input and {cfg.out_channels} output channels; the "
            f"pipeline's autoencoder has {channels} latent channels"
        )
    if getattr(unet, "class_embedding", None) is not None:
        raise ValueError("model: a class-conditional UNet cannot be exported (the pipelines pass no labels)")
    if pipeline.kind == "stable_diffusion":
        width, hidden = cfg.cross_attention_dim, pipeline.text_encoder.config.hidden_size
        if isinstance(width, int) and width != hidden:
            raise ValueError(f"model: the UNet attends to {width} features, the text encoder gives {hidden}")


@quiet_libraries()
def export_latent_pipeline(
    unet: nn.Module,
    num_train_timesteps: int,
    schedule: Any,
    param: str,
    path: str | os.PathLike,
    steps: int,
    pipeline: LatentPipeline | str | os.PathLike,
) -> Path:
    """Write a student UNet with its teacher's pipeline (docs/spec.md section 10), returning the folder.

    `pipeline`: the teacher's `LatentPipeline` (or its folder). Stable Diffusion: a
    `StableDiffusionPipeline` of the student UNet, the teacher's autoencoder, text encoder and
    tokenizer unchanged, `ddim_scheduler(schedule, T, param)` (trailing, `clip_sample=False`,
    `set_alpha_to_one=True`, `trained_betas`), no safety checker (`requires_safety_checker=False`):
    `pipe(prompt, num_inference_steps=steps, guidance_scale=1 + w, latents=z, output_type="latent")`
    is `pd_fast.sample(lambda z, t: student(z, t, encode_prompt(prompt), w), z, steps, schedule, param,
    clip=False)`, one UNet call per step for a w-conditioned student. LDM: an `LDMPipeline` of the
    student UNet, the teacher's VQModel and that scheduler. Called by `to_diffusers(..., pipeline=)`,
    which has checked `steps` and `param`.
    """
    if pipeline is None:
        raise ValueError(
            f"pipeline: a {type(unet).__name__} student is exported with its teacher's autoencoder and "
            "text encoder: pass pipeline= (what from_diffusers gave for the teacher's folder)"
        )
    if not isinstance(pipeline, LatentPipeline):
        pipeline = load_latent_pipeline(pipeline)
    _check_student(unet, pipeline)
    diffusers, out = _diffusers(), Path(path)
    scheduler = ddim_scheduler(schedule, num_train_timesteps, param)
    if pipeline.kind == "ldm":
        pipe = diffusers.LDMPipeline(vqvae=pipeline.autoencoder, unet=unet, scheduler=scheduler)
        call = f"LDMPipeline.from_pretrained(path)(num_inference_steps={steps}, output_type='np')"
    else:
        pipe = diffusers.StableDiffusionPipeline(
            vae=pipeline.autoencoder,
            text_encoder=pipeline.text_encoder,
            tokenizer=pipeline.tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        call = (
            f"StableDiffusionPipeline.from_pretrained(path)(prompt, num_inference_steps={steps}, "
            "guidance_scale=1 + w)"
        )
    pipe.save_pretrained(str(out))
    guidance_dim = getattr(unet.config, "time_cond_proj_dim", None)
    info = {
        "steps": steps,
        "param": param,
        "num_train_timesteps": num_train_timesteps,
        "pipeline": type(pipe).__name__,
        "guidance_embedding_dim": guidance_dim,
        "sample": call,
    }
    write_export_info(out, info)
    return out
