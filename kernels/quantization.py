"""Blockwise 8-bit states in registers: the fused step's side of `v0adam.quantization`, equal to it bit for bit
(same float32 divisions, the same nearest-value search over the same midpoints)."""

import triton
import triton.language as tl


@triton.jit
def dequantize(codes, scales, code_ptr):
    """float32 values of uint8 `codes`, each times its block's scale; `code_ptr` points at a map's 256 values."""
    return tl.load(code_ptr + codes.to(tl.int32)) * scales


@triton.jit
def quantize(x, mask, midpoint_ptr, SIGNED: tl.constexpr, BLOCK: tl.constexpr, QBLOCK: tl.constexpr):
    """(codes [BLOCK] uint8, absmax [BLOCK // QBLOCK] float32) of float32 `x`, blocks of QBLOCK consecutive
    elements; elements outside `mask` count as 0. `midpoint_ptr` points at the map's midpoints (255, then +inf)."""
    blocks = tl.reshape(tl.where(mask, x, 0.0), (BLOCK // QBLOCK, QBLOCK))
    absmax = tl.max(tl.abs(blocks), axis=1)
    # tl.max drops NaN on a GPU; the reference's amax keeps it, and so does this.
    has_nan = tl.max((blocks != blocks).to(tl.int32), axis=1) > 0
    absmax = tl.where(has_nan, float("nan"), absmax)
    scale = absmax[:, None]
    normalized = tl.where(scale != 0, tl.div_rn(blocks, tl.where(scale != 0, scale, 1.0)), 0.0)
    # The number of midpoints below the value, by binary lifting over the sorted midpoints: NaN compares false
    # everywhere and gets code 0, as in the reference.
    index = tl.zeros((BLOCK // QBLOCK, QBLOCK), dtype=tl.int32)
    for i in tl.static_range(8):
        probe = tl.load(midpoint_ptr + index + ((128 >> i) - 1))
        index = tl.where(probe < normalized, index + (128 >> i), index)
    if not SIGNED:
        index = tl.where(normalized > 0, tl.maximum(index, 1), index)  # a positive v never becomes 0
    return tl.reshape(index, (BLOCK,)).to(tl.uint8), absmax
