"""The command line's flags: `build_parser()`, argparse with a one-line error for a flag it cannot
parse. Each flag of a run setting is the config field of the same name (`pd_fast.app.config`);
`--out`, `--resume`, `--device`, `--threads`, `--guided`, `--no-progress` and `--debug` are not."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .config import parse_resolution


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
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="the trained network under autocast in bf16 or fp16 (fp32 weights and Adam; fp16 with a loss "
        "scaler, CUDA only), the frozen teacher in the same half dtype (default fp32)",
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
    g.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="latent teacher: the student UNet recomputes its activations in the backward pass (diffusers')",
    )
