"""Tolerances of pd_fast against pd_ref (float64), in one place.

pd_fast's result `y` (dtype d) is compared with pd_ref's `y_ref`, computed in float64 from the
*same* inputs, i.e. pd_fast's inputs after their rounding to d. What may then differ:

1. the final rounding of the result to d: at most 1/2 ulp of y_ref; we allow 1 ulp (`OUT_RTOL`),
   the other half for an fp32 result that sits next to a rounding boundary of d. fp16 also has
   subnormals below 6.1e-5, where an ulp is the absolute 2^-24 (`OUT_ATOL`).
2. the fp32 arithmetic inside (coefficients rounded from float64 to fp32, then a handful of
   multiply-adds and a division per element): each rounding is at most 2^-24 ~ 6e-8 relative to the
   operands, so the error is a few times 6e-8 times the *magnitude of the terms* that enter the
   result (`scale`, computed per element by tests/fast_support.py from the formulas' absolute
   values; it is large where the result is a cancellation, e.g. eps-param x_hat at alpha ~ 4.5e-5,
   or the two-step target, whose 1/den ~ N amplification is docs/spec.md section 4's "~1e-7 * N").
   `FP32_RTOL = 5e-7` is ~8 such roundings. Measured (CPU: torch path and Triton interpreter, about
   1500 Hypothesis examples over all tests): at most 8.1e-8 * scale beyond the output rounding.

Check: `|y - y_ref| <= OUT_RTOL[d] * |y_ref| + OUT_ATOL[d] + FP32_RTOL * scale`.

Losses are fp32 whatever the input dtype; a per-example mean of M squares adds the fp32 rounding of
the reduction (tree or blocked sums: well under log2(M) * 2^-24 relative), `LOSS_RTOL`.

The sampler is N steps of the above in a row, and low-precision samplers round z to d after every
step (pd_ref does not), and their model sees a z that differs from pd_ref's by the error so far:
each step may add `(FP32_RTOL + OUT_RTOL[d]) * scale_i` (its terms' magnitude along the reference
trajectory), and later steps carry it forward with a gain of at most `SAMPLER_GAIN`.

The Triton interpreter (CPU tests) converts fp32 to bf16 by truncation (triton 3.8's interpreter
`cast_impl`; GPUs round to nearest even): an error below 1 ulp, inside OUT_RTOL.
"""

from __future__ import annotations

#: 1 ulp of the result's dtype (2^-23, 2^-10, 2^-7)
OUT_RTOL = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
#: 1 ulp in fp16's subnormal range; fp32 and bf16 have no reachable subnormals here
OUT_ATOL = {"float32": 0.0, "float16": 2.0**-24, "bfloat16": 0.0}
#: fp32 element arithmetic, relative to the magnitude of the terms (`scale`)
FP32_RTOL = 5e-7
#: fp32 sum of up to a few thousand squares, relative to the loss
LOSS_RTOL = 1e-5


#: how much later sampler steps may amplify an earlier step's error, for the test's Gaussian
#: denoiser: its steps are affine maps whose gains are ratios of the marginal standard deviations
#: sqrt(alpha^2 STD^2 + sigma^2) in [STD, 1] = [0.6, 1] (fast_support), so at most 1/0.6 < 2
SAMPLER_GAIN = 2.0
