"""The fused Adam/AdamW step: one Triton launch per (device, dtype) bucket, whatever the number of tensors.

The launch walks a *segment table* kept in device memory. A segment is a run of parameter elements that share
one param group and one step counter: either a whole param group living in the optimizer's flat buffers (the
common case), or a single tensor reached through its own address (grads replaced by autograd, DDP bucket views,
shards). Program `pid` finds its segment through `block_segment[pid]` and handles `BLOCK` elements of it.

The % of copy in the comments below are the static model's (`python -m bench.static`) on the day each choice was
made: until 2026-12-07 with its former 450-cycle DRAM latency (up to 3 points under what it predicts now), since
then with its 330 cycles.
"""

import torch
import triton
import triton.language as tl
from v0adam.kernels.coalesced_grads import into_step_layout, load_coalesced
from v0adam.kernels.precision import (
    join_master,
    round_from_float32,
    split_master,
    stochastic_round_to_bfloat16,
    widen_to_float32,
)
from v0adam.kernels.quantization import dequantize_m, dequantize_v_root, quantize_m, quantize_v_root, store_scales
from v0adam.kernels.reads import load_elements, load_moments, read_mask
from v0adam.kernels.register_ceiling import register_ceiling
from v0adam.kernels.square_root import sqrt_rn
from v0adam.kernels.tables import (  # the kernels' tables; imported here, where callers have found them
    ALIGN_BYTES,
    ALIGN_ELEMENTS,
    AMSGRAD_FLAG,
    BETA1_F32,
    BETA2_F32,
    BIAS_CORRECTION1,
    BIAS_CORRECTION2_SQRT,
    BIAS_CORRECTION2_SQRT_RECIPROCAL,
    BOUNDED_STEP,
    DECAY_FACTOR,
    DECOUPLED_FLAG,
    EPS_F32,
    FIRST_BLOCK,
    GRAD_ADDR,
    L2_WEIGHT_DECAY,
    LOWER_BOUND,
    LR_F32,
    MAXIMIZE_FLAG,
    NUMEL,
    ONE_MINUS_BETA1,
    ONE_MINUS_BETA2,
    PARAM_ADDR,
    QBLOCK,
    QBLOCK_BITS,
    RECTIFICATION,
    RECTIFIED,
    SCALAR_FIELDS,
    SEGMENT_FIELDS,
    STATE_OFFSET,
    STEP_INDEX,
    STEP_SIZE,
    TRITON_DTYPES,
    UPPER_BOUND,
)
from v0adam.kernels.uniform_division import divide_by_uniform
from v0adam.kernels.wide_stores import store_elements

# The update rules one kernel implements (its ALGORITHM switch): Adam(W) and the members of the family the
# v0 paper applies its initialisation to. They share everything but the second moment and the final step.
ADAM, ADABELIEF, RADAM, ADABOUND = (tl.constexpr(i) for i in range(4))
ALGORITHMS = {"adam": ADAM.value, "adabelief": ADABELIEF.value, "radam": RADAM.value, "adabound": ADABOUND.value}

# The (master, param) dtypes of a master kept as the remainder of bfloat16 params (`split_master`).
REMAINDER_MASTER = (torch.int16, torch.bfloat16)


@triton.jit
def _adam_step_kernel(
    segments_ptr,  # int64 [num_segments, SEGMENT_FIELDS]: see the column constants above
    block_segment_ptr,  # int32 [num_blocks]: the segment each program works on
    scalars_ptr,  # float32 [num_params, SCALAR_FIELDS]: each param's step scalars, computed for this step
    steps_ptr,  # float32 [num_params]: step counters, already incremented for this step
    exp_avg_ptr,  # float32 or bfloat16 flat buffer: first moment m
    exp_avg_sq_ptr,  # flat buffer, same dtype: second moment v
    max_exp_avg_sq_ptr,  # flat buffer, same dtype: running max of v (AMSGrad); unused otherwise
    master_ptr,  # the master of 16-bit params, indexed like the states, unused unless HAS_MASTER: a float32 copy,
    #   or the int16 remainder that makes bfloat16 params exact float32 masters (`split_master`)
    grad_scale_ptr,  # float32 [1]: the GradScaler's scale, gradients are divided by it; unused if not HAS_GRAD_SCALE
    found_inf_ptr,  # float32 [1]: non-zero skips the whole step; unused if not HAS_FOUND_INF
    rounding_seed_ptr,  # int64 [1]: seed of stochastic rounding, drawn once per optimizer; unused otherwise
    exp_avg_scales_ptr,  # float32 [state elements / QBLOCK]: block scales of 8-bit m; unused unless QUANTIZED
    exp_avg_sq_scales_ptr,  # the same for v
    max_exp_avg_sq_scales_ptr,  # the same for max v (AMSGrad)
    PARAM_DTYPE: tl.constexpr,  # storage dtype of params and grads
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    HAS_AMSGRAD: tl.constexpr,  # the bucket has a max v buffer: some group may use AMSGrad
    HAS_MASTER: tl.constexpr,  # update the fp32 master, store the param as its rounding (and the remainder)
    STOCHASTIC_ROUNDING: tl.constexpr,  # bfloat16 params rounded stochastically (counter-based, seeded per step)
    ALGORITHM: tl.constexpr,  # ADAM, ADABELIEF, RADAM or ADABOUND
    ALIGNED: tl.constexpr,  # the table keeps the ALIGN_BYTES / ALIGN_ELEMENTS promise, grads perhaps excepted:
    GRAD_ALIGNMENT: tl.constexpr,  # with ALIGNED, the bytes the grads' addresses are a multiple of: ALIGN_BYTES,
    #   or 4 or 2 where they break the promise; 1 (none) in the unaligned launch
    WHOLE_VECTORS: tl.constexpr,  # with ALIGNED, the counts keep the promise too; else each segment is a tail
    QUANTIZED: tl.constexpr,  # 8-bit states: uint8 codes and block scales; state offsets are multiples of QBLOCK
    BLOCK: tl.constexpr,  # elements per program
):
    """One step over BLOCK elements of one segment. Equivalent PyTorch (per element, fp32 math), with
    bc1 = 1 - beta1**t and bc2 = 1 - beta2**t:

    g = grad / grad_scale;  g = -g if maximize
    if decoupled: p = p * (1 - lr * wd)  else: g = g + wd * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g                   AdaBelief: v = beta2 * v + (1 - beta2) * (g - m)**2 + eps
    if amsgrad: vmax = max(vmax, v); v = vmax
    Adam, AdaBelief: p = p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    RAdam:    p = p - lr * m / bc1 * (rect * sqrt(bc2) / (sqrt(v) + eps) if rho_t > 5 else 1)   (torch.optim.RAdam)
    AdaBound: p = p - clamp(lr * sqrt(bc2) / bc1 / (sqrt(v) + eps), lower(t), upper(t)) * m

    p is read from the fp32 master when there is one (a copy, or the bfloat16 param joined with its remainder),
    and every value is rounded once, on store. 8-bit states are
    dequantized on load, the step computed in float32, and m, v (and max v) quantized with fresh scales on store.
    """
    # Unaligned, the loads of the table and of the scalars read up front are volatile too, as the elements' are:
    # ptxas issues them in the order written (why: the elements' loads).
    ORDERED: tl.constexpr = not ALIGNED
    pid = tl.program_id(0)
    row = segments_ptr + tl.load(block_segment_ptr + pid, volatile=ORDERED).to(tl.int64) * SEGMENT_FIELDS
    param_ptr = tl.load(row + PARAM_ADDR, volatile=ORDERED).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    grad_ptr = tl.load(row + GRAD_ADDR, volatile=ORDERED).to(tl.pointer_type(PARAM_DTYPE), bitcast=True)
    state_offset = tl.load(row + STATE_OFFSET, volatile=ORDERED)
    numel = tl.load(row + NUMEL, volatile=ORDERED)
    first_block = tl.load(row + FIRST_BLOCK, volatile=ORDERED)
    step_index = tl.load(row + STEP_INDEX, volatile=ORDERED)
    if ALIGNED:
        param_ptr = tl.multiple_of(param_ptr, ALIGN_BYTES)
        if GRAD_ALIGNMENT == ALIGN_BYTES:
            grad_ptr = tl.multiple_of(grad_ptr, ALIGN_BYTES)
        state_offset = tl.multiple_of(state_offset, ALIGN_ELEMENTS)
        if WHOLE_VECTORS:
            numel = tl.multiple_of(numel, ALIGN_ELEMENTS)

    # Everything but the elements was computed once for this step (`v0adam.kernels.step_scalars`). The scalars are
    # loaded here, not where they are used: ptxas issues a load written after the arithmetic on the elements there,
    # once they have arrived, and every program waits one more L2 round trip (bfloat16 + 8-bit states: 81.0% of copy
    # predicted, 82.3% with the reciprocal loaded here). RAdam's stay where they are used: loaded here, they leave
    # its step with float32 params and 8-bit states waiting for DRAM twice (91.2% -> 85.9% predicted). Each rule
    # loads only the scalars it uses: a volatile load stays in the kernel even when nothing uses its value.
    scalars = scalars_ptr + step_index * SCALAR_FIELDS
    if ALGORITHM == ADAM or ALGORITHM == ADABELIEF:
        step_size = tl.load(scalars + STEP_SIZE, volatile=ORDERED)
    if ALGORITHM != ADABOUND:
        bias_correction2_sqrt = tl.load(scalars + BIAS_CORRECTION2_SQRT, volatile=ORDERED)
    if ALGORITHM == ADAM or ALGORITHM == ADABELIEF:
        bias_correction2_sqrt_reciprocal = tl.load(scalars + BIAS_CORRECTION2_SQRT_RECIPROCAL, volatile=ORDERED)
    beta1 = tl.load(scalars + BETA1_F32, volatile=ORDERED)
    one_minus_beta1 = tl.load(scalars + ONE_MINUS_BETA1, volatile=ORDERED)
    beta2 = tl.load(scalars + BETA2_F32, volatile=ORDERED)
    one_minus_beta2 = tl.load(scalars + ONE_MINUS_BETA2, volatile=ORDERED)
    eps = tl.load(scalars + EPS_F32, volatile=ORDERED)
    l2_weight_decay = tl.load(scalars + L2_WEIGHT_DECAY, volatile=ORDERED)
    # Left to itself, ptxas loads the decay factor in the `decoupled` branch, once the elements have arrived: one more
    # L2 round trip a program. Volatile, it is loaded here, before them; so for 16-bit params (bfloat16 with 8-bit
    # states 88.2% -> 89.2% of copy predicted, bf16 states with stochastic rounding 94.6% -> 94.9%), not for float32
    # ones, where it then holds a register throughout (fp32 48 -> 52) and two steps wait for DRAM twice (AdaBound's,
    # and AMSGrad's with 8-bit states).
    decay_factor = tl.load(scalars + DECAY_FACTOR, volatile=ORDERED or PARAM_DTYPE.primitive_bitwidth == 16)
    maximize = tl.load(scalars + MAXIMIZE_FLAG, volatile=ORDERED) != 0
    if HAS_AMSGRAD:  # some group of the bucket has AMSGrad; if none, neither the flag nor its code is there
        amsgrad = tl.load(scalars + AMSGRAD_FLAG, volatile=ORDERED) != 0
    decoupled = tl.load(scalars + DECOUPLED_FLAG, volatile=ORDERED) != 0
    if ALGORITHM == ADABOUND:
        lower, upper = (
            tl.load(scalars + LOWER_BOUND, volatile=ORDERED),
            tl.load(scalars + UPPER_BOUND, volatile=ORDERED),
        )
        bounded_step = tl.load(scalars + BOUNDED_STEP, volatile=ORDERED)

    block_start = (pid - first_block).to(tl.int64) * BLOCK
    block_numel = tl.minimum(numel - block_start, BLOCK)  # from 1 to BLOCK: the program's elements
    if HAS_FOUND_INF:
        # An empty program reads and writes nothing: the step is skipped without a branch on the host. (Not an
        # empty segment: the count of a program 2**31 elements into it would become negative, and wrap to a
        # positive one in 32 bits.)
        block_numel = tl.where(tl.load(found_inf_ptr) != 0, 0, block_numel)
    # The program's elements as 32-bit lanes from its own base addresses. With a 64-bit offset per element, the
    # unaligned launch (an access per element) kept a 64-bit address per element: 103 registers for fp32, 63 so.
    offsets = tl.arange(0, BLOCK)
    ROUND_UP: tl.constexpr = ALIGNED and not WHOLE_VECTORS
    param_ptr += block_start
    grad_ptr += block_start
    state_start = state_offset + block_start
    state_offsets = state_start + offsets
    # Aligned, a 16- or 8-bit tensor makes Triton compute in rows of 8 elements a thread (`wide_stores`).
    EIGHT_PER_THREAD: tl.constexpr = ALIGNED and (
        PARAM_DTYPE.primitive_bitwidth < 32 or exp_avg_ptr.dtype.element_ty.primitive_bitwidth < 32
    )
    # Every load before any arithmetic on what they bring, volatile to keep that order (`kernels/reads.py`).
    # Grads off the promise, the rest on it (DDP's bucket views), are read coalesced, first (after the moments, ptxas
    # takes 80 registers or spills: float32 params with 8-bit states 89.0% of copy predicted, 93.0% spilling, 95.3%
    # first), and moved into this layout after the last load (`kernels/coalesced_grads.py`). 8-bit codes are read
    # after the params: read before, ptxas decoded m before it requested float32 params (RAdam: 90.1%, 94.5% so).
    GRADS_OFF_PROMISE: tl.constexpr = ALIGNED and GRAD_ALIGNMENT < ALIGN_BYTES
    if GRADS_OFF_PROMISE:
        grad_rows = load_coalesced(grad_ptr, block_numel, GRAD_ALIGNMENT, BLOCK)
    else:
        g = load_elements(grad_ptr + offsets, offsets, block_numel, ROUND_UP)
    if not QUANTIZED:
        m, v = load_moments(exp_avg_ptr, exp_avg_sq_ptr, state_offsets, offsets, block_numel, ROUND_UP)
    if HAS_MASTER:
        if master_ptr.dtype.element_ty == tl.int16:  # the remainder of a bfloat16 param
            p = load_elements(param_ptr + offsets, offsets, block_numel, ROUND_UP)
            remainder = load_elements(master_ptr + state_offsets, offsets, block_numel, ROUND_UP)
        else:
            p = load_elements(master_ptr + state_offsets, offsets, block_numel, ROUND_UP)
    else:
        p = load_elements(param_ptr + offsets, offsets, block_numel, ROUND_UP)
    if QUANTIZED:
        m, v = load_moments(exp_avg_ptr, exp_avg_sq_ptr, state_offsets, offsets, block_numel, ROUND_UP)
        # This program's quantization blocks: whole ones (BLOCK, the state offset and the segment's numel are
        # multiples of QBLOCK), those past the segment's end masked; one scale each, no other program writes them.
        quantization_block = tl.arange(0, BLOCK // QBLOCK)
        scale_mask = quantization_block * QBLOCK < block_numel
        # A shift, not `// QBLOCK`: the offset is never negative, and a signed division would round towards zero.
        scale_offsets = (state_start >> QBLOCK_BITS) + quantization_block
        # Volatile only with AMSGrad, where ptxas would otherwise issue a data load after the first wait (float32
        # params: 93.7% -> 89.5% of copy predicted). A volatile scale load is issued twice: Triton's layout pass
        # loads it again in the reduction's layout and cannot delete the volatile original, unused (bfloat16
        # params: 87.9% -> 88.2% without it).
        m_scales = tl.load(exp_avg_scales_ptr + scale_offsets, mask=scale_mask, volatile=HAS_AMSGRAD)
        v_scales = tl.load(exp_avg_sq_scales_ptr + scale_offsets, mask=scale_mask, volatile=HAS_AMSGRAD)
    if HAS_AMSGRAD:
        # Read with the others, but only where the group has AMSGrad. (Where it was used, after the update, the
        # load made each program wait for DRAM twice: 95.3% of copy predicted for float32, 97.2% here.)
        v_max_numel = tl.where(amsgrad, block_numel, 0)
        v_max = tl.load(
            max_exp_avg_sq_ptr + state_offsets,
            mask=read_mask(offsets, v_max_numel, max_exp_avg_sq_ptr, ROUND_UP),
            other=0,
            volatile=True,
        )
        if QUANTIZED:
            v_max_scales = tl.load(
                max_exp_avg_sq_scales_ptr + scale_offsets,
                mask=quantization_block * QBLOCK < v_max_numel,
                other=0.0,
                volatile=True,
            )

    if GRADS_OFF_PROMISE:
        g = into_step_layout(grad_rows, PARAM_DTYPE, BLOCK)
    if HAS_GRAD_SCALE:
        # Loaded after the elements, in order with them in the unaligned launch (volatile there): ptxas otherwise
        # began dividing by it before it had requested that launch's last params (bf16 params with gradient
        # clipping waited for DRAM twice: 91.7% of copy predicted, 95.6% so).
        grad_scale = tl.load(grad_scale_ptr, volatile=ORDERED)

    if HAS_MASTER:
        if master_ptr.dtype.element_ty == tl.int16:
            p = join_master(p, remainder)
    else:
        p = widen_to_float32(p)
    g = widen_to_float32(g)
    if QUANTIZED:
        m = dequantize_m(m, m_scales, BLOCK, QBLOCK)
        v_root = dequantize_v_root(v, v_scales, BLOCK, QBLOCK)
        v = v_root * v_root
    else:
        m, v = widen_to_float32(m), widen_to_float32(v)
    state_dtype = exp_avg_ptr.dtype.element_ty

    if HAS_GRAD_SCALE:
        g = tl.div_rn(g, grad_scale)
    if ALGORITHM == ADABELIEF or not QUANTIZED:
        if maximize:
            g = -g
    else:
        # maximize's sign taken into the scalars that multiply the gradient, not into each element: m and the L2 term
        # come out the same bit for bit (negating a product's factor negates its rounding), and v takes g * g. One
        # select an element fewer (bfloat16 params with 8-bit states: 86.8% -> 87.9% of copy predicted). AdaBelief's
        # g - m needs g's own sign; the other steps keep the select, where ptxas allocates worse without it (bf16
        # states: 40 -> 44 registers, 96.0% -> 95.1%).
        one_minus_beta1 = tl.where(maximize, -one_minus_beta1, one_minus_beta1)
        l2_weight_decay = tl.where(maximize, -l2_weight_decay, l2_weight_decay)
    if decoupled:
        p = p * decay_factor
    elif l2_weight_decay != 0.0:  # as torch, no term at all: 0 * p is NaN where p is inf or NaN
        g = g + l2_weight_decay * p
    m = beta1 * m + one_minus_beta1 * g
    if ALGORITHM == ADABELIEF:
        belief = g - m  # how far the gradient is from its prediction
        v = beta2 * v + one_minus_beta2 * belief * belief + eps
    else:
        v = beta2 * v + one_minus_beta2 * g * g
    if QUANTIZED:
        codes, scales = quantize_m(m, BLOCK, QBLOCK)
        store_elements(exp_avg_ptr, state_start, codes, block_numel, EIGHT_PER_THREAD, BLOCK)
        store_scales(exp_avg_scales_ptr + scale_offsets, scales, scale_mask)
        # v is kept as sqrt(v), the square root the update takes below (the same value: computed once).
        codes, scales = quantize_v_root(sqrt_rn(v), BLOCK, QBLOCK)
        store_elements(exp_avg_sq_ptr, state_start, codes, block_numel, EIGHT_PER_THREAD, BLOCK)
        store_scales(exp_avg_sq_scales_ptr + scale_offsets, scales, scale_mask)
        if HAS_AMSGRAD:
            if amsgrad:
                v_max_root = dequantize_v_root(v_max, v_max_scales, BLOCK, QBLOCK)
                v = tl.maximum(v, v_max_root * v_max_root)
                codes, scales = quantize_v_root(sqrt_rn(v), BLOCK, QBLOCK)
                store_elements(max_exp_avg_sq_ptr, state_start, codes, block_numel, EIGHT_PER_THREAD, BLOCK)
                store_scales(max_exp_avg_sq_scales_ptr + scale_offsets, scales, scale_mask)
    else:
        store_elements(
            exp_avg_ptr, state_start, round_from_float32(m, state_dtype), block_numel, EIGHT_PER_THREAD, BLOCK
        )
        store_elements(
            exp_avg_sq_ptr, state_start, round_from_float32(v, state_dtype), block_numel, EIGHT_PER_THREAD, BLOCK
        )
        if HAS_AMSGRAD:
            if amsgrad:
                v = tl.maximum(v, widen_to_float32(v_max))
                store_elements(
                    max_exp_avg_sq_ptr,
                    state_start,
                    round_from_float32(v, state_dtype),
                    block_numel,
                    EIGHT_PER_THREAD,
                    BLOCK,
                )
    # Correctly rounded sqrt and division (the defaults are approximate), in the reference's order of operations.
    if ALGORITHM == RADAM:
        update = tl.div_rn(m, tl.load(scalars + BIAS_CORRECTION1)) * tl.load(scalars + LR_F32)
        if tl.load(scalars + RECTIFIED) != 0:
            adaptive = tl.div_rn(bias_correction2_sqrt, sqrt_rn(v) + eps)
            update = update * adaptive * tl.load(scalars + RECTIFICATION)
    elif ALGORITHM == ADABOUND:
        update = tl.minimum(tl.maximum(tl.div_rn(bounded_step, sqrt_rn(v) + eps), lower), upper) * m
    else:
        denom = divide_by_uniform(sqrt_rn(v), bias_correction2_sqrt, bias_correction2_sqrt_reciprocal) + eps
        update = step_size * tl.div_rn(m, denom)
    p = p - update

    if HAS_MASTER:
        # Both kinds of master round a bfloat16 param alike, so that the two train bit for bit the same.
        if master_ptr.dtype.element_ty == tl.int16:
            p_stored, remainder = split_master(p)
            store_elements(master_ptr, state_start, remainder, block_numel, EIGHT_PER_THREAD, BLOCK)
        else:
            store_elements(master_ptr, state_start, p, block_numel, EIGHT_PER_THREAD, BLOCK)
            if PARAM_DTYPE == tl.bfloat16:
                p_stored = split_master(p)[0]
            else:
                p_stored = round_from_float32(p, PARAM_DTYPE)
    elif STOCHASTIC_ROUNDING:
        # The Philox counter is (flat element index // 8, step): a fresh, reproducible draw for every element and
        # step. Slots start at multiples of 64 elements, programs at multiples of BLOCK, tails at multiples of 8
        # past their slot's start: a multiple of 8 here.
        step = tl.load(steps_ptr + step_index).to(tl.int32)
        p_stored = stochastic_round_to_bfloat16(p, tl.load(rounding_seed_ptr), state_start, step, BLOCK)
    else:
        p_stored = round_from_float32(p, PARAM_DTYPE)
    store_elements(param_ptr, 0, p_stored, block_numel, EIGHT_PER_THREAD, BLOCK)


def adam_step(
    segments: torch.Tensor,
    block_segment: torch.Tensor,
    scalars: torch.Tensor,
    steps: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    master: torch.Tensor | None,
    *,
    param_dtype: torch.dtype,
    aligned: bool,
    grad_alignment: int,
    whole_vectors: bool,
    block: int,
    num_warps: int,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    rounding_seed: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    algorithm: str = "adam",
) -> None:
    """Launch one fused Adam step over every segment of a bucket (see `_adam_step_kernel`), `scalars` computed for
    this step by `v0adam.kernels.step_scalars.advance_steps`. With `scales` (float32
    [3, blocks]: the block scales of m, v and max v) the states are 8-bit codes (uint8, `v0adam.quantization`).
    `aligned`: the segments' addresses keep the alignment promise of `v0adam.kernels.tables`, their grads perhaps
    excepted: `grad_alignment` is the bytes the grads' addresses are a multiple of (ALIGN_BYTES, 4, or 2 for 16-bit
    grads); `whole_vectors`: their counts keep it too, else each is a tail (fewer than ALIGN_ELEMENTS).

    The tables are built by `v0adam.buckets`; this checks only what would make the kernel touch wrong memory.
    Nothing here reads a value back to the host.
    """
    if segments.dtype != torch.int64 or segments.dim() != 2 or segments.shape[1] != SEGMENT_FIELDS.value:
        raise ValueError(f"segments must be int64 of shape [S, {SEGMENT_FIELDS.value}], got {tuple(segments.shape)}")
    if block_segment.dtype != torch.int32 or steps.dtype != torch.float32:
        raise ValueError("block_segment must be int32 and steps float32")
    if scalars.dtype != torch.float32 or tuple(scalars.shape) != (steps.numel(), SCALAR_FIELDS.value):
        raise ValueError(f"scalars must be float32 [num_params, {SCALAR_FIELDS.value}] (`v0adam.kernels.step_scalars`)")
    quantized = scales is not None
    state_dtypes = (torch.uint8,) if quantized else (torch.float32, torch.bfloat16)
    if exp_avg.dtype not in state_dtypes or exp_avg_sq.dtype != exp_avg.dtype:
        raise ValueError(f"optimizer states must be {' or '.join(map(str, state_dtypes))}, both the same")
    if quantized and (
        scales.dtype != torch.float32 or scales.dim() != 2 or scales.shape[0] != 3 or block % QBLOCK.value
    ):
        raise ValueError("8-bit states need float32 scales [3, blocks] and BLOCK % 256 == 0")
    if master is not None and master.dtype != torch.float32 and (master.dtype, param_dtype) != REMAINDER_MASTER:
        raise ValueError("master weights must be float32, or int16 remainders of bfloat16 params")
    if rounding_seed is not None and param_dtype != torch.bfloat16:
        raise ValueError("stochastic rounding is implemented for bfloat16 params")
    if param_dtype not in TRITON_DTYPES:
        raise ValueError(f"unsupported parameter dtype {param_dtype}; expected one of {list(TRITON_DTYPES)}")
    if aligned and (grad_alignment not in (ALIGN_BYTES.value, 4, 2) or grad_alignment < param_dtype.itemsize):
        raise ValueError(f"grads of {param_dtype} cannot be promised an alignment of {grad_alignment} bytes")
    if aligned and not (whole_vectors or grad_alignment == ALIGN_BYTES.value):
        raise ValueError("a launch of tails takes grads that keep the alignment promise")
    num_blocks = block_segment.numel()
    if num_blocks == 0:
        return
    _adam_step_kernel[(num_blocks,)](
        segments,
        block_segment,
        scalars,
        steps,
        exp_avg,
        exp_avg_sq,
        exp_avg_sq if max_exp_avg_sq is None else max_exp_avg_sq,
        steps if master is None else master,
        steps if grad_scale is None else grad_scale,
        steps if found_inf is None else found_inf,
        segments if rounding_seed is None else rounding_seed,
        *((steps,) * 3 if scales is None else scales.unbind()),
        PARAM_DTYPE=TRITON_DTYPES[param_dtype],
        HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None,
        HAS_AMSGRAD=max_exp_avg_sq is not None,
        HAS_MASTER=master is not None,
        STOCHASTIC_ROUNDING=rounding_seed is not None,
        ALGORITHM=ALGORITHMS[algorithm],
        ALIGNED=aligned,
        WHOLE_VECTORS=aligned and whole_vectors,
        GRAD_ALIGNMENT=grad_alignment if aligned else 1,
        QUANTIZED=quantized,
        BLOCK=block,
        num_warps=num_warps,
        maxnreg=register_ceiling(
            grad_alignment if aligned else 0, exp_avg.dtype, master, rounding_seed, max_exp_avg_sq, algorithm
        ),
    )
