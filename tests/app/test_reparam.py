"""The loss of the change of parameterization (`pd_fast.app.reparam`) is taken in the teacher's own
output space: for an eps teacher and a v student, the first loss is mean((eps_student -
eps_teacher)^2), recomputed here in float64 from the stage's replayed seeded draws, with the
schedule of `pd_ref` and the conversions written out (v -> eps: eps = sigma z + alpha v)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pd_fast
import pd_ref
from pd_fast.app.reparam import reparameterize
from tests._tiny import TinyMLP, eight_gaussians


def test_an_eps_teachers_v_student_starts_at_the_mean_squared_eps_error() -> None:
    steps, batch, seed = 4, 64, 3
    data, teacher = eight_gaussians(128, seed=0), TinyMLP(seed=1).eval()
    _, losses = reparameterize(
        teacher, data, steps, schedule=pd_fast.CosineSchedule(), teacher_param="eps", param="v",
        iters=1, batch_size=batch, seed=seed, progress=False,
    )  # fmt: skip
    # the stage's draws, in its order, from its one CPU generator: examples, step indices, noise
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
    i = torch.randint(1, steps + 1, (batch,), generator=gen)
    eps = torch.randn((batch, 2), generator=gen, dtype=torch.float32).double().numpy()
    x, t = data[idx].double().numpy(), i.double().numpy() / steps
    alpha, sigma = (c[:, None] for c in pd_ref.CosineSchedule().alpha_sigma(t))
    z = alpha * x + sigma * eps
    with torch.no_grad():  # the student starts as a copy of the teacher: the same output, read as v
        out = teacher(torch.from_numpy(z).float(), torch.from_numpy(t).float()).double().numpy()
    eps_teacher, eps_student = out, sigma * z + alpha * out
    expected = float(np.mean((eps_student - eps_teacher) ** 2))
    assert losses[0] == pytest.approx(expected, rel=1e-5)
