"""Tiny, randomly initialised diffusers pipelines, to try the commands and to test with: nothing is
downloaded, and each saves in a second on a CPU.

    python -m pd_fast.integrations.tiny sd DIR     # a StableDiffusionPipeline folder (v-prediction)
    python -m pd_fast.integrations.tiny ldm DIR    # an LDMPipeline folder
    python -m pd_fast.integrations.tiny ddpm DIR   # a DDPMPipeline folder (pixels, 1 x 8 x 8, eps)

`save_sd(folder, scheduler, unet=None, vae=None)` and `save_ldm(folder, vq=None)` write them from
Python; `tiny_tokenizer`, `tiny_text_encoder`, `tiny_cond_unet`, `tiny_vae`, `tiny_vq` and
`tiny_unet` build the parts (a CLIP BPE tokenizer over single letters and a few words, from files
written into the folder; latents 4 x 8 x 8 for 16 x 16 images). Their outputs are noise: they check
that the plumbing works, not what distillation achieves.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any

import torch

MAX_LENGTH, WIDTH = 8, 16  # the tokenizer's model_max_length and the text encoder's width
#: Stable Diffusion's betas (scaled_linear from 0.00085 to 0.012)
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def tiny_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer over single letters and the words "cat" and "dog", from files written
    into `folder`, padding to 8 tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase)
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    tokens += ["ca", "cat</w>", "do", "dog</w>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_LENGTH}))
    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_text_encoder(seed: int = 0) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=60, hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    return CLIPTextModel(config).eval()


def tiny_cond_unet(seed: int = 0, **kwargs: Any) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH, norm_num_groups=4, attention_head_dim=2,
    )  # fmt: skip
    config.update(kwargs)
    return UNet2DConditionModel(**config).eval()


def tiny_vae(seed: int = 0, **kwargs: Any) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    config = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=16,
    )  # fmt: skip
    config.update(kwargs)
    return AutoencoderKL(**config).eval()


def tiny_vq(seed: int = 0, **kwargs: Any) -> Any:
    from diffusers import VQModel

    torch.manual_seed(seed)
    config = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=3,
        num_vq_embeddings=32, norm_num_groups=4, layers_per_block=1, sample_size=16, scaling_factor=0.5,
    )  # fmt: skip
    config.update(kwargs)
    return VQModel(**config).eval()


def tiny_unet(seed: int = 0, channels: int = 3) -> Any:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4, add_attention=False,
    ).eval()  # fmt: skip


def save_sd(folder: Path, scheduler: Any = None, unet: Any = None, vae: Any = None) -> Path:
    """A tiny `StableDiffusionPipeline` folder (default scheduler: DDPM with Stable Diffusion's
    betas, v-prediction)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if scheduler is None:
        scheduler = DDPMScheduler(
            **SD_BETAS, steps_offset=1, clip_sample=False, prediction_type="v_prediction"
        )
    folder = Path(folder)
    StableDiffusionPipeline(
        vae=vae or tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(folder / "_files"),
        unet=unet or tiny_cond_unet(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(str(folder))  # fmt: skip
    return folder


def save_ldm(folder: Path, vq: Any = None) -> Path:
    """A tiny `LDMPipeline` folder (DDPM, 1000 timesteps, v-prediction)."""
    from diffusers import DDPMScheduler, LDMPipeline

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    LDMPipeline(vqvae=vq or tiny_vq(), unet=tiny_unet(), scheduler=scheduler).save_pretrained(str(folder))
    return Path(folder)


def save_ddpm(folder: Path) -> Path:
    """A tiny pixel-space `DDPMPipeline` folder: a UNet2DModel on 1 x 8 x 8 images (the digits'
    shape), DDPM's default scheduler (1000 timesteps, linear betas, eps)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=tiny_unet(channels=1), scheduler=DDPMScheduler()).save_pretrained(str(folder))
    return Path(folder)


KINDS = {
    "sd": (save_sd, "StableDiffusionPipeline"),
    "ldm": (save_ldm, "LDMPipeline"),
    "ddpm": (save_ddpm, "DDPMPipeline"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: python -m pd_fast.integrations.tiny {{{'|'.join(KINDS)}}} DIR", file=sys.stderr)
        return 2
    from .latent import quiet_libraries

    save, kind = KINDS[argv[0]]
    with quiet_libraries():
        folder = save(Path(argv[1]))
    print(f"wrote a tiny random {kind} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
