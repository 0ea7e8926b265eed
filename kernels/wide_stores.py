"""Float32 stores from a step whose other tensors are 16- or 8-bit, without a trip through shared memory.

Triton lays out each global access by itself (its coalescing pass): a thread's share of a 16-bit tensor is 8
elements, one 128-bit access; of a float32 tensor, 4. With bfloat16 params or narrow states the step computes in
the 8-element layout, and each float32 tensor it stored (fp32 moments, the float32 master, fp32 params beside 8-bit
states) went through shared memory into the 4-element one: shared-memory stores and loads and a barrier over the
program's warps, per tensor. Indexed as [2, BLOCK // 8, 4], a thread's 8 elements as two rows of 4, the store
takes the compute's own layout: two 128-bit stores a thread, no conversion.
"""

import triton
import triton.language as tl


@triton.jit
def store_elements(pointer, start, values, count, EIGHT_PER_THREAD: tl.constexpr, BLOCK: tl.constexpr):
    """pointer[start + i] = values[i] for i < count (values [BLOCK], start the program's first element).
    EIGHT_PER_THREAD: the program computes in rows of 8 elements a thread (`v0adam.kernels.adam`: aligned, with a
    16- or 8-bit tensor)."""
    if EIGHT_PER_THREAD and values.dtype.primitive_bitwidth == 32:
        index = tl.arange(0, 2)[:, None, None] * 4 + tl.arange(0, BLOCK // 8)[None, :, None] * 8
        index += tl.arange(0, 4)[None, None, :]  # index[h, r, i] = 8r + 4h + i
        rows = tl.permute(tl.reshape(values, (BLOCK // 8, 2, 4)), (1, 0, 2))
        tl.store(pointer + start + index, rows, mask=index < count)
    elif EIGHT_PER_THREAD:
        # From the program's base address, as the param and grad are loaded: ptxas schedules the 8-bit and the
        # bf16-states steps better so than with a 64-bit offset per element (84.5% and 94.7% of copy predicted,
        # against 82.9% and 93.5%, with the model's former 450-cycle latency).
        index = tl.arange(0, BLOCK)
        tl.store(pointer + start + index, values, mask=index < count)
    else:
        index = tl.arange(0, BLOCK)
        tl.store(pointer + (start + index), values, mask=index < count)
