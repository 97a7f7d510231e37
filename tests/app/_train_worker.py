"""Worker of tests/app/test_resume.py, run in a child process: a tiny teacher training + progressive
distillation (8 -> 1 steps) into `out`, deterministic on CPU. Writes `out/result.json` =
{"forward_calls": n} when it finishes. Also runnable by hand:

    python tests/app/_train_worker.py OUT [--resume] [--sleep SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pd_fast.app.training import progressive_distill, train_teacher  # noqa: E402
from tests._tiny import TinyMLP, eight_gaussians  # noqa: E402

TEACHER = dict(iters=40, batch_size=32, lr=3e-3, warmup=5, ema_decay=0.9, ckpt_every=7, log_every=3)
DISTILL = dict(iters=20, last_rounds_factor=1.5, batch_size=32, lr=1e-3, ckpt_every=6, log_every=4)


def run(out: str, resume: bool = False, sleep: float = 0.0) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    TinyMLP.calls = 0
    data = eight_gaussians(256, seed=1)
    model = TinyMLP(seed=2, sleep=sleep)
    common = dict(out_dir=out, resume=resume, progress=False, seed=3)
    ema = train_teacher(model, data, **TEACHER, **common)
    progressive_distill(ema, data, 8, 1, **DISTILL, **common)
    (Path(out) / "result.json").write_text(json.dumps({"forward_calls": TinyMLP.calls}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    run(args.out, args.resume, args.sleep)
