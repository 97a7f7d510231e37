"""What both benchmark scripts share: the machine description, timing, and the tables and plots
(the JSON is written with pd_fast's atomic writer, `pd_fast.app.checkpoint.save_json`).

Timing: warm-up runs first (untimed), then repeats; the statistic reported is the median.
On CPU a run is timed with `time.perf_counter`; on CUDA with CUDA events around the run (the
device finishes before the clock stops). `bench_kernel` uses `triton.testing.do_bench` on CUDA
(it flushes the L2 cache between runs), else the same loop. Implementations compared side by side
(`distill_step.py`) run in interleaved rounds (`time_rounds`, `median_ratio`), and their peak memory
is that of a few calls above what was in use before them (`peak_memory_mib`).

Importing this module also makes the repository's packages (`pd_ref`, `pd_fast`) importable when a
script is run from a clone without `pip install -e .` (the scripts' folder is then on sys.path,
the repository root is not).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import importlib.util
import inspect
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
if importlib.util.find_spec("pd_fast") is None:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def triton_version() -> str | None:
    """triton's version, or None where it is not installed (or does not import)."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except Exception:  # a broken install counts as missing
        return None
    return triton.__version__


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def load_note(threads: int) -> str | None:
    """A warning when the machine is busier than it has cores: multi-threaded CPU timings are then
    inflated (a parallel region waits for its slowest, descheduled thread)."""
    load, cores = loadavg(), os.cpu_count() or 1
    if load is None or load[0] <= cores:
        return None
    return f"load average {load[0]} exceeds the {cores} cores: timings are inflated" + (
        " (with several torch threads badly; --threads 1 suffers less)" if threads > 1 else ""
    )


def machine(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: CPU model and cores, torch threads, GPU name, library versions."""
    info: dict[str, Any] = {
        "device": device.type,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_name": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton_version(),
        "numpy": np.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_name"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
    return info


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda where available, else cpu; 'cuda' without a GPU is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call of `fn`: CUDA events on CUDA, `time.perf_counter` elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    budget_s: float | None = None,
) -> list[float]:
    """`warmup` untimed calls, then up to `repeats` timed calls (ms each). With `budget_s`, the
    repeats stop once their sum passes the budget (at least one timed call always runs)."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples: list[float] = []
    for _ in range(max(1, repeats)):
        samples.append(time_once(fn, device))
        if budget_s is not None and sum(samples) > 1e3 * budget_s:
            break
    return samples


def bench_kernel(
    fn: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 10
) -> tuple[float, int]:
    """(median ms, number of timed runs) of one kernel-sized call. On CUDA with triton:
    `triton.testing.do_bench(return_mode="median")` (25 ms warm-up, 100 ms of repeats, L2 flushed
    between runs; its run count is not returned, reported as -1); otherwise `measure`."""
    if device.type == "cuda" and triton_version() is not None:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")), -1
    samples = measure(fn, device, warmup=warmup, repeats=repeats)
    return statistics.median(samples), len(samples)


def rss_kib() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in KiB, from /proc (Linux); None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = [re.search(rf"^{key}:\s+(\d+)", status, re.M) for key in ("VmRSS", "VmHWM")]
    return None if None in found else (int(found[0].group(1)), int(found[1].group(1)))


def peak_memory_mib(run: Callable[[], None], device: torch.device, iters: int = 3) -> float | None:
    """Peak memory of `iters` calls above what was in use before them (MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(iters):
            run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the growth is visible
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (Linux)
    except OSError:
        return None
    start = rss_kib()
    for _ in range(iters):
        run()
    end = rss_kib()
    if start is None or end is None:
        return None
    return max(end[1] - start[0], 0) / 1024


def time_rounds(
    runs: dict[str, Callable[[], None]], device: torch.device, iters: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None]:
    """ms per iteration of each run, per round, the runs alternating within every round: wall
    time, and on a CPU with one torch thread also the thread's CPU time (what the iteration itself
    costs, without the time the thread waits for a core on a shared machine)."""
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))  # neither always goes first
        for name in order:
            begin = time.thread_time()
            ms = time_once(lambda run=runs[name]: [run() for _ in range(iters)], device)
            cpu[name].append((time.thread_time() - begin) * 1e3 / iters)
            wall[name].append(ms / iters)
    return wall, (cpu if cpu_time else None)


def median_ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of a's time over b's in the same round (`time_rounds`' samples)."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


class Captured:
    """A CUDA graph of one call of `fn`, and everything it needs kept alive: calling it replays the
    graph and returns the captured call's (static) result. It holds `fn` (whose closure owns the
    graph's inputs: a plan, times, outputs, coefficients), the graph and the result, so that none
    of their memory is freed and reused (by later allocations, or by the `empty_cache()` inside
    `torch.cuda.graph`) while the graph can still be replayed."""

    def __init__(self, fn: Callable[[], Any], graph: Any, result: Any, stream: Any) -> None:
        self.fn, self.graph, self.result, self.stream = fn, graph, result, stream

    def __call__(self) -> Any:
        self.graph.replay()
        return self.result


def liveness_option() -> dict[str, bool]:
    """`check_input_liveness=True` where this torch's `torch.cuda.graph` has it (replays then raise
    if a tensor the graph reads was freed), else nothing."""
    if "check_input_liveness" in inspect.signature(torch.cuda.graph).parameters:
        return {"check_input_liveness": True}
    return {}


def capture(fn: Callable[[], Any], device: torch.device) -> Captured:
    """`fn` captured in a CUDA graph, after one warm-up call on a side stream (kernels compiled,
    library workspaces allocated before capture); the capture runs on that same stream, passed
    explicitly (torch's default capture stream is one per process, wrong with several GPUs)."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, **liveness_option()):
        result = fn()
    return Captured(fn, graph, result, side)


def out_dir(out: Path | None, quick: bool) -> Path:
    """Where a run writes: `--out` when given; else `benchmarks/results/` for a full run and a new
    temporary folder for `--quick` (a quick run never overwrites the committed results)."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix="pd_fast_bench_quick_"))
    return RESULTS


@contextlib.contextmanager
def env(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) an environment variable for the block, then restore it."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: `threads`, or every core when None. Returns what is in effect."""
    n = threads if threads is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def finite_or_none(x: float | None, digits: int = 6) -> float | None:
    """A float rounded to `digits` significant digits for the JSON, None for None/NaN/inf."""
    if x is None or not np.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend, or None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table; `columns` are (key, header, format spec) and None prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, spec))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    text = [" ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    text.insert(1, " ".join("-" * w for w in widths))
    return "\n".join(text)


def write_results(
    out: Path, name: str, payload: dict[str, Any], draw: Callable[[Path], str | None], wall: float
) -> None:
    """Write `out/<name>.json`, then its plot `out/<name>.png` with `draw(path)` (which returns why
    it drew nothing, or None), and say what was written and how long the benchmark took."""
    from pd_fast.app.checkpoint import save_json

    out.mkdir(parents=True, exist_ok=True)
    save_json(out / f"{name}.json", payload)
    why = draw(out / f"{name}.png")
    if why:
        print(f"no plot: {why}")
    print(f"\nwrote {out / f'{name}.json'}" + ("" if why else f" and {name}.png") + f" in {wall:.1f} s")
