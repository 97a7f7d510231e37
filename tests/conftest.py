"""Shared pytest setup.

- Without CUDA, `TRITON_INTERPRET=1` is set here, at import, before anything imports triton:
  `@triton.jit` reads it when a kernel is defined, and then the Triton launchers run on CPU
  tensors (numpy-backed interpreter). Where CUDA is present the kernels compile for the GPU.
- `backend`: a fixture running a test once per pd_fast backend ("torch", "triton") on CPU
  tensors, by setting `PD_FAST_BACKEND` (pd_fast reads it at every call). Where CUDA is present
  the interpreter is off, so the "triton" variant skips there (with that reason): the Triton
  kernels are then tested on CUDA tensors by tests/fast/test_gpu.py, through `cuda_backend`.
- `device`: "cpu", plus "cuda" marked `gpu` and skipped where CUDA is absent.
- Hypothesis runs without its per-example deadline: the 2-core CI machine is shared, and a slow
  example is not a wrong one.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("pd", deadline=None)
# CI: the same examples on every run (a fresh clone has no example database), so that a pass or a
# failure does not depend on the draw; runs elsewhere keep exploring new examples
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pd"))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BACKENDS = ("torch", "triton")
DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def pytest_collection_modifyitems(config, items):
    """GPU tests skip (with a reason) where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """The pd_fast backend under test on CPU tensors, forced through PD_FAST_BACKEND."""
    if request.param == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (off where CUDA is present)")
    monkeypatch.setenv("PD_FAST_BACKEND", request.param)
    return request.param


@pytest.fixture(params=BACKENDS)
def cuda_backend(request, monkeypatch) -> str:
    """The pd_fast backend under test on CUDA tensors, forced through PD_FAST_BACKEND."""
    monkeypatch.setenv("PD_FAST_BACKEND", request.param)
    return request.param


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def one_thread():
    """Tiny networks and small matmuls run many times faster on one torch thread on a shared CPU;
    the caller's count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
