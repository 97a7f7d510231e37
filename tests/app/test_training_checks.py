"""`data_fingerprint` (`pd_fast.app.training.checks`), which resume compares to refuse a run on other
data: it hashes every value, not a prefix, and is the SHA-256 its docstring states, recomputed here
with hashlib from the dtype's name, the shape and the raw little-endian bytes."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch

from pd_fast.app.training import data_fingerprint


def _data(dtype: torch.dtype) -> torch.Tensor:
    """(40, 3, 5, 5): 3,000 values, well past any prefix of 1024."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand((40, 3, 5, 5), generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)


def test_changing_only_the_last_value_changes_the_fingerprint() -> None:
    x = _data(torch.float32)
    y = x.clone()
    y.view(-1)[-1] = -y.view(-1)[-1]
    assert torch.equal(x.view(-1)[:-1], y.view(-1)[:-1]) and not torch.equal(x, y)
    assert data_fingerprint(x) != data_fingerprint(y)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(torch.float32, "torch.float32"), (torch.float64, "torch.float64"), (torch.int64, "torch.int64")],
)
def test_the_fingerprint_is_the_sha256_of_dtype_shape_and_every_byte(dtype: torch.dtype, name: str) -> None:
    assert sys.byteorder == "little"  # numpy's tobytes() below is the native order
    x = _data(dtype) if dtype.is_floating_point else torch.arange(3000).reshape(40, 3, 5, 5)
    array = np.ascontiguousarray(x.numpy())
    assert array.nbytes == 3000 * x.element_size()
    expected = hashlib.sha256(f"{name}|(40, 3, 5, 5)|".encode() + array.tobytes()).hexdigest()
    assert data_fingerprint(x) == expected
    # a non-contiguous view of the same values hashes as its contiguous copy
    assert data_fingerprint(x.transpose(0, 1).contiguous().transpose(0, 1)) == expected
