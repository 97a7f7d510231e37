"""The teacher of `text2img_teacher.py`: a tiny Stable-Diffusion-shaped pipeline trained with
diffusers' own text-to-image recipe (its example `examples/text_to_image/train_text_to_image.py`,
scaled down for a CPU), not with this project's trainer.

- **Data**: scikit-learn's 8x8 digits upsampled to 16 x 16 RGB (`pd_fast.app.captioned.captioned_digits`:
  antialiased bicubic, gray repeated), each captioned by a template naming its digit ("a handwritten
  digit seven", "the number 7", "a drawing of the digit 7", "seven"); written as an imagefolder
  (PNG files and `metadata.jsonl` with `file_name` and `text`), the images rounded to 8 bits.
- **Tokenizer**: a word-level `CLIPTokenizer`: its vocabulary (`vocab.json`, `merges.txt`, written
  here) holds every word of the templates as one token, its BPE merges building each word from its
  letters; `model_max_length` 8 (the longest caption is 6 words, plus start and end).
- **Text encoder**: a small `CLIPTextModel`, randomly initialised and frozen (never trained: the
  UNet learns to read its features, as Stable Diffusion's UNet reads a frozen CLIP's).
- **Autoencoder**: an `AutoencoderKL` (16 x 16 x 3 -> 8 x 8 x 4) trained here on the images with a
  mean-squared reconstruction loss on `latent_dist.sample()` plus a small KL term; its
  `scaling_factor` is then set to 1 / the standard deviation of the data's latent means (how
  Stable Diffusion's 0.18215 was chosen).
- **UNet**: a `UNet2DConditionModel` with cross-attention at 4 x 4 and in the middle block;
  `DDPMScheduler(1000, "scaled_linear", 0.00085, 0.012)` (Stable Diffusion's betas), per batch
  `latents = vae.encode(x).latent_dist.sample() * scaling_factor` (the frozen encoder's mean and
  std are computed once and sampled per batch: the same draw), `timesteps ~ U{0 .. T-1}`,
  `noisy = scheduler.add_noise(latents, noise, timesteps)`, 10% of the captions replaced by the
  empty prompt (`--proportion_empty_prompts 0.1`), loss `MSE(unet(noisy, timesteps, text).sample,
  noise)` (eps prediction); AdamW (betas 0.9/0.999, weight decay 1e-2), constant learning rate after
  a linear warm-up, gradient clipping at 1, `EMAModel` (its default decay: min(0.9999,
  (1 + step) / (10 + step))).

Saved with `StableDiffusionPipeline.save_pretrained` (no safety checker), as a diffusers user would.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from pd_fast.app.captioned import DIGIT_TEMPLATES, DIGIT_WORDS

MAX_LENGTH = 8
TEXT_WIDTH = 32
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def template_words() -> list[str]:
    """Every word the caption templates can produce (CLIP's tokenizer splits numerals digit by digit)."""
    words: list[str] = []
    for template in DIGIT_TEMPLATES:
        for label, name in enumerate(DIGIT_WORDS):
            for word in template.format(word=name, n=label).split():
                if word not in words:
                    words.append(word)
    return words


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one word (letters, the last one marked `</w>`): merge the pair
    of lowest rank, everywhere in the word, until no pair has a rank."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get(p, 1 << 30), p) for p in zip(parts, parts[1:], strict=False)]
        rank, best = min(pairs)
        if rank == 1 << 30:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def write_tokenizer(folder: Path, words: list[str]) -> Any:
    """A word-level `CLIPTokenizer` over `words`, from `vocab.json` and `merges.txt` written into
    `folder`: merges are added (each with the lowest priority so far, so that no earlier word's
    merging changes) until every word is one token; every letter and merge result is in the vocabulary.
    Checks that each word encodes to exactly one token."""
    from transformers import CLIPTokenizer

    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
    tokens = list(SPECIAL)
    letters = [c for word in words for c in list(word[:-1]) + [word[-1] + "</w>"]]
    for token in letters + [a + b for a, b in ranks]:
        if token not in tokens:
            tokens.append(token)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    merges = "".join(f"{a} {b}\n" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_LENGTH}))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"the word tokenizer splits {word!r} into {ids}")
    return tokenizer


def text_encoder(vocab_size: int, seed: int) -> Any:
    """A small randomly initialised `CLIPTextModel` (frozen: evaluation mode, no gradients)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )  # fmt: skip
    return CLIPTextModel(config).eval().requires_grad_(False)


def train_vae(x: torch.Tensor, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """An `AutoencoderKL` on images x (N, 3, 16, 16) in [-1, 1] (module docstring)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    channels = tuple(int(c) for c in args.vae_channels.split(","))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels,
        latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=x.shape[-1],
    )  # fmt: skip
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.perf_counter()
    vae.train()
    for _ in range(args.vae_iters):
        batch = x[torch.randint(0, x.shape[0], (args.batch,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = F.mse_loss(recon, batch)
        loss = mse + args.vae_kl * posterior.kl().mean() / batch[0].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(mse.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
        scale = 1.0 / float(mean.std())
    vae.register_to_config(scaling_factor=scale)
    info = {
        "block_out_channels": list(channels),
        "latent_shape": list(mean.shape[1:]),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "iters": args.vae_iters,
        "kl_weight": args.vae_kl,
        "reconstruction_mse_last_100": float(np.mean(losses[-100:])),
        "scaling_factor": scale,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return vae, info


def build_unet(args: argparse.Namespace) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(args.seed)
    channels = tuple(int(c) for c in args.unet_channels.split(","))
    n = len(channels)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=TEXT_WIDTH, norm_num_groups=8, attention_head_dim=2,
    )  # fmt: skip


def scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )  # fmt: skip


def encode_all(vae: Any, encoder: Any, tokenizer: Any, x: torch.Tensor, captions: list[str]) -> dict:
    """The frozen parts' outputs, computed once: the latent distribution's mean and std of every
    image, the caption embeddings and the empty prompt's (as `StableDiffusionPipeline.encode_prompt`)."""

    def embed(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(
            texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        return encoder(ids.input_ids)[0]

    with torch.no_grad():
        dists = [vae.encode(x[i : i + 256]).latent_dist for i in range(0, len(x), 256)]
        cond = torch.cat([embed(captions[i : i + 256]) for i in range(0, len(captions), 256)])
        return dict(
            mean=torch.cat([d.mean for d in dists]), std=torch.cat([d.std for d in dists]),
            cond=cond, null=embed([""]),
        )  # fmt: skip


def train_unet(encoded: dict, scale: float, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """diffusers' text-to-image recipe (module docstring) on the encoded data."""
    from diffusers.optimization import get_constant_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    unet, noise_scheduler = build_unet(args), scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.teacher_lr, betas=(0.9, 0.999), weight_decay=1e-2)
    warmup = min(500, args.teacher_iters // 10)
    lr_schedule = get_constant_schedule_with_warmup(opt, warmup)
    ema = EMAModel(unet.parameters())
    gen = torch.Generator().manual_seed(args.seed + 1)
    T, n = noise_scheduler.config.num_train_timesteps, encoded["mean"].shape[0]
    losses, t0 = [], time.perf_counter()
    unet.train()
    for _ in range(args.teacher_iters):
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        mean, std = encoded["mean"][idx], encoded["std"][idx]
        latents = (mean + std * torch.randn(mean.shape, generator=gen)) * scale
        empty = torch.rand(args.batch, generator=gen) < args.p_empty
        text = torch.where(empty[:, None, None], encoded["null"], encoded["cond"][idx])
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, T, (args.batch,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, text).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        losses.append(loss.item())
    ema.copy_to(unet.parameters())
    info = {
        "block_out_channels": [int(c) for c in args.unet_channels.split(",")],
        "parameters": sum(p.numel() for p in unet.parameters()),
        "scheduler": {k: v for k, v in noise_scheduler.config.items() if not k.startswith("_")},
        "iters": args.teacher_iters,
        "batch_size": args.batch,
        "lr": args.teacher_lr,
        "warmup": warmup,
        "proportion_empty_prompts": args.p_empty,
        "loss_last_100": float(np.mean(losses[-100:])),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return unet.eval(), noise_scheduler, info


def write_imagefolder(images: torch.Tensor, captions: list[str], folder: Path) -> Path:
    """Images (N, 3, H, W) in [-1, 1] as 8-bit PNG files with `metadata.jsonl` (file_name, text)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i, (p, text) in enumerate(zip(pixels, captions, strict=True)):
            name = f"{i:05d}.png"
            Image.fromarray(p).save(folder / name)
            f.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return folder


def build_teacher(work: Path, args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """The data folder and the teacher pipeline folder under `work`, and what was trained."""
    from diffusers import StableDiffusionPipeline

    from pd_fast.app.captioned import load_captioned

    data_dir = write_imagefolder(*_digits16(), work / "data")
    data = load_captioned(str(data_dir))  # what the CLI reads: the 8-bit images
    tokenizer = write_tokenizer(work / "_tokenizer", template_words())
    encoder = text_encoder(len(tokenizer.get_vocab()), args.seed)
    vae, vae_info = train_vae(data.images, args)
    encoded = encode_all(vae, encoder, tokenizer, data.images, data.captions)
    unet, noise_scheduler, unet_info = train_unet(encoded, vae.config.scaling_factor, args)
    teacher_dir = work / "teacher"
    StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=noise_scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(str(teacher_dir))  # fmt: skip
    info = {
        "data": {"examples": len(data), "image_shape": list(data.images.shape[1:]),
                 "templates": DIGIT_TEMPLATES},
        "tokenizer": {"vocabulary": len(tokenizer.get_vocab()), "words": template_words(),
                      "model_max_length": MAX_LENGTH},
        "text_encoder": {"kind": "CLIPTextModel, random initialisation, frozen", "width": TEXT_WIDTH,
                         "parameters": sum(p.numel() for p in encoder.parameters())},
        "vae": vae_info,
        "unet": unet_info,
    }  # fmt: skip
    return data_dir, teacher_dir, info


def _digits16() -> tuple[torch.Tensor, list[str]]:
    from pd_fast.app.captioned import captioned_digits

    data = captioned_digits(16, 3)
    return data.images, data.captions
