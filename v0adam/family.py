"""The rest of the family the v0 paper initialises (arXiv 2412.02153, Table 1): AdaBelief, RAdam and AdaBound,
each the same optimizer class, flat buffers, v0 strategies, precision modes and single fused launch as V0Adam,
with the kernel's ALGORITHM switch selecting the update rule. v0 starts the second-moment state: AdaBelief's s0,
RAdam's v0 (it matters from the first rectified step on), AdaBound's v0.
"""

from v0adam.optimizer import V0Adam


class V0AdaBelief(V0Adam):
    """AdaBelief (Zhuang et al., NeurIPS 2020), the paper's Algorithm 2: the second moment tracks the belief
    (g - m_t)^2 + eps instead of g^2; Adam's bias corrections. Defaults as the authors' package: eps 1e-16,
    decoupled weight decay. Same keyword arguments as V0Adam."""

    _ALGORITHM = "adabelief"

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


class V0RAdam(V0Adam):
    """RAdam (Liu et al., ICLR 2020) exactly as torch.optim.RAdam: the adaptive step is used, rectified, once the
    variance of its length is tractable (rho_t > 5), and plain momentum SGD before. Same keyword arguments as
    V0Adam (no amsgrad, as torch's)."""

    _ALGORITHM = "radam"

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, decoupled_weight_decay=False, **kwargs
    ):
        super().__init__(
            params, lr, betas, eps, weight_decay, False, decoupled_weight_decay=decoupled_weight_decay, **kwargs
        )


class V0AdaBound(V0Adam):
    """AdaBound (Luo et al., ICLR 2019): Adam whose per-element step is clipped into bounds that converge to
    `final_lr` (scaled with the group's lr, so schedules apply) at speed `gamma`; `amsbound` is its AMSGrad form.
    Defaults as the authors' code. Same keyword arguments as V0Adam."""

    _ALGORITHM = "adabound"

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
