"""The PyTorch backend: the same step over the same segments, with in-place tensor ops. Meant for CPU tensors.

When everything is home a segment is a whole param group, so a step is a handful of large in-place ops instead
of a handful per tensor. Bias corrections and the found-inf flag are read on the host, which is free on CPU and
one synchronisation per bucket if this backend is forced on a GPU.
"""

import math

import torch


def step_bucket(bucket, work, param_groups, grad_scale, found_inf) -> None:
    if found_inf is not None and found_inf.item() != 0:
        return
    steps = bucket.steps.tolist()
    for segment in work.segments:
        group = param_groups[segment.group]
        end = segment.state_offset + segment.param.numel()
        exp_avg = bucket.exp_avg[segment.state_offset : end]
        exp_avg_sq = bucket.exp_avg_sq[segment.state_offset : end]
        max_exp_avg_sq = bucket.max_exp_avg_sq[segment.state_offset : end] if group["amsgrad"] else None
        _adam_update_(
            segment.param,
            segment.grad,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            steps[segment.step_index],
            group,
            grad_scale,
        )


def _hyper(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


def _adam_update_(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, group, grad_scale) -> None:
    lr = _hyper(group["lr"])
    beta1, beta2 = (_hyper(beta) for beta in group["betas"])
    weight_decay = _hyper(group["weight_decay"])
    working = param.float() if param.dtype != torch.float32 else param
    grad = grad.float()
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
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    else:
        second_moment = exp_avg_sq
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = second_moment.sqrt().div_(bias_correction2_sqrt).add_(group["eps"])
    working.addcdiv_(exp_avg, denom, value=-step_size)
    if working is not param:
        param.copy_(working)
