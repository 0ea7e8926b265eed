"""RAdam (Liu et al., ICLR 2020) exactly as torch.optim.RAdam: momentum SGD while the variance of the adaptive step
is intractable (rho_t <= 5), then the adaptive step times the rectification term. v0 matters from the first
rectified step on."""

import math

import torch

from v0adam import reference
from v0adam.kernels.tables import BETA2, RECTIFICATION, RECTIFIED
from v0adam.optimizer import V0Adam
from v0adam.rules.rule import UpdateRule


def rectified_update(exp_avg, second_moment, step, lr, beta1, beta2, group) -> torch.Tensor:
    bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
    update = exp_avg / bias_correction1 * lr
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        update = update * (math.sqrt(bias_correction2) / second_moment.sqrt().add_(group["eps"])) * rect
    return update


def rectification_scalars(step, group_columns, bias_correction1, bias_correction2) -> list:
    """The rectification term and whether it applies, as the kernel's RADAM branch computes them."""
    beta2 = group_columns[:, BETA2.value]
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    twice_step = (2.0 * step.to(torch.float32)).double()  # the kernel's 2.0 * int32 is a float32 product
    rho_t = rho_inf - twice_step * (1.0 - bias_correction2) / bias_correction2
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    return [(RECTIFICATION, ratio.clamp(min=0.0).sqrt()), (RECTIFIED, (rho_t > 5.0).double())]


RULE = UpdateRule(
    "radam", reference.radam_step_reference, final_update=rectified_update, step_scalars=rectification_scalars
)


class V0RAdam(V0Adam):
    """RAdam (Liu et al., ICLR 2020) exactly as torch.optim.RAdam: the adaptive step is used, rectified, once the
    variance of its length is tractable (rho_t > 5), and plain momentum SGD before. Same keyword arguments as
    V0Adam (no amsgrad, as torch's)."""

    _RULE = RULE

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, decoupled_weight_decay=False, **kwargs
    ):
        super().__init__(
            params, lr, betas, eps, weight_decay, False, decoupled_weight_decay=decoupled_weight_decay, **kwargs
        )
