"""A training iteration reads nothing back from the device: no `.item()`, `.tolist()`, blocking copy
to the host or value check of a device tensor on its hot path (on CUDA each is a host sync).

The stand-in device is `meta`: its tensors have shapes but no data, so any read of a value raises
`NotImplementedError`. The pieces of an iteration (batch draw, labels and w, the teacher's and the
students' targets, the loss, backward and the Adam update) run on it as they run on a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import pd_fast
from pd_fast._checks import remember_host_copy
from pd_fast.app.training import conditioning, configs, guidance, loop
from pd_fast.distillation import teacher_two_step

META = torch.device("meta")
B, D, STEPS = 8, 6, 4


class _Net(nn.Module):
    """A conditional or unconditional network, `net(z, t[, c, w])`."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)
        self.emb = nn.Embedding(11, D)

    def forward(self, z, t, c=None, w=None):  # noqa: ANN001, ANN201
        h = self.lin(z) * t[:, None]
        if c is not None:
            h = h + self.emb(c + 1)
        if w is not None:
            h = h * w[:, None]
        return h


def _cfg() -> configs._DistillConfig:
    return configs._DistillConfig(
        param="v", weighting="snr_trunc", schedule=pd_fast.CosineSchedule(), batch_size=B, lr=1e-3,
        grad_clip=1.0, seed=0, world_size=1, data_shape=(D,), start_steps=STEPS, end_steps=1, iters=2,
        last_rounds_factor=1.0, teacher=None,
    )  # fmt: skip


def _iteration(target, cond_fn=None) -> None:  # noqa: ANN001
    """One iteration as `loop._iterate` makes it: batch, t, condition, loss, update."""
    cfg = _cfg()
    net = _Net().to(META)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True)
    data_gen, noise_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    x_local = torch.empty(32, D, device=META)
    x, idx = loop._batch(x_local, data_gen, B)
    cond = () if cond_fn is None else cond_fn(idx, data_gen)
    t = torch.randint(1, STEPS + 1, (B,), generator=data_gen).to(torch.float64) / STEPS
    loss = loop._loss(net, x, t, noise_gen, cfg, target, cond)
    grad_norm = loop._update(params, opt, loss, cfg.lr, cfg.grad_clip)
    assert loss.device == META and grad_norm.device == META


def test_a_distillation_iteration_reads_nothing_back_from_the_device() -> None:
    teacher = _Net().to(META)

    def target(x, z_t, t, alpha_t, sigma_t, cond):  # noqa: ANN001, ANN202
        return teacher_two_step(teacher, z_t, t, STEPS, pd_fast.CosineSchedule(), "v")

    _iteration(target)


def test_a_teacher_iteration_reads_nothing_back_from_the_device() -> None:
    _iteration(loop._data_target)


def test_guided_iterations_read_nothing_back_from_the_device() -> None:
    labels = torch.randint(0, 10, (32,))
    teacher = _Net().to(META)
    # stage 1: the teacher's guided x_hat_w at (c, w); dropped labels as in teacher training
    _iteration(
        functools.partial(guidance._guided_target, teacher, "v", None),
        functools.partial(conditioning._labels_and_w, labels, 0.0, 4.0, META),
    )
    dropped = functools.partial(conditioning._dropped_labels, labels, 0.1, META)
    _iteration(loop._data_target, dropped)


def test_the_stand_in_catches_a_read() -> None:
    """The meta device does catch a host sync: a value check of a device time without a host copy."""
    t = torch.full((B,), 0.5, dtype=torch.float64, device=META)
    x = torch.empty(B, D, device=META)
    with pytest.raises(NotImplementedError):
        pd_fast.diffuse(x, t, pd_fast.CosineSchedule(), x)
    remember_host_copy(t, torch.full((B,), 0.5, dtype=torch.float64))
    assert pd_fast.diffuse(x, t, pd_fast.CosineSchedule(), x).device == META
