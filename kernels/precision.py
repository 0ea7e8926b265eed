"""Exact conversions between a 16-bit storage dtype and float32 registers. The Triton interpreter's
`.to(tl.bfloat16)` truncates and its bfloat16 -> float32 conversion gets subnormals wrong, so the interpreter goes
through bit patterns, which give the same values as the GPU's instructions.

Rounding float32 to bfloat16 on a GPU is the hardware's conversion (`cvt.rn.bf16x2.f32`, round to nearest even: one
instruction per two values where the bit pattern takes six per value), the one torch's own CUDA kernels use; the
static model checks the PTX rounds that way (tests/test_static_model.py). The two differ only in the NaN they
write: the hardware's canonical 0x7FFF, torch's CPU (and the interpreter's) 0x7FC0."""

import os

import triton
import triton.language as tl

# Whether the kernels are compiled (for a GPU) rather than interpreted: set before they are defined (SPEC §5).
HARDWARE_ROUNDING = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")


@triton.jit
def widen_to_float32(x):
    """Any float dtype -> float32, exactly (bfloat16 by a 16-bit shift of its bit pattern)."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def round_from_float32(x, DTYPE: tl.constexpr):
    """float32 -> DTYPE, rounding to nearest even, NaN kept NaN; for bfloat16 under the interpreter through the bit
    pattern."""
    if DTYPE == tl.bfloat16 and HARDWARE_ROUNDING:
        return x.to(tl.bfloat16, fp_downcast_rounding="rtne")
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def split_master(x):
    """float32 master -> (bfloat16 param, int16 remainder) that `join_master` turns back into `x`, bit for bit.
    The param is `x` to nearest with ties away from zero: the high 16 bits of the pattern, plus one where the low
    16 bits read as a negative int16 (0x8000 and above); the remainder is those low bits. Round-half-even cannot
    be undone from 16 bits (a tie to an even param would need a 65537th remainder). NaN: the param a NaN too."""
    bits = x.to(tl.uint32, bitcast=True)
    remainder = (bits & 0xFFFF).to(tl.uint16).to(tl.int16, bitcast=True)
    high = (bits >> 16) + (remainder < 0).to(tl.uint32)
    high = tl.where(x != x, 0x7FC0, high)
    return high.to(tl.uint16).to(tl.bfloat16, bitcast=True), remainder


@triton.jit
def join_master(param, remainder):
    """The float32 master a bfloat16 param and its int16 remainder stand for (`split_master`'s inverse)."""
    high = param.to(tl.uint16, bitcast=True).to(tl.uint32) - (remainder < 0).to(tl.uint32)
    low = remainder.to(tl.uint16, bitcast=True).to(tl.uint32)
    return ((high << 16) | low).to(tl.float32, bitcast=True)


@triton.jit
def stochastic_round_to_bfloat16(x, seed, first_element, step, BLOCK: tl.constexpr):
    """float32 -> bfloat16 of the BLOCK values `x` of elements first_element, first_element + 1, ..., rounding up
    with probability equal to the discarded fraction, so that the result is x on average. Adds uniform random
    16 bits below the kept ones and truncates. The draw is Philox with counter (element index // 8, step): its four
    32-bit outputs are eight 16-bit halves, one for each of eight consecutive elements (`first_element` is a
    multiple of 8). Reproducible, different for every element and step, and an eighth of the arithmetic of a draw
    per element (a quarter, with a whole output per element, cost the bf16 step with bf16 states and stochastic
    rounding 8 instructions an element more). NaN kept NaN."""
    counter = first_element // 8 + tl.arange(0, BLOCK // 8)
    low = (counter & 0xFFFFFFFF).to(tl.uint32)
    high = (counter >> 32).to(tl.uint32)
    zeros = tl.full(low.shape, 0, tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, low, high, zeros + step.to(tl.uint32), zeros)
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK // 2,))  # pair 4i + j: output j
    random = tl.reshape(tl.join(words & 0xFFFF, words >> 16), (BLOCK,))  # element 2k: word k's low half
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + random) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
