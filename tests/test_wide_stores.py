"""`kernels/wide_stores.py`: what a step stores lands where it belongs, whichever layout it is stored from (the
compiled layouts themselves: tests/test_static_model.py)."""

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE
from v0adam.kernels.wide_stores import store_elements

BLOCK = 1024


@triton.jit
def _store_kernel(out_ptr, values_ptr, start, count, EIGHT_PER_THREAD: tl.constexpr, BLOCK: tl.constexpr):
    values = tl.load(values_ptr + tl.arange(0, BLOCK))
    store_elements(out_ptr, start, values, count, EIGHT_PER_THREAD, BLOCK)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int16, torch.uint8])
@pytest.mark.parametrize("eight_per_thread", [True, False])
@pytest.mark.parametrize("count", [0, 8, 520, BLOCK])
def test_each_value_is_stored_at_its_index_and_nothing_past_the_count(dtype, eight_per_thread, count):
    values = torch.arange(1, BLOCK + 1, device=DEVICE).to(dtype)
    start = 24
    out = torch.zeros(start + BLOCK + 8, dtype=dtype, device=DEVICE)
    _store_kernel[(1,)](out, values, start, count, EIGHT_PER_THREAD=eight_per_thread, BLOCK=BLOCK)
    expected = torch.zeros_like(out)
    expected[start : start + count] = values[:count]
    assert torch.equal(out, expected)
