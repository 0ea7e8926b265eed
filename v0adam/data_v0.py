"""Data-driven v0 (paper eq. 10, SPEC §2): v0 = sigma * (mean(g)^2 + B * var(g)) per element, the mean and the
variance taken over the gradients of K mini-batches of size B, so that B * var estimates the per-sample variance.

The sums of g and g^2 accumulate in the optimizer's own exp_avg and exp_avg_sq buffers (one fused launch per
bucket and batch on the Triton backend), so the pass needs no parameter-sized memory of its own. The variance is
the population variance of the K mini-batch gradients; a param that got no gradient (None) in some batches is
averaged over the batches where it had one.

Under DDP or FSDP2 every rank's gradient is already the average over the global batch, so B and the sample count
are global: each rank adds the batch sizes of all ranks (one small collective per batch), and every rank ends with
the v0 that one process would compute on the same global batches.
"""

import contextlib

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from v0adam import v0


def batch_size(batch) -> int:
    """The first dimension of the batch's first tensor (a tensor, or the first in a tuple, list or dict)."""
    while not isinstance(batch, torch.Tensor):
        if isinstance(batch, dict):
            batch = next(iter(batch.values()))
        elif isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        else:
            raise TypeError(f"cannot find a tensor in the batch to take its size from: {type(batch).__name__}")
    return batch.shape[0]


def global_batch_size(size: int, process_group) -> int:
    """The sum of `size` over the ranks of `process_group` (None: the default group, when there is one)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(process_group) == 1:
        return size
    sizes = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(sizes, size, group=process_group)
    return sum(sizes)


def init_v0_from_data(optimizer, batches, loss_fn, *, num_samples: int, scale, model, process_group=None) -> int:
    # Its backward passes only collect gradients: with release_grads they must not step.
    release = optimizer._release
    with release.accumulate() if release is not None else contextlib.nullcontext():
        return _collect(optimizer, batches, loss_fn, num_samples, scale, model, process_group)


def _collect(optimizer, batches, loss_fn, num_samples: int, scale, model, process_group) -> int:
    data_groups = {index for index, group in enumerate(optimizer.param_groups) if group["v0"] == v0.DATA}
    if not data_groups:
        raise ValueError("init_v0_from_data needs at least one param group with v0='data'")
    if optimizer._layout.holds_trained_state():
        raise RuntimeError(
            "init_v0_from_data must run before the first step(), and not after load_state_dict() of a trained "
            "state: it overwrites exp_avg and exp_avg_sq"
        )
    if num_samples <= 0:
        raise ValueError(f"Invalid num_samples value: {num_samples}")
    sums = {bucket: _sum_buffers(bucket, data_groups) for bucket in optimizer._buckets}

    counts = {bucket: [0] * len(bucket.params) for bucket in optimizer._buckets}
    was_training = model.training if model is not None else None
    if model is not None:
        model.eval()  # as the authors collect their statistics
    seen, batches_seen = 0, 0
    try:
        with tqdm(total=num_samples, desc="v0 from data", unit="sample", delay=2) as progress:
            for batch in batches:
                optimizer.zero_grad()
                with torch.enable_grad():
                    loss_fn(batch).backward()
                for bucket in optimizer._buckets:
                    _accumulate(bucket, data_groups, counts[bucket], *sums[bucket])
                size = global_batch_size(batch_size(batch), process_group)
                seen += size
                batches_seen += 1
                progress.update(size)
                if seen >= num_samples:
                    break
    finally:
        optimizer.zero_grad()
        if model is not None:
            model.train(was_training)
    if batches_seen == 0:
        raise ValueError("init_v0_from_data got no batches")

    mean_batch_size = seen / batches_seen
    for bucket in optimizer._buckets:
        for index in _data_params(bucket, data_groups):
            group = optimizer.param_groups[bucket.groups[index]]
            sigma = v0.resolve_scale(v0.DATA, group["v0_scale"] if scale is None else scale)
            grad_sum, grad_sum_sq = (bucket.slot(buffer, index) for buffer in sums[bucket])
            _finalise_(grad_sum, grad_sum_sq, counts[bucket][index], mean_batch_size, sigma)
            if sums[bucket][1] is not bucket.exp_avg_sq:  # the sums were float32 temporaries
                bucket.write_moment("exp_avg_sq", index, grad_sum_sq)
                bucket.write_moment("exp_avg", index, grad_sum)  # zeroed by _finalise_
    return seen


def _sum_buffers(bucket, data_groups):
    """Where the sums of g and g^2 accumulate: the bucket's own exp_avg and exp_avg_sq (their data-group slots
    zeroed) where the moments are stored as float32 or float64 values, else float32 temporaries (bfloat16 or 8-bit
    moments)."""
    if bucket.moments.dtype not in (torch.float32, torch.float64):
        return torch.zeros(bucket.total, device=bucket.device), torch.zeros(bucket.total, device=bucket.device)
    for index in _data_params(bucket, data_groups):
        bucket.slot(bucket.exp_avg, index).zero_()
        bucket.slot(bucket.exp_avg_sq, index).zero_()
    return bucket.exp_avg, bucket.exp_avg_sq


def _data_params(bucket, data_groups) -> list[int]:
    return [index for index, group in enumerate(bucket.groups) if group in data_groups]


@torch.no_grad()
def _accumulate(bucket, data_groups, counts, grad_sum, grad_sum_sq) -> None:
    """grad_sum += g, grad_sum_sq += g^2 for this batch's grads of the data groups' params (one launch per bucket
    on the Triton backend)."""
    work = bucket.work.collect()
    segments = [segment for segment in work.segments if segment.group in data_groups]
    bucket.backend.accumulate_grad_moments_(bucket, segments, grad_sum, grad_sum_sq)
    for index in work.stepped:
        if bucket.groups[index] in data_groups:
            counts[index] += 1


@torch.no_grad()
def _finalise_(grad_sum, grad_sum_sq, count: int, batch: float, sigma: float) -> None:
    """In place: grad_sum_sq <- sigma * (mean^2 + B * var), grad_sum <- 0 (m0 stays 0)."""
    if count == 0:
        grad_sum_sq.zero_()
        return
    mean = grad_sum.div_(count)
    variance = grad_sum_sq.div_(count).addcmul_(mean, mean, value=-1).clamp_(min=0)
    variance.mul_(batch).addcmul_(mean, mean).mul_(sigma)
    grad_sum.zero_()
