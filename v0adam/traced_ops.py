"""The Triton step as torch.compile traces it: the launches are custom ops (`torch.library.custom_op`, opaque to
the compiler, with fake implementations) that take the params and grads as tensors, one segment each, with the
rest of each segment as plain ints, and build their tables from the addresses of the tensors they are given: a
traced program cannot read addresses, and under functionalization the tensors an op gets may be copies.
`V0Adam.step` decides which steps are traced.
"""

import functools

import torch

from v0adam import triton_backend
from v0adam.kernels.tables import SegmentRow
from v0adam.rules.rule import UpdateRule
from v0adam.sharding import local
from v0adam.triton_backend import SegmentTable

# The columns of a segment that a traced layout passes as ints, one run of FIELDS per segment (the addresses are the
# tensors' own, the first block the table's).
COLUMNS = ("state_offset", "numel", "group", "step_index")
FIELDS = len(COLUMNS)


def _traced_layout(bucket, work) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """A traced step's segments, one per param stepped: params, grads, and the segments' COLUMNS as one flat list
    of ints."""
    params = [bucket.params[index] for index in work.stepped]
    flat_layout = [
        value
        for index in work.stepped
        for value in (
            bucket.offsets[index],
            local(bucket.params[index]).numel(),
            bucket.groups[index],
            index,
        )  # COLUMNS
    ]
    return [local(param) for param in params], [local(param.grad) for param in params], flat_layout


def _numels(flat_layout: list[int]) -> list[int]:
    return flat_layout[COLUMNS.index("numel") :: FIELDS]


@functools.lru_cache(maxsize=4096)  # a traced step takes one table per re-homed param (see step_bucket)
def _table_for(
    device, dtype, state_dtype, param_addresses: tuple, grad_addresses: tuple, flat_layout: tuple
) -> SegmentTable:
    table = SegmentTable(device, dtype, state_dtype)
    rows = [
        SegmentRow(param_addr, grad_addr, first_block=0, **dict(zip(COLUMNS, flat_layout[start : start + FIELDS])))
        for start, param_addr, grad_addr in zip(range(0, len(flat_layout), FIELDS), param_addresses, grad_addresses)
    ]
    table.update_rows(rows)
    return table


def _table_of(
    params: list[torch.Tensor], grads: list[torch.Tensor], flat_layout: list[int], state_dtype: torch.dtype
) -> SegmentTable:
    """The launch tables of a traced layout over these tensors, cached by address: no host-to-device copy while the
    compiled graph hands the ops the same tensors (a CUDA graph replay always does; inductor's temporaries may move
    between calls, and then a table is rebuilt)."""
    if not all(tensor.is_contiguous() for tensor in params + grads):
        raise ValueError("v0adam's traced step needs contiguous params and gradients")
    return _table_for(
        grads[0].device if grads else None,
        grads[0].dtype if grads else None,
        state_dtype,
        tuple(param.data_ptr() for param in params),
        tuple(grad.data_ptr() for grad in grads),
        tuple(flat_layout),
    )


# The op takes the params and grads, not the flat buffers they view: torch.compile (2.13) returns wrong outputs
# or fails for a custom op that takes those buffers while the views are graph inputs.
@torch.library.custom_op(
    "v0adam::adam_step_", mutates_args=("params", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master", "scales")
)
def _adam_step_op(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    scalars: torch.Tensor,
    steps: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    master: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    rounding_seed: torch.Tensor | None,
    scales: torch.Tensor | None,
    flat_layout: list[int],
    algorithm: str,
) -> None:
    if not params:
        return
    triton_backend.launch_step(
        _table_of(params, grads, flat_layout, exp_avg.dtype),
        scalars,
        steps,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        master,
        param_dtype=params[0].dtype,
        grad_scale=grad_scale,
        found_inf=found_inf,
        rounding_seed=rounding_seed,
        scales=scales,
        algorithm=algorithm,
    )


@_adam_step_op.register_fake
def _(*args) -> None:
    return None  # it only writes into its arguments


@torch.library.custom_op("v0adam::grad_norm_partials", mutates_args=())
def _grad_norm_partials_op(grads: list[torch.Tensor], flat_layout: list[int], norm_type: float) -> torch.Tensor:
    # The norm kernel reads no param: their addresses are not needed. The tail split depends on addresses, which
    # the fake cannot see: both return as many partials as any split could need.
    table = _table_of(grads, grads, flat_layout, torch.float32)  # the grads' alignment is all the norm reads
    capacity = triton_backend.partials_capacity(_numels(flat_layout))
    return triton_backend.partials_over(table, grads[0].dtype, norm_type, capacity)


@_grad_norm_partials_op.register_fake
def _(grads, flat_layout, norm_type):
    return grads[0].new_empty(triton_backend.partials_capacity(_numels(flat_layout)), dtype=torch.float32)


@torch.library.custom_op("v0adam::advance_steps_", mutates_args=("steps", "scalars"))
def _advance_steps_op(
    steps: torch.Tensor,
    increment: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    param_group: torch.Tensor,
    hyper: torch.Tensor,
    scalars: torch.Tensor,
    algorithm: str,
) -> None:
    rule = UpdateRule.named(algorithm)
    triton_backend.ADVANCE_STEPS(steps, increment, found_inf, param_group, hyper, scalars, rule)


@_advance_steps_op.register_fake
def _(*args) -> None:
    return None  # it only writes into its arguments


def advance_bucket_steps(bucket, increment, found_inf, hyper: torch.Tensor, rule) -> None:
    """`triton_backend.advance_bucket_steps` for a traced step."""
    mask = increment if isinstance(increment, torch.Tensor) else None
    _advance_steps_op(bucket.steps, mask, found_inf, bucket.param_group, hyper, bucket.step_scalars, rule.name)


def step_bucket(bucket, work, grad_scale, found_inf, rounding_seed, rule) -> None:
    """`triton_backend.step_bucket` for a traced step over the params in `work.stepped`.

    Params re-homed into a flat buffer (flat_grads) take one launch each. Handed several views of one buffer to
    mutate, the compiler (torch 2.13) first copies each view together with everything before it in the buffer, and
    writes them back after: traffic and memory quadratic in the number of params (inductor's code on CPU copies a
    32- and a 1024-element param of a 3136-element buffer as 2080 and 3136 elements; handing it the buffer itself
    instead returns wrong outputs when the params are graph inputs too). One param per launch, each is stepped where
    it lies. The model's own params and DTensor shards own their storage: one launch for all."""
    params, grads, flat_layout = _traced_layout(bucket, work)
    launches = [(params, grads, flat_layout)]
    if bucket.rehomed:
        launches = [
            ([param], [grad], flat_layout[FIELDS * index : FIELDS * (index + 1)])
            for index, (param, grad) in enumerate(zip(params, grads))
        ]
    for launch_params, launch_grads, launch_layout in launches:
        _adam_step_op(
            launch_params,
            launch_grads,
            bucket.step_scalars,
            bucket.steps,
            bucket.exp_avg,
            bucket.exp_avg_sq,
            bucket.max_exp_avg_sq,
            bucket.master,
            grad_scale,
            found_inf,
            rounding_seed,
            bucket.scales,
            launch_layout,
            rule.name,
        )


def grad_norm_partials_of(bucket, work, norm_type: float) -> torch.Tensor:
    """`triton_backend.grad_norm_partials_of` for a traced step."""
    if not work.stepped:
        return torch.zeros(0, dtype=torch.float32, device=bucket.device)
    _, grads, flat_layout = _traced_layout(bucket, work)
    return _grad_norm_partials_op(grads, flat_layout, norm_type)
