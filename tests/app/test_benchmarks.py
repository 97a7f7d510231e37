"""Smoke tests of the benchmark scripts: each runs through `main(argv)` in a tiny
configuration into a tmp dir, and the JSON and PNG it writes are checked. Never on times: only on
the schema, on the rows covering every point asked for, and on every backend computing the same
samples as the float64 reference (a benchmark that timed wrong math would fail here).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pd_fast
import pd_ref

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scripts(monkeypatch):
    """steps_vs_latency and kernels imported as modules (their folder on sys.path, as when run
    directly); torch's thread count, which `main` sets, is restored afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("_common", "steps_vs_latency", "kernels", "distill_step", "_text_to_image"):
        sys.modules.pop(name, None)
    threads = torch.get_num_threads()
    yield importlib.import_module("steps_vs_latency"), importlib.import_module("kernels")
    torch.set_num_threads(threads)


@pytest.fixture
def distill(scripts):
    """benchmarks/distill_step.py imported as a module (see `scripts`)."""
    return importlib.import_module("distill_step")


def k_diffusion_imports() -> bool:
    try:
        import k_diffusion.sampling  # noqa: F401
    except Exception:
        return False
    return True


def latent_libraries() -> bool:
    """diffusers and transformers, which the text-to-image case needs, are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("diffusers", "transformers"))


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def _check_header(payload: dict) -> None:
    machine = payload["machine"]
    assert machine["cpu_model"] and machine["torch"] == torch.__version__
    assert machine["device"] in ("cpu", "cuda")
    assert payload["date"].endswith("+00:00")
    assert payload["loadavg_start"] is None or len(payload["loadavg_start"]) == 3
    assert _positive(payload["wall_s"]) or payload["wall_s"] == 0.0


def test_steps_vs_latency_tiny_run_writes_rows_for_every_point_and_matches_pd_ref(scripts, tmp_path):
    steps_vs_latency, _ = scripts
    argv = "--steps 1,2,4 --batch 2 --mlp-dim 4 --mlp-hidden 8 --mlp-depth 1 --unet-ch 4 --unet-size 4"
    returned = steps_vs_latency.main([*argv.split(), "--repeats", "1", "--budget", "0.2", "--threads", "1",
                                      "--overhead-batches", "1,3", "--overhead-steps", "4",
                                      "--overhead-repeats", "2",
                                      "--out", str(tmp_path)])  # fmt: skip
    payload = json.loads((tmp_path / "steps_vs_latency.json").read_text())
    assert payload == json.loads(json.dumps(returned))
    _check_header(payload)
    _check_png(tmp_path / "steps_vs_latency.png")

    on_cpu = payload["machine"]["device"] == "cpu"
    ran = {"pd_ref", "naive_torch", "diffusers", "pd_fast_torch"} | (
        set() if on_cpu else {"triton", "triton_graph"}
    )
    absent = set() if k_diffusion_imports() else {"k_diffusion"}
    ran |= {"k_diffusion"} - absent
    # the backends that cannot run here are skipped with a reason, once each, not dropped silently
    assert {s["backend"] for s in payload["skipped"]} == absent | (
        {"triton", "triton_graph"} if on_cpu else set()
    )
    assert all(s["reason"] and "model" not in s for s in payload["skipped"])
    rows = payload["rows"]
    assert {(r["backend"], r["model"], r["steps"]) for r in rows} == {
        (b, m, n) for b in ran for m in ("mlp", "unet") for n in (1, 2, 4)
    }
    for r in rows:
        assert r["batch"] == 2
        for key in ("total_ms", "per_step_ms", "network_ms", "update_ms", "update_share"):
            assert _positive(r[key]), (key, r)
        assert r["per_step_ms"] == pytest.approx(r["total_ms"] / r["steps"], rel=1e-4)
        # the minimum and the median of the same runs
        assert _positive(r["total_ms_min"]) and r["total_ms_min"] <= r["total_ms"] <= r["total_ms_max"]
        assert r["per_step_ms_min"] == pytest.approx(r["total_ms_min"] / r["steps"], rel=1e-4)
        assert r["update_share"] == pytest.approx(r["update_ms"] / r["per_step_ms"], rel=1e-2)
        assert r["repeats"] >= 1
    # every backend samples what pd_ref (float64) samples, to fp32 rounding; k-diffusion's
    # variance-exploding view (x = z/alpha_1, alpha_1 ~ 4.5e-5) only has to run
    for key, info in payload["backends"].items():
        diff = info["max_abs_diff_vs_pd_ref_at_4_steps"]
        assert diff < (1e-1 if key.startswith("k_diffusion") else 1e-4), key

    # overhead mode: every backend at every batch, us per step = total / N, ratios to diffusers
    us, vs = payload["overhead_us_per_step"], payload["overhead_vs_diffusers"]
    assert set(us) == ran and all(set(per) == {"1", "3"} for per in us.values())
    for r in payload["overhead"]["rows"]:
        assert r["steps"] == 4 and _positive(r["us_per_step"])
        assert r["us_per_step"] == pytest.approx(r["total_ms"] / 4 * 1e3, rel=1e-4)
        assert _positive(r["total_ms_min"]) and r["total_ms_min"] <= r["total_ms"]
        assert r["us_per_step_min"] == pytest.approx(r["total_ms_min"] / 4 * 1e3, rel=1e-4)
        assert r["us_per_step_min"] <= r["us_per_step"]
        assert r["max_abs_diff_vs_pd_ref_at_4_steps"] < (1e-1 if r["backend"] == "k_diffusion" else 1e-4)
        ratio = us["diffusers"][str(r["batch"])] / r["us_per_step"]
        assert vs[r["backend"]][str(r["batch"])] == pytest.approx(ratio, rel=1e-3)
        if r["cpu_us_per_step"] is not None:  # a CPU with one torch thread: the thread's CPU time too
            assert _positive(r["cpu_us_per_step"])
            cpu_ratio = (
                payload["overhead_cpu_us_per_step"]["diffusers"][str(r["batch"])] / r["cpu_us_per_step"]
            )
            assert payload["overhead_cpu_vs_diffusers"][r["backend"]][str(r["batch"])] == pytest.approx(
                cpu_ratio, rel=1e-3
            )


def test_quick_runs_write_to_a_temporary_folder_not_the_committed_results(
    scripts, distill, monkeypatch, tmp_path
):
    """`--quick` without `--out` leaves benchmarks/results/ alone."""
    steps_vs_latency, kernels = scripts
    import _common

    committed = tmp_path / "committed"
    monkeypatch.setattr(_common, "RESULTS", committed)
    tiny = "--min-log2 12 --max-log2 12 --dtypes fp32 --ops step --repeats 1 --warmup 0 --threads 1"
    payload = kernels.main(["--quick", *tiny.split()])
    out = Path(payload["settings"]["out"])
    assert (out / "kernels.json").exists() and out.parent == Path(tempfile.gettempdir())
    argv = (
        "--steps 1 --models mlp --backends pd_fast_torch --batch 2 --mlp-dim 4 --mlp-hidden 8 --mlp-depth 1"
    )
    payload = steps_vs_latency.main(
        ["--quick", *argv.split(), "--overhead-batches", "1", "--overhead-steps", "2"]
    )
    assert Path(payload["settings"]["out"]) != out and Path(payload["settings"]["out"]).exists()
    payload = distill.main(["--quick", "--models", "mlp", "--memory", "off"])
    assert Path(payload["settings"]["out"]).parent == Path(tempfile.gettempdir())
    assert {r["impl"] for r in payload["rows"]} == {"pd_fast", "eager"}
    assert not committed.exists()
    assert kernels.main([*tiny.split(), "--out", str(tmp_path / "given")])["settings"]["out"] == str(
        tmp_path / "given"
    )


def test_kernels_tiny_run_reports_bandwidth_against_copy_and_correct_results(scripts, tmp_path):
    _, kernels = scripts
    argv = "--min-log2 12 --max-log2 14 --log2-step 2 --compile off --repeats 1 --warmup 0 --threads 1"
    payload = kernels.main([*argv.split(), "--out", str(tmp_path)])
    assert payload == json.loads((tmp_path / "kernels.json").read_text())
    _check_header(payload)
    _check_png(tmp_path / "kernels.png")
    rows = payload["rows"]
    impls = {"copy", "eager"} | (set() if payload["machine"]["device"] == "cpu" else {"triton"})
    assert {(r["op"], r["impl"], r["dtype"], r["log2_elements"]) for r in rows} == {
        (o, i, d, k) for o in ("step", "loss") for i in impls for d in ("fp32", "bf16") for k in (12, 14)
    }
    for r in rows:
        itemsize = 4 if r["dtype"] == "fp32" else 2
        assert r["bytes"] == (3 if r["op"] == "step" else 4) * 2 ** r["log2_elements"] * itemsize
        assert _positive(r["ms"]) and _positive(r["gbps"]) and _positive(r["copy_gbps"])
        assert r["gbps"] == pytest.approx(r["bytes"] / r["ms"] / 1e6, rel=1e-3)
        assert r["frac_of_copy"] == pytest.approx(r["gbps"] / r["copy_gbps"], rel=1e-3)
    # each implementation is checked against the float64 closed form at the smallest size
    for r in rows:
        if r["impl"] != "copy" and r["log2_elements"] == 12:
            assert r["max_rel_err"] < (1e-5 if r["dtype"] == "fp32" else 2e-2), r
    if payload["machine"]["device"] == "cpu":
        assert payload["targets"] is None
        assert any(s["impl"] == "triton" and "GPU" in s["reason"] for s in payload["skipped"])


def test_kernels_reference_gradient_matches_finite_differences(scripts):
    """The float64 closed-form gradient the benchmark checks against is itself right."""
    _, kernels = scripts
    c = kernels.coefficients(2, torch.device("cpu"))
    out, z_t, z_tpp = (torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
                       for i in range(3))  # fmt: skip
    loss, grad = kernels.reference("loss", [out, z_t, z_tpp], c)
    h = 1e-6
    for b, j in ((0, 0), (1, 5)):
        bumped = out.clone()
        bumped[b, j] += h
        numeric = (kernels.reference("loss", [bumped, z_t, z_tpp], c)[0][b] - loss[b]) / h
        assert float(grad[b, j]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)


@pytest.mark.parametrize(
    ("module", "argv"),
    [("steps_vs_latency", ["--steps", "0"]), ("steps_vs_latency", ["--backends", "jax"]),
     ("steps_vs_latency", ["--batch", "0"]), ("kernels", ["--dtypes", "fp8"]),
     ("kernels", ["--min-log2", "20", "--max-log2", "12"])],
)  # fmt: skip
def test_bad_flags_are_rejected(scripts, module, argv, tmp_path):
    mod = scripts[0] if module == "steps_vs_latency" else scripts[1]
    with pytest.raises((SystemExit, ValueError)):
        mod.main([*argv, "--out", str(tmp_path)])


def test_steps_vs_latency_runs_on_one_torch_thread_by_default_and_gives_the_callers_back(scripts, tmp_path):
    """`--threads` (default 1) is torch's thread count during the run, recorded in the JSON; the
    caller's count is restored afterwards."""
    steps_vs_latency, _ = scripts
    argv = "--steps 1 --models mlp --backends pd_fast_torch --batch 2 --mlp-dim 4 --mlp-hidden 8"
    argv += f" --mode latency --repeats 1 --out {tmp_path}"
    torch.set_num_threads(3)
    for flag, threads in (("", 1), ("--threads 2", 2)):
        payload = steps_vs_latency.main([*argv.split(), *flag.split()])
        assert payload["torch_threads"] == payload["machine"]["torch_threads"] == threads
        assert payload["settings"]["threads"] == threads
        assert torch.get_num_threads() == 3


def test_a_backend_that_raises_is_skipped_with_its_reason_not_fatal(scripts, tmp_path, monkeypatch):
    steps_vs_latency, _ = scripts

    def broken(model, z):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(steps_vs_latency, "make_naive", broken)
    argv = "--steps 1 --models mlp --backends naive_torch,pd_fast_torch --batch 2 --mlp-dim 4 --mlp-hidden 8"
    argv += " --mode latency"
    payload = steps_vs_latency.main(
        [*argv.split(), "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    )
    assert {r["backend"] for r in payload["rows"]} == {"pd_fast_torch"}
    reasons = [s["reason"] for s in payload["skipped"] if s["backend"] == "naive_torch"]
    assert len(reasons) == 1 and "simulated failure" in reasons[0]


@pytest.mark.parametrize("op", ["step", "loss"])
def test_kernels_triton_wiring_computes_the_benchmarked_math(scripts, op):
    """The Triton calls the benchmark times (argument order, coefficients) give the float64
    closed form. Runs the launchers under TRITON_INTERPRET=1 on CPU (set by conftest) or on CUDA."""
    _, kernels = scripts
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest before triton is imported) or CUDA")
    c = kernels.coefficients(4, device)
    tensors = kernels.make_inputs(op, 256, 4, torch.float32, device)
    result = kernels.implementation(op, "triton", c, {})(tensors)
    assert kernels.max_error(result, kernels.reference(op, tensors, c)) < 1e-5


def test_steps_vs_latency_timed_updates_are_pd_refs_ddim_step(scripts):
    """Each update the benchmark times (naive, pd_fast torch, pd_fast Triton) is pd_ref's DDIM step
    at t = 0.5 -> s = 0.25 (Triton under TRITON_INTERPRET=1 on CPU, set by conftest, or on CUDA)."""
    steps_vs_latency, _ = scripts
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = steps_vs_latency.settle(
        steps_vs_latency.build_parser().parse_args("--batch 3 --mlp-dim 5".split())
    )
    model, z = steps_vs_latency.build("mlp", args, device)
    schedule = pd_ref.CosineSchedule()
    with torch.inference_mode():
        out = model(z, torch.full((3,), 0.5, device=device))
        expected = pd_ref.ddim_step(
            z.double().cpu().numpy(), out.double().cpu().numpy(),
            *schedule.alpha_sigma(0.5), *schedule.alpha_sigma(0.25), "v",
        )  # fmt: skip
        updates = {"naive_torch": steps_vs_latency.make_naive(model, z).update}
        backends = ["torch"] + (
            ["triton"] if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") else []
        )
        for backend in backends:
            updates[backend] = steps_vs_latency.pd_fast_update(model, z, backend)[0]
        for name, update in updates.items():
            got = update().double().cpu().numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_distill_step_tiny_run_checks_both_against_pd_ref_and_reports_ratios(distill, tmp_path):
    argv = "--models mlp,unet --batch 3,2 --steps 4 --iters 1 --rounds 3 --warmup 1"
    argv += " --mlp-hidden 8 --unet-ch 8"
    returned = distill.main([*argv.split(), "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "distill_step.json").read_text())
    assert payload == json.loads(json.dumps(returned))
    _check_header(payload)
    _check_png(tmp_path / "distill_step.png")
    rows, ratios = payload["rows"], payload["ratios"]
    assert {(r["impl"], r["model"], r["batch"]) for r in rows} == {
        (i, m, b) for i in ("pd_fast", "eager") for m in ("mlp", "unet") for b in (3, 2)
    }
    for r in rows:
        assert r["steps"] == 4 and r["rounds"] == 3
        assert _positive(r["ms_per_iter"]) and _positive(r["loss_ms"])
        assert r["iters_per_s"] == pytest.approx(1e3 / r["ms_per_iter"], rel=1e-4)
        assert r["loss_share"] == pytest.approx(r["loss_ms"] / r["ms_per_iter"], rel=1e-2)
        assert r["peak_mib"] is None or r["peak_mib"] >= 0
        # both implementations compute pd_ref's float64 loss, to fp32 rounding (amplified ~N by the target)
        assert r["max_rel_diff_vs_pd_ref"] < 1e-3, r
    for q in ratios:
        assert q["pd_fast_over_eager"] == pytest.approx(float(np.median(q["per_round"])), rel=1e-3)
        if payload["machine"]["device"] == "cpu":
            assert _positive(q["pd_fast_over_eager_cpu_time"])


def test_distill_step_iterations_train_the_same_student(distill):
    """Both timed iterations are real training steps of the same math: from the same weights and
    batches, the two students move away from the teacher and stay together."""
    args = distill.settle(distill.build_parser().parse_args("--quick --steps 4 --mlp-hidden 16".split()))
    s = distill.Setup("mlp", 8, args, torch.device("cpu"))
    for name in distill.IMPLS:
        run = distill.iteration(s, name)
        for _ in range(3):
            run()
    teacher = torch.cat([p.flatten() for p in s.teacher.parameters()])
    moved = {n: torch.cat([p.detach().flatten() for p in s.students[n].parameters()]) for n in distill.IMPLS}
    step = (moved["pd_fast"] - teacher).abs().max()
    assert step > 1e-6
    assert (moved["pd_fast"] - moved["eager"]).abs().max() < 1e-2 * step


def _check_t2i(section: dict, batch: int, steps: int, precision: str, rounds: int) -> None:
    """The text-to-image case's fields, and both paths computing the same loss on the same draws."""
    rows, q, same = section["rows"], section["ratio"], section["same_loss"]
    assert [r["impl"] for r in rows] == ["pd_fast_cached", "encode_every_step"]
    for r in rows:
        assert (r["batch"], r["steps"], r["precision"], r["rounds"]) == (batch, steps, precision, rounds)
        assert _positive(r["ms_per_iter"]) and r["ms_min"] <= r["ms_per_iter"] <= r["ms_max"]
        assert r["iters_per_s"] == pytest.approx(1e3 / r["ms_per_iter"], rel=1e-4)
        assert r["peak_mib"] is None or r["peak_mib"] >= 0
    assert q["cached_over_encoding"] == pytest.approx(float(np.median(q["per_round"])), rel=1e-3)
    assert len(q["per_round"]) == rounds and q["precision"] == precision
    # the same images and captions, encoded in another batch: equal up to fp32 rounding
    assert same["latents_max_abs_diff"] < 1e-5 and same["embeddings_max_abs_diff"] < 1e-5
    assert same["loss_max_rel_diff"] <= same["tolerance"] == (1e-3 if precision == "fp32" else 0.25)
    assert section["pipeline"]["latents"] == "latent_dist.mean * scaling_factor"


@pytest.mark.skipif(not latent_libraries(), reason="needs diffusers and transformers")
def test_distill_step_text_to_image_paths_compute_the_same_loss_and_report_their_ratio(distill, tmp_path):
    argv = "--quick --models t2i --steps 4 --iters 1 --rounds 3 --warmup 1 --t2i-batch 3"
    returned = distill.main([*argv.split(), "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "distill_step.json").read_text())
    assert payload == json.loads(json.dumps(returned))
    _check_header(payload)
    _check_png(tmp_path / "distill_step.png")
    assert payload["rows"] == [] and payload["ratios"] == []
    _check_t2i(payload["text_to_image"], batch=3, steps=4, precision="fp32", rounds=3)
    assert payload["text_to_image"]["same_loss"]["loss_max_rel_diff"] < 1e-3  # fp32 rounding, x ~N


@pytest.mark.skipif(not latent_libraries(), reason="needs diffusers and transformers")
def test_gpu_check_text_to_image_stage_runs_on_a_cpu_with_device_cpu(distill, tmp_path):
    """The bf16 text-to-image stage of gpu_check.sh, its own flags, as a dry run on the CPU."""
    script = (BENCHMARKS / "gpu_check.sh").read_text().replace("\\\n", " ")
    line = next(s for s in script.splitlines() if s.startswith("stage distill_step_t2i "))
    argv = shlex.split(line.split("benchmarks/distill_step.py", 1)[1])
    argv = argv[: argv.index("--out")]
    small = "--device cpu --quick --steps 4 --rounds 1 --iters 1 --warmup 1 --memory off --t2i-batch 2"
    payload = distill.main([*argv, *small.split(), "--out", str(tmp_path)])
    _check_t2i(payload["text_to_image"], batch=2, steps=4, precision="bf16", rounds=1)
    assert (tmp_path / "distill_step.json").exists()


def test_distill_step_text_to_image_is_skipped_with_its_reason_without_the_libraries(
    distill, monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(distill._text_to_image, "missing", lambda: "diffusers not installed")
    payload = distill.main(["--quick", "--models", "t2i", "--out", str(tmp_path)])
    assert payload["text_to_image"] == {"skipped": "diffusers not installed"} and payload["rows"] == []
    assert json.loads((tmp_path / "distill_step.json").read_text())["text_to_image"]["skipped"]
    assert "skipped: the text-to-image case: diffusers not installed" in capsys.readouterr().out.splitlines()


class _StandInCuda:
    """Enough of torch.cuda for `_common.capture` on a CPU host: streams, a graph whose replay is
    logged, and `torch.cuda.graph` with (or, `liveness=False`, without) `check_input_liveness`."""

    def __init__(self, monkeypatch, liveness: bool = True) -> None:
        self.log: list = []
        log = self.log

        class Stream:
            def __init__(self, device=None) -> None:
                log.append(("new stream", self))

            def wait_stream(self, other) -> None:
                pass

        class Graph:
            def replay(self) -> None:
                log.append("replay")

        @contextlib.contextmanager
        def stream(s):
            log.append(("on", s))
            yield

        def graph(g, pool=None, stream=None, capture_error_mode="global", **kw):
            log.append(("capture on", stream, kw))
            return contextlib.nullcontext()

        if liveness:

            def graph(g, pool=None, stream=None, capture_error_mode="global", check_input_liveness=False):  # noqa: F811
                log.append(("capture on", stream, {"check_input_liveness": check_input_liveness}))
                return contextlib.nullcontext()

        class Current:
            def wait_stream(self, other) -> None:
                pass

        current = Current()
        for name, value in (("Stream", Stream), ("CUDAGraph", Graph), ("stream", stream), ("graph", graph),
                            ("current_stream", lambda device=None: current)):  # fmt: skip
            monkeypatch.setattr(torch.cuda, name, value)


@pytest.mark.parametrize("liveness", [True, False])
def test_capture_keeps_what_the_graph_reads_alive_and_captures_on_its_side_stream(
    scripts, monkeypatch, liveness
):
    """The captured closure (which owns the graph's inputs) lives as long as the replay callable;
    warm-up and capture run on the side stream, passed explicitly; torch's input-liveness check is
    asked for where `torch.cuda.graph` has it."""
    import _common

    cuda = _StandInCuda(monkeypatch, liveness)

    class Inputs:  # what a captured sampler reads: a plan, times, coefficients
        pass

    inputs = Inputs()
    alive = weakref.ref(inputs)
    replay = _common.capture(lambda owned=inputs: ("x_hat", owned), torch.device("cuda"))
    del inputs
    gc.collect()
    assert alive() is not None
    result = replay()
    assert result[0] == "x_hat" and cuda.log[-1] == "replay"
    side = cuda.log[0][1]
    assert cuda.log[:3] == [("new stream", side), ("on", side), ("capture on", side, cuda.log[2][2])]
    assert cuda.log[2][2] == ({"check_input_liveness": True} if liveness else {})
    del replay, result
    gc.collect()
    assert alive() is None


def test_diffusers_scheduler_from_the_cosine_schedule_steps_as_pd_ref(scripts):
    """The exported DDIMScheduler has alpha_bar((k + 1)/T) at timestep k (float32 cumprod), lands
    on the grid t = i/N, and its step (the update the benchmark times) is pd_ref's DDIM step."""
    steps_vs_latency, _ = scripts
    ref = pd_ref.CosineSchedule()
    for n in (4, 16, 1000):
        scheduler, big_t = steps_vs_latency.ddim_scheduler(n, pd_fast.CosineSchedule())
        assert big_t % n == 0 and big_t >= 1000
        k = np.arange(big_t)
        want = ref.alpha_sigma((k + 1) / big_t)[0] ** 2
        np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), want, rtol=2e-4)
        scheduler.set_timesteps(n)
        np.testing.assert_array_equal((scheduler.timesteps.numpy() + 1) / big_t, np.arange(n, 0, -1) / n)
    args = steps_vs_latency.settle(
        steps_vs_latency.build_parser().parse_args("--batch 3 --mlp-dim 5".split())
    )
    model, z = steps_vs_latency.build("mlp", args, torch.device("cpu"))
    with torch.inference_mode():
        got = steps_vs_latency.make_diffusers(model, z).update().double().numpy()
        out = model(z, torch.full((3,), 0.75)).double().numpy()
    expected = pd_ref.ddim_step(z.double().numpy(), out, *ref.alpha_sigma(0.75), *ref.alpha_sigma(0.5), "v")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_k_diffusion_wrapper_is_the_v_model_in_the_variance_exploding_view(scripts):
    """VDenoiser(x, sigma) at sigma = sigma_t/alpha_t, x = z/alpha_t is pd_ref's x_hat of the v
    model at (z, t); the sigmas are sigma_t/alpha_t on the grid t = i/N, then 0."""
    steps_vs_latency, _ = scripts
    ref = pd_ref.CosineSchedule()
    t = np.array([1.0, 0.5, 1 / 8])
    alpha, sigma = ref.alpha_sigma(t)
    z = np.random.default_rng(0).standard_normal((3, 4))
    model = steps_vs_latency.ResidualMLP(4, hidden=8, depth=1, param="v")
    with torch.no_grad():
        for p in model.out.parameters():
            p.normal_(0.0, 0.1)
        denoiser = steps_vs_latency.VDenoiser(model, pd_fast.CosineSchedule())
        x = torch.from_numpy(z / alpha[:, None]).float()
        got = denoiser(x, torch.from_numpy(sigma / alpha).float()).double().numpy()
        out = model(torch.from_numpy(z).float(), torch.from_numpy(t).float()).double().numpy()
    expected = pd_ref.predict_x_eps(z, out, alpha, sigma, "v")[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    sigmas = steps_vs_latency.k_sigmas(8, pd_fast.CosineSchedule(), torch.device("cpu")).double().numpy()
    a8, s8 = ref.alpha_sigma(np.arange(8, 0, -1) / 8)
    np.testing.assert_allclose(sigmas, np.append(s8 / a8, 0.0), rtol=1e-6)


@pytest.mark.gpu
def test_captured_benchmark_graphs_replay_correctly_after_their_inputs_go_out_of_scope(scripts):
    """A graph captured by `_common.capture` reads tensors only its closure owns; replays after
    other allocations and `empty_cache()` still compute the right thing."""
    import _common

    device = torch.device("cuda")

    def make() -> Any:
        a = torch.arange(1 << 16, device=device, dtype=torch.float32)
        return _common.capture(lambda: a * 2.0 + 1.0, device)

    replay = make()
    junk = [torch.full((1 << 16,), 7.0, device=device) for _ in range(16)]
    del junk
    torch.cuda.empty_cache()
    expected = torch.arange(1 << 16, device=device, dtype=torch.float32) * 2.0 + 1.0
    for _ in range(3):
        torch.testing.assert_close(replay(), expected, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_stops_with_a_clear_line_without_cuda(tmp_path):
    run = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], env={**os.environ, "OUT": str(tmp_path / "out")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "no CUDA device" in run.stdout and "nothing was run" in run.stdout
    assert not (tmp_path / "out").exists()
