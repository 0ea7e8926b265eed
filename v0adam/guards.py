"""What a step does to the gradients before it updates anything: the GradScaler's unscale and skip, a pending
`clip_grad_norm_`'s coefficient, and with `skip_nonfinite` the check of every grad (counted in `skipped_steps`).
All of it reaches the kernel as two device scalars, a divisor and a skip flag: the grads are never rewritten and
nothing is read back to the host."""

import torch

from v0adam import grad_norm


class StepGuards:
    """The pending clip of one optimizer, and the scalars each of its steps hands the backends.

    The pending clip lives in a dict: torch.compile before 2.12 traces writes into an object the optimizer holds,
    not into the optimizer's own attributes (a traced step writes none)."""

    def __init__(self):
        self._pending_clip = {"coefficient": None, "norm": None}

    def clip(self, works, max_norm: float, norm_type: float, partition_group, tracing: bool) -> torch.Tensor:
        """The global norm of the works' grads; the next step multiplies each grad by min(1, max_norm / (norm +
        1e-6)) as it reads it."""
        norm = grad_norm.global_grad_norm(works, norm_type, partition_group, tracing)
        self._pending_clip.update(coefficient=torch.clamp(max_norm / (norm + 1e-6), max=1.0), norm=norm)
        return norm

    def grad_divisor(self, grad_scale):
        """What the kernel divides each gradient by: the GradScaler's scale over the pending clip coefficient."""
        coefficient = self._pending_clip["coefficient"]
        self._pending_clip["coefficient"] = None
        if coefficient is None:
            return grad_scale
        return (1.0 if grad_scale is None else grad_scale.to(coefficient.device)) / coefficient

    def found_nonfinite(self, works, found_inf, skipped_steps, partition_group, tracing: bool):
        """The flag that skips this step: GradScaler's found_inf, plus where `skipped_steps` counts them (with
        skip_nonfinite) a check of every grad: the norm of a pending clip_grad_norm_ when there is one, else one
        fused pass. A rank without params of a partitioned model takes part in the norm's all-reduce."""
        norm = self._pending_clip["norm"]
        self._pending_clip["norm"] = None
        if skipped_steps is None or not (works or partition_group is not None):
            return found_inf
        if norm is None:
            norm = grad_norm.global_grad_norm(works, 1.0, partition_group, tracing)
        found = (~torch.isfinite(norm)).float()
        if found_inf is not None:
            found = found + found_inf.to(found.device)
        skipped_steps.add_((found != 0).to(torch.int64).to(skipped_steps.device))
        return found
