"""Latent pipelines in and out (pd_fast.integrations.latent, docs/spec.md section 10), checked against
diffusers' own `StableDiffusionPipeline` and `LDMPipeline`: their prompt encoding, their denoising loops
(DDIMScheduler trailing) with and without guidance, their decoding, and the folders pd_fast exports.
Tiny components built here (a CLIP tokenizer from a vocab.json and merges.txt written here, a 2-layer
CLIPTextModel, 8x8 latents); nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pd_fast

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (  # noqa: E402
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    LDMPipeline,
    PNDMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (  # noqa: E402
    retrieve_latents,
)

from pd_fast.integrations.diffusers import DiffusersUNet, from_diffusers, to_diffusers  # noqa: E402
from pd_fast.integrations.latent import (  # noqa: E402
    SUPPORTED,
    CrossAttentionUNet,
    LatentPipeline,
    guidance_band,
    guidance_embedding,
    numpy_images,
    w_conditioned_student,
)
from pd_fast.integrations.tiny import (  # noqa: E402
    MAX_LENGTH,
    SD_BETAS,
    WIDTH,
    save_ldm,
    save_sd,
    tiny_cond_unet,
    tiny_unet,
    tiny_vae,
    tiny_vq,
)

ROOT = Path(__file__).resolve().parents[2]
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
logging.getLogger("diffusers").setLevel(logging.ERROR)

B = 2
PROMPTS = ["a cat", "a dog and a very long prompt cut at eight tokens"]
# fp32 tolerance of an N-step trajectory against diffusers' (its coefficients in float32, ours in
# float64; its guided eps on the doubled batch, ours per half)
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----- tiny components -------------------------------------------------------------------------


SD_SCHEDULERS = {
    # Stable Diffusion 1.x ships PNDM with scaled_linear betas and eps; 2.x v_prediction
    "pndm-eps": lambda: PNDMScheduler(**SD_BETAS, steps_offset=1, skip_prk_steps=True),
    "ddpm-v": lambda: DDPMScheduler(
        **SD_BETAS, steps_offset=1, clip_sample=False, prediction_type="v_prediction"
    ),
}


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("sd")
    return {name: save_sd(base / name, make()) for name, make in SD_SCHEDULERS.items()}


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    return save_ldm(tmp_path_factory.mktemp("ldm") / "pipe")


def ddim_trailing(pipe):
    """The pipeline with the scheduler of docs/spec.md section 9, from its own config."""
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(seed: int, shape=(B, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def guided(model, cond: torch.Tensor, null: torch.Tensor):
    """`model(z, t, labels)` for pd_fast's guided sampler: label i picks `cond[i]`, the null label -1
    the last row, the null condition."""
    table = torch.cat([cond, null])
    return lambda z, t, labels: model(z, t, table[labels])


def close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max())


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, *where) -> None:
    """Equal to ATOL, relative to the largest value where that is above 1 (random x students)."""
    scale = max(1.0, float(theirs.abs().max()))
    assert close(ours, theirs) <= ATOL * scale, (*where, close(ours, theirs), scale)


# ----- import: the text condition, the latents, the teacher ------------------------------------


def test_encode_prompt_and_null_condition_equal_the_pipelines(sd_folders):
    folder = sd_folders["pndm-eps"]
    latent = from_diffusers(folder)
    assert isinstance(latent, LatentPipeline) and latent.kind == "stable_diffusion"
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    cond = latent.encode_prompt(PROMPTS)
    assert cond.shape == (B, MAX_LENGTH, WIDTH)  # padded to model_max_length, the long prompt cut
    assert torch.equal(cond, embeds)
    assert torch.equal(latent.null_condition(), negative[:1]) and torch.equal(negative[0], negative[1])
    assert torch.equal(latent.encode_prompt("a cat"), embeds[:1])
    assert not torch.equal(cond[0], cond[1])


def test_latents_and_decoded_images_are_the_autoencoders_as_the_pipelines_use_it(sd_folders, ldm_folder):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sd = from_diffusers(sd_folders["pndm-eps"])
    vae, sf = sd.autoencoder, sd.scaling_factor
    with torch.no_grad():
        z0 = sd.encode_images(x)
        # the deterministic encoding of diffusers' image-to-image pipelines (argmax: the mean)
        assert torch.equal(z0, retrieve_latents(vae.encode(x), sample_mode="argmax") * sf)
        assert torch.equal(z0, vae.encode(x).latent_dist.mean * 0.18215) and z0.shape == (3, 4, 8, 8)
        assert torch.equal(sd.decode_latents(z0), vae.decode(z0 / sf).sample)
        # the autoencoder's own round trip, up to the rounding of (h * sf) / sf
        np.testing.assert_allclose(sd.decode_latents(z0), vae(x).sample, atol=1e-5)
    ldm = from_diffusers(ldm_folder)
    vq = ldm.autoencoder
    with torch.no_grad():
        z0 = ldm.encode_images(x)
        assert ldm.kind == "ldm" and ldm.scaling_factor == 0.5 and z0.shape == (3, 3, 8, 8)
        h = vq.encode(x).latents  # before quantisation
        assert torch.equal(z0, h * 0.5) and not torch.equal(h, vq.quantize(h)[0])
        # VQModel's own round trip: decode quantises
        np.testing.assert_allclose(ldm.decode_latents(z0), vq(x).sample, atol=1e-5)
    assert sd.latent_shape == (4, 8, 8) and ldm.latent_shape == (3, 8, 8)


def test_teacher_calls_the_unet_at_timestep_tT_minus_one_with_the_text_condition(sd_folders):
    latent = from_diffusers(sd_folders["ddpm-v"])
    model, unet = latent.model, latent.model.unet
    assert isinstance(model, CrossAttentionUNet) and latent.param == "v" and model.guidance_dim is None
    cond, null, z = latent.encode_prompt(PROMPTS), latent.null_condition(), latents(0)
    with torch.no_grad():
        for k in (0, 499, 999):
            t = torch.full((B,), (k + 1) / 1000)
            assert torch.equal(model(z, t, cond), unet(z, torch.tensor(k), encoder_hidden_states=cond).sample)
        expected = unet(z, torch.tensor(249), encoder_hidden_states=null.expand(B, -1, -1)).sample
        assert torch.equal(model(z, 0.25, null), expected)  # (1, L, D) broadcast over the batch
    with pytest.raises(ValueError, match="text-conditioned"):
        model(z, 0.5)
    with pytest.raises(ValueError, match="no w embedding"):
        model(z, 0.5, cond, 1.0)
    with pytest.raises(ValueError, match=r"cond must be a \(2, L, 16\)"):
        model(z, 0.5, cond[0])


@pytest.mark.parametrize("name", sorted(SD_SCHEDULERS))
def test_imported_teacher_samples_with_guidance_as_the_stable_diffusion_pipeline(name, sd_folders):
    latent = from_diffusers(sd_folders[name])
    model, schedule, param = latent.model, latent.schedule, latent.param
    pipe = ddim_trailing(StableDiffusionPipeline.from_pretrained(str(sd_folders[name])))
    cond, null = latent.encode_prompt(PROMPTS), latent.null_condition()
    for steps, w in ((1, 0.0), (4, 0.0), (4, 2.5), (10, 6.5)):
        z = latents(steps)
        ours = pd_fast.sample(
            guided(model, cond, null), z, steps, schedule, param, labels=torch.arange(B), w=w
        )
        call = dict(num_inference_steps=steps, guidance_scale=1 + w, latents=z)
        theirs = pipe(PROMPTS, output_type="latent", **call).images
        assert_same(ours, theirs, steps, w)
        images = pipe(PROMPTS, output_type="np", **call).images
        np.testing.assert_allclose(numpy_images(latent.decode_latents(ours)), images, rtol=0, atol=ATOL)
    unguided = pd_fast.sample(lambda z, t: model(z, t, cond), z, steps, schedule, param)
    assert close(ours, unguided) > 0.01  # the guidance matters


# ----- the w-conditioned student and its export ----------------------------------------------------


def test_guidance_embedding_is_the_pipelines():
    w = torch.tensor([0.0, 0.5, 1.7, 6.5, 13.0])
    for dim in (256, 32, 7):
        expected = StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        assert torch.equal(guidance_embedding(w, dim), expected)
    # the pipeline embeds torch.tensor(guidance_scale - 1), float32
    expected = StableDiffusionPipeline.get_guidance_scale_embedding(
        None, torch.tensor(2.7 - 1).repeat(2), 256
    )
    assert torch.equal(guidance_embedding(torch.full((2,), 1.7, dtype=torch.float64), 256), expected)


def test_guidance_band_keeps_the_features_that_turn_at_most_half_a_period_over_the_w_range():
    for dim, w_max in ((256, 4.0), (256, 8.0), (32, 2.5), (7, 4.0)):
        w = torch.linspace(0, w_max, 200_001, dtype=torch.float64)
        emb = StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim).double()
        half = dim // 2
        # a cosine's total variation over [0, w_max] is 1 - cos(phase) <= 2 up to half a period
        variation = (emb[1:, half : 2 * half] - emb[:-1, half : 2 * half]).abs().sum(dim=0)
        expected = variation <= 2 + 1e-6
        band = guidance_band(dim, w_max)
        assert band.shape == (dim,) and band.dtype == torch.bool
        assert torch.equal(band[:half], expected) and torch.equal(band[half : 2 * half], expected)
        assert 0 < int(expected.sum()) < half and not band[2 * half :].any()  # odd dim: the pad is 0
    lowest = guidance_band(256, 40.0)  # no frequency is smooth: the lowest is kept
    assert lowest.nonzero().flatten().tolist() == [127, 255]
    assert bool(guidance_band(256, 0.0).all())
    for bad in (-1.0, float("inf"), float("nan"), True, "4"):
        with pytest.raises(ValueError, match="w_max must be a finite number >= 0"):
            guidance_band(256, bad)


def test_a_banded_student_learns_only_its_band_and_is_what_diffusers_computes(sd_folders, tmp_path):
    latent = from_diffusers(sd_folders["ddpm-v"])
    student = w_conditioned_student(latent.model, 256, w_max=4.0).train()
    band = guidance_band(256, 4.0)
    assert torch.equal(student.guidance_mask, band)
    cond, z = latent.encode_prompt(PROMPTS), latents(3)
    w = torch.tensor([0.5, 3.0])
    with torch.no_grad():  # the first update's weights: cond_proj still zero, the rest moved
        for name, p in student.unet.named_parameters():
            if "cond_proj" not in name:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    student(z, torch.tensor([0.3, 0.8]), cond, w).square().sum().backward()
    grad = student.unet.time_embedding.cond_proj.weight.grad
    assert grad[:, ~band].abs().max() == 0 and grad[:, band].abs().max() > 0
    with torch.no_grad():
        student.unet.time_embedding.cond_proj.weight[:, band] = torch.randn(8, int(band.sum()))
    student.eval()
    with torch.no_grad():  # as StableDiffusionPipeline calls the UNet: every feature of the embedding
        t = torch.tensor([0.3, 0.8])
        theirs = student.unet(
            z, t * 1000 - 1, encoder_hidden_states=cond,
            timestep_cond=StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256),
        ).sample  # fmt: skip
        assert torch.allclose(student(z, t, cond, w), theirs, rtol=0, atol=1e-6)
    to_diffusers(student, latent.schedule, "v", tmp_path / "ok", 2, pipeline=latent)
    with torch.no_grad():  # a weight outside the band: the pipeline would read what the model does not
        student.unet.time_embedding.cond_proj.weight[3, int((~band).nonzero()[0])] = 0.1
    with pytest.raises(ValueError, match="weighs features outside guidance_mask"):
        student.check_guidance_band()
    with pytest.raises(ValueError, match="weighs features outside guidance_mask"):
        to_diffusers(student, latent.schedule, "v", tmp_path / "bad", 2, pipeline=latent)
    assert not (tmp_path / "bad").exists()


def test_w_conditioned_student_equals_the_teacher_for_every_w_at_the_start(sd_folders):
    latent = from_diffusers(sd_folders["ddpm-v"])
    teacher = latent.model
    before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    student = w_conditioned_student(teacher)
    assert student.guidance_dim == 256 and student.unet.config.time_cond_proj_dim == 256
    assert student.num_train_timesteps == 1000 and not student.training
    proj = student.unet.time_embedding.cond_proj
    assert proj.bias is None and torch.equal(proj.weight, torch.zeros(8, 256))
    cond, z = latent.encode_prompt(PROMPTS), latents(1)
    with torch.no_grad():
        for t in (1.0, 0.5, 0.001):
            expected = teacher(z, t, cond)
            for w in (0.0, 0.5, 3.0, 7.5, torch.tensor([0.0, 14.0])):
                assert torch.equal(student(z, t, cond, w), expected)
    assert all(torch.equal(before[k], v) for k, v in teacher.unet.state_dict().items())
    assert "time_embedding.cond_proj.weight" not in before
    with pytest.raises(ValueError, match="is w-conditioned"):
        student(z, 0.5, cond)
    with pytest.raises(ValueError, match="already embeds w"):
        w_conditioned_student(student)


def trained(student: CrossAttentionUNet) -> CrossAttentionUNet:
    """The student after some training: the w embedding and the other weights moved."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in student.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        proj = student.unet.time_embedding.cond_proj.weight
        proj.copy_(0.2 * torch.randn(proj.shape, generator=g))
    return student


def count_unet_calls(pipe) -> list[int]:
    """The batch of every UNet call the pipeline makes."""
    batches: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    return batches


def test_exported_student_pipeline_samples_as_pd_fast_with_one_unet_call_per_step(sd_folders, tmp_path):
    latent = from_diffusers(sd_folders["pndm-eps"])
    student = trained(w_conditioned_student(latent.model))
    schedule, cond = latent.schedule, latent.encode_prompt(PROMPTS)
    for steps in (1, 2, 4):
        folder = to_diffusers(student, schedule, "v", tmp_path / f"s{steps}", steps, pipeline=latent)
        pipe = StableDiffusionPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        batches = count_unet_calls(pipe)
        results = {}
        for w in (0.0, 1.5, 4.0):
            z = latents(10 * steps)
            ours = pd_fast.sample(
                lambda z, t, w=w: student(z, t, cond, w), z, steps, schedule, "v", clip=False
            )
            call = dict(num_inference_steps=steps, guidance_scale=1 + w, latents=z)
            theirs = pipe(PROMPTS, output_type="latent", **call).images
            assert_same(ours, theirs, steps, w)
            assert batches == [B] * steps, batches  # no doubled guidance batch
            batches.clear()
            images = pipe(PROMPTS, output_type="np", **call).images
            np.testing.assert_allclose(numpy_images(latent.decode_latents(ours)), images, rtol=0, atol=ATOL)
            batches.clear()
            results[w] = ours
        assert close(results[1.5], results[4.0]) > 0.01  # w reaches the network
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler" and config["timestep_spacing"] == "trailing"
    assert config["clip_sample"] is False and config["set_alpha_to_one"] is True
    assert config["prediction_type"] == "v_prediction" and len(config["trained_betas"]) == 1000
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    assert index["safety_checker"] == [None, None]
    for exported, teacher in ((pipe.vae, latent.autoencoder), (pipe.text_encoder, latent.text_encoder)):
        for a, b in zip(exported.state_dict().values(), teacher.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    info = json.loads((folder / "pd_fast.json").read_text())
    assert info["steps"] == 4 and info["guidance_embedding_dim"] == 256
    # the export imports back as the same w-conditioned model
    back = from_diffusers(folder)
    assert back.param == "v" and back.model.guidance_dim == 256
    z = latents(0)
    with torch.no_grad():
        assert torch.equal(back.model(z, 0.5, cond, 2.0), student(z, 0.5, cond, 2.0))


# ----- LDM ---------------------------------------------------------------------------------------


def spy_on_decode(pipe) -> list[torch.Tensor]:
    """What the pipeline hands its VQModel's decode (the latents divided by the scaling factor)."""
    seen: list[torch.Tensor] = []
    decode = pipe.vqvae.decode

    def spy(h, *args, **kwargs):
        seen.append(h.clone())
        return decode(h, *args, **kwargs)

    pipe.vqvae.decode = spy
    return seen


def assert_ldm_parity(pipe, latent: LatentPipeline, model, schedule, param: str, steps: int) -> None:
    seen = spy_on_decode(pipe)
    images = pipe(
        batch_size=B, num_inference_steps=steps, generator=torch.Generator().manual_seed(steps),
        output_type="np",
    ).images  # fmt: skip
    z = latents(steps, (B, *latent.latent_shape))  # the pipeline's draw from the same generator
    ours = pd_fast.sample(model, z, steps, schedule, param, clip=False)
    assert_same(ours / latent.scaling_factor, seen[0], steps, param)
    np.testing.assert_allclose(numpy_images(latent.decode_latents(ours)), images, rtol=0, atol=ATOL)


def test_imported_ldm_teacher_samples_and_decodes_as_ldm_pipeline(ldm_folder):
    latent = from_diffusers(ldm_folder)
    assert isinstance(latent.model, DiffusersUNet) and latent.param == "v" and latent.text_encoder is None
    pipe = ddim_trailing(LDMPipeline.from_pretrained(str(ldm_folder)))
    for steps in (1, 4, 10):
        assert_ldm_parity(pipe, latent, latent.model, latent.schedule, latent.param, steps)
    with pytest.raises(ValueError, match="unconditional"):
        latent.encode_prompt(["a cat"])


def test_exported_ldm_student_samples_as_pd_fast(ldm_folder, tmp_path):
    latent = from_diffusers(ldm_folder)
    student = copy.deepcopy(latent.model)  # a distilled student: the teacher's UNet, moved
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    schedule = latent.schedule
    for steps, param in ((2, "v"), (5, "x")):
        folder = to_diffusers(student, schedule, param, tmp_path / f"s{steps}", steps, pipeline=ldm_folder)
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
        pipe = LDMPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        assert_ldm_parity(pipe, latent, student, schedule, param, steps)
        for a, b in zip(
            pipe.vqvae.state_dict().values(), latent.autoencoder.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)


# ----- refusals ----------------------------------------------------------------------------------


def _edit_index(folder: Path, **entries) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **entries}))


def _sdxl(folder: Path) -> str:
    _edit_index(
        folder,
        _class_name="StableDiffusionXLPipeline",
        text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
        tokenizer_2=["transformers", "CLIPTokenizer"],
    )
    return "Stable Diffusion XL pipeline (two text encoders)"


def _inpainting(folder: Path) -> str:
    tiny_cond_unet(in_channels=9).save_pretrained(str(folder / "unet"))
    return "UNet of 9 input and 4 output channels (an inpainting UNet"


def _controlnet(folder: Path) -> str:
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    StableDiffusionControlNetPipeline(
        **pipe.components, controlnet=ControlNetModel.from_unet(pipe.unet, conditioning_channels=3)
    ).save_pretrained(str(folder))
    return "ControlNet pipeline"


def _flow_matching(folder: Path) -> str:
    FlowMatchEulerDiscreteScheduler().save_pretrained(str(folder / "scheduler"))
    _edit_index(folder, scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"])
    return "flow-matching pipeline (FlowMatchEulerDiscreteScheduler"


def _flux(folder: Path) -> str:
    _edit_index(
        folder,
        _class_name="FluxPipeline",
        transformer=["diffusers", "FluxTransformer2DModel"],
        unet=[None, None],
        scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"],
        text_encoder_2=["transformers", "T5EncoderModel"],
    )
    return "flow-matching pipeline (FluxTransformer2DModel"


def _vae_channels(folder: Path) -> str:
    tiny_vae(latent_channels=3).save_pretrained(str(folder / "vae"))
    return "AutoencoderKL of 3 latent channels for a UNet of 4"


def _vq_channels(folder: Path) -> str:
    tiny_vq(latent_channels=4).save_pretrained(str(folder / "vqvae"))
    return "VQModel of 4 latent channels for a UNet of 3"


def _unknown(folder: Path) -> str:
    _edit_index(folder, _class_name="StableUnCLIPPipeline", prior=["diffusers", "PriorTransformer"])
    return "StableUnCLIPPipeline of components prior=PriorTransformer"


REFUSALS = {
    "sdxl": ("sd", _sdxl),
    "inpainting": ("sd", _inpainting),
    "controlnet": ("sd", _controlnet),
    "flow_matching": ("sd", _flow_matching),
    "flux": ("sd", _flux),
    "vae_channels": ("sd", _vae_channels),
    "vq_channels": ("ldm", _vq_channels),
    "unknown": ("sd", _unknown),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_import_refuses_other_pipelines_in_one_line_naming_what_is_supported(
    name, sd_folders, ldm_folder, tmp_path
):
    source, edit = REFUSALS[name]
    folder = tmp_path / name
    shutil.copytree(sd_folders["pndm-eps"] if source == "sd" else ldm_folder, folder)
    what = edit(folder)
    with pytest.raises(ValueError) as err:
        from_diffusers(folder)
    message = str(err.value)
    assert "\n" not in message and what in message and message.endswith(SUPPORTED), message


def test_export_refuses_students_that_do_not_fit_the_pipeline(sd_folders, ldm_folder, tmp_path):
    latent = from_diffusers(sd_folders["pndm-eps"])
    schedule = latent.schedule
    student = w_conditioned_student(latent.model, 32)
    with pytest.raises(ValueError, match="pass pipeline="):
        to_diffusers(student, schedule, "v", tmp_path / "a", 4)
    with pytest.raises(ValueError, match="student is a UNet2DConditionModel, got UNet2DModel"):
        to_diffusers(
            DiffusersUNet(tiny_unet(channels=4), 1000), schedule, "v", tmp_path / "b", 4, pipeline=latent
        )
    with pytest.raises(ValueError, match="student is a UNet2DModel"):
        to_diffusers(student, schedule, "v", tmp_path / "c", 4, pipeline=ldm_folder)
    with pytest.raises(ValueError, match="3 latent channels"):
        to_diffusers(
            DiffusersUNet(tiny_unet(channels=4), 1000), schedule, "v", tmp_path / "d", 4, pipeline=ldm_folder
        )
    with pytest.raises(ValueError, match="does not divide"):
        to_diffusers(student, schedule, "v", tmp_path / "e", 16, pipeline=latent)
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_importing_the_latent_integration_imports_neither_diffusers_nor_transformers():
    code = (
        "import sys, pd_fast, pd_fast.integrations.latent\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_cli_sends_latent_pipelines_to_the_text_to_image_job_and_the_pixel_job_refuses_them(
    sd_folders, ldm_folder, tmp_path
):
    from pd_fast.app.cli import build_parser, resolve_config
    from pd_fast.app.config import DiffusersConfig
    from pd_fast.app.jobs import diffusers_teacher
    from pd_fast.app.jobs.common import Run

    for folder in (sd_folders["pndm-eps"], ldm_folder):
        cfg, _ = resolve_config(
            build_parser().parse_args(["--teacher", str(folder), "--out", str(tmp_path / "o")])
        )
        assert cfg.job == "text_to_image"
        run = Run(str(tmp_path / "never"), torch.device("cpu"), False, False)
        with pytest.raises(ValueError, match="is a latent pipeline"):
            diffusers_teacher.prepare(DiffusersConfig(teacher=str(folder)), run)
        assert not (tmp_path / "never").exists()
