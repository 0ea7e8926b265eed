"""Blockwise 8-bit quantization of optimizer states (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", ICLR 2022), the PyTorch reference of what the fused kernel does (`v0adam.kernels.quantization`).

A state is cut into blocks of `QBLOCK` elements. Each block keeps one float32 scale, its absolute maximum, and
each element one byte: the index of the nearest value of a *dynamic code map* to element / absmax. The maps have
256 values in [-1, 1] (signed, for the first moment) or [0, 1] (unsigned, for the second), spread over seven
decades so that a block holds values down to about 1e-7 of its largest: decade d (magnitudes 10^-d * (0.1, 1],
d = 0..6) holds 2^(6-d) values (signed, each mirrored) or 2^(7-d) (unsigned), the midpoints of equal intervals;
0 and 1 complete them.

Rounding is to nearest, ties to the lower code, with one exception: a positive second moment never becomes 0.
v is a denominator: an element whose v rounds to 0 would take the step m / eps, thousands of times its Adam step,
while a v rounded up to the smallest code only shortens it. This also keeps every positive v0 positive.

A block with a NaN has a NaN scale: the whole block reads back NaN (fp32 states would lose that one element).
"""

import functools

import torch

QBLOCK = 256  # elements per quantization block, as bitsandbytes' and torchao's 8-bit optimizers
DECADES = 7
# The rows of the code table the kernel reads: each map's values and the midpoints between neighbours (255 of
# them, padded with +inf), which the nearest-value search compares against.
SIGNED_CODES, SIGNED_MIDPOINTS, UNSIGNED_CODES, UNSIGNED_MIDPOINTS = range(4)


def dynamic_code_map(signed: bool) -> torch.Tensor:
    """The 256 values of the signed or unsigned dynamic map, ascending, float32."""
    values = [0.0, 1.0]
    for decade in range(DECADES):
        count = 2 ** (DECADES - 1 - decade + (0 if signed else 1))
        width = 0.9 / count
        magnitudes = [10.0**-decade * (0.1 + width * (i + 0.5)) for i in range(count)]
        values += magnitudes + ([-m for m in magnitudes] if signed else [])
    code = torch.tensor(sorted(values), dtype=torch.float64).to(torch.float32)
    assert code.numel() == 256 and code.unique().numel() == 256
    return code


@functools.cache
def _host_code_table() -> torch.Tensor:
    rows = []
    for signed in (True, False):
        code = dynamic_code_map(signed)
        midpoints = (code[:-1] + code[1:]) / 2  # in float32, the same values on the host and in the kernel
        rows += [code, torch.cat([midpoints, torch.tensor([torch.inf])])]
    return torch.stack(rows)


_device_tables = {}


def code_table(device: torch.device) -> torch.Tensor:
    """The float32 [4, 256] table of both maps and their midpoints (rows as the constants above) on `device`."""
    if device not in _device_tables:
        _device_tables[device] = _host_code_table().to(device)
    return _device_tables[device]


@functools.cache
def zero_code(signed: bool) -> int:
    """The code of 0: the byte a state reads back as 0 whatever its block's scale."""
    return int((dynamic_code_map(signed) == 0).nonzero())


def num_blocks(numel: int) -> int:
    return -(-numel // QBLOCK)


def quantize(values: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax): `values` (any shape, taken as float32 and flattened) as uint8 codes of the same shape and
    one float32 scale per block of QBLOCK elements."""
    table = code_table(values.device)
    midpoints = table[SIGNED_MIDPOINTS if signed else UNSIGNED_MIDPOINTS, :-1]
    flat = values.detach().reshape(-1).to(torch.float32)
    blocks = torch.nn.functional.pad(flat, (0, num_blocks(flat.numel()) * QBLOCK - flat.numel())).view(-1, QBLOCK)
    absmax = blocks.abs().amax(dim=1)  # NaN if the block has one
    nonzero = absmax[:, None] != 0
    normalized = torch.where(nonzero, blocks / torch.where(nonzero, absmax[:, None], 1.0), 0.0)
    codes = torch.searchsorted(midpoints, normalized.contiguous(), side="left")  # how many midpoints lie below
    codes = torch.where(normalized.isnan(), 0, codes)
    if not signed:
        codes = torch.where(normalized > 0, codes.clamp(min=1), codes)
    codes = codes.reshape(-1)[: flat.numel()].to(torch.uint8).view(values.shape)
    return codes, absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """The float32 values that `codes` (uint8, any shape) and their block scales stand for, shaped as `codes`."""
    table = code_table(codes.device)
    code = table[SIGNED_CODES if signed else UNSIGNED_CODES]
    flat = codes.reshape(-1).long()
    scales = absmax.repeat_interleave(QBLOCK)[: flat.numel()]
    return (code[flat] * scales).view(codes.shape)
