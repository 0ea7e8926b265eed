"""The fused gradient norm's partials, block by block: each is the norm of its own block's grads (the optimizer's
clipping tests see only their sum, which no placement of the partials changes)."""

import pytest
import torch
from conftest import DEVICE
from v0adam.kernels.grad_norm import BLOCKS_PER_PROGRAM, grad_norm_partials
from v0adam.kernels.tables import SegmentRow

BLOCK = 256
# Segments of 3 blocks and a part, 1 block and a part: 7 blocks, not a whole number of programs. Aligned, every
# numel is a multiple of 8 elements; unaligned, not.
SIZES = {True: (3 * BLOCK + 64, BLOCK, 8), False: (3 * BLOCK + 61, BLOCK, 5)}
EXPECTED = {
    1.0: lambda g: g.abs().sum(),
    2.0: lambda g: g.square().sum(),
    float("inf"): lambda g: g.abs().max().nan_to_num(nan=float("inf")),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("norm_type", list(EXPECTED), ids=["l1", "l2", "inf"])
def test_each_blocks_partial_is_the_norm_of_its_own_grads(dtype, aligned, norm_type):
    generator = torch.Generator().manual_seed(0)
    grads = [(torch.randn(n, generator=generator) * (i + 1)).to(dtype).to(DEVICE) for i, n in enumerate(SIZES[aligned])]
    grads[0][BLOCK + 3] = float("nan") if norm_type == float("inf") else grads[0][BLOCK + 3]
    rows, block_segment, blocks = [], [], []
    for index, grad in enumerate(grads):
        count = -(-grad.numel() // BLOCK)
        rows.append(SegmentRow(0, grad.data_ptr(), 0, grad.numel(), len(block_segment), 0, 0))
        block_segment += [index] * count
        blocks += [grad[start : start + BLOCK].float() for start in range(0, grad.numel(), BLOCK)]
    assert len(blocks) % BLOCKS_PER_PROGRAM != 0  # the last program has blocks past the table
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
