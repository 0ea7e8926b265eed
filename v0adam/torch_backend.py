"""The PyTorch backend: the same step over the same segments, without Triton. Meant for CPU tensors.

When everything is home a segment is a whole param group, so a step is a few calls over large flat views
instead of a few per tensor. Segments whose params have the states' dtype (float32, float64) go through torch's
own fused Adam kernel (`torch._fused_adam_`, CPU and CUDA since torch 2.4) in one call per param group, a
GradScaler's scale or a clip coefficient included: that kernel divides the grads by it and writes them back, so
that after the step the grads are unscaled and clipped, as torch's own loop leaves them. 16-bit params and the
rest of the family take plain tensor ops in the states' dtype; 8-bit states are dequantized into float32 for
them and quantized back (`v0adam.quantization`). The found-inf flag and the step counters are read
on the host: free on CPU, one synchronisation per bucket if this backend is forced onto a GPU.
"""

import math

import torch

from v0adam import quantization
from v0adam.buckets import MOMENTS
from v0adam.master_remainder import REMAINDER_DTYPE, join_master, param_of_master, split_master

# Elements stepped at a time: the float32 temporaries of a step (widened 16-bit values, dequantized 8-bit states)
# stay a few MB whatever the size of a bucket. A whole number of 8-bit quantization blocks.
CHUNK = 2**20


def step_bucket(bucket, work, param_groups, grad_scale, found_inf, rounding_seed, algorithm: str) -> None:
    if found_inf is not None and found_inf.item() != 0:
        return
    fusable = (
        algorithm == "adam"
        and (grad_scale is None or grad_scale.dtype == torch.float32)  # the kernel's scale is float32
        and bucket.dtype == bucket.state_dtype
        and bucket.master is None
        and rounding_seed is None
    )
    for group_index, positions, states, steps in _plan(bucket, work, param_groups):
        group = param_groups[group_index]
        segments = [work.segments[position] for position in positions]
        if fusable:
            _fused_update_(segments, states, steps, group, grad_scale)
            continue
        step_values = bucket.steps.tolist()
        if bucket.quantized:
            _update_8bit_(bucket, segments, states, step_values, group, grad_scale, algorithm, rounding_seed)
            continue
        for segment, (*state, master) in zip(segments, states):
            step = step_values[segment.step_index]
            generator = _rounding_generator(bucket, segment, step, rounding_seed)
            tensors = [segment.param, segment.grad, *state, master]
            for start in range(0, segment.param.numel(), CHUNK):
                param, grad, *piece, master_piece = _flat_piece(tensors, start, start + CHUNK)
                _update_(param, grad, piece, step, group, grad_scale, algorithm, master_piece, generator)


def _flat_piece(tensors, start: int, end: int) -> list:
    """Elements [start, end) of each of `tensors` (contiguous, or None), as flat views."""
    return [None if tensor is None else tensor.view(-1)[start:end] for tensor in tensors]


def _rounding_generator(bucket, segment, step, rounding_seed):
    """The generator of a segment's stochastic rounding at this step (None without it)."""
    if rounding_seed is None:
        return None
    seed = hash((rounding_seed, int(step), segment.state_offset)) % 2**63
    return torch.Generator(bucket.device).manual_seed(seed)


def _update_8bit_(bucket, segments, states, step_values, group, grad_scale, algorithm, rounding_seed) -> None:
    """`_update_` on 8-bit moments: each run of segments whose states lie back to back is dequantized into float32
    CHUNK elements at a time, the part of each segment in it stepped, and quantized back with fresh block scales
    (a run, not each segment: a step of many small params would spend more on the calls than on the values)."""
    kept = [name for name, codes in zip(MOMENTS, states[0]) if codes is not None]
    rows = {name: list(MOMENTS).index(name) for name in kept}
    for run in _back_to_back(segments, states):
        generators = {}
        start = run[0][0].state_offset
        end = run[-1][0].state_offset + quantization.num_blocks(run[-1][0].param.numel()) * quantization.QBLOCK
        for first in range(start, end, CHUNK):  # CHUNK is a whole number of blocks
            last = min(first + CHUNK, end)
            blocks = slice(first // quantization.QBLOCK, last // quantization.QBLOCK)
            codes = {name: bucket.moment(name)[first:last] for name in kept}
            scales = {name: bucket.scales[rows[name], blocks] for name in kept}
            values = {name: quantization.dequantize(codes[name], scales[name], MOMENTS[name]) for name in kept}
            for segment, (*_, master) in run:
                lower = max(segment.state_offset, first)
                upper = min(segment.state_offset + segment.param.numel(), last)
                if lower >= upper:
                    continue
                param, grad, master = _flat_piece(
                    [segment.param, segment.grad, master], lower - segment.state_offset, upper - segment.state_offset
                )
                moments = [values[name][lower - first : upper - first] if name in values else None for name in MOMENTS]
                step = step_values[segment.step_index]
                if segment.state_offset not in generators:
                    generators[segment.state_offset] = _rounding_generator(bucket, segment, step, rounding_seed)
                generator = generators[segment.state_offset]
                _update_(param, grad, moments, step, group, grad_scale, algorithm, master, generator)
            for name in kept:
                new_codes, new_scales = quantization.quantize(values[name], MOMENTS[name])
                codes[name].copy_(new_codes)
                scales[name].copy_(new_scales)


def _back_to_back(segments, states) -> list[list]:
    """The (segment, states) pairs in runs whose 8-bit slots follow each other without a gap (whole blocks)."""
    runs, end = [], None
    for segment, state in zip(segments, states):
        if segment.state_offset != end:
            runs.append([])
        runs[-1].append((segment, state))
        end = segment.state_offset + quantization.num_blocks(segment.param.numel()) * quantization.QBLOCK
    return runs


def _plan(bucket, work, param_groups) -> list:
    """Per param group: (group index, the positions of its segments in `work.segments`, their states, their step
    counters). Made once per layout (`work.addresses`) and amsgrad switches: looking up the states of a hundred
    small params would cost more than their update."""
    key = (work.addresses, tuple(group["amsgrad"] for group in param_groups))
    cached_key, plan = bucket.torch_plan
    if work.addresses is not None and key == cached_key:
        return plan
    by_group = {}
    for position, segment in enumerate(work.segments):
        by_group.setdefault(segment.group, []).append(position)
    plan = []
    for group_index, positions in by_group.items():
        segments = [work.segments[position] for position in positions]
        amsgrad = param_groups[group_index]["amsgrad"]
        states = [bucket.states_of(segment, amsgrad) for segment in segments]
        plan.append((group_index, positions, states, [bucket.step_views[s.step_index] for s in segments]))
    if work.addresses is not None:
        bucket.torch_plan = (key, plan)
    return plan


def _fused_update_(segments, states, steps, group, grad_scale) -> None:
    fused = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    beta1, beta2 = (_hyper(beta) for beta in group["betas"])
    exp_avgs, exp_avg_sqs, max_exp_avg_sqs, _ = (list(column) for column in zip(*states))
    fused(
        [segment.param for segment in segments],
        [segment.grad for segment in segments],
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs if group["amsgrad"] else [],
        steps,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=_hyper(group["weight_decay"]),
        eps=group["eps"],
        amsgrad=bool(group["amsgrad"]),  # torch's optimizers take any truthy switch (numpy.bool_, 1)
        maximize=bool(group["maximize"]),
        grad_scale=grad_scale,
    )


def _hyper(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


def _update_(param, grad, states, step, group, grad_scale, algorithm, master=None, generator=None) -> None:
    """One step of `algorithm` with in-place ops in float32 (float64 for float64 params), rounded once into
    storage: from the fp32 `master` when given (a copy, or the int16 remainder of a bfloat16 param: see
    `v0adam.master_remainder`), stochastically when a `generator` is given, else to nearest even."""
    compute_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    exp_avg, exp_avg_sq, max_exp_avg_sq = (None if s is None else s.to(compute_dtype) for s in states)
    lr = _hyper(group["lr"])
    beta1, beta2 = (_hyper(beta) for beta in group["betas"])
    weight_decay = _hyper(group["weight_decay"])
    remainder = master is not None and master.dtype == REMAINDER_DTYPE
    if remainder:
        working = join_master(param, master)
    else:
        working = master if master is not None else param.to(compute_dtype)
    grad = grad.to(compute_dtype)
    if grad_scale is not None:
        grad = grad / grad_scale.to(grad.device)
    if group["maximize"]:
        grad = -grad
    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            working.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(working, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    if algorithm == "adabelief":
        belief = grad - exp_avg
        exp_avg_sq.mul_(beta2).addcmul_(belief, belief, value=1 - beta2).add_(group["eps"])
    else:
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    working.sub_(_final_update(exp_avg, second_moment, step, lr, beta1, beta2, group, algorithm))
    for stored, value in zip(states, (exp_avg, exp_avg_sq, max_exp_avg_sq)):
        if stored is not None and stored is not value:
            stored.copy_(value)
    if remainder:
        rounded, low = split_master(working)
        param.copy_(rounded)
        master.copy_(low)
    elif master is not None:
        param.copy_(param_of_master(working, param.dtype))
    elif generator is not None:
        param.copy_(stochastic_round_to_bfloat16(working, generator))
    elif working is not param:
        param.copy_(working)


def _final_update(exp_avg, second_moment, step, lr, beta1, beta2, group, algorithm) -> torch.Tensor:
    """The amount subtracted from the param (see the kernel's docstring for the four rules)."""
    eps = group["eps"]
    bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
    if algorithm == "radam":
        update = exp_avg / bias_correction1 * lr
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            update = update * (math.sqrt(bias_correction2) / second_moment.sqrt().add_(eps)) * rect
        return update
    if algorithm == "adabound":
        final_lr = group["final_lr"] * lr / group["base_lr"]
        lower = final_lr * (1 - 1 / (group["gamma"] * step + 1))
        upper = final_lr * (1 + 1 / (group["gamma"] * step))
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        return (step_size / second_moment.sqrt().add_(eps)).clamp_(lower, upper).mul_(exp_avg)
    denom = second_moment.sqrt().div_(math.sqrt(bias_correction2)).add_(eps)
    return exp_avg.div(denom).mul_(lr / bias_correction1)


def stochastic_round_to_bfloat16(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 -> bfloat16 rounding up with probability equal to the discarded fraction (unbiased): random low
    16 bits are added to the bit pattern, which is then truncated. NaN stays NaN."""
    bits = values.view(torch.int32)
    noise = torch.randint(0, 2**16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    truncated = (bits + noise).bitwise_and_(-(2**16)).view(torch.float32)
    return torch.where(values.isnan(), values, truncated).to(torch.bfloat16)
