"""The global gradient norm over an optimizer's grads, for `clip_grad_norm_` and the non-finite guard; over the
whole params, on every rank, when they are DTensor shards.

On the Triton backend one launch per bucket writes per-block partial norms (norm types 1, 2 and inf) that a torch
reduction adds up; other norm types, and the PyTorch backend, use torch.linalg.vector_norm per segment. Nothing
is read back to the host: the result is a 0-d float32 tensor on the first bucket's device.
"""

import torch

from v0adam import traced_ops, triton_backend
from v0adam.kernels.grad_norm import FUSED_NORM_TYPES, reduce_partials
from v0adam.sharding import reduce_over_shards_


def global_grad_norm(works, norm_type: float) -> torch.Tensor:
    """`works` is a list of (bucket, BucketWork); returns the norm of all their segments' grads together."""
    norm_type = float(norm_type)
    powered = []  # per bucket: sum of |g|^p, or max |g| for inf
    for bucket, work in works:
        if bucket.backend == "triton" and norm_type in FUSED_NORM_TYPES:
            launcher = traced_ops if torch.compiler.is_compiling() else triton_backend
            partials = launcher.grad_norm_partials_of(bucket, work, norm_type)
            powered.append(reduce_partials(partials, norm_type))
        else:
            norms = [torch.linalg.vector_norm(s.grad, norm_type, dtype=torch.float32) for s in work.segments]
            powered.append(_combine([n if norm_type == float("inf") else n**norm_type for n in norms], norm_type))
        if not bucket.rehomed:  # DTensor shards: every rank adds the other ranks' part
            powered[-1] = powered[-1].to(bucket.device)
            reduce_over_shards_(powered[-1], bucket.params[0], norm_type)
    device = works[0][0].device if works else torch.device("cpu")
    total = _combine([value.to(device) for value in powered], norm_type)
    return total if norm_type in (1.0, float("inf")) else total ** (1.0 / norm_type)


def _combine(values: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    if not values:
        return torch.zeros((), dtype=torch.float32)
    stacked = torch.stack(values)
    return stacked.max() if norm_type == float("inf") else stacked.sum()
