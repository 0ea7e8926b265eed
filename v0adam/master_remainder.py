"""The exact 2-byte master of bfloat16 params (Transformer Engine's `store_param_remainders`): a float32 master is
its bfloat16 param, the high 16 bits of its pattern rounded to nearest, and an int16 remainder, the low 16 bits.
Together they give the float32 value back bit for bit, so a bfloat16 model trains exactly as with a float32 master
copy, in 2 extra bytes per param instead of 4. These are the PyTorch twins of `v0adam.kernels.precision`'s
`split_master` and `join_master`, bit for bit.

The param rounds ties away from zero, not to even: of the 65537 float32 values that round to an even bfloat16 to
nearest even, one cannot have a 16-bit remainder, so the param of a float32 master copy rounds the same way (both
kinds of master train alike). It differs from round-half-even on exact ties only, one float32 value in 2**17.
"""

import torch

REMAINDER_DTYPE = torch.int16


def split_master(master: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 -> (bfloat16 param, int16 remainder); a NaN gives a NaN param."""
    bits = master.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    low = bits & 0xFFFF
    remainder = low - (low >= 0x8000) * 0x10000
    high = ((bits + 0x8000) >> 16) & 0xFFFF
    param = (high - (high >= 0x8000) * 0x10000).to(torch.int16).view(torch.bfloat16)
    param = torch.where(master.isnan(), torch.nan, param)
    return param, remainder.to(REMAINDER_DTYPE)


def join_master(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """The float32 master that a bfloat16 param and its int16 remainder stand for."""
    high = param.view(torch.int16).to(torch.int64) & 0xFFFF
    bits = ((high << 16) + remainder.to(torch.int64)) & 0xFFFFFFFF
    return (bits - (bits >= 0x80000000) * 0x100000000).to(torch.int32).view(torch.float32)


def param_of_master(master: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The param a float32 master is stored as: bfloat16 by `split_master`'s rounding, float16 to nearest even."""
    if dtype == torch.bfloat16:
        return split_master(master)[0]
    return master.to(dtype)
