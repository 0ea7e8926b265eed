"""The schema of what the kernels read, defined once for them and for the host code that builds it: the columns of
the segment, hyperparameter and step-scalar tables, the alignment a launch may promise, the quantization block of
8-bit states, and which torch dtypes the kernels take as what.
"""

from typing import NamedTuple

import torch
import triton.language as tl

# Globals a kernel reads must be tl.constexpr; the host reads them through `.value`.


class SegmentRow(NamedTuple):
    """A row of the segment table (int64, shape [num_segments, SEGMENT_FIELDS]), its fields in column order: a run
    of `numel` elements of one param group (`group`) and step counter (`step_index`), its param and grad at these
    addresses, its states at `state_offset` in the flat state buffers, its first program `first_block` (counted from
    its launch's first)."""

    param_addr: int
    grad_addr: int
    state_offset: int
    numel: int
    first_block: int
    group: int
    step_index: int


PARAM_ADDR, GRAD_ADDR, STATE_OFFSET, NUMEL, FIRST_BLOCK, GROUP, STEP_INDEX = (
    tl.constexpr(SegmentRow._fields.index(name))
    for name in ("param_addr", "grad_addr", "state_offset", "numel", "first_block", "group", "step_index")
)
SEGMENT_FIELDS = tl.constexpr(len(SegmentRow._fields))

# Columns of the hyperparameter table (float64, shape [num_groups, HYPER_FIELDS]). float64 because 1 - beta2 in
# float32 is off by 1.3e-5 relative for beta2 = 0.999; torch also keeps betas as Python doubles.
# FINAL_LR, BASE_LR and GAMMA are AdaBound's bounds (unused by the other algorithms).
LR, BETA1, BETA2, EPS, WEIGHT_DECAY, MAXIMIZE, AMSGRAD, DECOUPLED, FINAL_LR, BASE_LR, GAMMA = (
    tl.constexpr(i) for i in range(11)
)
HYPER_FIELDS = tl.constexpr(11)

# Columns of the step-scalar table (float32, shape [num_params, SCALAR_FIELDS]): what one param's step needs
# besides its elements, computed once per step by `v0adam.kernels.step_scalars` from its counter and its group's
# row of the hyperparameter table. The flags are 0 or 1; RECTIFICATION and RECTIFIED are RAdam's, LOWER_BOUND,
# UPPER_BOUND and BOUNDED_STEP AdaBound's. BIAS_CORRECTION2_SQRT_RECIPROCAL is the float32 1 / sqrt(bc2), correctly
# rounded (`divide_by_uniform`).
(
    LR_F32,
    STEP_SIZE,
    BIAS_CORRECTION1,
    BIAS_CORRECTION2_SQRT,
    BETA1_F32,
    ONE_MINUS_BETA1,
    BETA2_F32,
    ONE_MINUS_BETA2,
    EPS_F32,
    L2_WEIGHT_DECAY,
    DECAY_FACTOR,
    MAXIMIZE_FLAG,
    AMSGRAD_FLAG,
    DECOUPLED_FLAG,
    RECTIFICATION,
    RECTIFIED,
    LOWER_BOUND,
    UPPER_BOUND,
    BOUNDED_STEP,
    BIAS_CORRECTION2_SQRT_RECIPROCAL,
) = (tl.constexpr(i) for i in range(20))
SCALAR_FIELDS = tl.constexpr(20)

# ALIGNED launches promise: every address a multiple of ALIGN_BYTES, every numel and state offset a multiple of
# ALIGN_ELEMENTS. Without the promise, addresses read from memory have unknown alignment and Triton emits 32-bit
# loads; with it, 128-bit ones (ld.global.v4, checked in the PTX for sm_90). A step launch may keep it for all but
# the grads (GRAD_ALIGNMENT 4 or 2): those of DDP's bucket views after a grad of a size not a multiple of 8 are at
# any multiple of their element size; or for all but the counts (WHOLE_VECTORS false: a launch of tails).
ALIGN_BYTES = tl.constexpr(16)
ALIGN_ELEMENTS = tl.constexpr(8)

_TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

# The param dtypes the kernels take, and their Triton types.
TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

# 8-bit states (`v0adam.quantization`): the elements per quantization block, and its log2.
QBLOCK, QBLOCK_BITS = tl.constexpr(256), tl.constexpr(8)
