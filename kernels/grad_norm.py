"""One pass over every gradient of a bucket: per-block partial norms, for gradient clipping and the non-finite
guard. The partials are reduced by the caller (a deterministic torch reduction, no float atomics), so the norm
is the same on every run."""

import torch
import triton
import triton.language as tl
from v0adam.kernels.precision import widen_to_float32
from v0adam.kernels.tables import (
    ALIGN_BYTES,
    ALIGN_ELEMENTS,
    FIRST_BLOCK,
    GRAD_ADDR,
    NUMEL,
    SEGMENT_FIELDS,
    TRITON_DTYPES,
)

# Norm types computed in the kernel; the reduction of the partials is sum for 1 and 2, max for inf.
FUSED_NORM_TYPES = (1.0, 2.0, float("inf"))


@triton.jit
def _grad_norm_partials_kernel(
    segments_ptr,  # int64 [num_segments, SEGMENT_FIELDS]: the optimizer's segment table
    block_segment_ptr,  # int32 [num_blocks]: the segment each program works on
    partials_ptr,  # float32 [num_blocks]: this block's sum |g|, sum g^2 or max |g|
    PARAM_DTYPE: tl.constexpr,
    NORM_TYPE: tl.constexpr,  # 1, 2 or 0 for inf
    ALIGNED: tl.constexpr,  # the segments keep the step kernel's alignment promise (`v0adam.kernels.adam`)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = segments_ptr + tl.load(block_segment_ptr + pid).to(tl.int64) * SEGMENT_FIELDS
    grad_ptr = tl.load(row + GRAD_ADDR).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    numel = tl.load(row + NUMEL)
    if ALIGNED:
        grad_ptr = tl.multiple_of(grad_ptr, ALIGN_BYTES)
        numel = tl.multiple_of(numel, ALIGN_ELEMENTS)
    offsets = (pid - tl.load(row + FIRST_BLOCK)).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    stored = tl.load(grad_ptr + offsets, mask=offsets < numel, other=0.0)
    if NORM_TYPE == 0:
        # max |g| on the bit patterns: with the sign bit cleared their integer order is that of the magnitudes, and
        # every NaN lies above inf, so that a NaN gradient makes the norm non-finite (NaN counts as infinitely
        # large). Two integer instructions per element instead of a widening, an abs, a NaN test and a select.
        bits_dtype = tl.int16 if PARAM_DTYPE.primitive_bitwidth == 16 else tl.int32
        magnitude_mask = 0x7FFF if PARAM_DTYPE.primitive_bitwidth == 16 else 0x7FFFFFFF
        largest = tl.max(stored.to(bits_dtype, bitcast=True) & magnitude_mask)
        partial = widen_to_float32(largest.to(bits_dtype).to(PARAM_DTYPE, bitcast=True))
        partial = tl.where(partial != partial, float("inf"), partial)
    else:
        g = widen_to_float32(stored)
        partial = tl.sum(tl.abs(g)) if NORM_TYPE == 1 else tl.sum(g * g)
    tl.store(partials_ptr + pid, partial)


def grad_norm_partials(
    segments: torch.Tensor,
    block_segment: torch.Tensor,
    partials: torch.Tensor,
    *,
    param_dtype: torch.dtype,
    norm_type: float,
    aligned: bool,
    block: int,
) -> None:
    """Per-block partial norms of the grads of every segment into `partials` (float32, one per block; see
    `_grad_norm_partials_kernel`)."""
    if norm_type not in FUSED_NORM_TYPES:
        raise ValueError(f"fused gradient norms are of type {FUSED_NORM_TYPES}, got {norm_type}")
    if partials.dtype != torch.float32 or partials.numel() != block_segment.numel():
        raise ValueError("partials must be float32, one per block")
    if block_segment.numel():
        _grad_norm_partials_kernel[(block_segment.numel(),)](
            segments,
            block_segment,
            partials,
            PARAM_DTYPE=TRITON_DTYPES[param_dtype],
            NORM_TYPE=0 if norm_type == float("inf") else int(norm_type),
            ALIGNED=aligned,
            BLOCK=block,
        )


def reduce_partials(partials: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The p-th power of the norm (sum of partials) for p = 1, 2; the max for inf."""
    if norm_type == float("inf"):
        return partials.max() if partials.numel() else partials.new_zeros(())
    return partials.sum()
