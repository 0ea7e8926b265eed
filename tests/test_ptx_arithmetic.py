"""The PTX machine's arithmetic where it is not numpy's own (`tests/ptx_arithmetic.py`): the float32 FMA rounded
once, bfloat16 conversion, float-to-integer saturation, the byte permutation's sign mode, against exact rationals,
torch and the PTX ISA."""

from fractions import Fraction

import numpy as np
import ptx_arithmetic as arithmetic
import torch


def _nearest_float32(exact: Fraction) -> np.float32:
    """`exact` rounded to the nearest float32, ties to even, by comparing rationals."""
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.uint32)) & 1))


def _float32_bits(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32).view(np.uint32).astype(np.uint64)


def test_the_float32_fma_rounds_once():
    """Random operands, and sums 2^-70 below a float32 midpoint (1 + 3 2^-24, scaled): float64 rounds them onto
    it, and float32 then to the even neighbour above, where rounding once goes below."""
    generator = np.random.default_rng(0)
    a, b, c = (generator.standard_normal(3000).astype(np.float32) for _ in range(3))
    scale = np.float32(2.0) ** generator.integers(-30, 30, 1000).astype(np.float32) * generator.choice([-1, 1], 1000)
    a[:1000] = np.float32(2**-12 * (1 + 2**-23)) * scale
    b[:1000] = np.float32(2**-12 * (1 - 2**-23))
    c[:1000] = np.float32(1 + 2**-23) * scale  # a * b + c = (1 + 3 2^-24 - 2^-70) * scale
    got = arithmetic.fma(*(x.astype(np.float64) for x in (a, b, c)), 32)
    for x, y, z, bits in zip(a, b, c, got):
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        assert int(bits) == int(_nearest_float32(exact).view(np.uint32)), (x, y, z)


def test_bfloat16_conversion_rounds_to_nearest_even_as_torch_does():
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 1 << 32, (100_000,), generator=generator, dtype=torch.int64)
    bits[:4] = torch.tensor([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00008000])  # ties both ways, overflow, subnormal
    x = bits.to(torch.int32).view(torch.float32)
    finite = ~x.isnan()
    expected = x[finite].to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    got = arithmetic.to_bfloat16(bits.numpy().astype(np.uint64))
    assert np.array_equal(got[finite.numpy()], expected.numpy().astype(np.uint64))
    assert (got[~finite.numpy()] == 0x7FFF).all()  # NaN: the canonical bfloat16 NaN


def test_float_to_integer_saturates_and_takes_nan_to_zero():
    x = np.array([1.5, -1.5, 2.5, 3e9, -3e9, np.nan, np.inf, -np.inf])
    as_int32 = arithmetic.float_to_integer(x, "rzi", 32, True) & arithmetic.mask(32)
    assert [int(v) for v in as_int32] == [1, 0xFFFFFFFF, 2, 0x7FFFFFFF, 0x80000000, 0, 0x7FFFFFFF, 0x80000000]
    nearest = arithmetic.float_to_integer(x[:3], "rni", 32, True) & arithmetic.mask(32)
    assert [int(v) for v in nearest] == [2, 0xFFFFFFFE, 2]  # ties to even
    as_uint32 = arithmetic.float_to_integer(x, "rzi", 32, False)
    assert [int(v) for v in as_uint32] == [1, 0, 2, 3_000_000_000, 0, 0, 0xFFFFFFFF, 0]


def test_the_byte_permutation_replicates_a_sign_where_the_selector_asks():
    """prmt's default mode: a selector nibble of 8 or more replicates the sign of the byte its low bits pick."""
    a, b = np.array([0x8070_6050], dtype=np.uint64), np.array([0x0000_00F0], dtype=np.uint64)
    assert int(arithmetic.prmt(a, b, np.array([0x3210], dtype=np.uint64))[0]) == 0x8070_6050
    assert int(arithmetic.prmt(a, b, np.array([0x4B08], dtype=np.uint64))[0]) == 0xF0FF_5000


def test_the_bit_field_extraction_extends_its_sign_from_the_field_or_the_word():
    """bfe by the PTX ISA: c bits from bit b; signed, the field's top bit (or the word's, past it) fills above."""

    def bfe(kind: str, a: int, start: int, length: int) -> int:
        operands = [np.array([value], dtype=np.uint64) for value in (a, start, length)]
        return int(arithmetic.evaluate(f"bfe.{kind}", ["bfe", kind], operands)[0])

    assert bfe("u32", 0xF0F0_1234, 4, 8) == bfe("s32", 0xF0F0_1234, 4, 8) == 0x23
    assert bfe("s32", 0x0000_0F00, 8, 4) == 0xFFFF_FFFF and bfe("u32", 0x0000_0F00, 8, 4) == 0xF
    assert bfe("s32", 0x8000_0000, 28, 8) == 0xFFFF_FFF8 and bfe("u32", 0x8000_0000, 28, 8) == 0x8
    assert bfe("s32", 0xFFFF_FFFF, 3, 0) == 0
