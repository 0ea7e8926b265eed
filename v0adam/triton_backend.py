"""The Triton backend: turns a bucket's segments into the kernel's device-memory tables and launches one step
(`v0adam.traced_ops` launches it while torch.compile traces)."""

import os

import torch

from v0adam import quantization
from v0adam.fixed_address import fixed_address
from v0adam.graph_capture import hold_if_capturing, upload, upload_into
from v0adam.kernels import adam as adam_kernel
from v0adam.kernels.grad_norm import grad_norm_partials


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Elements and warps per program, from python -m bench.tune on an H200 (torch 2.11, triton 3.6), medians of 30:
#   BLOCK 1024, 4 warps: 64M fp32 0.450 ms (98.2% of copy bandwidth), GPT-2 small 0.828 ms (99.1%)
#   BLOCK 4096, 8 warps: 0.468 ms (94.5%), 0.856 ms;  16 warps or BLOCK 8192 with 4 warps: 82-50%.
# The interpreter pays ~1 ms per program instance whatever its size, so it gets large blocks.
BLOCK = 4096 if interpreter_enabled() else 1024
NUM_WARPS = 4


class SegmentTable:
    """The segment and block tables of one bucket, in device memory, rebuilt only when an address changes."""

    def __init__(self, device: torch.device):
        self.device = device
        self._key = None
        self._addresses = None
        self.segments = None
        self.block_segment = None
        self.aligned = False

    def update(self, work) -> None:
        """The tables of a `BucketWork`'s segments; when its addresses are those of the last update (a steady
        training loop), nothing is done: one comparison, the segments are not even made."""
        if work.addresses is not None and work.addresses == self._addresses:
            return
        self._addresses = work.addresses
        self.update_segments(work.segments)

    def update_segments(self, segments) -> None:
        self.update_rows(
            [
                (s.param.data_ptr(), s.grad.data_ptr(), s.state_offset, s.param.numel(), s.group, s.step_index)
                for s in segments
            ]
        )

    def update_rows(self, rows: list[tuple[int, int, int, int, int, int]]) -> None:
        """Rows of (param address, grad address, state offset, numel, group, step index), one per segment."""
        if rows == self._key:
            return
        first_block, blocks_per_segment, table = 0, [], []
        for param_addr, grad_addr, state_offset, numel, group, step_index in rows:
            blocks = -(-numel // BLOCK)
            table.append((param_addr, grad_addr, state_offset, numel, first_block, group, step_index))
            blocks_per_segment.append(blocks)
            first_block += blocks
        host_table = torch.tensor(table, dtype=torch.int64).reshape(-1, adam_kernel.SEGMENT_FIELDS.value)
        host_blocks = torch.repeat_interleave(
            torch.arange(len(rows), dtype=torch.int32), torch.tensor(blocks_per_segment, dtype=torch.int64)
        )
        self.segments = upload(host_table, self.device)
        self.block_segment = upload(host_blocks, self.device)
        align_bytes, align_elements = adam_kernel.ALIGN_BYTES.value, adam_kernel.ALIGN_ELEMENTS.value
        self.aligned = all(
            param_addr % align_bytes == 0
            and grad_addr % align_bytes == 0
            and state_offset % align_elements == 0
            and numel % align_elements == 0
            for param_addr, grad_addr, state_offset, numel, _, _ in rows
        )
        self._key = rows


def step_bucket(bucket, work, hyper: torch.Tensor, grad_scale, found_inf, rounding_seed, algorithm: str) -> None:
    """One fused launch over every segment of the bucket; step counters were advanced by the caller.
    `rounding_seed` (a device int64 tensor) switches stochastic rounding on."""
    table = bucket.segment_table
    table.update(work)
    launch_step(
        table,
        hyper,
        bucket.steps,
        bucket.exp_avg,
        bucket.exp_avg_sq,
        bucket.max_exp_avg_sq,
        bucket.master,
        param_dtype=bucket.dtype,
        grad_scale=grad_scale,
        found_inf=found_inf,
        rounding_seed=rounding_seed,
        scales=bucket.scales,
        algorithm=algorithm,
    )


def launch_step(table: SegmentTable, hyper, steps, exp_avg, exp_avg_sq, max_exp_avg_sq, master, **options) -> None:
    """The kernel launch over `table` with this backend's block size and warps; `options` as `adam_step`'s, the
    code table added for 8-bit states (`scales` given)."""
    hold_table_if_capturing(table)
    if options.get("scales") is not None:
        options["code_table"] = quantization.code_table(table.device)
    adam_kernel.adam_step(
        table.segments,
        table.block_segment,
        hyper,
        steps,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        master,
        aligned=table.aligned,
        block=BLOCK,
        num_warps=NUM_WARPS,
        **options,
    )


def grad_norm_partials_of(bucket, work, norm_type: float) -> torch.Tensor:
    """Per-block partial norms of the bucket's grads (one launch; see `v0adam.kernels.grad_norm`)."""
    table = bucket.segment_table
    table.update(work)
    return partials_over(table, bucket.dtype, norm_type)


def partials_over(table: SegmentTable, param_dtype: torch.dtype, norm_type: float) -> torch.Tensor:
    hold_table_if_capturing(table)
    return grad_norm_partials(
        table.segments, table.block_segment, param_dtype=param_dtype, norm_type=norm_type, block=BLOCK
    )


def hold_table_if_capturing(table: SegmentTable) -> None:
    """A launch captured into a CUDA graph reads the table's current tensors at every replay: kept for good."""
    hold_if_capturing(table.device, table.segments, table.block_segment)


class HyperTable:
    """Per-group hyperparameters of one device in device memory (float64 [groups, HYPER_FIELDS]).

    Python floats are uploaded only when one of them changed (an LR schedule: one small copy per step), into the
    same device tensor; tensor values (a tensor lr, tensor betas) are copied device-side every step, never read on
    the host.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._host_values = None
        self.table = None

    def update(self, param_groups) -> torch.Tensor:
        rows, tensors = [], []
        for index, group in enumerate(param_groups):
            row = [0.0] * adam_kernel.HYPER_FIELDS.value
            for field, value in _hyper_values(group):
                if isinstance(value, torch.Tensor):
                    tensors.append((index, field, value))
                else:
                    row[field] = float(value)
            rows.append(row)
        if rows != self._host_values:
            values = torch.tensor(rows, dtype=torch.float64)
            if self.table is None or self.table.shape != values.shape:
                self.table = fixed_address(upload(values, self.device))
            else:  # in place: the table keeps its address, which a compiled or captured step has taken
                upload_into(self.table, values)
            self._host_values = rows
        for index, field, value in tensors:
            self.table[index, field].copy_(value.reshape(()), non_blocking=True)
        return self.table


def _hyper_values(group):
    """(column, value) pairs of one param group's row in the hyperparameter table."""
    beta1, beta2 = group["betas"]
    return (
        (adam_kernel.LR.value, group["lr"]),
        (adam_kernel.BETA1.value, beta1),
        (adam_kernel.BETA2.value, beta2),
        (adam_kernel.EPS.value, group["eps"]),
        (adam_kernel.WEIGHT_DECAY.value, group["weight_decay"]),
        (adam_kernel.MAXIMIZE.value, group["maximize"]),
        (adam_kernel.AMSGRAD.value, group["amsgrad"]),
        (adam_kernel.DECOUPLED.value, group["decoupled_weight_decay"]),
        (adam_kernel.FINAL_LR.value, group.get("final_lr", 0.0)),
        (adam_kernel.BASE_LR.value, group.get("base_lr", 1.0)),
        (adam_kernel.GAMMA.value, group.get("gamma", 0.0)),
    )
