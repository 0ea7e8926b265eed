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
    registers (a second DRAM round trip: 94.2% of copy predicted, 95.4% so), and 4-warp programs left bfloat16
    at 95.1% (95.4% in 2 warps). With 8 blocks ptxas interleaves more (bfloat16 about 90%). Unaligned, float32
    grads are read one an access, 2 blocks in 1 warp (97.4%; 4 blocks in 4 warps waited for DRAM twice, 92.9%),
    and 16-bit ones two an access (`_block_grads_in_words`), 2 blocks in 2 warps: 32 registers, 16 warps a
    scheduler, 95.1% for the bfloat16 2-norm and 95.3% for its inf-norm (one grad an access, 4 blocks in 4 warps:
    48 registers, 89.0% and 90.0%; in words, 4 blocks in 4 warps: 42 registers, 84.8%, waiting for DRAM twice).
    Predicted by `python -m bench.static`, not measured."""
    if not aligned:
        return (2, 1) if param_dtype.itemsize == 4 else (2, 2)
    return 2, 4 if param_dtype.itemsize == 4 else 2


@triton.jit
def segment_row(segments_ptr, block_segment_ptr, block, num_blocks):
    """The segment table's row of one block of the table; a block past the table's end reads the last block's, so
    that every address read is the table's. A program reads every block's entry before any row (`block_extent`):
    two L2 round trips before it can ask for the grads, where a block's row read right after its entry made three
    (bfloat16 grads: 95.0% -> 95.1% of copy predicted unaligned, 95.2% -> 95.4% aligned)."""
    entry = block_segment_ptr + tl.minimum(block, num_blocks - 1)
    return segments_ptr + tl.load(entry, volatile=True).to(tl.int64) * SEGMENT_FIELDS


@triton.jit
def block_extent(row, block, num_blocks, PARAM_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK):
    """(address of the first grad, count) of one block of the table from its segment's `row`: at most BLOCK, none
    for a block past the table's end. The table's loads are volatile, as the grads' are: ptxas keeps them in the
    order written, before every grad's."""
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
def _terms(grads, PARAM_DTYPE: tl.constexpr, NORM_TYPE: tl.constexpr):
    """Each grad's term of its block's partial: |g|, g^2, or for the inf norm the bits of |g|. With the sign bit
    cleared, the bit patterns' integer order is that of the magnitudes, and every NaN lies above inf, so that a NaN
    gradient makes the norm non-finite (NaN counts as infinitely large): two integer instructions per element
    instead of a widening, an abs, a NaN test and a select."""
    if NORM_TYPE == 0:
        bits_dtype = tl.int16 if PARAM_DTYPE.primitive_bitwidth == 16 else tl.int32
        magnitude_mask = 0x7FFF if PARAM_DTYPE.primitive_bitwidth == 16 else 0x7FFFFFFF
        terms = grads.to(bits_dtype, bitcast=True) & magnitude_mask
    else:
        g = widen_to_float32(grads)
        terms = tl.abs(g) if NORM_TYPE == 1 else g * g
    return terms


@triton.jit
def _joined(terms, more_terms, NORM_TYPE: tl.constexpr):
    """Two terms as one: their sum, or for the inf norm their maximum."""
    return tl.maximum(terms, more_terms) if NORM_TYPE == 0 else terms + more_terms


@triton.jit
def _block_grads_in_words(first_grad, count, BLOCK: tl.constexpr):
    """Unaligned 16-bit grads, two an access: (the BLOCK // 2 32-bit words from the 4-byte boundary at or after
    `first_grad`, and the grads no word holds whole: the first and the last, zeros where a word holds them). A word
    is read only where both its grads are the block's (else zeros): so that no select is needed on the words, the
    grad before the boundary (the first, when it is not at one) and a last grad whose word would hold a grad past
    the block are read on their own. Volatile, as the aligned grads (`_block_grads`)."""
    lead = ((first_grad.to(tl.int64) >> 1) & 1).to(tl.int32)  # 1: the first grad is not at a boundary
    paired = count - lead  # the grads from the boundary on
    pairs = tl.arange(0, BLOCK // 2)
    words_ptr = (first_grad + lead).to(tl.pointer_type(tl.uint32), bitcast=True)
    words = tl.load(words_ptr + pairs, mask=2 * pairs < paired - 1, other=0, volatile=True)
    first = tl.load(first_grad, mask=(lead != 0) & (count > 0), other=0.0, volatile=True)
    last = tl.load(first_grad + (count - 1), mask=(paired > 0) & ((paired & 1) != 0), other=0.0, volatile=True)
    return words, first, last


@triton.jit
def _word_terms(words, PARAM_DTYPE: tl.constexpr, NORM_TYPE: tl.constexpr):
    """Each word's two grads' terms, joined."""
    low = _terms((words & 0xFFFF).to(tl.uint16).to(PARAM_DTYPE, bitcast=True), PARAM_DTYPE, NORM_TYPE)
    high = _terms((words >> 16).to(tl.uint16).to(PARAM_DTYPE, bitcast=True), PARAM_DTYPE, NORM_TYPE)
    return _joined(low, high, NORM_TYPE)


@triton.jit
def _columns(c0, c1, c2, c3, BLOCKS_PER_PROGRAM: tl.constexpr):
    """The blocks' [N] terms as the columns of one [N, blocks] tensor (scalars: a [blocks] vector); c2 and c3 are
    unused with 2 blocks a program. Joined, each block's terms stay in the registers of the threads that hold them."""
    if BLOCKS_PER_PROGRAM == 4:
        joined = tl.join(tl.join(c0, c2), tl.join(c1, c3))
        columns = tl.reshape(joined, joined.shape[:-2] + [BLOCKS_PER_PROGRAM])
    else:
        columns = tl.join(c0, c1)
    return columns


@triton.jit
def _partials(terms, NORM_TYPE: tl.constexpr):
    """Each column's partial of [BLOCK, blocks] `_terms`, still a term: sum |g|, sum g^2 or the bits of max |g|."""
    return tl.max(terms, axis=0) if NORM_TYPE == 0 else tl.sum(terms, axis=0)


@triton.jit
def _as_float32(partials, PARAM_DTYPE: tl.constexpr, NORM_TYPE: tl.constexpr):
    """Partials as the norm's float32 partials: for the inf norm from their bits, NaN made inf."""
    if NORM_TYPE == 0:
        bits_dtype = tl.int16 if PARAM_DTYPE.primitive_bitwidth == 16 else tl.int32
        partials = widen_to_float32(partials.to(bits_dtype).to(PARAM_DTYPE, bitcast=True))
        partials = tl.where(partials != partials, float("inf"), partials)
    return partials


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
    r0 = segment_row(segments_ptr, block_segment_ptr, first, num_blocks)
    r1 = segment_row(segments_ptr, block_segment_ptr, first + 1, num_blocks)
    if BLOCKS_PER_PROGRAM == 4:
        r2 = segment_row(segments_ptr, block_segment_ptr, first + 2, num_blocks)
        r3 = segment_row(segments_ptr, block_segment_ptr, first + 3, num_blocks)
    a0, n0 = block_extent(r0, first, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
    a1, n1 = block_extent(r1, first + 1, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
    if BLOCKS_PER_PROGRAM == 4:
        a2, n2 = block_extent(r2, first + 2, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
        a3, n3 = block_extent(r3, first + 3, num_blocks, PARAM_DTYPE, ALIGNED, BLOCK)
    if not ALIGNED and PARAM_DTYPE.primitive_bitwidth == 16:
        w0, first0, last0 = _block_grads_in_words(a0, n0, BLOCK)
        w1, first1, last1 = _block_grads_in_words(a1, n1, BLOCK)
        w2, first2, last2, w3, first3, last3 = w0, first0, last0, w1, first1, last1  # unused with 2 blocks
        if BLOCKS_PER_PROGRAM == 4:
            w2, first2, last2 = _block_grads_in_words(a2, n2, BLOCK)
            w3, first3, last3 = _block_grads_in_words(a3, n3, BLOCK)
        words = _columns(w0, w1, w2, w3, BLOCKS_PER_PROGRAM)
        alone = _joined(
            _terms(_columns(first0, first1, first2, first3, BLOCKS_PER_PROGRAM), PARAM_DTYPE, NORM_TYPE),
            _terms(_columns(last0, last1, last2, last3, BLOCKS_PER_PROGRAM), PARAM_DTYPE, NORM_TYPE),
            NORM_TYPE,
        )
        partials = _joined(_partials(_word_terms(words, PARAM_DTYPE, NORM_TYPE), NORM_TYPE), alone, NORM_TYPE)
    else:
        t0 = _terms(_block_grads(a0, n0, ALIGNED, BLOCK), PARAM_DTYPE, NORM_TYPE)
        t1 = _terms(_block_grads(a1, n1, ALIGNED, BLOCK), PARAM_DTYPE, NORM_TYPE)
        t2, t3 = t0, t1  # unused with 2 blocks a program
        if BLOCKS_PER_PROGRAM == 4:
            t2 = _terms(_block_grads(a2, n2, ALIGNED, BLOCK), PARAM_DTYPE, NORM_TYPE)
            t3 = _terms(_block_grads(a3, n3, ALIGNED, BLOCK), PARAM_DTYPE, NORM_TYPE)
        partials = _partials(_columns(t0, t1, t2, t3, BLOCKS_PER_PROGRAM), NORM_TYPE)
    blocks = first + tl.arange(0, BLOCKS_PER_PROGRAM)
    tl.store(partials_ptr + blocks, _as_float32(partials, PARAM_DTYPE, NORM_TYPE), mask=blocks < num_blocks)


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
