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


def program_shape(param_dtype: torch.dtype, aligned: bool) -> tuple[int, int]:
    """(blocks, warps) of a program: the blocks of the table it reduces at once, and its warps. One block's grads
    are a few bytes a thread (8 elements), too few to keep DRAM busy while programs wait for them. Aligned, a
    program takes 2 blocks and as many warps as give each thread 64 bytes to load (4 warps for float32 grads, 2 for
    16-bit ones): with 4 blocks, ptxas reduced float32's first blocks before it loaded the last ones, to save
    registers (a second DRAM round trip: 93.9% of copy predicted, 95.2% so), and 4-warp programs left bfloat16
    at 94.7% (95.2% in 2 warps). With 8 blocks ptxas interleaves more (bfloat16 about 90%). The unaligned launch,
    one element an access, keeps 4 blocks in 4 warps: 96.0% for float32 (95.1% with 2 blocks), 89.0% for the
    bfloat16 2-norm (84.9% with 2 blocks in 2 warps, 92.9% in 1, still short of 95%). Predicted by
    `python -m bench.static`, not measured."""
    if not aligned:
        return 4, 4
    return 2, 4 if param_dtype.itemsize == 4 else 2


@triton.jit
def block_extent(
    segments_ptr, block_segment_ptr, block, num_blocks, PARAM_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK
):
    """(address of the first grad, count) of one block of the table: at most BLOCK, none for a block past the
    table's end (which reads the last block's entries: every address read is the table's). The table's loads are
    volatile, as the grads' are: ptxas keeps them in the order written, before every grad's."""
    entry = block_segment_ptr + tl.minimum(block, num_blocks - 1)
    row = segments_ptr + tl.load(entry, volatile=True).to(tl.int64) * SEGMENT_FIELDS
    grad_ptr = tl.load(row + GRAD_ADDR, volatile=True).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    numel = tl.load(row + NUMEL, volatile=True)
    start = (block - tl.load(row + FIRST_BLOCK, volatile=True)).to(tl.int64) * BLOCK
    if ALIGNED:
        grad_ptr = tl.multiple_of(grad_ptr, ALIGN_BYTES)
        numel = tl.multiple_of(numel, ALIGN_ELEMENTS)
    # 0 past the table (the entries read there are the last block's, whose segment ends before the block). Not
    # numel 0 there: 0 minus an offset past 2**31 elements, narrowed to 32 bits, would wrap to a positive count.
    return grad_ptr + start, tl.where(block < num_blocks, tl.minimum(numel - start, BLOCK), 0).to(tl.int32)


@triton.jit
def _block_grads(first_grad, count, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """The `count` grads from `first_grad` as BLOCK values, zeros past them. Volatile where aligned, so that ptxas
    issues the program's loads in the order written, all before the first wait for one (as the step's,
    `v0adam.kernels.adam`; each grad is read once a pass)."""
    offsets = tl.arange(0, BLOCK)
    return tl.load(first_grad + offsets, mask=offsets < count, other=0.0, volatile=ALIGNED)


@triton.jit
def _partials(stored, PARAM_DTYPE: tl.constexpr, NORM_TYPE: tl.constexpr):
    """Each column's partial of `stored` [BLOCK, blocks] grads: sum |g|, sum g^2 or max |g|."""
    if NORM_TYPE == 0:
        # max |g| on the bit patterns: with the sign bit cleared their integer order is that of the magnitudes, and
        # every NaN lies above inf, so that a NaN gradient makes the norm non-finite (NaN counts as infinitely
        # large). Two integer instructions per element instead of a widening, an abs, a NaN test and a select.
        bits_dtype = tl.int16 if PARAM_DTYPE.primitive_bitwidth == 16 else tl.int32
        magnitude_mask = 0x7FFF if PARAM_DTYPE.primitive_bitwidth == 16 else 0x7FFFFFFF
        largest = tl.max(stored.to(bits_dtype, bitcast=True) & magnitude_mask, axis=0)
        partials = widen_to_float32(largest.to(bits_dtype).to(PARAM_DTYPE, bitcast=True))
        return tl.where(partials != partials, float("inf"), partials)
    g = widen_to_float32(stored)
    return tl.sum(tl.abs(g), axis=0) if NORM_TYPE == 1 else tl.sum(g * g, axis=0)


@triton.jit(do_not_specialize=["num_blocks"])  # one compilation whatever the table's size
def _grad_norm_partials_kernel(
    segments_ptr,  # int64 [num_segments, SEGMENT_FIELDS]: the optimizer's segment table
    block_segment_ptr,  # int32 [num_blocks]: the segment of each block
    partials_ptr,  # float32 [num_blocks]: each block's sum |g|, sum g^2 or max |g|
    num_blocks,  # blocks in the table: the last program's blocks past them read their grads as empty
    PARAM_DTYPE: tl.constexpr,
    NORM_TYPE: tl.constexpr,  # 1, 2 or 0 for inf
    ALIGNED: tl.constexpr,  # the segments keep the step kernel's alignment promise (`v0adam.kernels.adam`)
    BLOCK: tl.constexpr,  # elements per block of the table
    BLOCKS_PER_PROGRAM: tl.constexpr,  # 2 or 4 (`program_shape`): the blocks are named below
):
    """The partials of BLOCKS_PER_PROGRAM consecutive blocks. Every block's table entries are read, then every
    block's grads, then they are reduced together, so that a program waits for DRAM once with that many blocks'
    bytes in flight. Each block's grads stay in the registers of the threads that load them (joined as columns of
    one tensor), and one reduction over the rows gives the program's partials."""
    first = tl.program_id(0) * BLOCKS_PER_PROGRAM
    tl.static_assert(BLOCKS_PER_PROGRAM == 2 or BLOCKS_PER_PROGRAM == 4)
    a0, n0 = block_extent(segments_ptr, block_segment_ptr, first, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
    a1, n1 = block_extent(segments_ptr, block_segment_ptr, first + 1, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
    if BLOCKS_PER_PROGRAM == 4:
        a2, n2 = block_extent(segments_ptr, block_segment_ptr, first + 2, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
        a3, n3 = block_extent(segments_ptr, block_segment_ptr, first + 3, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
    g0, g1 = _block_grads(a0, n0, ALIGNED, BLOCK), _block_grads(a1, n1, ALIGNED, BLOCK)
    if BLOCKS_PER_PROGRAM == 4:
        g2, g3 = _block_grads(a2, n2, ALIGNED, BLOCK), _block_grads(a3, n3, ALIGNED, BLOCK)
        stored = tl.reshape(tl.join(tl.join(g0, g2), tl.join(g1, g3)), (BLOCK, BLOCKS_PER_PROGRAM))
    else:
        stored = tl.join(g0, g1)
    blocks = first + tl.arange(0, BLOCKS_PER_PROGRAM)
    tl.store(partials_ptr + blocks, _partials(stored, PARAM_DTYPE, NORM_TYPE), mask=blocks < num_blocks)


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
        blocks_per_program, num_warps = program_shape(param_dtype, aligned)
        _grad_norm_partials_kernel[(triton.cdiv(block_segment.numel(), blocks_per_program),)](
            segments,
            block_segment,
            partials,
            block_segment.numel(),
            PARAM_DTYPE=TRITON_DTYPES[param_dtype],
            NORM_TYPE=0 if norm_type == float("inf") else int(norm_type),
            ALIGNED=aligned,
            BLOCK=block,
            BLOCKS_PER_PROGRAM=blocks_per_program,
            num_warps=num_warps,
        )


def reduce_partials(partials: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The p-th power of the norm (sum of partials) for p = 1, 2; the max for inf."""
    if norm_type == float("inf"):
        return partials.max() if partials.numel() else partials.new_zeros(())
    return partials.sum()
