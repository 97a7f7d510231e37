"""What one distillation iteration costs: the project's path against the loop a user writes from
the paper. Usage: `python benchmarks/distill_step.py [--quick]`.

One iteration of [PD] Algorithm 2 for a student of N = `--steps` steps (default 64 -> 32), v-prediction,
cosine schedule, SNR-truncated weighting, Adam, fp32: draw a batch x, a grid time t = i/N and
noise eps; z_t = alpha_t x + sigma_t eps; two DDIM steps of the teacher without grad
(t -> t - 0.5/N -> t - 1/N); the student's forward and backward; the loss; one optimizer step.

- `pd_fast`: the public core functions, called as the training loop (`pd_fast/app/training/loop.py`)
  calls them: `pd_fast.diffuse`, `pd_fast.teacher_two_step` (t passed on the CPU), the student,
  `pd_fast.fused_distill_loss` (coefficients from the schedule at the CPU copy of t, so that no
  value check reads the device), `.mean().backward()`, `Adam.step()`.
- `eager`: a plain implementation written from [PD] Algorithm 2, every quantity a torch
  expression on the device in fp32 (alpha_t = cos(a t + b), ...), the target
  `x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)` and the loss
  `max(SNR, 1) * mean((x_hat - x_tilde)^2)` as separate ops, autograd for the gradient. On the
  final interval (t = 1/N) both take the teacher's x_hat as the target (official `dpm.py`).

Both start from the same weights and draw the same batches. Before any timing, the loss of each
on one batch is compared with `pd_ref`'s float64 loss (`pd_ref.teacher_target` and
`pd_ref.distill_loss` through a NumPy wrapper of the same networks): a benchmark of wrong math
would fail there. Models: the built-in `ResidualMLP` and `UNet` on 8x8 images; batches `--batch`.

Timing: `--rounds` rounds, each timing `--iters` iterations of one implementation and then of the
other (interleaved, so that both see the same machine load); the median over rounds of the time
per iteration is reported, and the ratio pd_fast / eager as the median of the per-round ratios.
CPU: `time.perf_counter`, `--threads` torch threads (default 1: side-by-side ratios on a shared
machine suffer less). CUDA: CUDA events. Peak memory of one iteration above what was allocated
before it: CUDA `max_memory_allocated`; CPU the growth of the process's peak resident set
(`/proc/self/status` VmHWM, reset through `/proc/self/clear_refs`; where unavailable, None).
The loss's share: the target and the loss alone (forward and backward from a detached student
output: `fused_distill_loss`, the fused kernel on the Triton path; the separate ops for `eager`)
over the iteration, both medians.
Text-to-image (`--models` t2i; `_text_to_image.py`, whose docstring has the details): one iteration
of [GD] stage 2 on a tiny random Stable Diffusion pipeline (UNet and autoencoder of `--t2i-ch` base
channels, batch `--t2i-batch`, `--t2i-precision` fp32 or bf16), two ways that differ only in their
inputs: `pd_fast_cached`, latents and prompt embeddings computed once (the text-to-image job's cache),
against `encode_every_step`, images and captions encoded at every iteration (`vae.encode(pixels)
.latent_dist.mean * scaling_factor`, `text_encoder(tokenizer(captions))`), as diffusers' LCM
distillation script does (it takes `.sample()`). Before timing, both compute the loss on the same
draws (their relative difference is checked and recorded); then the same interleaved rounds, the ratio
pd_fast_cached / encode_every_step as the median of the per-round ratios, and peak memory. Skipped,
with its reason in the JSON (`text_to_image: {"skipped": why}`) and a `skipped: ...` line, where
diffusers or transformers is not installed.

Writes `distill_step.json` and `distill_step.png` into `--out` (default `benchmarks/results/`; a
`--quick` run writes into a new temporary folder).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
import _text_to_image
import numpy as np
import torch
from torch import nn

import pd_fast
import pd_ref
from pd_fast.app.models import build_model

IMPLS = ("pd_fast", "eager")
MODELS = ("mlp", "unet", "t2i")  # t2i: the text-to-image case (`_text_to_image.py`)
PARAM = "v"
WEIGHTING = "snr_trunc"
SHAPE = (1, 8, 8)
DATA = 2048  # examples in the (random) data set the batches are drawn from


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_models(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or any(n not in MODELS for n in names):
        raise argparse.ArgumentTypeError(f"choose from {','.join(MODELS)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=parse_models, default=list(MODELS))
    p.add_argument("--batch", type=parse_ints, default=None, help="batch sizes (default 128,512; --quick 16)")
    p.add_argument("--steps", type=int, default=32, help="the student's step count N (teacher: 2N)")
    p.add_argument("--iters", type=int, default=None, help="iterations per round (default 10; --quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; --quick 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations of each first")
    p.add_argument("--mlp-hidden", type=int, default=None, help="MLP width (default 256; --quick 32)")
    p.add_argument("--unet-ch", type=int, default=None, help="UNet base channels (default 32; --quick 8)")
    p.add_argument("--t2i-batch", type=int, default=None, help="text-to-image batch (default 32; --quick 4)")
    p.add_argument(
        "--t2i-ch", type=int, default=None,
        help="text-to-image UNet and autoencoder base channels (default 32; --quick 8, the tiny pipeline's)",
    )  # fmt: skip
    p.add_argument(
        "--t2i-precision", choices=("fp32", "bf16"), default="fp32", help="text-to-image precision"
    )
    p.add_argument("--memory", choices=("on", "off"), default="on", help="measure peak memory")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/; --quick: a new temporary folder)",
    )
    p.add_argument("--quick", action="store_true", help="tiny models and runs: seconds on 2 CPU cores")
    return p


def settle(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    for name, full, small in (("batch", [128, 512], [16]), ("iters", 10, 3), ("rounds", 15, 2),
                              ("mlp_hidden", 256, 32), ("unet_ch", 32, 8), ("t2i_batch", 32, 4),
                              ("t2i_ch", 32, 8)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    for name in ("steps", "iters", "rounds", "mlp_hidden", "unet_ch", "t2i_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.unet_ch % 8:
        raise ValueError(f"--unet-ch must be a multiple of 8 (GroupNorm groups), got {args.unet_ch}")
    if args.t2i_ch < 4 or args.t2i_ch % 4:
        raise ValueError(f"--t2i-ch must be a positive multiple of 4 (GroupNorm groups), got {args.t2i_ch}")
    args.out = _common.out_dir(args.out, quick)
    return args


# --- the two implementations ----------------------------------------------------------------------


class Setup:
    """One model size and batch: the frozen teacher, the data, and per implementation a student
    (the same initial weights) with its Adam and its own generators (the same seeds)."""

    def __init__(self, kind: str, batch: int, args: argparse.Namespace, device: torch.device) -> None:
        self.kind, self.batch, self.steps, self.device = kind, batch, args.steps, device
        size = {"hidden": args.mlp_hidden} if kind == "mlp" else {"ch": args.unet_ch}
        teacher = build_model(kind, SHAPE, param=PARAM, seed=0, **size)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # an untrained model's zero last layer would make every target trivial
            for p in teacher.out.parameters():
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.data = (2.0 * torch.rand((DATA, *SHAPE), generator=gen) - 1.0).to(device)
        self.schedule = pd_fast.CosineSchedule()
        self.students = {name: copy.deepcopy(self.teacher).requires_grad_(True).train() for name in IMPLS}
        self.opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in self.students.items()}
        self.gens = {name: self.generators() for name in IMPLS}

    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        return torch.Generator().manual_seed(2), torch.Generator(device=self.device).manual_seed(3)

    def draw(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch x (on the device), its grid indices i (CPU, int64) and noise eps (device)."""
        cpu, dev = self.gens[name]
        x = self.data[torch.randint(0, DATA, (self.batch,), generator=cpu).to(self.device)]
        i = torch.randint(1, self.steps + 1, (self.batch,), generator=cpu)
        eps = torch.randn(x.shape, generator=dev, device=self.device)
        return x, i, eps


def pd_fast_loss(s: Setup, student: nn.Module, x: torch.Tensor, i: torch.Tensor, eps: torch.Tensor):
    """The per-example loss through the project's core functions, as the training loop calls them."""
    t_cpu = i.to(torch.float64) / s.steps
    z_t = pd_fast.diffuse(x, t_cpu, s.schedule, eps)
    alpha_t, sigma_t = s.schedule.alpha_sigma(t_cpu)
    z_tpp, alpha_tpp, sigma_tpp = pd_fast.teacher_two_step(s.teacher, z_t, t_cpu, s.steps, s.schedule, PARAM)
    out = student(z_t, t_cpu.to(device=s.device, dtype=z_t.dtype))
    loss = pd_fast.fused_distill_loss(
        out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, PARAM, weighting=WEIGHTING
    )
    return loss, (out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp)


def pd_fast_loss_only(out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp) -> None:
    loss = pd_fast.fused_distill_loss(
        out, z_t, z_tpp, alpha_t, sigma_t, alpha_tpp, sigma_tpp, PARAM, weighting=WEIGHTING
    )
    loss.mean().backward()


def eager_loss(s: Setup, student: nn.Module, x: torch.Tensor, i: torch.Tensor, eps: torch.Tensor):
    """The per-example loss as a user writes [PD] Algorithm 2 in plain torch (fp32, on the device)."""
    a, b, n = s.schedule.a, s.schedule.b, s.steps
    i = i.to(s.device)
    t = i.float() / n

    def alpha_sigma(time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = (a * time + b)[:, None, None, None]  # cosine schedule: alpha = cos, sigma = sin
        return torch.cos(theta), torch.sin(theta)

    alpha_t, sigma_t = alpha_sigma(t)
    z_t = alpha_t * x + sigma_t * eps
    with torch.no_grad():  # lines 6-8: two DDIM steps of the teacher
        t_p, t_pp = t - 0.5 / n, t - 1.0 / n
        alpha_p, sigma_p = alpha_sigma(t_p)
        alpha_pp, sigma_pp = alpha_sigma(t_pp)
        last = (i == 1)[:, None, None, None]  # final interval: the target is the teacher's x_hat
        alpha_pp = torch.where(last, 1.0, alpha_pp)
        sigma_pp = torch.where(last, 0.0, sigma_pp)
        v = s.teacher(z_t, t)
        x_hat = alpha_t * z_t - sigma_t * v
        eps_hat = sigma_t * z_t + alpha_t * v
        z_p = alpha_p * x_hat + sigma_p * eps_hat
        v_p = s.teacher(z_p, t_p)
        x_hat_p = alpha_p * z_p - sigma_p * v_p
        eps_hat_p = sigma_p * z_p + alpha_p * v_p
        z_pp = alpha_pp * x_hat_p + sigma_pp * eps_hat_p
    out = student(z_t, t)
    inputs = (out, z_t, z_pp, alpha_t, sigma_t, alpha_pp, sigma_pp)
    return eager_target_and_loss(*inputs), inputs


def eager_target_and_loss(out, z_t, z_pp, alpha_t, sigma_t, alpha_pp, sigma_pp) -> torch.Tensor:
    """Lines 9-10: `x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)`,
    then `max(SNR, 1) * mean((x_hat - x_tilde)^2)` per example, x_hat from the student's v."""
    ratio = sigma_pp / sigma_t
    x_tilde = (z_pp - ratio * z_t) / (alpha_pp - ratio * alpha_t)
    w = torch.clamp(alpha_t**2 / sigma_t**2, min=1.0).flatten()
    x_hat = alpha_t * z_t - sigma_t * out
    return w * ((x_hat - x_tilde) ** 2).mean(dim=(1, 2, 3))


def eager_loss_only(*inputs: torch.Tensor) -> None:
    eager_target_and_loss(*inputs).mean().backward()


LOSSES = {"pd_fast": (pd_fast_loss, pd_fast_loss_only), "eager": (eager_loss, eager_loss_only)}


def iteration(s: Setup, name: str) -> Callable[[], None]:
    """One training iteration of implementation `name` (its student, its optimizer, its draws)."""
    student, opt, loss_fn = s.students[name], s.opts[name], LOSSES[name][0]

    def run() -> None:
        x, i, eps = s.draw(name)
        loss, _ = loss_fn(s, student, x, i, eps)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()

    return run


def loss_only(s: Setup, name: str) -> Callable[[], None]:
    """The loss alone, forward and backward, from a detached student output (fixed inputs)."""
    x, i, eps = s.draw(name)
    _, inputs = LOSSES[name][0](s, s.students[name], x, i, eps)
    out = inputs[0].detach().requires_grad_(True)
    rest = [c.detach() for c in inputs[1:]]

    def run() -> None:
        out.grad = None
        LOSSES[name][1](out, *rest)

    return run


# --- the check against pd_ref ---------------------------------------------------------------------


def check_against_pd_ref(s: Setup) -> dict[str, float]:
    """Max relative difference of each implementation's per-example loss from pd_ref's float64
    loss on one batch (the same x, t, eps and weights)."""
    x, i, eps = s.draw("pd_fast")
    student = s.students["pd_fast"]

    def numpy_net(net: nn.Module) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def run(z: np.ndarray, t: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                z_t = torch.from_numpy(np.ascontiguousarray(z)).to(s.device, torch.float32)
                t_t = torch.from_numpy(np.ascontiguousarray(t)).to(s.device, torch.float32)
                return net(z_t, t_t).double().cpu().numpy()

        return run

    schedule = pd_ref.CosineSchedule()
    t = i.double().numpy() / s.steps
    z_t = pd_ref.diffuse(x.double().cpu().numpy(), t, schedule, eps.double().cpu().numpy())
    x_tilde = pd_ref.teacher_target(numpy_net(s.teacher), z_t, t, s.steps, schedule, PARAM)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    out = numpy_net(student)(z_t, t)
    ref = pd_ref.distill_loss(out, z_t, x_tilde, alpha_t, sigma_t, PARAM, weighting=WEIGHTING)
    diffs = {}
    for name in IMPLS:
        with torch.no_grad():
            loss, _ = LOSSES[name][0](s, student, x, i, eps)
        got = loss.double().cpu().numpy()
        diffs[name] = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)))
    return diffs


# --- measurements ---------------------------------------------------------------------------------


def bench(s: Setup, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    device = s.device
    check = check_against_pd_ref(s)
    runs = {name: iteration(s, name) for name in IMPLS}
    for name in IMPLS:  # untimed: allocator, kernels (Triton compiles on its first call)
        for _ in range(max(1, args.warmup)):
            runs[name]()
    _common.sync(device)
    samples, cpu_samples = _common.time_rounds(runs, device, args.iters, args.rounds)
    losses = {name: loss_only(s, name) for name in IMPLS}
    for fn in losses.values():
        fn()
    loss_samples, _ = _common.time_rounds(losses, device, args.iters, args.rounds)
    memory = {n: _common.peak_memory_mib(runs[n], device) if args.memory == "on" else None for n in IMPLS}

    def cpu_ms(name: str) -> float | None:
        return _common.finite_or_none(statistics.median(cpu_samples[name])) if cpu_samples else None

    rows = []
    for name in IMPLS:
        ms = statistics.median(samples[name])
        loss_ms = statistics.median(loss_samples[name])
        rows.append({
            "impl": name, "model": s.kind, "batch": s.batch, "steps": s.steps,
            "ms_per_iter": _common.finite_or_none(ms), "iters_per_s": _common.finite_or_none(1e3 / ms),
            "cpu_ms_per_iter": cpu_ms(name),
            "ms_min": _common.finite_or_none(min(samples[name])),
            "ms_max": _common.finite_or_none(max(samples[name])),
            "loss_ms": _common.finite_or_none(loss_ms), "loss_share": _common.finite_or_none(loss_ms / ms, 3),
            "peak_mib": _common.finite_or_none(memory[name], 4),
            "max_rel_diff_vs_pd_ref": _common.finite_or_none(check[name], 3),
            "rounds": len(samples[name]), "iters_per_round": args.iters,
        })  # fmt: skip
    cpu_ratio = _common.median_ratio(cpu_samples, *IMPLS) if cpu_samples else None
    pairs = zip(samples["pd_fast"], samples["eager"], strict=True)
    ratio = {
        "model": s.kind, "batch": s.batch,
        "pd_fast_over_eager": _common.finite_or_none(_common.median_ratio(samples, *IMPLS), 4),
        "pd_fast_over_eager_cpu_time": _common.finite_or_none(cpu_ratio, 4),
        "per_round": [_common.finite_or_none(p / e, 4) for p, e in pairs],
    }  # fmt: skip
    return rows, ratio


COLUMNS = [
    ("impl", "impl", "s"), ("model", "model", "s"), ("batch", "batch", "d"),
    ("ms_per_iter", "ms/iter", ".4g"), ("iters_per_s", "iter/s", ".4g"), ("loss_ms", "loss ms", ".3g"),
    ("loss_share", "loss share", ".1%"), ("peak_mib", "peak MiB", ".3g"),
    ("max_rel_diff_vs_pd_ref", "vs pd_ref", ".1e"),
]  # fmt: skip


def summary(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    """Markdown: per model and batch, iterations/s and peak memory of both, and the time ratios
    (wall clock; and the thread's CPU time where measured)."""
    by = {(r["impl"], r["model"], r["batch"]): r for r in rows}
    lines = [
        "| model | batch | pd_fast it/s | eager it/s | pd_fast / eager (wall) | pd_fast / eager (CPU time) "
        "| pd_fast MiB | eager MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for q in ratios:
        p, e = by[("pd_fast", q["model"], q["batch"])], by[("eager", q["model"], q["batch"])]
        lines.append(
            f"| {q['model']} | {q['batch']} | {p['iters_per_s']:.4g} | {e['iters_per_s']:.4g} | "
            f"{fmt(q['pd_fast_over_eager'], '.3f')} | {fmt(q['pd_fast_over_eager_cpu_time'], '.3f')} | "
            f"{fmt(p['peak_mib'], '.3g')} | {fmt(e['peak_mib'], '.3g')} |"
        )
    return "\n".join(lines)


def plot(
    rows: list[dict[str, Any]], ratios: list[dict[str, Any]], path: Path, title: str,
    t2i: dict[str, Any] | None = None,
) -> str | None:  # fmt: skip
    """Iterations per second per model and batch, the two implementations side by side, with the
    time ratio pd_fast / eager written above each pair (wall clock; the thread's CPU time below);
    the text-to-image case's two paths in a panel of their own."""
    plt = _common.pyplot()
    if plt is None:
        return "matplotlib is not installed"
    t2i = t2i if t2i and "rows" in t2i else None
    if not ratios and t2i is None:
        return "nothing was measured"
    panels = ([len(ratios) + 0.5] if ratios else []) + ([1.3] if t2i else [])
    fig_width = max((7.0 if ratios else 0.0) + (2.5 if t2i else 0.0), 4.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(fig_width, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": panels})  # fmt: skip
    if t2i is not None:
        _text_to_image.plot_panel(axes[0, -1], t2i)
    fig.suptitle(title, fontsize=9)
    if not ratios:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return None
    ax = axes[0, 0]
    by = {(r["impl"], r["model"], r["batch"]): r for r in rows}
    width = 0.38
    for k, q in enumerate(ratios):
        for j, (name, color) in enumerate((("pd_fast", "tab:blue"), ("eager", "tab:gray"))):
            value = by[(name, q["model"], q["batch"])]["iters_per_s"]
            ax.bar(k + (j - 0.5) * width, value, width, color=color, label=name if k == 0 else None)
        top = max(by[(n, q["model"], q["batch"])]["iters_per_s"] for n in IMPLS)
        label = f"time x{q['pd_fast_over_eager']:.2f}"
        if q.get("pd_fast_over_eager_cpu_time") is not None:
            label += f"\n(CPU time x{q['pd_fast_over_eager_cpu_time']:.2f})"
        ax.text(k, top * 1.02, label, ha="center", fontsize=7)
    ax.set_xticks(range(len(ratios)), [f"{q['model']}\nbatch {q['batch']}" for q in ratios])
    ax.set_ylabel("iterations per second (median of rounds)")
    ax.set_ylim(0, 1.15 * max(r["iters_per_s"] for r in rows))
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it writes to `distill_step.json`."""
    args = settle(build_parser().parse_args(argv))
    wall_start = time.perf_counter()
    device = _common.pick_device(args.device)
    threads = _common.set_threads(args.threads)
    load_start, date = _common.loadavg(), _common.now_utc()
    machine = _common.machine(device)
    print(
        f"# distill_step on {machine['gpu_name'] or machine['cpu_model']} ({device.type}, {threads} torch "
        f"threads), torch {machine['torch']}; {date}, load average {load_start}"
    )
    notes = [n for n in [_common.load_note(threads)] if n]
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for kind in [m for m in args.models if m != "t2i"]:
        for batch in args.batch:
            s = Setup(kind, batch, args, device)
            models[kind] = {
                "config": s.teacher.config,
                "parameters": sum(p.numel() for p in s.teacher.parameters()),
            }
            new_rows, ratio = bench(s, args)
            rows += new_rows
            ratios.append(ratio)
            print(f"  {kind} batch {batch}: pd_fast / eager = {ratio['pd_fast_over_eager']:.3f}", flush=True)
            del s
    t2i = _text_to_image.bench(args, device) if "t2i" in args.models else None
    if rows:
        print()
        print(_common.table(rows, COLUMNS))
        print()
        print(summary(rows, ratios))
    if t2i is not None:
        print()
        print(_text_to_image.summary(t2i))
    wall = time.perf_counter() - wall_start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(device=str(device), param=PARAM, weighting=WEIGHTING, schedule="cosine (logsnr -20..20)",
                    optimizer="Adam(lr=1e-4)", data_shape=list(SHAPE), dtype="float32")  # fmt: skip
    payload = {
        "benchmark": "distill_step",
        "machine": machine,
        "date": date,
        "loadavg_start": load_start,
        "loadavg_end": _common.loadavg(),
        "wall_s": round(wall, 1),
        "settings": settings,
        "timing": f"{args.rounds} interleaved rounds of {args.iters} iterations per implementation; median "
        + ("(CUDA events)" if device.type == "cuda" else "(time.perf_counter)"),
        "memory": "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS growth (VmHWM - VmRSS)",
        "models": models,
        "notes": notes,
        "rows": rows,
        "ratios": ratios,
        "text_to_image": t2i,
    }
    title = f"{machine['gpu_name'] or machine['cpu_model']}, {threads} threads, N = {args.steps}"
    _common.write_results(
        args.out, "distill_step", payload, lambda path: plot(rows, ratios, path, title, t2i), wall
    )
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
