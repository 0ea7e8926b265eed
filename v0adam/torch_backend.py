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

import torch

from v0adam import quantization
from v0adam.master_remainder import REMAINDER_DTYPE, join_master, param_of_master, split_master
from v0adam.moments import MOMENTS

# Elements stepped at a time: the float32 temporaries of a step (widened 16-bit values, dequantized 8-bit states)
# stay a few MB whatever the size of a bucket. A whole number of 8-bit quantization blocks.
CHUNK = 2**20


class TorchBackend:
    """Steps a bucket with torch ops (see the module's docstring; `v0adam.backends` for the interface)."""

    traceable = False
    runs_triton = False

    def prepare(self, bucket, param_groups, rule, rounding_seed: int | None) -> None:
        pass  # it keeps nothing on the device besides the bucket's states

    @staticmethod
    def grad_key(grad: torch.Tensor) -> tuple:
        return grad.shape, grad.dtype, grad.device  # handed tensors, not addresses: what each grad is, not where

    def step(self, bucket, work, inputs, rounding_seed: int | None) -> None:
        """steps += 1 for the params stepped now, unless found_inf (never read on the host), then the update."""
        grad_scale, found_inf = inputs.grad_scale, inputs.found_inf
        if grad_scale is not None:
            grad_scale = grad_scale.to(bucket.device, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(bucket.device, non_blocking=True)
        increment = bucket.step_increment(work.stepped)
        if found_inf is not None:
            increment = (found_inf == 0) * increment
        bucket.steps.add_(increment)
        step_bucket(bucket, work, inputs.param_groups, grad_scale, found_inf, rounding_seed, inputs.rule)

    def grad_norm_powered(self, bucket, work, norm_type: float, tracing: bool) -> None:
        return None  # torch._foreach_norm, as torch.nn.utils.clip_grad_norm_

    @staticmethod
    def accumulate_grad_moments_(bucket, segments, grad_sum, grad_sum_sq) -> None:
        for segment in segments:
            end = segment.state_offset + segment.grad.numel()
            grad = segment.grad.reshape(-1).to(grad_sum.dtype)
            grad_sum[segment.state_offset : end].add_(grad)
            grad_sum_sq[segment.state_offset : end].addcmul_(grad, grad)


def step_bucket(bucket, work, param_groups, grad_scale, found_inf, rounding_seed, rule) -> None:
    if found_inf is not None and found_inf.item() != 0:
        return
    fusable = (
        rule.torch_fused
        and (grad_scale is None or grad_scale.dtype == torch.float32)  # the kernel's scale is float32
        and bucket.dtype == bucket.moments.dtype
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
        if bucket.moments.block is not None:  # stepped through float32 copies of whole blocks
            _update_8bit_(bucket, segments, states, step_values, group, grad_scale, rule, rounding_seed)
            continue
        for segment, (*state, master) in zip(segments, states):
            step = step_values[segment.step_index]
            generator = _rounding_generator(bucket, segment, step, rounding_seed)
            tensors = [segment.param, segment.grad, *state, master]
            for start in range(0, segment.param.numel(), CHUNK):
                param, grad, *piece, master_piece = _flat_piece(tensors, start, start + CHUNK)
                _update_(param, grad, piece, step, group, grad_scale, rule, master_piece, generator)


def _flat_piece(tensors, start: int, end: int) -> list:
    """Elements [start, end) of each of `tensors` (contiguous, or None), as flat views."""
    return [None if tensor is None else tensor.view(-1)[start:end] for tensor in tensors]


def _rounding_generator(bucket, segment, step, rounding_seed):
    """The generator of a segment's stochastic rounding at this step (None without it)."""
    if rounding_seed is None:
        return None
    seed = hash((rounding_seed, int(step), segment.state_offset)) % 2**63
    return torch.Generator(bucket.device).manual_seed(seed)


def _update_8bit_(bucket, segments, states, step_values, group, grad_scale, rule, rounding_seed) -> None:
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
                _update_(param, grad, moments, step, group, grad_scale, rule, master, generator)
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


def _update_(param, grad, states, step, group, grad_scale, rule, master=None, generator=None) -> None:
    """One step of the update `rule` with in-place ops in float32 (float64 for float64 params), rounded once into
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
    rule.second_moment_(exp_avg_sq, grad, exp_avg, beta2, group["eps"])
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    working.sub_(rule.final_update(exp_avg, second_moment, step, lr, beta1, beta2, group))
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


def stochastic_round_to_bfloat16(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 -> bfloat16 rounding up with probability equal to the discarded fraction (unbiased): random low
    16 bits are added to the bit pattern, which is then truncated. NaN stays NaN."""
    bits = values.view(torch.int32)
    noise = torch.randint(0, 2**16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    truncated = (bits + noise).bitwise_and_(-(2**16)).view(torch.float32)
    return torch.where(values.isnan(), values, truncated).to(torch.bfloat16)
