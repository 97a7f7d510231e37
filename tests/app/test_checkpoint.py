"""The checkpoint guards (`pd_fast.app.checkpoint`), each reached directly: `verify_model_checkpoint`
compares the file with its recorded SHA-256 itself (not leaving it to a later load), and resume's
choice of training state falls back from a damaged last state to the one before it, with a warning,
and commits that choice."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

from pd_fast.app import checkpoint as ckpt
from tests._tiny import TinyMLP


def _flip_weight_byte(path: Path, name: str) -> None:
    """Flip the lowest bit of a byte in the middle of tensor `name`'s data, found from the
    safetensors layout (8-byte little-endian header length, JSON header, data)."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + header_len])[name]["data_offsets"]
    data[8 + header_len + (begin + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_model_checkpoint_refuses_a_checkpoint_with_one_flipped_weight_byte(tmp_path: Path) -> None:
    weights = ckpt.save_model_checkpoint(tmp_path / "student_8", TinyMLP(seed=1), {"steps": 8})
    recorded = json.loads((tmp_path / "student_8.json").read_text())["sha256"]
    assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest()
    ckpt.verify_model_checkpoint(tmp_path / "student_8")  # whole: no error
    _flip_weight_byte(weights, "net.0.weight")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() != recorded
    with pytest.raises(ckpt.CheckpointError, match="student_8.safetensors is damaged"):
        ckpt.verify_model_checkpoint(tmp_path / "student_8")


# ----- resume's choice of training state -------------------------------------------------------


def _two_states(ckpt_dir: Path) -> tuple[Path, Path]:
    """Teacher states committed at iterations 5 and 10 (weights all 5s, then all 10s): the tensors
    files of both."""
    for it in (5, 10):
        ckpt.save_training_state(
            ckpt_dir, "teacher", {"model/w": torch.full((64,), float(it))}, {"round": 0, "iteration": it}
        )
    return ckpt_dir / "teacher_state-r0-i5.safetensors", ckpt_dir / "teacher_state-r0-i10.safetensors"


def _load(ckpt_dir: Path, repair: bool = True) -> tuple[dict, dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info, tensors = ckpt.load_training_state(ckpt_dir, "teacher", repair=repair)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, ckpt.CheckpointFallbackWarning)]
    return info, tensors, fallbacks


def test_an_intact_last_state_is_the_one_resumed(tmp_path: Path) -> None:
    _two_states(tmp_path)
    info, tensors, fallbacks = _load(tmp_path)
    assert info["iteration"] == 10 and torch.equal(tensors["model/w"], torch.full((64,), 10.0))
    assert fallbacks == []


def test_a_damaged_last_state_falls_back_to_the_one_before_with_a_warning_and_commits_it(
    tmp_path: Path,
) -> None:
    earlier, last = _two_states(tmp_path)
    _flip_weight_byte(last, "model/w")
    info, tensors, fallbacks = _load(tmp_path)
    assert info["iteration"] == 5 and torch.equal(tensors["model/w"], torch.full((64,), 5.0))
    assert len(fallbacks) == 1
    assert f"{last.name} is damaged" in fallbacks[0] and "iteration 5" in fallbacks[0]
    # the fallback is committed: the state names the earlier file, the damaged one is gone, and
    # the next resume takes the earlier state without a warning
    assert json.loads((tmp_path / "teacher_state.json").read_text())["tensors_file"] == earlier.name
    assert not last.exists()
    info, _, fallbacks = _load(tmp_path)
    assert info["iteration"] == 5 and fallbacks == []


def test_a_last_state_whose_json_is_damaged_falls_back_too(tmp_path: Path) -> None:
    _two_states(tmp_path)
    (tmp_path / "teacher_state.json").write_text('{"round": 0, "itera')
    info, _, fallbacks = _load(tmp_path)
    assert info["iteration"] == 5
    assert len(fallbacks) == 1 and "teacher_state.json is not valid JSON" in fallbacks[0]


def test_a_check_without_repair_chooses_the_same_state_but_writes_and_warns_nothing(tmp_path: Path) -> None:
    _, last = _two_states(tmp_path)
    _flip_weight_byte(last, "model/w")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    info, _, fallbacks = _load(tmp_path, repair=False)
    assert info["iteration"] == 5 and fallbacks == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
