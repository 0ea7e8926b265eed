"""The backends that step a bucket, chosen once per bucket when its params are laid out: the Triton backend (fused
kernels; `v0adam.traced_ops` stands in for its launches while torch.compile traces) and the PyTorch backend (the
same step in torch ops, for CPU tensors). Both take one step signature:

    prepare(bucket, param_groups, rule, rounding_seed)   its device tables, once per layout
    step(bucket, work, inputs, rounding_seed)           advance the step counters, then update every segment
    grad_norm_powered(bucket, work, norm_type, tracing) the grads' sum of |g|^p (max |g| for inf), or None to leave
                                                        it to torch._foreach_norm
    accumulate_grad_moments_(bucket, segments, grad_sum, grad_sum_sq)   data v0's sums of g and g^2
    grad_key(grad)                                      what the cached work of a bucket is keyed on, per grad

and say `traceable` (torch.compile may trace its step) and `runs_triton` (v0's random draws may use Triton).
"""

from typing import NamedTuple

import torch

from v0adam import torch_backend, triton_backend
from v0adam.kernels.tables import TRITON_DTYPES


class StepInputs(NamedTuple):
    """What one step hands every bucket's backend, besides the bucket, its work and its stochastic-rounding seed
    (an int for buckets that round stochastically, else None). A named tuple: torch.compile traces its making."""

    param_groups: list
    rule: object  # the optimizer's `v0adam.rules.rule.UpdateRule`
    grad_scale: torch.Tensor | None  # what each gradient is divided by: the GradScaler's scale over a clip factor
    found_inf: torch.Tensor | None  # non-zero skips the step
    tracing: bool  # torch.compile is tracing the step


class Backends:
    """The backends of one layout of an optimizer's buckets: one instance of each, shared by its buckets."""

    def __init__(self, asked: str):
        self.asked = asked  # "auto", "triton" or "torch", as the optimizer was built
        self._triton = triton_backend.TritonBackend()
        self._torch = torch_backend.TorchBackend()

    def for_bucket(self, device: torch.device, dtype: torch.dtype):
        """The backend of a bucket of `dtype` params on `device`; raises where the one asked for cannot step it."""
        if self.asked == "torch":
            return self._torch
        triton_possible = dtype in TRITON_DTYPES and (device.type == "cuda" or triton_backend.interpreter_enabled())
        if self.asked == "triton" and not triton_possible:
            raise ValueError(
                f"backend='triton' cannot step {dtype} parameters on {device}: the kernel takes float32, float16 and "
                "bfloat16 on CUDA, or on CPU with TRITON_INTERPRET=1 set before v0adam is imported"
            )
        return self._triton if triton_possible else self._torch
