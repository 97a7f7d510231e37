"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90 without a GPU.

Each variant is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`
using the launchers' BLOCK and num_warps, and the same signature the JIT would build for a typical
call: 16-byte aligned pointers and element counts divisible by 16 (the "tt.divisibility" attrs the
JIT attaches to such arguments). The test then reads the generated code: every contiguous tensor
access must be one 128-bit instruction per 16 bytes a thread touches (`ld.global.v4.b32` /
`st.global.v4.b32` in PTX, LDG.E.128 / STG.E.128 in SASS).

Why a subprocess: with TRITON_INTERPRET=1 in the environment (tests/conftest.py sets it when CUDA is
absent) `@triton.jit` yields interpreter objects that `triton.compile` cannot lower, so the compiler
runs in one child process whose environment lacks TRITON_INTERPRET; the test process only checks
the numbers it reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ARCHS = (80, 90)
PARAMS = ("eps", "x", "v", "both")
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


class Variant(NamedTuple):
    kernel: str  # "sampler" or "loss"
    param: str
    dtype: str  # of the tensors; the (B,) coefficients are fp32
    arch: int
    clip: bool = False  # clip, noise, x_hat, guided: sampler only
    noise: bool = False
    x_hat: bool = False
    int_type: str = "i32"  # of the sizes; the JIT passes i64 once they reach 2^31
    sass: bool = False  # also disassemble the cubin with cuobjdump
    guided: bool = False  # classifier-free guidance: the unconditional output read in the same pass


def _variants() -> list[Variant]:
    out = []
    for arch in ARCHS:
        out += [Variant("sampler", p, "fp32", arch) for p in PARAMS]
        out += [Variant("sampler", p, dt, arch, True, True, True) for p in PARAMS for dt in BYTES]
        out += [
            Variant("sampler", "both", "fp32", arch, clip=True),
            Variant("sampler", "x", "bf16", arch, noise=True),
        ]
        out += [Variant("loss", p, dt, arch) for p in PARAMS for dt in BYTES]
        out += [Variant("sampler", p, dt, arch, guided=True) for p in PARAMS for dt in BYTES]
        out += [Variant("sampler", p, "bf16", arch, True, True, False, guided=True) for p in ("v", "both")]
    out += [
        Variant("sampler", "both", "fp16", 90, True, True, True, sass=True, guided=True),
        Variant("sampler", "both", "fp32", 90, True, True, True, sass=True),
        Variant("loss", "both", "fp32", 80, sass=True),
        Variant("sampler", "both", "fp32", 90, int_type="i64"),
        Variant("loss", "both", "bf16", 90, int_type="i64"),
    ]
    return out


VARIANTS = _variants()


def variant_id(v: Variant) -> str:
    flags = [name for name in ("clip", "noise", "x_hat", "guided", "sass") if getattr(v, name)]
    flags += ["i64"] if v.int_type == "i64" else []
    return "-".join([v.kernel, v.param, v.dtype, *flags, f"sm{v.arch}"])


def _compile(v: Variant) -> dict:
    """Compile one variant (in the child process) and count its global memory instructions."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # the package exports functions of the same names as these modules, hence import_module
    sampler_step = importlib.import_module("pd_fast.kernels.step")
    distill_loss = importlib.import_module("pd_fast.kernels.loss")

    if v.kernel == "sampler":
        mod, fn, n_tensor = sampler_step, sampler_step.sampler_step_kernel, 6
        ints = ("n_elements", "M")
        constexprs = {
            "PARAM": v.param,
            "CLIP": v.clip,
            "HAS_NOISE": v.noise,
            "WRITE_X_HAT": v.x_hat,
            "GUIDED": v.guided,
        }
    else:
        mod, fn, n_tensor = distill_loss, distill_loss.distill_loss_kernel, 4
        ints = ("M", "n_chunks")
        constexprs = {"PARAM": v.param}
    constexprs["BLOCK"] = mod.BLOCK
    names = fn.arg_names
    signature = {
        n: f"*{v.dtype}" if i < n_tensor else "*fp32" for i, n in enumerate(names[: names.index(ints[0])])
    }
    signature.update({n: v.int_type for n in ints})
    signature.update({n: "constexpr" for n in constexprs})
    aligned = [n for n in signature if signature[n].startswith("*") or n in ("n_elements", "M")]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", v.arch, 32),
        options={"num_warps": mod.NUM_WARPS},
    )
    ptx = compiled.asm["ptx"]
    result = {
        "elements_per_thread": mod.BLOCK // (32 * mod.NUM_WARPS),
        "has_ptx": f".target sm_{v.arch}" in ptx,
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
        "ld_v4": ptx.count("ld.global.v4.b32"),
        "st_v4": ptx.count("st.global.v4.b32"),
    }
    if v.sass:
        cubin = Path(os.environ["PD_AOT_TMP"]) / f"{variant_id(v)}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-sass", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result["sass_ldg128"] = sass.count("LDG.E.128")
        result["sass_stg128"] = sass.count("STG.E.128")
    return result


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PD_AOT_TMP"] = str(tmp_path_factory.mktemp("aot"))
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())], env=env, cwd=root, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def expected_v4(v: Variant, per_thread: int) -> tuple[int, int]:
    """128-bit loads and stores one thread issues per block: one per 16 bytes of each tensor (z, the
    output(s) (two halves each for 'both'), noise)."""
    vectors = per_thread * BYTES[v.dtype] // 16
    both = v.param == "both"
    if v.kernel == "sampler":
        return (2 + both + v.noise + v.guided * (1 + both)) * vectors, (1 + v.x_hat) * vectors
    return (3 + both) * vectors, (1 + both) * vectors


@pytest.mark.parametrize("v", VARIANTS, ids=variant_id)
def test_kernel_compiles_to_128_bit_accesses(compiled: dict, v: Variant) -> None:
    r = compiled[variant_id(v)]
    assert r["has_ptx"] and r["cubin_bytes"] > 0
    loads, stores = expected_v4(v, r["elements_per_thread"])
    assert (r["ld_v4"], r["st_v4"]) == (loads, stores)
    if v.sass:
        assert (r["sass_ldg128"], r["sass_stg128"]) == (loads, stores)


if __name__ == "__main__":
    print(json.dumps({variant_id(v): _compile(v) for v in VARIANTS}))
