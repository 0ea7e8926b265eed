"""How a bucket stores its moments (exp_avg, exp_avg_sq, max_exp_avg_sq): as floats of one dtype, or as blockwise
8-bit codes with a float32 scale per block (`v0adam.quantization`). Buckets, checkpoints, the backends and data v0
ask the format; none tests which one it is.

A format is a small frozen value (it takes part in a bucket's key). Its methods work on one param's slot of a moment
buffer (`slot`) and, for 8-bit ones, that slot's block scales (`scales`; None for floats).
"""

from dataclasses import dataclass

import torch

from v0adam import quantization

# The moments, and whether their 8-bit format is signed (`v0adam.quantization`).
MOMENTS = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}
SCALES_SUFFIX = "_scale"  # the state key of an 8-bit moment's block scales: "exp_avg" + SCALES_SUFFIX
# The state key of an 8-bit moment's codes, in opt.state and checkpoints alike: "exp_avg" + CODES_SUFFIX, never the
# moment's own key, under which torch's optimizers (and whatever reads their state) expect values: torch.optim.AdamW
# would load codes of 0 to 255 as exp_avg and resume silently wrong; without the key it raises KeyError: 'exp_avg'.
CODES_SUFFIX = "_code"
# Float slots start at multiples of 64 elements: every slot then satisfies the kernel's alignment promise (16 bytes,
# 8 elements) for every dtype, and the padding (zeros, never read by autograd) is safe to update with its slot.
SLOT_ALIGN = 64


@dataclass(frozen=True)
class FloatMoments:
    """Moments as floats of `dtype`: float32 (the default), bfloat16 (asked), float64 (for float64 params)."""

    dtype: torch.dtype = torch.float32

    slot_align = SLOT_ALIGN
    block = None  # no quantization blocks: any run of elements is stepped on its own

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def bytes_per_element(self) -> float:
        return self.dtype.itemsize

    @property
    def loads_codes(self) -> bool:
        """Whether 8-bit moments of a checkpoint load as they are (else they are decoded first)."""
        return False

    def new_scales(self, total: int, device: torch.device) -> None:
        return None

    def entries(self, key: str, view: torch.Tensor, scale_rows) -> dict:
        """A moment's entries in opt.state and checkpoints, its slot's view shaped as the param."""
        return {key: view}

    def zero_(self, slot: torch.Tensor, scales) -> None:
        slot.zero_()

    def store_(self, slot: torch.Tensor, scales, values: torch.Tensor, signed: bool) -> None:
        """Store float `values` (shaped as the slot), rounded into the dtype."""
        slot.copy_(values)

    def values(self, slot: torch.Tensor, scales, signed: bool) -> torch.Tensor:
        return slot


@dataclass(frozen=True)
class BlockwiseMoments:
    """Moments as 8-bit codes, a float32 scale per block of `quantization.QBLOCK` elements (`v0adam.quantization`),
    one row of scales per moment (rows as MOMENTS). Slots start at whole blocks, so that no block straddles two
    params, and every code the zero buffers start with is the code of 0, so that padding, which a step by address
    never writes, always reads back 0."""

    dtype = torch.uint8
    name = "8-bit"
    slot_align = quantization.QBLOCK
    block = quantization.QBLOCK  # a step runs over whole blocks, whose scales it recomputes
    bytes_per_element = 1 + 4 / quantization.QBLOCK  # a code, and a float32 scale per block
    loads_codes = True

    def new_scales(self, total: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(len(MOMENTS), total // quantization.QBLOCK, device=device)

    def entries(self, key: str, view: torch.Tensor, scale_rows) -> dict:
        return {key + CODES_SUFFIX: view, key + SCALES_SUFFIX: scale_rows()}

    def zero_(self, slot: torch.Tensor, scales: torch.Tensor) -> None:
        slot.fill_(quantization.ZERO_CODE)
        scales.zero_()

    def store_(self, slot: torch.Tensor, scales: torch.Tensor, values: torch.Tensor, signed: bool) -> None:
        codes, new_scales = quantization.quantize(values, signed)
        slot.copy_(codes)
        scales.copy_(new_scales)

    def values(self, slot: torch.Tensor, scales: torch.Tensor, signed: bool) -> torch.Tensor:
        return quantization.dequantize(slot, scales, signed)
