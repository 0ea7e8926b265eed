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
# Blocks a program reduces at once. One block's grads are a few bytes per thread (8 elements), too few to keep DRAM
# busy while programs wait for them: the static model predicts the bfloat16 2-norm's partials at 84% of copy with
# 4 blocks per program against 73% with one (python -m bench.static; predicted, not measured).
BLOCKS_PER_PROGRAM = 4


@triton.jit(do_not_specialize=["num_blocks"])  # one compilation whatever the table's size
def _grad_norm_partials_kernel(
    segments_ptr,  # int64 [num_segments, SEGMENT_FIELDS]: the optimizer's segment table
    block_segment_ptr,  # int32 [num_blocks]: the segment of each block
    partials_ptr,  # float32 [num_blocks]: each block's sum |g|, sum g^2 or max |g|
    num_blocks,  # blocks in the table: the last program's rows past them read and write nothing
    PARAM_DTYPE: tl.constexpr,
    NORM_TYPE: tl.constexpr,  # 1, 2 or 0 for inf
    ALIGNED: tl.constexpr,  # the segments keep the step kernel's alignment promise (`v0adam.kernels.adam`)
    BLOCK: tl.constexpr,  # elements per block of the table
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """The partials of BLOCKS_PER_PROGRAM consecutive blocks, a row each: every row's loads are issued before
    any is reduced, so that a program keeps that many blocks' bytes in flight (a block's reduction ends in a
    barrier, which later loads cannot pass)."""
    blocks = tl.program_id(0) * BLOCKS_PER_PROGRAM + tl.arange(0, BLOCKS_PER_PROGRAM)
    in_table = blocks < num_blocks
    rows = segments_ptr + tl.load(block_segment_ptr + blocks, mask=in_table, other=0).to(tl.int64) * SEGMENT_FIELDS
    grad_ptrs = tl.load(rows + GRAD_ADDR).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    numels = tl.where(in_table, tl.load(rows + NUMEL), 0)
    if ALIGNED:
        grad_ptrs = tl.multiple_of(grad_ptrs, ALIGN_BYTES)
        numels = tl.multiple_of(numels, ALIGN_ELEMENTS)
    offsets = ((blocks - tl.load(rows + FIRST_BLOCK)).to(tl.int64) * BLOCK)[:, None] + tl.arange(0, BLOCK)[None, :]
    stored = tl.load(grad_ptrs[:, None] + offsets, mask=offsets < numels[:, None], other=0.0)
    if NORM_TYPE == 0:
        # max |g| on the bit patterns: with the sign bit cleared their integer order is that of the magnitudes, and
        # every NaN lies above inf, so that a NaN gradient makes the norm non-finite (NaN counts as infinitely
        # large). Two integer instructions per element instead of a widening, an abs, a NaN test and a select.
        bits_dtype = tl.int16 if PARAM_DTYPE.primitive_bitwidth == 16 else tl.int32
        magnitude_mask = 0x7FFF if PARAM_DTYPE.primitive_bitwidth == 16 else 0x7FFFFFFF
        largest = tl.max(stored.to(bits_dtype, bitcast=True) & magnitude_mask, axis=1)
        partials = widen_to_float32(largest.to(bits_dtype).to(PARAM_DTYPE, bitcast=True))
        partials = tl.where(partials != partials, float("inf"), partials)
    else:
        g = widen_to_float32(stored)
        partials = tl.sum(tl.abs(g), axis=1) if NORM_TYPE == 1 else tl.sum(g * g, axis=1)
    tl.store(partials_ptr + blocks, partials, mask=in_table)


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
        _grad_norm_partials_kernel[(triton.cdiv(block_segment.numel(), BLOCKS_PER_PROGRAM),)](
            segments,
            block_segment,
            partials,
            block_segment.numel(),
            PARAM_DTYPE=TRITON_DTYPES[param_dtype],
            NORM_TYPE=0 if norm_type == float("inf") else int(norm_type),
            ALIGNED=aligned,
            BLOCK=block,
            BLOCKS_PER_PROGRAM=BLOCKS_PER_PROGRAM,
        )


def reduce_partials(partials: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The p-th power of the norm (sum of partials) for p = 1, 2; the max for inf."""
    if norm_type == float("inf"):
        return partials.max() if partials.numel() else partials.new_zeros(())
    return partials.sum()
