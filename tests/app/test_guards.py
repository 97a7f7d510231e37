"""The finiteness guard of training (`pd_fast.app.training.guards._Guard`), each of its checks
reached on its own: a gradient that alone goes infinite (the loss still finite) is named at its own
iteration, not at the next one when the weights it ruined make everything NaN; and weights that go
non-finite in the last update (its loss and gradient finite) stop the stage before they are saved."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from pd_fast.app.training import TrainingDiverged, loop, train_teacher
from tests._tiny import TinyMLP, eight_gaussians

TEACHER = dict(iters=8, batch_size=16, lr=1e-3, warmup=1, log_every=8, progress=False)


def test_an_infinite_gradient_with_a_finite_loss_is_named_at_its_own_iteration() -> None:
    bad = 5  # the 1-based update whose gradient is made infinite (checked at update 8)
    model = TinyMLP(seed=0)
    backward_calls = []

    def infinite_at_bad(grad: torch.Tensor) -> torch.Tensor:
        backward_calls.append(1)
        return torch.full_like(grad, math.inf) if len(backward_calls) == bad else grad

    model.net[0].weight.register_hook(infinite_at_bad)
    with pytest.raises(TrainingDiverged) as err:
        train_teacher(model, eight_gaussians(64, seed=0), **TEACHER)
    assert len(backward_calls) == TEACHER["iters"]  # every update ran before the check read them
    assert (err.value.stage, err.value.round, err.value.iteration) == ("teacher", 0, bad)
    found = re.search(r"at iteration (\d+): the loss is (\S+) and the gradient norm (\S+)\.", str(err.value))
    assert found is not None, str(err.value)
    iteration, loss, grad_norm = int(found[1]), float(found[2]), float(found[3])
    assert iteration == bad and math.isfinite(loss) and grad_norm == math.inf


def test_weights_made_non_finite_by_the_last_update_stop_the_stage_before_they_are_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, updates = loop._update, []

    def ruins_a_weight_last(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        grad_norm = real(*args, **kwargs)  # the loss and its gradient norm stay finite
        updates.append(1)
        if len(updates) == TEACHER["iters"]:
            with torch.no_grad():
                args[0][0].view(-1)[0] = math.inf
        return grad_norm

    monkeypatch.setattr(loop, "_update", ruins_a_weight_last)
    with pytest.raises(TrainingDiverged, match="at iteration 8: the weights are no longer finite") as err:
        train_teacher(TinyMLP(seed=0), eight_gaussians(64, seed=0), out_dir=tmp_path, **TEACHER)
    assert (err.value.stage, err.value.iteration) == ("teacher", TEACHER["iters"])
    assert not list((tmp_path / "checkpoints").glob("teacher*"))  # nothing non-finite was written
