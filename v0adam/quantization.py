"""Blockwise 8-bit optimizer states, by arithmetic: the PyTorch reference of what the fused kernel does
(`v0adam.kernels.quantization`), equal to it bit for bit.

A moment is cut into blocks of `QBLOCK` elements, as in bitsandbytes' and torchao's 8-bit optimizers (Dettmers et
al., ICLR 2022). Each block keeps one float32 scale and each element one byte, a small floating-point number
relative to that scale, so that encoding and decoding are a few integer operations on the float32 bits instead of
a search through a code table:

- m (signed): sign, then 7 bits of |m| / scale, scale = the block's largest |m|: 4 of exponent and 3 of mantissa
  (relative error at most 1/16), 16 binades below the scale.
- v (unsigned): 8 bits of sqrt(v) / scale, scale = the block's largest sqrt(v): 4 of exponent and 4 of mantissa,
  16 binades of sqrt(v), so 32 of v (down to 3e-10 of the block's largest v). In the square-root domain what is
  rounded is the step's own denominator, sqrt(v) (relative error at most 1/32), which the kernel computes anyway.

Rounding is to nearest, ties away from zero; the top code is exactly the scale, code 0 is exactly 0. A magnitude
below the smallest code (1.25 * 2^-16 of the scale for m, 1.125 * 2^-16 for sqrt(v)) becomes 0, with one
exception: a positive second moment never becomes 0. v is a denominator: an element whose v rounded to 0 would
take the step m / eps, thousands of times its Adam step, while a v rounded up to the smallest code only shortens
it. This also keeps every positive v0 positive. A block whose largest |m| is below float32's smallest normal
number (1.2e-38: a moment left to decay for some 800 steps) is stored as zeros, so that every scale's reciprocal
is finite. A block with a NaN or an infinity reads back non-finite as a whole (float32 states would lose that one
element).

Checkpoints of the first format (0.1 and 0.2: a dynamic code map searched per element, scales stored as
"exp_avg_absmax") are read through `legacy_dequantize`.
"""

import functools

import torch

from v0adam.kernels import tables

QBLOCK = tables.QBLOCK.value  # elements per quantization block, as bitsandbytes' and torchao's 8-bit optimizers
# The two formats, keyed by `signed`: (mantissa bits, the code of 1.0, that is of the block's scale).
FORMATS = {True: (3, 127), False: (4, 255)}
SIGN_BIT = 128
ONE_BITS = 0x3F800000  # float32 1.0
_MAGNITUDE_BITS = 0x7FFFFFFF  # a float32's bits without its sign
_FLOAT_SIGN_BIT = -0x80000000  # its sign, as an int32
_SMALLEST_NORMAL_BITS = 0x00800000


def bit_constants(signed: bool) -> tuple[int, int, int]:
    """(shift, rounding, offset) of a format: a magnitude's code is (its float32 bits + rounding) >> shift, which
    adds half an interval and cuts off the other mantissa bits, and the code c stands for the float32 whose bits
    are (c + offset) << shift; 1.0 is the top code."""
    mantissa_bits, top = FORMATS[signed]
    shift = 23 - mantissa_bits
    offset = (ONE_BITS >> shift) - top
    return shift, (1 << (shift - 1)) - (offset << shift), offset


def num_blocks(numel: int) -> int:
    return -(-numel // QBLOCK)


# The code of 0 in both formats, signed and not: the byte a state reads back as 0 whatever its block's scale.
ZERO_CODE = 0


def _scales(magnitude_bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, reciprocals) of each row of magnitudes given by their int32 bits: the largest, as an integer maximum
    of the bits (NaN, above infinity, wins), 0 below float32's smallest normal; reciprocals 0 where it is 0."""
    largest = magnitude_bits.amax(dim=1)
    scales = torch.where(largest < _SMALLEST_NORMAL_BITS, 0, largest).view(torch.float32)
    inverse = torch.where(scales != 0, 1 / torch.where(scales != 0, scales, 1.0), 0.0)
    return scales, inverse


def _round(magnitude_bits: torch.Tensor, inverse: torch.Tensor, signed: bool) -> torch.Tensor:
    shift, rounding, _ = bit_constants(signed)
    normalized = magnitude_bits.view(torch.float32) * inverse[:, None]
    return (normalized.view(torch.int32) + rounding) >> shift


def quantize(values: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales): `values` (any shape, taken as float32 and flattened; m if `signed`, else v) as uint8 codes
    of the same shape and one float32 scale per block of QBLOCK elements."""
    flat = values.detach().reshape(-1).to(torch.float32)
    blocks = torch.nn.functional.pad(flat, (0, num_blocks(flat.numel()) * QBLOCK - flat.numel())).view(-1, QBLOCK)
    if signed:
        bits = blocks.view(torch.int32)
        magnitude_bits = bits & _MAGNITUDE_BITS
        scales, inverse = _scales(magnitude_bits)
        codes = _round(magnitude_bits, inverse, signed).clamp(min=0) | ((bits >> 24) & SIGN_BIT)
    else:
        # Correctly rounded, as the kernel's sqrt_rn (torch's float32 sqrt on a CPU may be one ulp off).
        magnitude_bits = blocks.double().sqrt().float().view(torch.int32) & _MAGNITUDE_BITS
        scales, inverse = _scales(magnitude_bits)
        codes = torch.maximum(_round(magnitude_bits, inverse, signed), magnitude_bits.clamp(max=1))
    codes = codes.reshape(-1)[: flat.numel()].to(torch.uint8).view(values.shape)
    return codes, scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, signed: bool) -> torch.Tensor:
    """The float32 values that `codes` (uint8, any shape) and their block scales stand for, shaped as `codes`."""
    shift, _, offset = bit_constants(signed)
    flat = codes.reshape(-1)
    flat = flat.view(torch.int8).to(torch.int32) if signed else flat.to(torch.int32)  # m's sign bit to bit 31
    magnitude_codes = flat & (SIGN_BIT - 1) if signed else flat
    bits = torch.where(magnitude_codes == 0, 0, (magnitude_codes + offset) << shift)
    if signed:
        bits = bits | (flat & _FLOAT_SIGN_BIT)
    values = bits.view(torch.float32) * scales.to(torch.float32).repeat_interleave(QBLOCK)[: flat.numel()]
    return values.view(codes.shape) if signed else (values * values).view(codes.shape)


# The first format: the index of the nearest value of a dynamic code map, times the block's absolute maximum.
LEGACY_DECADES = 7


@functools.cache
def dynamic_code_map(signed: bool) -> torch.Tensor:
    """The 256 values, ascending, of the first format's signed or unsigned map: decade d (magnitudes
    10^-d * (0.1, 1], d = 0..6) holds 2^(6-d) values (signed, each mirrored) or 2^(7-d) (unsigned), the midpoints
    of equal intervals; 0 and 1 complete them."""
    values = [0.0, 1.0]
    for decade in range(LEGACY_DECADES):
        count = 2 ** (LEGACY_DECADES - 1 - decade + (0 if signed else 1))
        width = 0.9 / count
        magnitudes = [10.0**-decade * (0.1 + width * (i + 0.5)) for i in range(count)]
        values += magnitudes + ([-m for m in magnitudes] if signed else [])
    code = torch.tensor(sorted(values), dtype=torch.float64).to(torch.float32)
    assert code.numel() == 256 and code.unique().numel() == 256
    return code


def legacy_dequantize(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """The float32 values of first-format `codes` and block `absmax`, shaped as `codes`."""
    code = dynamic_code_map(signed).to(codes.device)
    scales = absmax.to(torch.float32).repeat_interleave(QBLOCK)[: codes.numel()]
    return (code[codes.reshape(-1).long()] * scales).view(codes.shape)
