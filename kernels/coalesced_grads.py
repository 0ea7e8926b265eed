"""Grads off the alignment promise in a step whose params and states keep it (`v0adam.kernels.adam`).

DDP's bucket views lay the grads end to end, so every grad after one of a size not a multiple of 8 elements is off
the 16-byte promise: at a 4-byte boundary after an even-sized grad, at a 2-byte one after an odd-sized 16-bit grad.
Such grads are read coalesced, a warp's 32 consecutive accesses at once, and moved into the step's layout (8
consecutive elements a thread) through shared memory once every load of the step is issued. Read in that layout
instead, a warp's access would span 8 times the bytes it reads. 16-bit grads are read in 4-byte words, two an
access; 2 bytes past a 4-byte boundary, each pair from the two words either side of it (the second read from L2:
DRAM moves each byte once); float32 grads an element an access. Predicted for bfloat16 params with 8-bit states:
61.1% of copy in the unaligned launch, 90.1% to 90.2% in words (85.1% when 2 bytes past a 4-byte boundary were
read an element an access, before m's codes were packed by byte permutations).
"""

import triton
import triton.language as tl


@triton.jit
def load_coalesced(grad_ptr, count, GRAD_ALIGNMENT: tl.constexpr, BLOCK: tl.constexpr):
    """The first `count` (a multiple of 2, of 8 in the step) of BLOCK grads from `grad_ptr`, whose address is a
    multiple of GRAD_ALIGNMENT bytes (4 or 2), volatile as the step's other loads, for `into_step_layout`: rows of
    32 accesses, of an element for float32 grads, of a word for 16-bit ones (2 bytes past a 4-byte boundary, the
    words either side of each pair of grads, joined)."""
    PER_ACCESS: tl.constexpr = 2 if grad_ptr.dtype.element_ty.primitive_bitwidth == 16 else 1
    accesses = tl.arange(0, BLOCK // (32 * PER_ACCESS))[:, None] * 32 + tl.arange(0, 32)[None, :]
    mask = accesses * PER_ACCESS < count.to(tl.int32)  # no word holds a grad past `count`
    if PER_ACCESS == 1:
        rows = tl.load(grad_ptr + accesses, mask=mask, volatile=True)
    elif GRAD_ALIGNMENT == 4:
        rows = tl.load(grad_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + accesses, mask=mask, volatile=True)
    else:
        # 2 bytes past a 4-byte boundary: the word of grads 2k and 2k + 1 is the high half of the word that starts
        # a grad before grad 2k and the low half of the next word. The first of those words holds the grad before
        # the tensor's first, the last the one after its last: in the same 4 bytes as one of its own, hence in a
        # page the tensor occupies (no read can fault); never used. Each word is read twice, once from L2.
        # Both words are returned, joined, and put together in `into_step_layout`, after the step's last load: put
        # together here, ptxas did it before it requested an exact master's remainders (AdaBound: two DRAM waits).
        before = (grad_ptr - 1).to(tl.pointer_type(tl.int32), bitcast=True) + accesses
        rows = tl.join(tl.load(before, mask=mask, volatile=True), tl.load(before + 1, mask=mask, volatile=True))
    return rows


@triton.jit
def into_step_layout(rows, GRAD_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """The BLOCK grads `load_coalesced` read, in the step's layout. Called after the step's last load: where the
    grads were read, ptxas waited for them before it requested the moments, and 4 of the 6 steps with 8-bit states
    waited for DRAM twice (float32 params 91.1% of copy predicted, AMSGrad 89.4%; 95.3% and 94.1% so)."""
    if rows.dtype == tl.int32:
        # A barrier keeps the move here: ptxas would otherwise begin it before the step's last loads, and the step
        # would wait for DRAM twice (bfloat16 params with a float32 master: 95.9%, 97.9% so). An element an access
        # ptxas keeps it in place itself, and the barrier would cost (float32 params with 8-bit states and
        # AMSGrad: 94.1% -> 89.2%, a second wait).
        tl.debug_barrier()
        # Split before the move, which then moves 16-bit values: one barrier, where Triton moved the two float32
        # halves of a split after it apart (three). Little-endian: the first grad of a word is its low half.
        if len(rows.shape) == 3:  # the words either side of each pair of grads 2 bytes past a 4-byte boundary
            before, after = tl.split(rows)
            halves = tl.join((before >> 16).to(tl.int16), after.to(tl.int16))
        else:
            halves = tl.join(rows.to(tl.int16), (rows >> 16).to(tl.int16))
        rows = halves.to(GRAD_DTYPE, bitcast=True)
    return tl.reshape(rows, (BLOCK,))
