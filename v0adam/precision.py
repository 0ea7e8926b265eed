"""The precision modes an optimizer is built with, and what they give each (device, dtype) bucket: the format of
its moments (`v0adam.moments`) and the kind of its master (`v0adam.masters`)."""

from dataclasses import dataclass

import torch

from v0adam import quantization
from v0adam.masters import CopyMaster, NoMaster, RemainderMaster
from v0adam.moments import BlockwiseMoments, FloatMoments
from v0adam.sharding import is_dtensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """How 16-bit params are stepped: from an exact float32 master, or with stochastic rounding on store (else
    round to nearest even); and the dtype of the moments (float32 unless asked; float64 for float64 params;
    torch.uint8 for 8-bit blockwise-quantized moments, whatever the params).

    `master_weights` True keeps the master in the fewest bytes that are exact: an int16 remainder beside a
    bfloat16 param (`v0adam.master_remainder`), a float32 copy of a float16 one; "fp32" a float32 copy always."""

    master_weights: bool | str = False
    stochastic_rounding: bool = False
    state_dtype: torch.dtype | None = None
    min_8bit_size: int = 4096

    def moments_for(self, param_dtype: torch.dtype, state_dtype: torch.dtype | None):
        """The moments' format of a bucket of `param_dtype` params whose states were asked as `state_dtype` (None:
        the default, float32); float64 params keep float64 moments unless 8-bit ones are asked."""
        if state_dtype == torch.uint8:
            return BlockwiseMoments()
        if param_dtype == torch.float64:  # whatever float dtype was asked
            return FloatMoments(torch.float64)
        return FloatMoments(state_dtype or torch.float32)

    def asked_for(self, param: torch.Tensor, group: dict) -> torch.dtype | None:
        """The state dtype asked for `param`: its group's, else the optimizer's; 8-bit only where the whole tensor
        takes it (`why_not_8bit`), else float32 (None, the default)."""
        asked = group.get("state_dtype", self.state_dtype)
        if asked == torch.float32 or (asked == torch.uint8 and self.why_not_8bit(param) is not None):
            return None
        return asked

    def why_not_8bit(self, param: torch.Tensor) -> str | None:
        """Why `param` keeps float32 states where 8-bit ones are asked for; None where it takes them. Decided on
        the whole tensor (a DTensor's global shape), so alike on one process and at any FSDP2 world size: at least
        `min_8bit_size` elements (as bitsandbytes' and torchao's, smaller tensors keep float32 states), and rows
        (the dims after the first) of whole quantization blocks, which a cut between rows, FSDP2's Shard(0), never
        splits. A DTensor sharded along another dim does not qualify."""
        numel = param.numel()
        if numel == 0 or numel < self.min_8bit_size:
            return f"{numel} elements, fewer than min_8bit_size ({self.min_8bit_size})"
        if param.dim() < 2:
            return "1-d: 8-bit blocks are laid on rows (the dims after the first)"
        row = numel // param.shape[0]
        if row % quantization.QBLOCK:
            return f"rows of {row} elements, not whole {quantization.QBLOCK}-element blocks"
        if is_dtensor(param) and not all(
            placement.is_replicate() or (placement.is_shard() and placement.dim == 0) for placement in param.placements
        ):
            return f"a DTensor laid out as {param.placements}: 8-bit blocks need cuts between rows (Shard(0))"
        return None

    def master_for(self, param_dtype: torch.dtype):
        """The kind of master of `param_dtype` params: a remainder, a float32 copy, or none."""
        if not self.master_weights or param_dtype not in LOW_PRECISION:
            return NoMaster()
        if self.master_weights is True and param_dtype == torch.bfloat16:
            return RemainderMaster()
        return CopyMaster()

    def stochastic_for(self, param_dtype: torch.dtype) -> bool:
        """Stochastic rounding applies to bfloat16 params without a master copy."""
        return self.stochastic_rounding and param_dtype == torch.bfloat16 and not self.master_weights
