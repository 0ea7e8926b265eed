"""Blockwise 8-bit states in registers: the fused step's side of `v0adam.quantization`, equal to it bit for bit
(the same float32 operations, the same integer operations on the bits). Values travel as [BLOCK] vectors; each
function works on them as [BLOCK // QBLOCK, QBLOCK], a row per quantization block, with one scale per row.

Every row is a whole block of the segment: 8-bit segments are whole blocks (`Precision.why_not_8bit`, checked
when the launch tables are built), so no element of a stored row is masked; rows past a segment's end are
computed from masked loads and never stored."""

import triton
import triton.language as tl
from v0adam.kernels.precision import HARDWARE_ROUNDING

from v0adam import quantization

MAGNITUDE_BITS = tl.constexpr(0x7FFFFFFF)  # a float32's bits without its sign
FLOAT_SIGN_BIT = tl.constexpr(-0x80000000)  # its sign, as an int32
SMALLEST_NORMAL_BITS = tl.constexpr(0x00800000)
SIGN_BIT = tl.constexpr(quantization.SIGN_BIT)
SIGNED_SHIFT, SIGNED_ROUNDING, SIGNED_OFFSET = (tl.constexpr(value) for value in quantization.bit_constants(True))
UNSIGNED_SHIFT, UNSIGNED_ROUNDING, UNSIGNED_OFFSET = (
    tl.constexpr(value) for value in quantization.bit_constants(False)
)
UNSIGNED_CODE_ONE = tl.constexpr(1 << UNSIGNED_SHIFT.value)  # code 1 of v's format, shifted into place


@triton.jit
def _rows(x, BLOCK: tl.constexpr, QBLOCK: tl.constexpr):
    return tl.reshape(x, (BLOCK // QBLOCK, QBLOCK))


@triton.jit
def _magnitude_bits(magnitude_codes, SHIFT: tl.constexpr, OFFSET: tl.constexpr):
    return tl.where(magnitude_codes == 0, 0, (magnitude_codes << SHIFT) + (OFFSET << SHIFT))


@triton.jit
def dequantize_m(codes, scales, BLOCK: tl.constexpr, QBLOCK: tl.constexpr):
    """float32 m [BLOCK] of uint8 `codes` [BLOCK] and their blocks' `scales` [BLOCK // QBLOCK]."""
    codes = _rows(codes.to(tl.int32), BLOCK, QBLOCK)
    bits = _magnitude_bits(codes & (SIGN_BIT - 1), SIGNED_SHIFT, SIGNED_OFFSET) | ((codes << 24) & FLOAT_SIGN_BIT)
    return tl.reshape(bits.to(tl.float32, bitcast=True) * scales[:, None], (BLOCK,))


@triton.jit
def dequantize_v_root(codes, scales, BLOCK: tl.constexpr, QBLOCK: tl.constexpr):
    """float32 sqrt(v) [BLOCK] of uint8 `codes` [BLOCK] and their blocks' `scales` (v is its square)."""
    bits = _magnitude_bits(_rows(codes.to(tl.int32), BLOCK, QBLOCK), UNSIGNED_SHIFT, UNSIGNED_OFFSET)
    return tl.reshape(bits.to(tl.float32, bitcast=True) * scales[:, None], (BLOCK,))


@triton.jit
def _scales(magnitude_bits):
    """(scales, their reciprocals) of each row of magnitudes given by their bits: the largest, found as an integer
    maximum of the bits (so that NaN, above infinity, wins), 0 below float32's smallest normal; reciprocals 0
    where the scale is 0."""
    largest = tl.max(magnitude_bits, axis=1)
    too_small = largest < SMALLEST_NORMAL_BITS
    scales = tl.where(too_small, 0, largest).to(tl.float32, bitcast=True)
    # One predicate for the scale, the reciprocal's divisor and the reciprocal (the last two tested scales != 0).
    inverse = tl.where(too_small, 0.0, tl.div_rn(1.0, tl.where(too_small, 1.0, scales)))
    return scales, inverse


@triton.jit
def _rounded(magnitude_bits, inverse, ROUNDING: tl.constexpr):
    """The bits of each magnitude over its row's scale, plus `ROUNDING`: the code is what lies above the format's
    shift, once clamped."""
    normalized = magnitude_bits.to(tl.float32, bitcast=True) * inverse[:, None]
    return normalized.to(tl.int32, bitcast=True) + ROUNDING


@triton.jit
def quantize_m(m, BLOCK: tl.constexpr, QBLOCK: tl.constexpr):
    """(codes [BLOCK] uint8, scales [BLOCK // QBLOCK] float32) of float32 `m`."""
    bits = _rows(m.to(tl.int32, bitcast=True), BLOCK, QBLOCK)
    magnitude_bits = bits & MAGNITUDE_BITS
    scales, inverse = _scales(magnitude_bits)
    # The code's 8 bits moved to bits 24-31, beside m's own sign: the byte max(rounded >> shift, 0) | sign, in
    # two integer instructions an element fewer (the clamp folded into the addition, the sign into no shift).
    rounded = tl.maximum(_rounded(magnitude_bits, inverse, SIGNED_ROUNDING), 0)
    top = (rounded << (24 - SIGNED_SHIFT)) | (bits & FLOAT_SIGN_BIT)
    return _top_bytes(tl.reshape(top, (BLOCK,))), scales


# The top bytes of 4 words packed into one, by PTX `prmt` (each nibble of its selector picks a byte of the result
# from the 8 of its two sources, 0-3 the first's, 4-7 the second's): words 0 and 1's top bytes, 3 and 7, into the
# low half of one register, words 2 and 3's into another, then the two low halves together.
_TOP_BYTES_PTX = tl.constexpr(
    "{ .reg .b32 low, high; prmt.b32 low, $1, $2, 0x73; prmt.b32 high, $3, $4, 0x73; prmt.b32 $0, low, high, 0x5410; }"
)


@triton.jit
def _top_bytes(words):
    """The top byte of each int32 of `words`, as uint8: three byte permutations for four words. The shift to the low
    byte and the truncation to uint8 compiled to a shift and a mask of m's sign of their own an element, before
    three permutations of the low bytes; picking the top bytes, ptxas folds the sign into the instruction that
    places the code (bfloat16 with 8-bit states: 82.5 -> 80.2 instructions an element; float32 params 81.5 ->
    79.0). The interpreter runs no PTX: there, the shift."""
    if not HARDWARE_ROUNDING:
        return (words.to(tl.uint32, bitcast=True) >> 24).to(tl.uint8)
    return tl.inline_asm_elementwise(_TOP_BYTES_PTX, "=r,r,r,r,r", [words], dtype=tl.uint8, is_pure=True, pack=4)


@triton.jit
def quantize_v_root(v_root, BLOCK: tl.constexpr, QBLOCK: tl.constexpr):
    """The same for v, from its square root `v_root`: a positive v never becomes 0. The code is at least 1 where
    v_root is not 0: a square root of a float32 is 0 or at least 2^-74.5 (its bits far above 1 << shift), so that
    the reference's max(code, min(bits, 1)) is max(rounded, min(bits, 1 << shift)) >> shift, one instruction an
    element fewer."""
    magnitude_bits = _rows(v_root.to(tl.int32, bitcast=True), BLOCK, QBLOCK) & MAGNITUDE_BITS
    scales, inverse = _scales(magnitude_bits)
    smallest = tl.minimum(magnitude_bits, UNSIGNED_CODE_ONE)
    codes = tl.maximum(_rounded(magnitude_bits, inverse, UNSIGNED_ROUNDING), smallest) >> UNSIGNED_SHIFT
    return tl.reshape(codes, (BLOCK,)).to(tl.uint8), scales


@triton.jit
def store_scales(pointer, scales, mask):
    """pointer[i] = scales[i] where mask[i], for the [BLOCK // QBLOCK] scales a quantizer returns, from the layout
    its reduction leaves them in: a quantization block's elements are one warp's (8 a thread), and so is its scale.
    Stored as a [BLOCK // QBLOCK] vector, Triton would gather the scales into one warp through shared memory, with
    a barrier over the program's warps, for each of the two (three with AMSGrad) scale stores of a step. As the
    first column of a [BLOCK // QBLOCK, 32] tensor whose addresses run on along its columns (so that Triton lays it
    out one element a lane, a row a warp: the reduction's own layout), each warp stores its own scale from its first
    lane; the other lanes' addresses are masked off. (bfloat16 with 8-bit states: 1.2 instructions an element fewer
    and no barrier, 86.4% -> 86.6% of copy predicted.)"""
    lanes = tl.arange(0, 32)[None, :]  # a warp's; with other warp sizes the layout, not the values, would differ
    values = scales[:, None] + tl.zeros_like(lanes).to(tl.float32)
    tl.store(pointer[:, None] + lanes, values, mask=mask[:, None] & (lanes == 0))
