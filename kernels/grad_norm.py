"""One pass over every gradient of a bucket: per-block partial norms, for gradient clipping and the non-finite
guard. The partials are reduced by the caller (a deterministic torch reduction, no float atomics), so the norm
is the same on every run."""

import torch
import triton
import triton.language as tl
from v0adam.kernels.adam import _TRITON_DTYPES, FIRST_BLOCK, GRAD_ADDR, NUMEL, SEGMENT_FIELDS
from v0adam.kernels.precision import widen_to_float32

# Norm types computed in the kernel; the reduction of the partials is sum for 1 and 2, max for inf.
FUSED_NORM_TYPES = (1.0, 2.0, float("inf"))


@triton.jit
def _grad_norm_partials_kernel(
    segments_ptr,  # int64 [num_segments, SEGMENT_FIELDS]: the optimizer's segment table
    block_segment_ptr,  # int32 [num_blocks]: the segment each program works on
    partials_ptr,  # float32 [num_blocks]: this block's sum |g|, sum g^2 or max |g|
    PARAM_DTYPE: tl.constexpr,
    NORM_TYPE: tl.constexpr,  # 1, 2 or 0 for inf
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = segments_ptr + tl.load(block_segment_ptr + pid).to(tl.int64) * SEGMENT_FIELDS
    grad_ptr = tl.load(row + GRAD_ADDR).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    offsets = (pid - tl.load(row + FIRST_BLOCK)).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    g = widen_to_float32(tl.load(grad_ptr + offsets, mask=offsets < tl.load(row + NUMEL), other=0.0))
    if NORM_TYPE == 1:
        partial = tl.sum(tl.abs(g))
    elif NORM_TYPE == 2:
        partial = tl.sum(g * g)
    else:
        # NaN counts as infinitely large, so that a NaN gradient makes the norm non-finite.
        partial = tl.max(tl.where(g != g, float("inf"), tl.abs(g)))
    tl.store(partials_ptr + pid, partial)


def grad_norm_partials(
    segments: torch.Tensor, block_segment: torch.Tensor, *, param_dtype: torch.dtype, norm_type: float, block: int
) -> torch.Tensor:
    """Per-block partial norms of the grads of every segment (see `_grad_norm_partials_kernel`)."""
    if norm_type not in FUSED_NORM_TYPES:
        raise ValueError(f"fused gradient norms are of type {FUSED_NORM_TYPES}, got {norm_type}")
    partials = torch.zeros(block_segment.numel(), dtype=torch.float32, device=block_segment.device)
    if block_segment.numel():
        _grad_norm_partials_kernel[(block_segment.numel(),)](
            segments,
            block_segment,
            partials,
            PARAM_DTYPE=_TRITON_DTYPES[param_dtype],
            NORM_TYPE=0 if norm_type == float("inf") else int(norm_type),
            BLOCK=block,
        )
    return partials


def reduce_partials(partials: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The p-th power of the norm (sum of partials) for p = 1, 2; the max for inf."""
    if norm_type == float("inf"):
        return partials.max() if partials.numel() else partials.new_zeros(())
    return partials.sum()
