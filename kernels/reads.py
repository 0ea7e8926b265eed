"""How a step program reads its elements (`v0adam.kernels.adam`): volatile, and masked to the program's count, or
for a tail to whole 16-byte vectors.

The step writes every load before any arithmetic on what the loads bring: a load issued after arithmetic that waits
for an earlier load's value adds its DRAM latency to that one. The loads are volatile so that ptxas issues them in
that order, the first wait after the last: left to itself, it would join the exact master's param before it requests
the moments, or decode 8-bit m before it requests float32 params, and a program would wait for DRAM twice (the exact
master: 93.9% of copy predicted, 96.7% so). Each element is read once a step: the L1 cache volatile loads go around
had nothing to keep. The unaligned launch (one element an access) needs its table's and scalars' loads in order as
well (ORDERED in the step): with only the elements' volatile, ptxas moved one of those among them and 25 of its 30
variants waited for DRAM twice; with none volatile, 9 did (bfloat16 params with gradient clipping: 91.7% of copy
predicted, 95.4% in order); with all, none.

A tail is the last elements of a segment, fewer than ALIGN_ELEMENTS, when its count breaks the alignment promise
but its addresses keep it. Its launch reads whole vectors, 128 bits an access (the unaligned launch reads one element
an access): the vector that holds its last element holds up to 7 more past it, in the same 16 bytes, hence in a
page the tensor occupies, where no read can fault; nothing uses them, and the tail's stores write only its own
elements.
"""

import triton
import triton.language as tl


@triton.jit
def read_mask(offsets, count, pointers, ROUND_UP: tl.constexpr):
    """offsets < count; with ROUND_UP, count rounded up to whole 16-byte vectors of the elements `pointers` point
    to (a multiple of 8 for 16-bit elements, of 4 for 32-bit ones), which Triton then reads 128 bits an access."""
    if ROUND_UP:
        PER_VECTOR: tl.constexpr = 128 // pointers.dtype.element_ty.primitive_bitwidth
        count = (count + PER_VECTOR - 1) // PER_VECTOR * PER_VECTOR
    return offsets < count.to(tl.int32)


@triton.jit
def load_elements(pointers, offsets, count, ROUND_UP: tl.constexpr):
    """The elements at `pointers` whose `offsets` in the program are below `count` (see `read_mask`), volatile."""
    return tl.load(pointers, mask=read_mask(offsets, count, pointers, ROUND_UP), volatile=True)


@triton.jit
def load_moments(exp_avg_ptr, exp_avg_sq_ptr, state_offsets, offsets, count, ROUND_UP: tl.constexpr):
    """(m, v) at the program's `state_offsets`, m's first, as `load_elements` reads them."""
    m = load_elements(exp_avg_ptr + state_offsets, offsets, count, ROUND_UP)
    return m, load_elements(exp_avg_sq_ptr + state_offsets, offsets, count, ROUND_UP)
