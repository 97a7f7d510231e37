"""How close the fused kernels come to the memory limit.
Usage: `python benchmarks/kernels.py [--quick]`.

Two operations, each over sizes of 2^12 .. 2^28 elements (flags; on CPU capped at 2^24 by default
for time), in fp32 and bf16, on (B, M) tensors with B = `--batch` examples:

- `step`: the sampler step, DDIM eta = 0 with v-prediction ([PD] Eq. 7, docs/spec.md sections 2-3):
  `x_hat = alpha_t*z - sigma_t*v`, `eps_hat = sigma_t*z + alpha_t*v`, `z_s = alpha_s*x_hat + sigma_s*eps_hat`.
  Must move: read z and out, write z_s (3 tensors).
- `loss`: the distillation loss forward and backward ([PD] Algorithm 2 lines 9-10, docs/spec.md sections 4-5):
  `x_tilde = p*z_tpp + q*z_t`, `loss_b = w_b * mean_j (x_hat - x_tilde)^2` and its gradient with
  respect to out. Must move: read out, z_t and z_tpp, write the gradient (4 tensors; the (B,)
  coefficients and losses are not counted).

Implementations: `triton` (the fused launchers of `pd_fast.kernels`; CUDA only), `eager` (the same
math as torch ops below: `step_torch`; `loss_torch` + `torch.autograd.grad`, what pd_fast's torch
path does), `compile` (`torch.compile(..., dynamic=True)` of the same functions; off with --quick,
its first compile takes 10-60 s on a 2-core CPU). Each is reported in GB/s of the bytes it must
move, and as a fraction of the copy bandwidth measured here (`dst.copy_(src)` moving the same
number of bytes: half read, half written).

On CUDA also: the sampler's per-step overhead beyond the network's own time with CUDA graphs
(graph of the N-step sampler loop minus graph of its N network calls, over N), and PASS/FAIL
against the targets. Writes `kernels.json` and `kernels.png` into `--out` (default
`benchmarks/results/`; a `--quick` run writes into a new temporary folder instead).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
import torch

import pd_fast

OPS = ("step", "loss")
IMPLS = ("triton", "eager", "compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGET_BYTES = 64 * 2**20  # "at 64 MB and more": bytes the step moves
TARGETS = {
    "step_frac_of_copy": 0.90,
    "step_speedup_vs_eager": 3.0,
    "loss_speedup_vs_eager": 2.5,
    "graph_overhead_us_per_step": 10.0,
}


# --- the math, as torch ops (the baselines) ------------------------------------------------------


def step_torch(
    z: torch.Tensor, out: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
    alpha_s: torch.Tensor, sigma_s: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """DDIM step (eta = 0) from v-prediction ([PD] Eq. 7, docs/spec.md sections 2-3) in fp32, returned in
    z's dtype. z, out: (B, M); coefficients (B, 1) fp32."""
    z32, v = z.float(), out.float()
    x_hat = alpha_t * z32 - sigma_t * v
    eps_hat = sigma_t * z32 + alpha_t * v
    return (alpha_s * x_hat + sigma_s * eps_hat).to(z.dtype)


def loss_torch(
    out: torch.Tensor, z_t: torch.Tensor, z_tpp: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
    p: torch.Tensor, q: torch.Tensor, w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """Per-example distillation loss ([PD] Algorithm 2 lines 9-10, docs/spec.md sections 4-5), v-prediction,
    fp32: `w * mean_j (alpha_t*z_t - sigma_t*out - (p*z_tpp + q*z_t))^2`. Tensors (B, M);
    coefficients (B, 1) fp32. Returns (B,)."""
    z32 = z_t.float()
    x_tilde = p * z_tpp.float() + q * z32
    x_hat = alpha_t * z32 - sigma_t * out.float()
    return w[:, 0] * ((x_hat - x_tilde) ** 2).mean(dim=1)


def with_grad(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """(loss, d loss.sum() / d out) through autograd: forward + backward, as training runs it."""

    def run(out: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = out.detach().requires_grad_()
        loss = loss_fn(o, *rest)
        (grad,) = torch.autograd.grad(loss.sum(), o)
        return loss.detach(), grad

    return run


# --- inputs, references, implementations ---------------------------------------------------------


def coefficients(batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Per-example schedule values (cosine, float64, then fp32) at t spread over [0.3, 0.7] across
    the batch and s = t'' = t - 0.25, and the loss coefficients p = 1/den, q = -ratio/den,
    w = max(SNR_t, 1) ([PD] Algorithm 2, docs/spec.md sections 4-5)."""
    schedule = pd_fast.CosineSchedule()
    t = torch.linspace(0.3, 0.7, batch, dtype=torch.float64)
    a_t, s_t = (c.cpu() for c in schedule.alpha_sigma(t))
    a_s, s_s = (c.cpu() for c in schedule.alpha_sigma(t - 0.25))
    ratio = s_s / s_t
    den = a_s - ratio * a_t
    c = {"alpha_t": a_t, "sigma_t": s_t, "alpha_s": a_s, "sigma_s": s_s,
         "p": 1.0 / den, "q": -ratio / den, "w": torch.clamp((a_t / s_t) ** 2, min=1.0)}  # fmt: skip
    return {k: v.to(device=device, dtype=torch.float32) for k, v in c.items()}


def make_inputs(op: str, n: int, batch: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(n)
    shape = (batch, n // batch)
    count = 2 if op == "step" else 3
    return [
        torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype) for _ in range(count)
    ]


def reference(op: str, tensors: list[torch.Tensor], c: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The op in float64 with the closed-form gradient (docs/spec.md section 5: d x_hat / d out = -sigma
    for 'v'): the independent check of every implementation."""
    d = {k: v.double()[:, None] for k, v in c.items()}
    if op == "step":
        z, v = (x.double() for x in tensors)
        x_hat = d["alpha_t"] * z - d["sigma_t"] * v
        eps_hat = d["sigma_t"] * z + d["alpha_t"] * v
        return [d["alpha_s"] * x_hat + d["sigma_s"] * eps_hat]
    out, z_t, z_tpp = (x.double() for x in tensors)
    diff = d["alpha_t"] * z_t - d["sigma_t"] * out - (d["p"] * z_tpp + d["q"] * z_t)
    m = out.shape[1]
    return [d["w"][:, 0] * (diff**2).mean(dim=1), 2.0 * d["w"] / m * diff * -d["sigma_t"]]


def implementation(
    op: str, impl: str, c: dict[str, torch.Tensor], compiled: dict[str, Callable[..., Any]]
) -> Callable[[list[torch.Tensor]], Any]:
    """tensors -> result(s) of `op` by `impl`; results are tuples of tensors."""
    col = {k: v[:, None] for k, v in c.items()}
    if impl == "triton":
        from pd_fast.kernels import distill_loss_fwd_bwd, sampler_step

        zero = torch.zeros_like(c["alpha_t"])
        if op == "step":
            return lambda x: sampler_step(x[0], x[1], c["alpha_t"], c["sigma_t"], zero, c["alpha_s"],
                                          c["sigma_s"], zero, "v", False)[:1]  # fmt: skip
        return lambda x: distill_loss_fwd_bwd(x[0], x[1], x[2], c["alpha_t"], c["sigma_t"], c["p"], c["q"],
                                              c["w"], "v")  # fmt: skip
    if op == "step":
        fn = step_torch if impl == "eager" else compiled["step"]
        return lambda x: (fn(x[0], x[1], col["alpha_t"], col["sigma_t"], col["alpha_s"], col["sigma_s"]),)
    fn = with_grad(loss_torch if impl == "eager" else compiled["loss"])
    return lambda x: fn(x[0], x[1], x[2], col["alpha_t"], col["sigma_t"], col["p"], col["q"], col["w"])


def max_error(results: tuple[torch.Tensor, ...], expected: list[torch.Tensor]) -> float:
    """max over outputs of max |result - expected| / max |expected| (each output at its own scale:
    the gradient is O(w/M), the loss O(w))."""
    errs = []
    for r, e in zip(results, expected, strict=True):
        scale = float(e.abs().max()) or 1.0
        errs.append(float((r.double() - e).abs().max()) / scale)
    return max(errs)


class Bench:
    """Times every implementation of one op at one size and dtype; remembers those that failed."""

    def __init__(
        self,
        device: torch.device,
        batch: int,
        warmup: int,
        repeats: int,
        c: dict[str, torch.Tensor],
        compiled: dict[str, Callable[..., Any]],
        impls: list[str],
        skipped: list[dict[str, str]],
    ) -> None:
        self.device, self.batch, self.warmup, self.repeats = device, batch, warmup, repeats
        self.c, self.compiled, self.skipped = c, compiled, skipped
        self.impls = sorted(impls, key=lambda i: i != "eager")  # eager first: the speedups' base
        self.broken: set[tuple[str, str, str]] = set()  # (op, impl, dtype) that failed once

    def time(self, fn: Callable[[], Any]) -> tuple[float, int]:
        return _common.bench_kernel(fn, self.device, self.warmup, self.repeats)

    def copy_ms(self, nbytes: int) -> tuple[float, int]:
        """`dst.copy_(src)` moving `nbytes` (half read, half written)."""
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=self.device)
        dst = torch.empty_like(src)
        return self.time(lambda: dst.copy_(src))

    def size(self, op: str, dname: str, k: int, check: bool) -> list[dict[str, Any]]:
        """Rows for `op` at 2^k elements in dtype `dname`: the copy, then each implementation.
        With `check`, each result is compared with the float64 reference (max_rel_err)."""
        n, dtype = 2**k, DTYPES[dname]
        nbytes = (3 if op == "step" else 4) * n * dtype.itemsize
        copy_ms, runs = self.copy_ms(nbytes)
        copy_gbps = nbytes / copy_ms / 1e6
        base = {"op": op, "dtype": dname, "log2_elements": k, "elements": n, "batch": self.batch,
                "bytes": nbytes, "bytes_mib": nbytes / 2**20, "copy_gbps": copy_gbps}  # fmt: skip
        rows = [{**base, "impl": "copy", "ms": copy_ms, "gbps": copy_gbps, "frac_of_copy": 1.0,
                 "speedup_vs_eager": None, "max_rel_err": None, "repeats": runs}]  # fmt: skip
        tensors = make_inputs(op, n, self.batch, dtype, self.device)
        expected = reference(op, tensors, self.c) if check else None
        eager_ms = None
        for impl in self.impls:
            if (op, impl, dname) in self.broken:
                continue
            try:
                fn = implementation(op, impl, self.c, self.compiled)
                begin = time.perf_counter()
                result = fn(tensors)  # the first call compiles (Triton, inductor)
                _common.sync(self.device)
                first_s = time.perf_counter() - begin
                err = max_error(result, expected) if expected is not None else None
                del result
                ms, runs = self.time(lambda fn=fn: fn(tensors))
            except Exception as exc:  # a baseline that cannot run here is recorded, never fatal
                reason = f"{op}/{dname}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                print(f"skip {impl}: {reason}")
                self.skipped.append({"impl": impl, "op": op, "dtype": dname, "reason": reason})
                self.broken.add((op, impl, dname))
                continue
            eager_ms = ms if impl == "eager" else eager_ms
            gbps = nbytes / ms / 1e6
            rows.append({**base, "impl": impl, "ms": ms, "gbps": gbps, "frac_of_copy": gbps / copy_gbps,
                         "speedup_vs_eager": eager_ms / ms if eager_ms else None, "max_rel_err": err,
                         "first_call_s": round(first_s, 3) if check else None, "repeats": runs})  # fmt: skip
        return rows


# --- CUDA-graph overhead --------------------------------------------------------------------------


def graph_overhead(device: torch.device, steps: int, batch: int) -> dict[str, Any]:
    """Per-step overhead of the CUDA-graph sampler beyond the network's own time: replay of the
    captured N-step sampler loop (`pd_fast._engine.loop`, Triton path) minus replay of a graph of
    the same N network calls, over N. Model: the built-in MLP (64 -> 256 x 3 blocks)."""
    from pd_fast import _engine
    from pd_fast.app.models import ResidualMLP
    from pd_fast.sampling import step_rule

    model = ResidualMLP(64, hidden=256, depth=3, param="v").to(device).eval()
    z = torch.randn(batch, 64, device=device)
    with _common.env("PD_FAST_BACKEND", "triton"):
        rule = step_rule("ddim", 0.0, "fixed_large")
        plan = _engine.plan(z, steps, pd_fast.CosineSchedule(), rule, "triton")
        loop = _common.capture(lambda: _engine.loop(model, z, plan, "v", False, None, "triton"), device)
        nets = _common.capture(lambda: [model(z, t) for t in plan.t], device)
        out = model(z, plan.t[0])
        updates = _common.capture(
            lambda: [_engine.apply("triton", z, out, plan.coefs[0], "v", False, None) for _ in plan.t],
            device,
        )
        loop_ms = statistics.median(_common.measure(loop, device, warmup=3, repeats=30))
        nets_ms = statistics.median(_common.measure(nets, device, warmup=3, repeats=30))
        upd_ms = statistics.median(_common.measure(updates, device, warmup=3, repeats=30))
    overhead_us = (loop_ms - nets_ms) / steps * 1e3
    return {
        "model": "ResidualMLP(64, hidden=256, depth=3)",
        "batch": batch,
        "steps": steps,
        "sampler_graph_ms": _common.finite_or_none(loop_ms),
        "network_graph_ms": _common.finite_or_none(nets_ms),
        "update_graph_us_per_step": _common.finite_or_none(upd_ms / steps * 1e3),
        "overhead_us_per_step": _common.finite_or_none(overhead_us),
        "method": "CUDA events, median of 30 replays: (sampler loop graph - graph of its N network calls)/N",
    }


# --- driver ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-log2", type=int, default=12, help="smallest size, log2 of the element count")
    p.add_argument(
        "--max-log2",
        type=int,
        default=None,
        help="largest size (default 28 on CUDA, 24 on CPU; --quick: 20 on CPU)",
    )
    p.add_argument("--log2-step", type=int, default=None, help="size step in log2 (default 2; --quick 4)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--ops", default="step,loss", help="comma-separated: step, loss")
    p.add_argument("--impls", default="triton,eager,compile", help="comma-separated: triton, eager, compile")
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile baselines (auto: off with --quick)",
    )
    p.add_argument("--batch", type=int, default=16, help="examples B (tensors are (B, n/B))")
    p.add_argument("--graph-steps", type=int, default=64, help="N for the CUDA-graph overhead measurement")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per point (CPU timing)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per point, CPU (default 7; --quick 3)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/; --quick: a new temporary folder)",
    )
    p.add_argument("--quick", action="store_true", help="fewer sizes, no torch.compile")
    return p


def names(text: str, allowed: tuple[str, ...] | dict[str, Any], flag: str) -> list[str]:
    picked = [s.strip() for s in text.split(",") if s.strip()]
    if not picked or any(s not in allowed for s in picked):
        raise ValueError(f"{flag} must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return picked


def settle(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Fill the defaults that depend on --quick and the device; returns notes to print and record."""
    notes = []
    cpu = device.type != "cuda"
    if args.max_log2 is None:
        args.max_log2 = (20 if args.quick else 24) if cpu else 28
        if cpu:
            notes.append(
                f"CPU: sizes capped at 2^{args.max_log2} elements to bound the run time "
                "(--max-log2 raises it)"
            )
    if args.log2_step is None:
        args.log2_step = 4 if args.quick else 2
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if not 1 <= args.min_log2 <= args.max_log2 or args.log2_step < 1:
        raise ValueError("need 1 <= --min-log2 <= --max-log2 and --log2-step >= 1")
    if args.batch < 1 or 2**args.min_log2 % args.batch:
        raise ValueError(f"--batch must be >= 1 and divide 2^{args.min_log2}, got {args.batch}")
    args.dtypes = names(args.dtypes, DTYPES, "--dtypes")
    args.ops = names(args.ops, OPS, "--ops")
    args.impls = names(args.impls, IMPLS, "--impls")
    if args.compile == "off" or (args.compile == "auto" and args.quick):
        if "compile" in args.impls:
            args.impls.remove("compile")
            notes.append(
                "torch.compile baselines off (--quick or --compile off); its first compile takes "
                "10-60 s on a 2-core CPU"
            )
    return notes


def plot(rows: list[dict[str, Any]], path: Path, title: str, ops: list[str]) -> str | None:
    """GB/s vs elements, one panel per op, one line per implementation x dtype; dotted: copy."""
    plt = _common.pyplot()
    if plt is None:
        return "matplotlib is not installed"
    fig, axes = plt.subplots(1, len(ops), figsize=(6.5 * len(ops), 4.5), squeeze=False)
    colors = {"triton": "tab:red", "eager": "tab:blue", "compile": "tab:green", "copy": "black"}
    styles = {"fp32": "-", "bf16": "--"}
    for ax, op in zip(axes[0], ops, strict=True):
        for impl in ("copy", *IMPLS):
            for dtype in DTYPES:
                sel = [r for r in rows if (r["op"], r["impl"], r["dtype"]) == (op, impl, dtype) and r["gbps"]]
                if not sel:
                    continue
                ax.plot(
                    [r["elements"] for r in sel],
                    [r["gbps"] for r in sel],
                    (":" if dtype == "fp32" else "-.") if impl == "copy" else styles[dtype],
                    marker="." if impl == "copy" else "o",
                    ms=3,
                    color=colors[impl],
                    label=f"{impl} {dtype}" + (" (same bytes)" if impl == "copy" else ""),
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("elements per tensor")
        ax.set_ylabel("GB/s (bytes the op must move / median time)")
        ax.set_title(
            f"{op}: " + ("DDIM step, v" if op == "step" else "distillation loss fwd+bwd, v"), fontsize=9
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if not any(r["impl"] == "triton" for r in rows):
        title += "; Triton kernels not measured (they need a CUDA GPU)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def evaluate_targets(rows: list[dict[str, Any]], overhead: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The GPU targets (docs/results.md, Targets), each with the measured value (the worst case over
    dtypes and over sizes of at least 64 MiB moved); a target with nothing measured is reported as
    missing."""

    def worst(op: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["op"] == op and r["impl"] == "triton"
                and r["bytes"] >= TARGET_BYTES and r[key] is not None]  # fmt: skip
        return min(vals) if vals else None

    measured = {
        "step_frac_of_copy": worst("step", "frac_of_copy"),
        "step_speedup_vs_eager": worst("step", "speedup_vs_eager"),
        "loss_speedup_vs_eager": worst("loss", "speedup_vs_eager"),
        "graph_overhead_us_per_step": overhead.get("overhead_us_per_step") if overhead else None,
    }
    out = []
    for name, threshold in TARGETS.items():
        value = measured[name]
        upper = name.startswith("graph")
        ok = None if value is None else (value <= threshold if upper else value >= threshold)
        out.append({"target": name, "threshold": threshold, "bound": "max" if upper else "min",
                    "measured": value, "pass": ok})  # fmt: skip
    return out


COLUMNS = [
    ("op", "op", "s"), ("impl", "impl", "s"), ("dtype", "dtype", "s"), ("log2_elements", "log2 n", "d"),
    ("bytes_mib", "MiB moved", ".4g"), ("ms", "ms", ".4g"), ("gbps", "GB/s", ".4g"),
    ("frac_of_copy", "of copy", ".0%"), ("speedup_vs_eager", "vs eager", ".2f"),
    ("max_rel_err", "max err", ".1e"),
]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it writes to `kernels.json`."""
    args = build_parser().parse_args(argv)
    wall_start = time.perf_counter()
    device = _common.pick_device(args.device)
    notes = settle(args, device)
    args.out = _common.out_dir(args.out, args.quick)
    threads = _common.set_threads(args.threads)
    notes += [n for n in [_common.load_note(threads)] if n]
    load_start, date = _common.loadavg(), _common.now_utc()
    machine = _common.machine(device)
    print(
        f"# kernels on {machine['gpu_name'] or machine['cpu_model']} ({device.type}, {threads} threads), "
        f"torch {machine['torch']}, triton {machine['triton']}; {date}, load average {load_start}"
    )
    skipped: list[dict[str, str]] = []
    impls = list(args.impls)
    if "triton" in impls and device.type != "cuda":
        reason = "the Triton numbers need a CUDA GPU (none here; the CPU interpreter is not timed)"
        skipped.append({"impl": "triton", "reason": reason})
        impls.remove("triton")
    elif "triton" in impls and _common.triton_version() is None:
        skipped.append({"impl": "triton", "reason": "triton is not installed"})
        impls.remove("triton")
    for note in notes + [f"skip {s['impl']}: {s['reason']}" for s in skipped]:
        print(note)

    compiled: dict[str, Callable[..., Any]] = {}
    if "compile" in impls:
        compiled = {"step": torch.compile(step_torch, dynamic=True),
                    "loss": torch.compile(loss_torch, dynamic=True)}  # fmt: skip
    c = coefficients(args.batch, device)
    sizes = list(range(args.min_log2, args.max_log2 + 1, args.log2_step))
    bench = Bench(device, args.batch, args.warmup, args.repeats, c, compiled, impls, skipped)
    rows: list[dict[str, Any]] = []
    for op in args.ops:
        for dname in args.dtypes:
            for k in sizes:
                new = bench.size(op, dname, k, check=k == sizes[0])
                rows.extend(new)
                print(
                    f"  {op} {dname} 2^{k}: " + ", ".join(f"{r['impl']} {r['gbps']:.3g} GB/s" for r in new),
                    flush=True,
                )
    for r in rows:
        for key in ("ms", "gbps", "copy_gbps", "frac_of_copy", "speedup_vs_eager", "bytes_mib"):
            r[key] = _common.finite_or_none(r[key], 5)
        r["max_rel_err"] = _common.finite_or_none(r["max_rel_err"], 3)

    overhead = None
    targets = None
    if device.type == "cuda" and "triton" in impls:
        try:
            overhead = graph_overhead(device, args.graph_steps, 64)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            print(f"skip CUDA-graph overhead: {reason}")
            skipped.append({"impl": "cuda_graph_overhead", "reason": reason})
        targets = evaluate_targets(rows, overhead)
    print()
    print(_common.table(rows, COLUMNS))
    if overhead:
        print(
            "\nCUDA-graph sampler overhead beyond the network: "
            f"{overhead['overhead_us_per_step']:.3g} us/step "
            f"(N={overhead['steps']}, batch {overhead['batch']})"
        )
    if targets:
        print("\nTargets (measured on " + str(machine["gpu_name"]) + "; worst case at >= 64 MiB moved):")
        for t in targets:
            verdict = "n/a " if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            value = "not measured" if t["measured"] is None else f"{t['measured']:.3g}"
            print(f"  {verdict} {t['target']}: {value} ({t['bound']} {t['threshold']})")
    else:
        print("\nTargets: GPU targets, not evaluated here (no CUDA device; the Triton numbers need a GPU)")
    wall = time.perf_counter() - wall_start
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    bytes_counted = {
        "step": "read z and out, write z_s: 3 n itemsize",
        "loss": "read out, z_t, z_tpp, write grad: 4 n itemsize",
        "copy": "dst.copy_(src) of uint8 tensors of bytes/2 each (half read, half written)",
    }
    settings.update(device=str(device), param="v", sizes_log2=sizes, bytes_counted=bytes_counted)
    payload = {
        "benchmark": "kernels",
        "machine": machine,
        "date": date,
        "loadavg_start": load_start,
        "loadavg_end": _common.loadavg(),
        "wall_s": round(wall, 1),
        "settings": settings,
        "timing": (
            "triton.testing.do_bench, median (L2 flushed)"
            if device.type == "cuda"
            else f"time.perf_counter, {args.warmup} warm-up + median of {args.repeats} runs"
        ),
        "notes": notes,
        "skipped": skipped,
        "cuda_graph_overhead": overhead,
        "targets": targets,
        "rows": rows,
    }
    name = machine["gpu_name"] or machine["cpu_model"]
    title = f"{name} ({device.type}, {threads} threads), batch {args.batch}"
    _common.write_results(args.out, "kernels", payload, lambda path: plot(rows, path, title, args.ops), wall)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
