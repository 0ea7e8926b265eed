"""Grads off the alignment promise in a step whose params and states keep it (`v0adam.kernels.adam`).

DDP's bucket views lay the grads end to end, so every grad after one of a size not a multiple of 8 elements is off
the 16-byte promise: at a 4-byte boundary after an even-sized grad, at a 2-byte one after an odd-sized 16-bit grad.
Such grads are read coalesced, a warp's 32 consecutive accesses at once, in 4-byte words where their addresses
allow (two 16-bit grads an access), else an element an access, and moved into the step's layout (8 consecutive
elements a thread) through shared memory once every load of the step is issued. Read in that layout instead, a
warp's access would span 8 times the bytes it reads. Predicted for bfloat16 params with 8-bit states: 61.1% of copy
in the unaligned launch, 85.1% an element an access, 88.3% two.
"""

import triton
import triton.language as tl


@triton.jit
def load_coalesced(grad_ptr, count, GRAD_ALIGNMENT: tl.constexpr, BLOCK: tl.constexpr):
    """The first `count` (a multiple of 2, of 8 in the step) of BLOCK grads from `grad_ptr`, whose address is a
    multiple of GRAD_ALIGNMENT bytes (4 or 2), volatile as the step's other loads: rows of 32 accesses of 4 or 2
    bytes, for `into_step_layout`."""
    PER_ACCESS: tl.constexpr = GRAD_ALIGNMENT * 8 // grad_ptr.dtype.element_ty.primitive_bitwidth  # 1 or 2
    accesses = tl.arange(0, BLOCK // (32 * PER_ACCESS))[:, None] * 32 + tl.arange(0, 32)[None, :]
    mask = accesses * PER_ACCESS < count.to(tl.int32)  # no word holds a grad past `count`
    if PER_ACCESS == 2:  # one return: Triton wants every return of one type, even in branches not compiled
        grad_ptr = grad_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
    return tl.load(grad_ptr + accesses, mask=mask, volatile=True)


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
        halves = tl.join(rows.to(tl.int16), (rows >> 16).to(tl.int16))
        rows = halves.to(GRAD_DTYPE, bitcast=True)
    return tl.reshape(rows, (BLOCK,))
