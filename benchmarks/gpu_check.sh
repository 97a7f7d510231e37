#!/usr/bin/env bash
# The one-shot GPU check: run from the repository root on a machine with one CUDA GPU,
#   bash benchmarks/gpu_check.sh
# It installs nothing (it uses the Python, torch, triton, diffusers and transformers it finds) and
# fits in 9 minutes:
#   1. pytest -m gpu          the kernels and the CUDA-graph sampler against pd_ref       (<= 180 s)
#   2. kernels.py             fused step and loss vs eager and torch.compile, GB/s,
#                             sizes 2^12 ... 2^28 in steps of 2^4, the CUDA-graph overhead (<= 100 s)
#   3. steps_vs_latency.py    every backend, N = 1 ... 256, and the overhead mode           (<= 110 s)
#   4. distill_step.py        one distillation iteration, pd_fast vs eager                 (<= 60 s)
#   5. distill_step.py t2i    one bf16 text-to-image iteration ([GD] stage 2) on a tiny random
#                             Stable Diffusion pipeline, cached latents vs encoding every step:
#                             iterations/s, peak CUDA memory, into $OUT/t2i_bf16/; skipped, with
#                             its reason in the log, the JSON and gpu_check.json, where diffusers
#                             or transformers is missing                                   (<= 75 s)
# Each stage has its own time limit, so a slow or hanging stage cannot take the others' time.
# Everything goes to $OUT when it is set (the device tool brings that folder back), else to
# benchmarks/results/gpu/: the benchmarks' JSON and PNG (each records the GPU's name),
# pytest's log and JUnit XML, every stage's log, and gpu_check.json (the GPU, the versions, each
# stage's exit status and seconds). Exit status: 0 if every stage passed, 1 if one failed or ran
# out of time, 2 if there is no CUDA device (then nothing runs).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
OUT="${OUT:-benchmarks/results/gpu}"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or torch does not import); nothing was run"
    exit 2
fi
mkdir -p "$OUT"
echo "gpu_check: $("$PY" -c "import torch; print(torch.cuda.get_device_name(0))"), writing to $OUT"

STAGES=()
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record status
    local name=$1 limit=$2
    shift 2
    local begin=$SECONDS
    echo "gpu_check: $name (at most ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    STAGES+=("$name $rc $((SECONDS - begin))")
    echo "gpu_check: $name exit $rc after $((SECONDS - begin)) s (log: $OUT/$name.log)"
    tail -n 5 "$OUT/$name.log"
}

stage pytest_gpu 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"
stage kernels 100 "$PY" benchmarks/kernels.py --log2-step 4 --out "$OUT"
stage steps_vs_latency 110 "$PY" benchmarks/steps_vs_latency.py --steps 1,4,16,64,256 --repeats 3 \
    --budget 1 --out "$OUT"
stage distill_step 60 "$PY" benchmarks/distill_step.py --models mlp,unet --rounds 7 --out "$OUT"
# the same command runs on a CPU with --device cpu (tests/app/test_benchmarks.py runs it so)
stage distill_step_t2i 75 "$PY" benchmarks/distill_step.py --models t2i --t2i-precision bf16 --rounds 7 \
    --out "$OUT/t2i_bf16"

"$PY" - "$OUT" "${STAGES[@]}" <<'EOF'
import json, platform, sys
import torch
out, stages = sys.argv[1], [s.split() for s in sys.argv[2:]]
props = torch.cuda.get_device_properties(0)
summary = {
    "gpu_name": props.name,
    "gpu_memory_gib": round(props.total_memory / 2**30, 1),
    "gpu_capability": f"{props.major}.{props.minor}",
    "cuda": torch.version.cuda,
    "torch": torch.__version__,
    "python": platform.python_version(),
    "stages": [{"stage": n, "exit": int(rc), "seconds": int(s), "passed": rc == "0"} for n, rc, s in stages],
}
for entry in summary["stages"]:  # what a stage skipped and why: its log's "skipped: ..." lines
    with open(f"{out}/{entry['stage']}.log", errors="replace") as f:
        skipped = [line[len("skipped: "):].strip() for line in f if line.startswith("skipped: ")]
    if skipped:
        entry["skipped"] = skipped
try:
    import triton
    summary["triton"] = triton.__version__
except Exception as err:
    summary["triton"] = f"not importable: {err}"
with open(f"{out}/gpu_check.json", "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
sys.exit(0 if all(s["passed"] for s in summary["stages"]) else 1)
EOF
