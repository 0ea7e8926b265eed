"""Once per step and bucket: advance the step counters and compute what each param's step needs besides its
elements (bias corrections, the float32 hyperparameters, the family's bounds), so that no program of the fused
step repeats it. One launch for all the params of a bucket, replacing the counters' own `add_`; nothing is read
back to the host.
"""

import torch
import triton
import triton.language as tl
from v0adam.kernels.adam import ADABOUND, RADAM
from v0adam.kernels.tables import (
    AMSGRAD,
    AMSGRAD_FLAG,
    BASE_LR,
    BETA1,
    BETA1_F32,
    BETA2,
    BETA2_F32,
    BIAS_CORRECTION1,
    BIAS_CORRECTION2_SQRT,
    BIAS_CORRECTION2_SQRT_RECIPROCAL,
    BOUNDED_STEP,
    DECAY_FACTOR,
    DECOUPLED,
    DECOUPLED_FLAG,
    EPS,
    EPS_F32,
    FINAL_LR,
    GAMMA,
    HYPER_FIELDS,
    L2_WEIGHT_DECAY,
    LOWER_BOUND,
    LR,
    LR_F32,
    MAXIMIZE,
    MAXIMIZE_FLAG,
    ONE_MINUS_BETA1,
    ONE_MINUS_BETA2,
    RECTIFICATION,
    RECTIFIED,
    SCALAR_FIELDS,
    STEP_SIZE,
    UPPER_BOUND,
    WEIGHT_DECAY,
)

# Step counters are float32 (torch's `step` states): exact integers below 2^24, so 31 bits cover every count.
STEP_BITS = tl.constexpr(31)
BLOCK = 128  # params per program: one per thread of 4 warps (float64 scalars: 8 per thread took 182 registers)


@triton.jit
def _power(base, exponent, BITS: tl.constexpr):
    """base ** exponent elementwise for int32 exponents >= 0, by repeated squaring in base's dtype (float64 here):
    the products of the scalar loop `while exponent: ...`, in its order, over a fixed number of bits."""
    result = base * 0.0 + 1.0
    for _ in tl.static_range(BITS):
        result = tl.where(exponent % 2 == 1, result * base, result)
        base = base * base
        exponent = exponent // 2
    return result


@triton.jit
def _advance_steps_kernel(
    steps_ptr,  # float32 [num_params]: step counters, advanced here
    increment_ptr,  # float32 [num_params]: 1 for the params stepped now, 0 for the others; unused unless HAS_MASK
    found_inf_ptr,  # float32 [1]: non-zero skips the step, no counter moves; unused unless HAS_FOUND_INF
    param_group_ptr,  # int32 [num_params]: each param's param group, its row of the hyperparameter table
    hyper_ptr,  # float64 [num_groups, HYPER_FIELDS]: lr, betas, eps, weight decay, switches, per param group
    scalars_ptr,  # float32 [num_params, SCALAR_FIELDS]: written, read by the step's programs
    num_params,
    HAS_MASK: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    ALGORITHM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """steps += increment (unless found_inf); then per param, with t its new count, bc1 = 1 - beta1**t and
    bc2 = 1 - beta2**t, the scalars of its group's step: lr / bc1, sqrt(bc2) and its reciprocal, 1 - lr * wd, the
    betas, eps and weight decay in float32; RAdam's rectification, AdaBound's bounds. Scalars are computed in
    float64, as torch does on the host, and rounded once to float32 (the reciprocal: in float32, of that sqrt)."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < num_params
    steps = tl.load(steps_ptr + index, mask=mask, other=1.0)  # lanes past the end: finite scalars, never stored
    increment = tl.load(increment_ptr + index, mask=mask, other=0.0) if HAS_MASK else 1.0
    if HAS_FOUND_INF:
        increment = (tl.load(found_inf_ptr) == 0).to(tl.float32) * increment
    steps = steps + increment
    tl.store(steps_ptr + index, steps, mask=mask)

    hyper = hyper_ptr + tl.load(param_group_ptr + index, mask=mask, other=0).to(tl.int64) * HYPER_FIELDS
    lr = tl.load(hyper + LR, mask=mask, other=0.0)
    beta1 = tl.load(hyper + BETA1, mask=mask, other=0.0)
    beta2 = tl.load(hyper + BETA2, mask=mask, other=0.0)
    weight_decay = tl.load(hyper + WEIGHT_DECAY, mask=mask, other=0.0)
    step = steps.to(tl.int32)
    bias_correction1 = 1.0 - _power(beta1, step, STEP_BITS)
    bias_correction2 = 1.0 - _power(beta2, step, STEP_BITS)

    row = scalars_ptr + index.to(tl.int64) * SCALAR_FIELDS
    tl.store(row + LR_F32, lr.to(tl.float32), mask=mask)
    tl.store(row + STEP_SIZE, (lr / bias_correction1).to(tl.float32), mask=mask)
    tl.store(row + BIAS_CORRECTION1, bias_correction1.to(tl.float32), mask=mask)
    bias_correction2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)
    tl.store(row + BIAS_CORRECTION2_SQRT, bias_correction2_sqrt, mask=mask)
    tl.store(row + BIAS_CORRECTION2_SQRT_RECIPROCAL, tl.div_rn(1.0, bias_correction2_sqrt), mask=mask)
    tl.store(row + BETA1_F32, beta1.to(tl.float32), mask=mask)
    tl.store(row + ONE_MINUS_BETA1, (1.0 - beta1).to(tl.float32), mask=mask)
    tl.store(row + BETA2_F32, beta2.to(tl.float32), mask=mask)
    tl.store(row + ONE_MINUS_BETA2, (1.0 - beta2).to(tl.float32), mask=mask)
    tl.store(row + EPS_F32, tl.load(hyper + EPS, mask=mask, other=0.0).to(tl.float32), mask=mask)
    tl.store(row + L2_WEIGHT_DECAY, weight_decay.to(tl.float32), mask=mask)
    tl.store(row + DECAY_FACTOR, (1.0 - lr * weight_decay).to(tl.float32), mask=mask)
    tl.store(row + MAXIMIZE_FLAG, tl.load(hyper + MAXIMIZE, mask=mask, other=0.0).to(tl.float32), mask=mask)
    tl.store(row + AMSGRAD_FLAG, tl.load(hyper + AMSGRAD, mask=mask, other=0.0).to(tl.float32), mask=mask)
    tl.store(row + DECOUPLED_FLAG, tl.load(hyper + DECOUPLED, mask=mask, other=0.0).to(tl.float32), mask=mask)
    if ALGORITHM == RADAM:
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * step * (1.0 - bias_correction2) / bias_correction2
        rect = tl.sqrt(tl.maximum((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t), 0.0))
        tl.store(row + RECTIFICATION, rect.to(tl.float32), mask=mask)
        # The variance of the adaptive step is tractable: rectify it.
        tl.store(row + RECTIFIED, (rho_t > 5.0).to(tl.float32), mask=mask)
    elif ALGORITHM == ADABOUND:
        final_lr = tl.load(hyper + FINAL_LR, mask=mask, other=0.0) * lr / tl.load(hyper + BASE_LR, mask=mask, other=1.0)
        gamma_t = tl.load(hyper + GAMMA, mask=mask, other=1.0) * step
        tl.store(row + LOWER_BOUND, (final_lr * (1.0 - 1.0 / (gamma_t + 1.0))).to(tl.float32), mask=mask)
        tl.store(row + UPPER_BOUND, (final_lr * (1.0 + 1.0 / gamma_t)).to(tl.float32), mask=mask)
        bounded_step = lr * tl.sqrt(bias_correction2) / bias_correction1
        tl.store(row + BOUNDED_STEP, bounded_step.to(tl.float32), mask=mask)


def advance_steps(
    steps: torch.Tensor,
    increment: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    param_group: torch.Tensor,
    hyper: torch.Tensor,
    scalars: torch.Tensor,
    rule,
) -> None:
    """steps += increment (None: every param), unless found_inf, and each param's step scalars into `scalars` for
    the update rule `rule` (a `v0adam.rules.rule.UpdateRule`; see `_advance_steps_kernel`)."""
    num_params = steps.numel()
    if steps.dtype != torch.float32 or param_group.dtype != torch.int32 or param_group.numel() != num_params:
        raise ValueError("steps must be float32 and param_group int32, one per param")
    if (
        hyper.dtype != torch.float64
        or scalars.dtype != torch.float32
        or scalars.shape != (num_params, SCALAR_FIELDS.value)
    ):
        raise ValueError(f"hyper must be float64 and scalars float32 [{num_params}, {SCALAR_FIELDS.value}]")
    if num_params == 0:
        return
    _advance_steps_kernel[(triton.cdiv(num_params, BLOCK),)](
        steps,
        steps if increment is None else increment,
        steps if found_inf is None else found_inf,
        param_group,
        hyper,
        scalars,
        num_params,
        HAS_MASK=increment is not None,
        HAS_FOUND_INF=found_inf is not None,
        ALGORITHM=rule.kernel_id,
        BLOCK=BLOCK,
    )


def advance_steps_reference(
    steps: torch.Tensor,
    increment: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    param_group: torch.Tensor,
    hyper: torch.Tensor,
    scalars: torch.Tensor,
    rule,
) -> None:
    """`advance_steps` in PyTorch, operation for operation (the same float64 squarings, the same roundings): equal
    to the kernel bit for bit (tested). The Triton interpreter spends about 50 ms on the kernel's few hundred
    scalar-sized operations; the test suite steps through this instead, and tests the kernel itself."""
    moved = torch.ones_like(steps) if increment is None else increment.to(steps.dtype)
    if found_inf is not None:
        moved = (found_inf.reshape(()) == 0).to(torch.float32) * moved
    steps.add_(moved)
    group = hyper[param_group.long()]
    lr, beta1, beta2, weight_decay = (group[:, column.value] for column in (LR, BETA1, BETA2, WEIGHT_DECAY))
    step = steps.to(torch.int32)
    bias_correction1 = 1.0 - _power_reference(beta1, step)
    bias_correction2 = 1.0 - _power_reference(beta2, step)
    # (column, values) pairs, not a dict: older Triton's constexpr is not hashable.
    columns = [
        (LR_F32, lr),
        (STEP_SIZE, lr / bias_correction1),
        (BIAS_CORRECTION1, bias_correction1),
        (BIAS_CORRECTION2_SQRT, bias_correction2.sqrt()),
        (BETA1_F32, beta1),
        (ONE_MINUS_BETA1, 1.0 - beta1),
        (BETA2_F32, beta2),
        (ONE_MINUS_BETA2, 1.0 - beta2),
        (EPS_F32, group[:, EPS.value]),
        (L2_WEIGHT_DECAY, weight_decay),
        (DECAY_FACTOR, 1.0 - lr * weight_decay),
        (MAXIMIZE_FLAG, group[:, MAXIMIZE.value]),
        (AMSGRAD_FLAG, group[:, AMSGRAD.value]),
        (DECOUPLED_FLAG, group[:, DECOUPLED.value]),
    ]
    columns += rule.step_scalars(step, group, bias_correction1, bias_correction2)
    for column, value in columns:
        scalars[:, column.value] = value.to(torch.float32)
    # float32 division, as the kernel's: correctly rounded from the float32 sqrt(bc2).
    scalars[:, BIAS_CORRECTION2_SQRT_RECIPROCAL.value] = 1.0 / scalars[:, BIAS_CORRECTION2_SQRT.value]


def _power_reference(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """`_power` in PyTorch: the same products in the same order, over as many bits (no host read)."""
    result = torch.ones_like(base)
    for _ in range(STEP_BITS.value):
        result = torch.where(exponent % 2 == 1, result * base, result)
        base = base * base
        exponent = exponent // 2
    return result
