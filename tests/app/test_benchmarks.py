"""Smoke tests of the benchmark scripts: each runs through `main(argv)` in a tiny
configuration into a tmp dir, and the JSON and PNG it writes are checked. Never on times: only on
the schema, on the rows covering every point asked for, and on every backend computing the same
samples as the float64 reference (a benchmark that timed wrong math would fail here).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pd_ref

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scripts(monkeypatch):
    """The two scripts imported as modules (their folder on sys.path, as when run directly);
    torch's thread count, which `main` sets, is restored afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("_common", "steps_vs_latency", "kernels"):
        sys.modules.pop(name, None)
    threads = torch.get_num_threads()
    yield importlib.import_module("steps_vs_latency"), importlib.import_module("kernels")
    torch.set_num_threads(threads)


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
                                      "--out", str(tmp_path)])  # fmt: skip
    payload = json.loads((tmp_path / "steps_vs_latency.json").read_text())
    assert payload == json.loads(json.dumps(returned))
    _check_header(payload)
    _check_png(tmp_path / "steps_vs_latency.png")

    on_cpu = payload["machine"]["device"] == "cpu"
    ran = {"pd_ref", "naive_torch", "pd_fast_torch"} | (set() if on_cpu else {"triton", "triton_graph"})
    if on_cpu:  # the CUDA-only backends are skipped with a reason, not dropped silently
        assert {s["backend"] for s in payload["skipped"]} == {"triton", "triton_graph"}
        assert all(s["reason"] for s in payload["skipped"])
    rows = payload["rows"]
    assert {(r["backend"], r["model"], r["steps"]) for r in rows} == {
        (b, m, n) for b in ran for m in ("mlp", "unet") for n in (1, 2, 4)
    }
    for r in rows:
        assert r["batch"] == 2
        for key in ("total_ms", "per_step_ms", "network_ms", "update_ms", "update_share"):
            assert _positive(r[key]), (key, r)
        assert r["per_step_ms"] == pytest.approx(r["total_ms"] / r["steps"], rel=1e-4)
        assert r["update_share"] == pytest.approx(r["update_ms"] / r["per_step_ms"], rel=1e-2)
        assert r["repeats"] >= 1
    # every backend samples what pd_ref (float64) samples, to fp32 rounding
    for key, info in payload["backends"].items():
        assert info["max_abs_diff_vs_pd_ref_at_4_steps"] < 1e-4, key


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


def test_a_backend_that_raises_is_skipped_with_its_reason_not_fatal(scripts, tmp_path, monkeypatch):
    steps_vs_latency, _ = scripts

    def broken(model, z):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(steps_vs_latency, "make_naive", broken)
    argv = "--steps 1 --models mlp --backends naive_torch,pd_fast_torch --batch 2 --mlp-dim 4 --mlp-hidden 8"
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
