"""The Triton step as torch.compile traces it: the launches are custom ops (`torch.library.custom_op`, opaque to
the compiler, with fake implementations) that take the params and grads as tensors, one segment each, with the
rest of each segment as plain ints, and build their tables from the addresses of the tensors they are given: a
traced program cannot read addresses, and under functionalization the tensors an op gets may be copies.
`V0Adam.step` decides which steps are traced.
"""

import functools

import torch

from v0adam import triton_backend
from v0adam.sharding import local
from v0adam.triton_backend import SegmentTable


def _traced_layout(bucket, work) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """A traced step's segments, one per param stepped: params, grads, and (state offset, numel, group, step
    index) per segment as one flat list of ints."""
    params = [bucket.params[index] for index in work.stepped]
    flat_layout = [
        value
        for index in work.stepped
        for value in (bucket.offsets[index], local(bucket.params[index]).numel(), bucket.groups[index], index)
    ]
    return [local(param) for param in params], [local(param.grad) for param in params], flat_layout


@functools.lru_cache(maxsize=16)
def _table_for(device, param_addresses: tuple, grad_addresses: tuple, flat_layout: tuple) -> SegmentTable:
    table = SegmentTable(device)
    table.update_rows(list(zip(param_addresses, grad_addresses, *(flat_layout[field::4] for field in range(4)))))
    return table


def _table_of(params: list[torch.Tensor], grads: list[torch.Tensor], flat_layout: list[int]) -> SegmentTable:
    """The launch tables of a traced layout over these tensors, cached: once warm, no host-to-device copy (as CUDA
    graph capture requires) as long as the tensors stay where they are."""
    if not all(tensor.is_contiguous() for tensor in params + grads):
        raise ValueError("v0adam's traced step needs contiguous params and gradients")
    return _table_for(
        grads[0].device if grads else None,
        tuple(param.data_ptr() for param in params),
        tuple(grad.data_ptr() for grad in grads),
        tuple(flat_layout),
    )


# The op takes the params and grads, not the flat buffers they view: torch.compile (2.13) returns wrong outputs
# or fails for a custom op that takes those buffers while the views are graph inputs.
@torch.library.custom_op(
    "v0adam::adam_step_", mutates_args=("params", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master")
)
def _adam_step_op(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    hyper: torch.Tensor,
    steps: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    master: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    rounding_seed: torch.Tensor | None,
    flat_layout: list[int],
    algorithm: str,
) -> None:
    if not params:
        return
    triton_backend.launch_step(
        _table_of(params, grads, flat_layout),
        hyper,
        steps,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        master,
        param_dtype=params[0].dtype,
        grad_scale=grad_scale,
        found_inf=found_inf,
        rounding_seed=rounding_seed,
        algorithm=algorithm,
    )


@_adam_step_op.register_fake
def _(*args) -> None:
    return None  # it only writes into its arguments


@torch.library.custom_op("v0adam::grad_norm_partials", mutates_args=())
def _grad_norm_partials_op(grads: list[torch.Tensor], flat_layout: list[int], norm_type: float) -> torch.Tensor:
    table = _table_of(grads, grads, flat_layout)  # the norm kernel reads no param: their addresses are not needed
    return triton_backend.partials_over(table, grads[0].dtype, norm_type)


@_grad_norm_partials_op.register_fake
def _(grads, flat_layout, norm_type):
    blocks = sum(-(-numel // triton_backend.BLOCK) for numel in flat_layout[1::4])
    return grads[0].new_empty(blocks, dtype=torch.float32)


def step_bucket(bucket, work, hyper: torch.Tensor, grad_scale, found_inf, rounding_seed, algorithm: str) -> None:
    """`triton_backend.step_bucket` for a traced step: one launch over the params in `work.stepped`."""
    params, grads, flat_layout = _traced_layout(bucket, work)
    _adam_step_op(
        params,
        grads,
        hyper,
        bucket.steps,
        bucket.exp_avg,
        bucket.exp_avg_sq,
        bucket.max_exp_avg_sq,
        bucket.master,
        grad_scale,
        found_inf,
        rounding_seed,
        flat_layout,
        algorithm,
    )


def grad_norm_partials_of(bucket, work, norm_type: float) -> torch.Tensor:
    """`triton_backend.grad_norm_partials_of` for a traced step."""
    if not work.stepped:
        return torch.zeros(0, dtype=torch.float32, device=bucket.device)
    _, grads, flat_layout = _traced_layout(bucket, work)
    return _grad_norm_partials_op(grads, flat_layout, norm_type)
