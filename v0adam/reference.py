"""Plain PyTorch references of one step of Adam/AdamW and of the family members, readable as the specification
(SPEC §1 and the original papers). Any floating dtype (tests run them in float64). They update their tensor
arguments in place, like `torch.optim._functional`, one tensor at a time with no fusion or layout tricks.

`exp_avg_sq` holds v0 before the first step: a non-zero v0 is the only change the v0 paper makes; bias
correction is unchanged.
"""

import math

import torch

from v0adam import quantization


def _gradient(param, grad, *, lr, weight_decay, decoupled_weight_decay, maximize, grad_scale=None):
    """The gradient the moments see: unscaled, negated for maximize, plus L2 decay; decoupled decay is applied to
    the param here instead."""
    g = grad / grad_scale if grad_scale is not None else grad.clone()
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    return g


def _second_moment(exp_avg_sq, max_exp_avg_sq, amsgrad):
    if amsgrad:
        max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq, exp_avg_sq))
        return max_exp_avg_sq
    return exp_avg_sq


def adam_step_reference(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    step,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    decoupled_weight_decay,
    amsgrad,
    maximize,
    grad_scale=None,
    found_inf=False,
) -> None:
    """Adam (Kingma & Ba) / AdamW (Loshchilov & Hutter), step number `step` (the first step is 1)."""
    if found_inf:
        return
    _adaptive_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        step,
        belief=False,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        grad_scale=grad_scale,
    )


def adabelief_step_reference(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, **hyperparameters) -> None:
    """AdaBelief (Zhuang et al. 2020, Algorithm 2): Adam with s (in `exp_avg_sq`) tracking the belief
    (g - m_t)^2 plus eps instead of g^2. Same keyword arguments as `adam_step_reference`."""
    _adaptive_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, belief=True, **hyperparameters)


def _adaptive_step(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, *, belief, lr, beta1, beta2, eps, amsgrad, **options
) -> None:
    _update_moments(
        param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2, belief_eps=eps if belief else None, **options
    )
    v = _second_moment(exp_avg_sq, max_exp_avg_sq, amsgrad)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    param.sub_(lr * (exp_avg / bias_correction1) / ((v / bias_correction2).sqrt() + eps))


def _update_moments(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, belief_eps=None, **gradient_options):
    """m and v after this gradient; with `belief_eps`, AdaBelief's s = beta2 s + (1 - beta2)(g - m)^2 + eps."""
    g = _gradient(param, grad, lr=lr, **gradient_options)
    exp_avg.copy_(beta1 * exp_avg + (1 - beta1) * g)
    if belief_eps is None:
        exp_avg_sq.copy_(beta2 * exp_avg_sq + (1 - beta2) * g * g)
    else:
        exp_avg_sq.copy_(beta2 * exp_avg_sq + (1 - beta2) * (g - exp_avg) ** 2 + belief_eps)


def radam_step_reference(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1, beta2, eps, **options) -> None:
    """RAdam (Liu et al. 2020) as torch.optim.RAdam: momentum SGD while the variance of the adaptive step is
    intractable (rho_t <= 5), then the adaptive step times the rectification term. `options`: weight_decay,
    decoupled_weight_decay, maximize, grad_scale."""
    _update_moments(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2, **options)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    update = lr * exp_avg / bias_correction1
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        update = update * rect * math.sqrt(bias_correction2) / (exp_avg_sq.sqrt() + eps)
    param.sub_(update)


def adabound_step_reference(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    max_exp_avg_sq,
    step,
    *,
    lr,
    base_lr,
    final_lr,
    gamma,
    beta1,
    beta2,
    eps,
    amsgrad,
    **options,
) -> None:
    """AdaBound (Luo et al. 2019): Adam's per-element step clipped into [lower(t), upper(t)], bounds that close in
    on final_lr * lr / base_lr at speed gamma. `amsgrad` is AMSBound. `options`: weight_decay,
    decoupled_weight_decay, maximize, grad_scale."""
    _update_moments(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2, **options)
    v = _second_moment(exp_avg_sq, max_exp_avg_sq, amsgrad)
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    bound = final_lr * lr / base_lr
    lower, upper = bound * (1 - 1 / (gamma * step + 1)), bound * (1 + 1 / (gamma * step))
    param.sub_((step_size / (v.sqrt() + eps)).clamp(lower, upper) * exp_avg)


def quantized_step_reference(step_reference, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, **hyperparameters):
    """`step_reference` (one of the above) on 8-bit states (`v0adam.quantization`): each moment a pair (uint8
    codes shaped as the param, float32 block scales), or None for max_exp_avg_sq without AMSGrad. The moments are
    dequantized into float32, stepped, and quantized back in place with fresh scales; the update itself uses the
    float32 moments of this step."""
    pairs = {"exp_avg": (exp_avg, True), "exp_avg_sq": (exp_avg_sq, False), "max_exp_avg_sq": (max_exp_avg_sq, False)}
    moments = {
        name: None if pair is None else quantization.dequantize(*pair, signed) for name, (pair, signed) in pairs.items()
    }
    if step_reference is radam_step_reference:  # RAdam keeps no max
        del moments["max_exp_avg_sq"]
    step_reference(param, grad, *moments.values(), step, **hyperparameters)
    for name, values in moments.items():
        pair, signed = pairs[name]
        if pair is not None:
            codes, scales = quantization.quantize(values, signed)
            pair[0].copy_(codes)
            pair[1].copy_(scales)
