"""The fused gradient norm's partials, block by block: each is the norm of its own block's grads (the optimizer's
clipping tests see only their sum, which no placement of the partials changes)."""

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE
from v0adam.kernels.grad_norm import block_extent, grad_norm_partials, program_shape, segment_row
from v0adam.kernels.tables import SegmentRow

BLOCK = 256
# Segments of 3 blocks and a part, 1 block and a part, and a part: 7 blocks, not a whole number of programs (of 2
# or 4 blocks). Aligned, every numel is a multiple of 8 elements; unaligned, not, and four more segments make 11
# blocks. Unaligned, the segments start at these offsets into their buffers: 16-bit grads at an odd offset do not
# start at a 4-byte boundary, as the kernel reads them two at once (their first and, with an odd count from the
# boundary on, their last grad read alone: 1 or 2 grads from an odd offset, 1 or 3 from an even one).
SIZES = {True: (3 * BLOCK + 64, BLOCK + 8, 8), False: (3 * BLOCK + 61, BLOCK + 5, 5, 2, 1, 1, 3)}
OFFSETS = {True: (0, 0, 0), False: (1, 0, 1, 1, 1, 0, 0)}
EXPECTED = {
    1.0: lambda g: g.abs().sum(),
    2.0: lambda g: g.square().sum(),
    float("inf"): lambda g: g.abs().max().nan_to_num(nan=float("inf")),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("norm_type", list(EXPECTED), ids=["l1", "l2", "inf"])
def test_each_blocks_partial_is_the_norm_of_its_own_grads(dtype, aligned, norm_type):
    """Each grad lies in a buffer of NaN: a neighbour read into a partial would make it NaN (or inf)."""
    generator = torch.Generator().manual_seed(0)
    grads = []
    for i, (n, offset) in enumerate(zip(SIZES[aligned], OFFSETS[aligned])):
        buffer = torch.full((n + 2,), float("nan"), dtype=dtype, device=DEVICE)
        buffer[offset : offset + n] = (torch.randn(n, generator=generator) * (i + 1)).to(dtype).to(DEVICE)
        grads.append(buffer[offset : offset + n])
    if norm_type == float("inf"):
        grads[0][BLOCK + 3] = float("nan")  # a NaN counts as infinitely large
    rows, block_segment, blocks = [], [], []
    for index, grad in enumerate(grads):
        count = -(-grad.numel() // BLOCK)
        rows.append(SegmentRow(0, grad.data_ptr(), 0, grad.numel(), len(block_segment), 0, 0))
        block_segment += [index] * count
        blocks += [grad[start : start + BLOCK].float() for start in range(0, grad.numel(), BLOCK)]
    assert len(blocks) % program_shape(dtype, aligned)[0] != 0  # the last program has blocks past the table
    partials = torch.full((len(blocks),), -1.0, device=DEVICE)
    grad_norm_partials(
        torch.tensor(rows, dtype=torch.int64, device=DEVICE),
        torch.tensor(block_segment, dtype=torch.int32, device=DEVICE),
        partials,
        param_dtype=dtype,
        norm_type=norm_type,
        aligned=aligned,
        block=BLOCK,
    )
    expected = torch.stack([EXPECTED[norm_type](block) for block in blocks])
    torch.testing.assert_close(partials, expected, rtol=1e-5, atol=0)


COUNTED_BLOCKS = 4  # the most a program reduces (`program_shape`)


@triton.jit
def _counts_kernel(segments_ptr, block_segment_ptr, counts_ptr, num_blocks, BLOCK: tl.constexpr):
    for block in tl.static_range(COUNTED_BLOCKS):
        row = segment_row(segments_ptr, block_segment_ptr, block, num_blocks)
        count = block_extent(row, block, num_blocks, tl.float32, False, BLOCK)[1]
        tl.store(counts_ptr + block, count)


def test_a_block_three_billion_elements_into_a_segment_reads_its_own_grads_and_no_more():
    """Offsets past 2**31 elements are 64-bit: the table's one block lies 3 * 2**30 elements into its segment (the
    addresses reach a real tensor), and the program's other blocks, past the table, read nothing: their counts are
    not positive (a count narrowed to 32 bits from 0 minus such an offset would wrap to a positive one)."""
    start = 3 * 2**30
    grad = torch.randn(BLOCK, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    row = SegmentRow(0, grad.data_ptr() - 4 * start, 0, start + BLOCK, -(start // BLOCK), 0, 0)
    segments = torch.tensor([row], dtype=torch.int64, device=DEVICE)
    block_segment = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    counts = torch.full((COUNTED_BLOCKS,), 7, dtype=torch.int32, device=DEVICE)
    _counts_kernel[(1,)](segments, block_segment, counts, 1, BLOCK=BLOCK)
    assert counts[0] == BLOCK and (counts[1:] <= 0).all(), counts
    for aligned in (True, False):
        partials = torch.full((1,), -1.0, device=DEVICE)
        grad_norm_partials(
            segments, block_segment, partials, param_dtype=torch.float32, norm_type=2.0, aligned=aligned, block=BLOCK
        )
        torch.testing.assert_close(partials, grad.square().sum()[None], rtol=1e-5, atol=0)
