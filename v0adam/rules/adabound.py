"""AdaBound (Luo et al., ICLR 2019): Adam whose per-element step is clipped into bounds that converge to
`final_lr` (scaled with the group's lr, so schedules apply) at speed `gamma`; `amsbound` is its AMSGrad form."""

import math

import torch

from v0adam import reference
from v0adam.kernels.tables import BASE_LR, BOUNDED_STEP, FINAL_LR, GAMMA, LOWER_BOUND, LR, UPPER_BOUND
from v0adam.optimizer import V0Adam
from v0adam.rules.rule import UpdateRule


def bounded_update(exp_avg, second_moment, step, lr, beta1, beta2, group) -> torch.Tensor:
    bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
    final_lr = group["final_lr"] * lr / group["base_lr"]
    lower = final_lr * (1 - 1 / (group["gamma"] * step + 1))
    upper = final_lr * (1 + 1 / (group["gamma"] * step))
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    return (step_size / second_moment.sqrt().add_(group["eps"])).clamp_(lower, upper).mul_(exp_avg)


def bound_scalars(step, group_columns, bias_correction1, bias_correction2) -> list:
    """The bounds at this step and the unclipped step size, as the kernel's ADABOUND branch computes them."""
    lr = group_columns[:, LR.value]
    final_lr = group_columns[:, FINAL_LR.value] * lr / group_columns[:, BASE_LR.value]
    gamma_t = group_columns[:, GAMMA.value] * step.double()
    return [
        (LOWER_BOUND, final_lr * (1.0 - 1.0 / (gamma_t + 1.0))),
        (UPPER_BOUND, final_lr * (1.0 + 1.0 / gamma_t)),
        (BOUNDED_STEP, lr * bias_correction2.sqrt() / bias_correction1),
    ]


RULE = UpdateRule(
    "adabound",
    reference.adabound_step_reference,
    hyperparameters=(("final_lr", FINAL_LR, 0.0), ("base_lr", BASE_LR, 1.0), ("gamma", GAMMA, 0.0)),
    final_update=bounded_update,
    step_scalars=bound_scalars,
)


class V0AdaBound(V0Adam):
    """AdaBound (Luo et al., ICLR 2019): Adam whose per-element step is clipped into bounds that converge to
    `final_lr` (scaled with the group's lr, so schedules apply) at speed `gamma`; `amsbound` is its AMSGrad form.
    Defaults as the authors' code. Same keyword arguments as V0Adam."""

    _RULE = RULE

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        final_lr=0.1,
        gamma=1e-3,
        eps=1e-8,
        weight_decay=0.0,
        amsbound=False,
        *,
        decoupled_weight_decay=False,
        **kwargs,
    ):
        if not 0.0 <= final_lr:
            raise ValueError(f"Invalid final learning rate: {final_lr}")
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"Invalid gamma parameter: {gamma}")
        self._bound_defaults = dict(final_lr=final_lr, gamma=gamma)
        super().__init__(
            params, lr, betas, eps, weight_decay, amsbound, decoupled_weight_decay=decoupled_weight_decay, **kwargs
        )
        self.defaults.update(self._bound_defaults)

    def add_param_group(self, param_group: dict) -> None:
        """As V0Adam's; the group's starting lr is kept as `base_lr`, against which `final_lr` scales."""
        group = {**self._bound_defaults, **param_group}
        group.setdefault("base_lr", float(group.get("lr", self.defaults["lr"])))
        super().add_param_group(group)
