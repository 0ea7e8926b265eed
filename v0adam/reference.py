"""Plain PyTorch reference of one Adam/AdamW step, readable as the specification (SPEC §1).

Works in any floating dtype (tests run it in float64). Updates its tensor arguments in place, like
`torch.optim._functional.adam`, one tensor at a time and with no fusion or layout tricks.
"""

import torch


def adam_step_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    grad_scale: float | None = None,
    found_inf: bool = False,
) -> None:
    """Apply step number `step` (the first step is 1) to `param` and its states.

    `exp_avg_sq` holds v0 before the first step: a non-zero v0 is the only change the paper makes; bias
    correction is unchanged.
    """
    if found_inf:
        return
    g = grad / grad_scale if grad_scale is not None else grad.clone()
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg.copy_(beta1 * exp_avg + (1 - beta1) * g)
    exp_avg_sq.copy_(beta2 * exp_avg_sq + (1 - beta2) * g * g)
    v = exp_avg_sq
    if amsgrad:
        max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq, exp_avg_sq))
        v = max_exp_avg_sq
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    param.sub_(lr * (exp_avg / bias_correction1) / ((v / bias_correction2).sqrt() + eps))
