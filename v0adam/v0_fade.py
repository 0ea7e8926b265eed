"""How long v0 shapes the step: the number of steps during which v0 outweighs the squared gradients in Adam's
bias-corrected second moment.

With v0 and squared gradients held at s, Adam's second moment after t steps is

    v̂_t = (β₂ᵗ · v0 + (1 − β₂ᵗ) · s) / (1 − β₂ᵗ),

so v0's share of it, β₂ᵗ · v0 / (β₂ᵗ · v0 + (1 − β₂ᵗ) · s), falls below q once

    t > log(1 + (1 − q) / q · v0 / s) / −log β₂.

At β₂ = 0.999 a v0 a thousand times the squared gradients outweighs them for about 6,900 steps: an implicit
warmup of that length, since the steps are shorter by up to sqrt(v̂ / s) meanwhile.

Gradients usually shrink as a model learns, so v0 outweighs the later ones for longer than the first batch
predicts: read the result as a lower bound (docs/v0.md, "v0: when it helps").
"""

import math

import torch

from v0adam.state_io import moment_values


def fade_step(v0: float, grad_sq: float, beta2: float, share: float = 0.5) -> float:
    """The step after which v0's share of v̂ falls below `share`, squared gradients held at `grad_sq` (inf when
    the gradient is zero; 0 when v0 is)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must lie strictly between 0 and 1, got {share}")
    if v0 <= 0.0:
        return 0.0
    if grad_sq <= 0.0:
        return math.inf
    return math.log1p((1.0 - share) / share * v0 / grad_sq) / -math.log(beta2)


@torch.no_grad()
def v0_fade_steps(opt, share: float = 0.5, squared_grads=None) -> dict:
    """For each param of `opt` (a V0Adam of any class), the step after which v0's share of Adam's bias-corrected
    second moment falls below `share` (default: half), from the param's mean v0 and its mean squared gradient.

    Call it after a backward and before the first step: v0 is read from `exp_avg_sq`, which holds v0 until then,
    and the squared gradients from `p.grad`. One batch's gradients are noisy; `squared_grads`, {param: mean of
    g² over a few batches (a float or a tensor)}, replaces them. Params without a gradient are left out.
    """
    steps = {}
    for group in opt.param_groups:
        beta2 = float(group["betas"][1])
        for param in group["params"]:
            state = opt.state[param]
            if float(state["step"]) > 0:
                raise RuntimeError("v0_fade_steps reads v0 from exp_avg_sq: call it before the first step()")
            if squared_grads is not None and param in squared_grads:
                grad_sq = float(torch.as_tensor(squared_grads[param]).float().mean())
            elif param.grad is not None:
                grad_sq = float(param.grad.float().square().mean())
            else:
                continue
            v0 = moment_values(state, "exp_avg_sq")  # 8-bit states decoded, not their codes averaged
            steps[param] = fade_step(float(v0.float().mean()), grad_sq, beta2, share)
    return steps
