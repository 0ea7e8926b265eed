"""What an update rule is: everything in which a member of the family differs from Adam."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from v0adam.kernels import adam as adam_kernel


def squared_gradient_(exp_avg_sq, grad, exp_avg, beta2: float, eps: float) -> None:
    """Adam's second moment, in place: v = beta2 v + (1 - beta2) g^2."""
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


def adam_final_update(exp_avg, second_moment, step, lr, beta1, beta2, group) -> torch.Tensor:
    """Adam's update, lr m_hat / (sqrt(v_hat) + eps), computed as torch's single-tensor Adam does."""
    bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
    denom = second_moment.sqrt().div_(math.sqrt(bias_correction2)).add_(group["eps"])
    return exp_avg.div(denom).mul_(lr / bias_correction1)


def no_scalars(step, group_columns, bias_correction1, bias_correction2) -> list:
    return []


@dataclass(frozen=True)
class UpdateRule:
    """One member's update, in every form the project runs it.

    name: the kernels' ALGORITHM switch (`v0adam.kernels.adam.ALGORITHMS`).
    reference: its plain step in `v0adam.reference`, the specification the kernel and the backends are tested on.
    hyperparameters: (group key, hyperparameter-table column, default) beyond Adam's, which the kernels read.
    second_moment_: the PyTorch backend's in-place update of exp_avg_sq from (grad, the new exp_avg, beta2, eps).
    final_update: the amount the PyTorch backend subtracts from the param (see the kernel's docstring).
    step_scalars: the PyTorch twin of its branch of `v0adam.kernels.step_scalars`: (column, float64 values) pairs
        from the new step counts (int32), the params' hyperparameter rows and the bias corrections (float64).
    torch_fused: whether torch's own fused Adam kernel (`torch._fused_adam(w)_`) computes it.
    """

    name: str
    reference: Callable
    hyperparameters: tuple = ()
    second_moment_: Callable = squared_gradient_
    final_update: Callable = adam_final_update
    step_scalars: Callable = no_scalars
    torch_fused: bool = False

    def __post_init__(self):
        _RULES[self.name] = self

    @property
    def kernel_id(self) -> int:
        return adam_kernel.ALGORITHMS[self.name]

    @staticmethod
    def named(name: str) -> "UpdateRule":
        """The rule of that name (a custom op of torch.compile takes its name, not the object)."""
        return _RULES[name]


_RULES = {}  # by name, filled as each member's file defines its rule
