"""Division by a value every element of a program shares, correctly rounded for a third of the instructions of
`tl.div_rn`.

`tl.div_rn(x, d)` compiles, per element, to a reciprocal approximation, its refinement, the quotient's correction
and a range check with a slow path behind a branch: about 11 instructions. When `d` is the same for every element
and its correctly rounded reciprocal `r = RN(1 / d)` is computed once (per step, by the step scalars), Markstein's
correction alone is exact:

    q = RN(x * r);  e = RN(x - d * q) (an FMA: exact);  RN(q + e * r) (an FMA) == RN(x / d)

given a correctly rounded reciprocal and a first quotient q within an ulp of x / d, provided nothing over- or
underflows (P. Markstein, "Computation of elementary functions on the IBM RISC System/6000 processor", IBM J.
Res. Dev. 34(1), 1990; the FMA-based division of Muller et al., "Handbook of Floating-Point Arithmetic"). That
holds for the quotients the step takes: x = sqrt(v), which is 0 or between 2^-75 and 2^64, over d = sqrt(1 -
beta2^t), between 2^-27 and 1. tests/test_uniform_division.py checks it against correctly rounded division over
every float32 significand of x for 15 divisors the step meets, and on a million random pairs over those ranges.
Infinities and NaN: the correction term is NaN there; a maximum drops it, so that the quotient is x / d still
(inf stays inf, NaN NaN).

The correction needs an FMA that rounds once. Compiled, that is the hardware's. The Triton interpreter's does in
triton 3.9 (a C helper, `fma_fp32`); 3.6's computes x * y + z in float32, rounding twice. Under an interpreter
without the helper the step takes `tl.div_rn` instead, which numpy rounds correctly: the same quotients.
"""

import os

import triton
import triton.language as tl


def _fma_rounds_once() -> bool:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return True
    from triton._C.libtriton import interpreter

    return hasattr(interpreter, "fma_fp32")


FMA_ROUNDS_ONCE = tl.constexpr(_fma_rounds_once())
LOWEST_FLOAT32 = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def divide_by_uniform(x, divisor, reciprocal):
    """x / divisor, correctly rounded, from `reciprocal` = RN(1 / divisor), for x >= 0 in the range above."""
    if not FMA_ROUNDS_ONCE:
        return tl.div_rn(x, divisor)
    quotient = x * reciprocal
    # maximum() returns the operand that is not NaN: the correction of an infinite or NaN quotient becomes finite.
    residual = tl.maximum(tl.fma(-divisor, quotient, x), LOWEST_FLOAT32)
    return tl.fma(residual, reciprocal, quotient)
