"""A stage's model checkpoint on resume (`pd_fast.app.training.state._intact`), reached through the
training API directly (the command line's resume checks refuse a damaged run before it gets here):
a finished teacher whose `teacher.safetensors` was damaged is written again from its training state,
with a warning, byte for byte as the run first wrote it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from pd_fast.app import checkpoint as ckpt
from pd_fast.app.training import train_teacher
from tests._tiny import TinyMLP, eight_gaussians

TEACHER = dict(iters=4, batch_size=16, lr=1e-3, warmup=1, log_every=2, progress=False)


def test_a_damaged_teacher_checkpoint_of_a_finished_stage_is_written_again_on_resume(tmp_path: Path) -> None:
    data = eight_gaussians(64, seed=0)
    ema = train_teacher(TinyMLP(seed=0), data, out_dir=tmp_path, **TEACHER)
    weights = tmp_path / "checkpoints" / "teacher.safetensors"
    written = weights.read_bytes()
    damaged = bytearray(written)
    header_len = int.from_bytes(damaged[:8], "little")
    begin, end = json.loads(damaged[8 : 8 + header_len])["net.0.weight"]["data_offsets"]
    damaged[8 + header_len + (begin + end) // 2] ^= 0x01
    weights.write_bytes(bytes(damaged))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = train_teacher(TinyMLP(seed=0), data, out_dir=tmp_path, resume=True, **TEACHER)
    messages = [str(w.message) for w in caught if issubclass(w.category, ckpt.CheckpointFallbackWarning)]
    assert len(messages) == 1
    assert "teacher.safetensors is damaged" in messages[0] and "writing it again" in messages[0]
    assert weights.read_bytes() == written
    first, resumed = ema.state_dict(), again.state_dict()
    assert first.keys() == resumed.keys() and all(torch.equal(first[k], resumed[k]) for k in first)
