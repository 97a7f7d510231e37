"""Hypothesis strategies shared by the test suite (STYLE.md: one place). They reach the edges:
t in {0, 1/N, 1}, N up to 8192, batch 1, odd sizes, 'both' with 2C channels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PARAMS = ("eps", "x", "v", "both")
WEIGHTINGS = ("constant", "snr", "snr_trunc", "snr+1")
DISCRETE_KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2")

params = st.sampled_from(PARAMS)
weightings = st.sampled_from(WEIGHTINGS)
seeds = st.integers(0, 2**32 - 1)

#: step counts of a student, from 1 to the paper's CIFAR-10 start (8192), powers of two favoured
step_counts = st.one_of(st.sampled_from([1, 2, 3, 4, 8, 64, 1024, 8192]), st.integers(1, 8192))


@st.composite
def shapes(draw, min_ndim: int = 1, max_ndim: int = 4, max_side: int = 7) -> tuple[int, ...]:
    """(B, ...) from one element to 4-D images with odd sizes; at least 2 dims when a channel
    axis is needed (min_ndim=2)."""
    ndim = draw(st.integers(min_ndim, max_ndim))
    batch = draw(st.integers(1, 5))
    return (batch,) + tuple(draw(st.integers(1, max_side)) for _ in range(ndim - 1))


@st.composite
def grid_times(draw, steps: int | None = None) -> tuple[int, int]:
    """(i, N): a point t = i/N of the student grid, with i = 1 and i = N drawn often."""
    n = steps if steps is not None else draw(step_counts)
    i = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    return i, n


unit_times = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
#: times inside (0, 1] away from the ends where eps- and x- conversions are ill-conditioned
inner_times = st.floats(0.02, 0.98)


def random_pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A data point x in [-1, 1] and standard normal noise eps of the given shape."""
    return rng.uniform(-1.0, 1.0, shape), rng.standard_normal(shape)


def output_for(param: str, x: np.ndarray, eps: np.ndarray, alpha, sigma) -> np.ndarray:
    """The network output that encodes (x, eps) exactly, from the definitions of docs/spec.md section 2
    (independent of predict_x_eps): eps -> eps, x -> x, v -> alpha*eps - sigma*x, both -> [x, eps]."""
    if param == "eps":
        return eps
    if param == "x":
        return x
    if param == "v":
        return alpha * eps - sigma * x
    return np.concatenate([x, eps], axis=1)


def out_shape(shape: tuple[int, ...], param: str) -> tuple[int, ...]:
    return (shape[0], 2 * shape[1]) + shape[2:] if param == "both" else shape


# ------------------------------------------------------------------------------------------------
# pd_fast strategies (owner: pd_fast helper). Torch-free: dtypes and layouts are named here and
# turned into tensors by tests/fast_support.py.
# ------------------------------------------------------------------------------------------------

#: the dtypes pd_fast accepts (fp32 compute inside); names of torch dtypes
float_dtypes = st.sampled_from(["float32", "float16", "bfloat16"])
#: memory layouts of an input tensor (same values): non-contiguous views reach the kernels' strides
layouts = st.sampled_from(["contiguous", "transposed", "sliced", "channels_last"])
#: how a per-example coefficient is passed: one shared float, a 0-d tensor, or a (B,) tensor
#: (float64, or float32 whose rounding the reference then sees too)
coef_forms = st.sampled_from(["float", "0-d", "batch", "batch-fp32"])
#: schedules for pd_fast tests: the cosine schedule and diffusers' discrete ones (T = 1000)
schedule_names = st.sampled_from(["cosine", "linear", "scaled_linear", "squaredcos_cap_v2"])


@st.composite
def step_pairs(draw, batch: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(t, s, N) for a batch: times t_b = i_b/N and s_b = j_b/N with 0 <= j_b < i_b <= N; example 0
    takes the edges often (i = 1, i = N, one step back, s = 0)."""
    i0, n = draw(grid_times())
    j0 = draw(st.one_of(st.just(i0 - 1), st.just(0), st.integers(0, i0 - 1)))
    rng = np.random.default_rng(draw(seeds))
    i = np.concatenate([[i0], rng.integers(1, n + 1, batch - 1)])
    j = np.concatenate([[j0], [rng.integers(0, k) for k in i[1:]]]).astype(np.int64)
    return i / n, j / n, n


# ------------------------------------------------------------------------------------------------
# classifier-free guidance (docs/spec.md section 8)
# ------------------------------------------------------------------------------------------------

#: guidance weights w >= 0: 0 (the conditional model), the job's grid {1, 2, 4}, and beyond
guidance_weights = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 4.0]), st.floats(0.0, 8.0))
#: how w is passed: a float shared by the batch, a 0-d tensor, or per example (B,)
guidance_forms = st.sampled_from(["float", "0-d", "batch"])


@st.composite
def tensor_conds(draw):
    """A tensor condition (docs/spec.md section 8; prompt embeddings (B, L, D) in a text-to-image
    model): its trailing shape (none, (D,) or (L, D), odd sizes), dtype (any floating one, not
    necessarily z's), memory layout, the first dim of null_cond ("1": one for the batch, or "B"),
    and a seed for the values (made by fast_support.tensor_cond_inputs)."""
    ndim = draw(st.integers(0, 2))
    return SimpleNamespace(
        trailing=tuple(draw(st.integers(1, 5)) for _ in range(ndim)),
        dtype=draw(st.sampled_from(["float32", "float16", "bfloat16", "float64"])),
        layout=draw(layouts),
        null_batch=draw(st.sampled_from(["1", "B"])),
        seed=draw(seeds),
    )


#: the `backend` fixture only sets PD_FAST_BACKEND, the same for every generated input
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
etas = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))


@st.composite
def cases(draw, max_side: int = 7):
    """One step's worth of inputs: param, shape (a channel axis for 'both'), times t > s on a grid
    of N up to 8192, dtype, memory layout, how coefficients are passed, schedule, clip."""
    param = draw(params)
    shape = draw(shapes(min_ndim=2 if param == "both" else 1, max_side=max_side))
    t, s, n = draw(step_pairs(shape[0]))
    return SimpleNamespace(
        param=param,
        shape=shape,
        t=t,
        s=s,
        n=n,
        dtype=draw(float_dtypes),
        layout=draw(layouts),
        form=draw(coef_forms),
        schedule=draw(schedule_names),
        clip=draw(st.booleans()),
        rng=np.random.default_rng(draw(seeds)),
    )
