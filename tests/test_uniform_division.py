"""`divide_by_uniform`: the step's division by sqrt(bias correction 2), from its reciprocal, is correctly rounded
division, bit for bit, over the quotients a step takes (in the interpreter here, natively on a GPU)."""

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE
from v0adam.kernels.uniform_division import FMA_ROUNDS_ONCE, divide_by_uniform

# Under an interpreter whose FMA rounds twice the helper is `tl.div_rn` (see its module): nothing of it to test.
pytestmark = pytest.mark.skipif(not FMA_ROUNDS_ONCE.value, reason="this Triton interpreter's FMA rounds twice")


@triton.jit
def _divide_kernel(x_ptr, divisor_ptr, reciprocal_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    x = tl.load(x_ptr + offsets, mask=mask)
    quotient = divide_by_uniform(
        x, tl.load(divisor_ptr + offsets, mask=mask), tl.load(reciprocal_ptr + offsets, mask=mask)
    )
    tl.store(out_ptr + offsets, quotient, mask=mask)


def _divide(x: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    x, divisor = x.to(DEVICE), divisor.to(DEVICE).expand_as(x).contiguous()
    out = torch.empty_like(x)
    block = min(triton.next_power_of_2(x.numel()), 1 << 20 if DEVICE == "cpu" else 4096)
    _divide_kernel[(triton.cdiv(x.numel(), block),)](x, divisor, 1.0 / divisor, out, x.numel(), BLOCK=block)
    return out


def _assert_bitwise(got: torch.Tensor, expected: torch.Tensor):
    mismatch = (got.view(torch.int32) != expected.view(torch.int32)) & ~(got.isnan() & expected.isnan())
    assert not mismatch.any(), f"{int(mismatch.sum())} quotients differ, first at {mismatch.nonzero()[0].tolist()}"


def _bias_correction2_sqrt(beta2: float, step: int) -> torch.Tensor:
    return torch.tensor((1 - beta2**step) ** 0.5, dtype=torch.float32)


# Divisors the step meets (sqrt(1 - beta2^t) for common betas, early and late) and a few arbitrary significands.
DIVISORS = [_bias_correction2_sqrt(beta2, step) for beta2 in (0.999, 0.99, 0.95) for step in (1, 2, 10, 10**6)] + [
    torch.tensor(value, dtype=torch.float32) for value in (1.0, 0.70710677, 2**-27 * 1.6180339)
]


@pytest.mark.parametrize("divisor", DIVISORS, ids=lambda divisor: f"{divisor.item():.9g}")
def test_every_significand_of_x_divides_correctly_rounded(divisor):
    """Every float32 in [1, 2): a quotient's rounding depends on the two significands only (the exponents shift
    it exactly), so this is every x this divisor can meet in range."""
    x = (torch.arange(1 << 23, dtype=torch.int32) | 0x3F800000).view(torch.float32)
    _assert_bitwise(_divide(x, divisor).cpu(), x / divisor)


def test_the_whole_range_of_sqrt_v_and_random_divisors_divide_correctly_rounded():
    generator = torch.Generator().manual_seed(0)
    n = 1 << 20
    smallest_root = torch.tensor(2**-149, dtype=torch.float32).sqrt()  # sqrt of the smallest subnormal v
    x = torch.randint(int(smallest_root.view(torch.int32)), 0x5F800000, (n,), generator=generator)
    x = x.to(torch.int32).view(torch.float32)
    x[:5] = torch.tensor([0.0, float("inf"), float("nan"), smallest_root.item(), 2.0**64])
    divisor = torch.randint(0x32000000, 0x3F800001, (n,), generator=generator).to(torch.int32).view(torch.float32)
    quotient = _divide(x, divisor).cpu()
    _assert_bitwise(quotient, x / divisor)
    assert quotient[1] == float("inf") and quotient[2].isnan()
