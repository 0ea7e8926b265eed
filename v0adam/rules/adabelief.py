"""AdaBelief (Zhuang et al., NeurIPS 2020), the v0 paper's Algorithm 2: the second moment tracks the belief
(g - m_t)^2 + eps instead of g^2, with Adam's bias corrections. v0 starts its s0."""

from v0adam import reference
from v0adam.optimizer import V0Adam
from v0adam.rules.rule import UpdateRule


def belief_second_moment_(exp_avg_sq, grad, exp_avg, beta2: float, eps: float) -> None:
    """s = beta2 s + (1 - beta2) (g - m)^2 + eps, in place (m the new exp_avg)."""
    belief = grad - exp_avg
    exp_avg_sq.mul_(beta2).addcmul_(belief, belief, value=1 - beta2).add_(eps)


RULE = UpdateRule("adabelief", reference.adabelief_step_reference, second_moment_=belief_second_moment_)


class V0AdaBelief(V0Adam):
    """AdaBelief (Zhuang et al., NeurIPS 2020), the paper's Algorithm 2: the second moment tracks the belief
    (g - m_t)^2 + eps instead of g^2; Adam's bias corrections. Defaults as the authors' package: eps 1e-16,
    decoupled weight decay. Same keyword arguments as V0Adam."""

    _RULE = RULE

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-16,
        weight_decay=0.0,
        amsgrad=False,
        *,
        decoupled_weight_decay=True,
        **kwargs,
    ):
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=decoupled_weight_decay, **kwargs
        )
