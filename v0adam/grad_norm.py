"""The global gradient norm over an optimizer's grads, for `clip_grad_norm_` and the non-finite guard; over the
whole params, on every rank, when they are DTensor shards or the optimizer holds one rank's share of a partitioned
model (ZeRO).

On the Triton backend one launch per bucket writes per-block partial norms (norm types 1, 2 and inf) that a torch
reduction adds up (its `grad_norm_powered`); other norm types, and the PyTorch backend, take torch._foreach_norm over
the segments, as
torch.nn.utils.clip_grad_norm_ does. Nothing is read back to the host: the result is a 0-d float32 tensor on the
first bucket's device (float64 when float64 grads are in it, reduced in float64 as clip_grad_norm_ does).
"""

import torch
import torch.distributed as dist

from v0adam.sharding import shard_groups


def global_grad_norm(works, norm_type: float, partition_group=None, tracing: bool = False) -> torch.Tensor:
    """`works` is a list of (bucket, BucketWork); returns the norm of all their segments' grads together, and of
    the other ranks' grads too when `partition_group` is a process group over which the params are partitioned
    (every rank of it must call this, a rank with no params included). `tracing`: torch.compile traces the call."""
    norm_type = float(norm_type)
    powered = []  # per bucket: sum of |g|^p, or max |g| for inf
    for bucket, work in works:
        fused = bucket.backend.grad_norm_powered(bucket, work, norm_type, tracing)
        if fused is not None:
            powered.append(fused)
        else:
            dtype = torch.float64 if bucket.dtype == torch.float64 else torch.float32
            grads = [segment.grad for segment in work.segments]
            if grads:
                norms = torch.stack(torch._foreach_norm(grads, norm_type, dtype=dtype))
                norm = torch.linalg.vector_norm(norms, norm_type)
                powered.append(norm if norm_type == float("inf") else norm**norm_type)
            else:
                powered.append(torch.zeros((), dtype=dtype, device=bucket.device))
        if bucket.sharded:  # DTensor shards: every rank adds the other ranks' part
            for group in shard_groups(bucket.params[0]):
                _all_reduce_partial_(powered[-1], norm_type, group)
    device = works[0][0].device if works else _device_of(partition_group)
    total = _combine([value.to(device) for value in powered], norm_type, device)
    if partition_group is not None:
        _all_reduce_partial_(total, norm_type, partition_group)
    return total if norm_type in (1.0, float("inf")) else total ** (1.0 / norm_type)


def _combine(values: list[torch.Tensor], norm_type: float, device: torch.device) -> torch.Tensor:
    if not values:
        return torch.zeros((), dtype=torch.float32, device=device)
    stacked = torch.stack(values)
    return stacked.max() if norm_type == float("inf") else stacked.sum()


def _all_reduce_partial_(value: torch.Tensor, norm_type: float, group) -> None:
    """In place: a rank's partial norm made the partial over every rank of `group` (a sum, or for inf a max)."""
    if norm_type != float("inf"):
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)  # a NaN anywhere makes the sum NaN
        return
    # gloo's MAX returns max(x, NaN) = x (measured): a NaN on one rank would vanish, that rank alone would skip the
    # step or step with NaN. The NaN travels as a flag next to the value instead.
    value_and_nan = torch.stack([value, torch.isnan(value).to(value.dtype)])
    dist.all_reduce(value_and_nan, op=dist.ReduceOp.MAX, group=group)
    value.copy_(torch.where(value_and_nan[1] > 0, float("nan"), value_and_nan[0]))


def _device_of(group) -> torch.device:
    """Where a rank without params puts its partial: NCCL reduces CUDA tensors only."""
    if group is not None and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
