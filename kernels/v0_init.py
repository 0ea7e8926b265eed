"""Kernels that initialise v0, Adam's starting second moment (arXiv 2412.02153), in the flat state buffers.

- `draw_random_v0_`: paper eq. 11, v0 = scale * z^2 with z ~ N(0, 1), straight into exp_avg_sq.
- `accumulate_gradient_moments_`: for paper eq. 10, adds each mini-batch gradient and its square into two
  state buffers over the optimizer's segment table, one launch per bucket and batch.
"""

import torch
import triton
import triton.language as tl
from v0adam.kernels.precision import widen_to_float32
from v0adam.kernels.tables import FIRST_BLOCK, GRAD_ADDR, NUMEL, SEGMENT_FIELDS, STATE_OFFSET, TRITON_DTYPES


@triton.jit
def _random_v0_kernel(
    out_ptr,  # float32 [numel]: the param's slice of exp_avg_sq
    numel,  # elements drawn here
    scale,  # float: sigma / (fan_in + fan_out)
    seed,  # int: the optimizer's v0_seed
    param_index,  # int: the param's position in the optimizer; part of the Philox counter
    element_offset,  # int: global index of out_ptr[0] within the param (non-zero for a shard)
    BLOCK: tl.constexpr,
):
    """out[i] = scale * z^2, z ~ N(0, 1) drawn from Philox with counter (element index, param index): the value
    of an element depends on nothing else (not the block size, the bucket layout or the sharding)."""
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    element = element_offset + offsets
    low = (element & 0xFFFFFFFF).to(tl.uint32)
    high = (element >> 32).to(tl.uint32)
    counter2 = tl.full([BLOCK], param_index, tl.uint32)
    bits0, bits1, _, _ = tl.philox(seed, low, high, counter2, tl.full([BLOCK], 0, tl.uint32))
    z, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(bits0), tl.uint_to_uniform_float(bits1))
    tl.store(out_ptr + offsets, scale * z * z, mask=mask)


def draw_random_v0_(
    out: torch.Tensor, scale: float, seed: int, param_index: int, element_offset: int = 0, block: int = 1024
) -> None:
    """Fill the contiguous float32 tensor `out` with scale * chi-squared(1) draws (see `_random_v0_kernel`)."""
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("random v0 is drawn into a contiguous float32 tensor")
    if not 0 <= seed < 2**63 or not 0 <= param_index < 2**32:
        raise ValueError(f"seed must be in [0, 2**63) and param_index in [0, 2**32), got {seed}, {param_index}")
    grid = (triton.cdiv(out.numel(), block),)
    if grid[0]:
        _random_v0_kernel[grid](out, out.numel(), scale, seed, param_index, element_offset, BLOCK=block)


@triton.jit
def _accumulate_moments_kernel(
    segments_ptr,  # int64 [num_segments, SEGMENT_FIELDS]: the optimizer's segment table
    block_segment_ptr,  # int32 [num_blocks]: the segment each program works on
    sum_ptr,  # float32 flat buffer: running sum of gradients
    sum_sq_ptr,  # float32 flat buffer: running sum of squared gradients
    PARAM_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = segments_ptr + tl.load(block_segment_ptr + pid).to(tl.int64) * SEGMENT_FIELDS
    grad_ptr = tl.load(row + GRAD_ADDR).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    state_offset = tl.load(row + STATE_OFFSET)
    numel = tl.load(row + NUMEL)
    offsets = (pid - tl.load(row + FIRST_BLOCK)).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    g = widen_to_float32(tl.load(grad_ptr + offsets, mask=mask))
    state_offsets = state_offset + offsets
    tl.store(sum_ptr + state_offsets, tl.load(sum_ptr + state_offsets, mask=mask) + g, mask=mask)
    tl.store(sum_sq_ptr + state_offsets, tl.load(sum_sq_ptr + state_offsets, mask=mask) + g * g, mask=mask)


def accumulate_gradient_moments_(
    segments: torch.Tensor,
    block_segment: torch.Tensor,
    grad_sum: torch.Tensor,
    grad_sum_sq: torch.Tensor,
    *,
    param_dtype: torch.dtype,
    block: int,
) -> None:
    """grad_sum += g and grad_sum_sq += g * g over every segment of a bucket (tables as for the Adam step)."""
    if grad_sum.dtype != torch.float32 or grad_sum_sq.dtype != torch.float32:
        raise ValueError("gradient moments accumulate in float32 buffers")
    if block_segment.numel():
        _accumulate_moments_kernel[(block_segment.numel(),)](
            segments, block_segment, grad_sum, grad_sum_sq, PARAM_DTYPE=TRITON_DTYPES[param_dtype], BLOCK=block
        )
