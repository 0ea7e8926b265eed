"""The Triton backend: turns a bucket's segments into the kernel's device-memory tables and launches one step
(`v0adam.traced_ops` launches it while torch.compile traces)."""

import os
import sys

import torch

from v0adam import quantization
from v0adam.fixed_address import fixed_address
from v0adam.graph_capture import hold_if_capturing, upload, upload_into
from v0adam.kernels import adam as adam_kernel
from v0adam.kernels.grad_norm import grad_norm_partials
from v0adam.kernels.step_scalars import advance_steps, advance_steps_reference


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Elements and warps per program, from python -m bench.tune on an H200 (torch 2.11, triton 3.6), medians of 30:
#   BLOCK 1024, 4 warps: 64M fp32 0.450 ms (98.2% of copy bandwidth), GPT-2 small 0.828 ms (99.1%)
#   BLOCK 4096, 8 warps: 0.468 ms (94.5%), 0.856 ms;  16 warps or BLOCK 8192 with 4 warps: 82-50%.
# The interpreter pays ~1 ms per program instance whatever its size, so it gets large blocks.
BLOCK = 4096 if interpreter_enabled() else 1024
NUM_WARPS = 4
# 8-bit states: twice the elements per thread. Each thread's fixed work (the segment and scalar loads, and per
# quantization block a maximum across the warp, a reciprocal and the scale's store) is then shared by 16 elements,
# and 16 elements of 8-bit states (10 bytes each with bfloat16 params) put fewer bytes in flight per thread than
# the 8 of float32 states (28 bytes) BLOCK was tuned with. Predicted by the static model (`python -m bench.static`,
# 96% of copy for bfloat16 params against 89% at 1024); not yet measured on a GPU.
QUANTIZED_BLOCK = BLOCK if interpreter_enabled() else 2048
# Whether a segment that breaks the alignment promise costs only itself (see SegmentTable). The interpreter has
# no vector accesses to keep and pays per program: there the tables stay as they were (one launch, aligned only
# if every segment is), except where a test switches the split on to check it changes nothing.
SPLIT_UNALIGNED = not interpreter_enabled()
# The step scalars: the kernel, or under the interpreter its PyTorch twin, equal bit for bit (tests/test_kernel.py
# checks the kernel against it): the interpreter takes about 50 ms a step over the kernel's scalar-sized operations.
ADVANCE_STEPS = advance_steps_reference if interpreter_enabled() else advance_steps


def launcher():
    """The module whose launches step a Triton bucket now: `v0adam.traced_ops` while torch.compile traces (imported
    then, beside the compiler it needs), else this one."""
    if torch.compiler.is_compiling():
        from v0adam import traced_ops

        return traced_ops
    return sys.modules[__name__]


class SegmentTable:
    """The segment and block tables of one bucket, in device memory, rebuilt only when an address changes.

    A segment that breaks the kernel's alignment promise costs only itself: its aligned bulk stays with the
    others, and what remains (the tail of a segment whose numel is not a multiple of ALIGN_ELEMENTS, or a whole
    segment at an unaligned address) is stepped by a second, unaligned launch over the blocks after theirs. 8-bit
    segments are whole quantization blocks (refused otherwise), so they have no tail and no block is shared by two
    launches. Without such a part, one launch.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, quantized: bool = False):
        self.device = device
        self.itemsize = dtype.itemsize
        self.quantized = quantized
        self.block = QUANTIZED_BLOCK if quantized else BLOCK  # elements per program of every launch over it
        self._key = None
        self._addresses = None
        self.segments = None
        self.block_segment = None
        self.launches = []  # (block_segment view, aligned) per launch, aligned first

    @classmethod
    def for_bucket(cls, bucket) -> "SegmentTable":
        return cls(bucket.device, bucket.dtype, bucket.quantized)

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
        if self.quantized and any(row[3] % quantization.QBLOCK for row in rows):
            # The kernel's quantizers take every stored row for a whole block (`v0adam.kernels.quantization`).
            raise ValueError(f"8-bit segments must be whole blocks of {quantization.QBLOCK} elements")
        pieces = {True: [], False: []}
        for row in rows:
            for piece, aligned in self._pieces(*row):
                pieces[aligned].append(piece)
        if not SPLIT_UNALIGNED and pieces[False]:
            pieces = {True: [], False: rows}
        table, blocks_per_segment, launch_blocks = [], [], []
        for aligned in (True, False):
            first_block = 0  # block numbers count from each launch's first program
            for param_addr, grad_addr, state_offset, numel, group, step_index in pieces[aligned]:
                blocks = -(-numel // self.block)
                table.append((param_addr, grad_addr, state_offset, numel, first_block, group, step_index))
                blocks_per_segment.append(blocks)
                first_block += blocks
            launch_blocks.append(first_block)
        host_table = torch.tensor(table, dtype=torch.int64).reshape(-1, adam_kernel.SEGMENT_FIELDS.value)
        host_blocks = torch.repeat_interleave(
            torch.arange(len(table), dtype=torch.int32), torch.tensor(blocks_per_segment, dtype=torch.int64)
        )
        self.segments = upload(host_table, self.device)
        self.block_segment = upload(host_blocks, self.device)
        aligned_blocks, unaligned_blocks = launch_blocks
        self.launches = [
            (self.block_segment[start : start + count], aligned)
            for start, count, aligned in ((0, aligned_blocks, True), (aligned_blocks, unaligned_blocks, False))
            if count
        ]
        self._key = rows

    def _pieces(self, param_addr, grad_addr, state_offset, numel, group, step_index):
        """(row, aligned) for the parts of one segment: its aligned bulk and its unaligned tail, either maybe empty."""
        align_bytes, align_elements = adam_kernel.ALIGN_BYTES.value, adam_kernel.ALIGN_ELEMENTS.value
        row = (param_addr, grad_addr, state_offset, numel, group, step_index)
        if param_addr % align_bytes or grad_addr % align_bytes or state_offset % align_elements:
            return [(row, False)]
        if numel % align_elements == 0:
            return [(row, True)]
        bulk = numel - numel % align_elements
        step = bulk * self.itemsize
        pieces = [((param_addr, grad_addr, state_offset, bulk, group, step_index), True)] if bulk else []
        if numel > bulk:
            tail = (param_addr + step, grad_addr + step, state_offset + bulk, numel - bulk, group, step_index)
            pieces.append((tail, False))
        return pieces

    @property
    def num_blocks(self) -> int:
        return self.block_segment.numel()


def prepare(bucket) -> None:
    """The bucket's device tables of this backend: its launch tables, each param's group and step scalars."""
    bucket.segment_table = SegmentTable.for_bucket(bucket)
    bucket.param_group = fixed_address(upload(torch.tensor(bucket.groups, dtype=torch.int32), bucket.device))
    scalars = torch.zeros(len(bucket.params), adam_kernel.SCALAR_FIELDS.value, device=bucket.device)
    bucket.step_scalars = fixed_address(scalars)


def advance_bucket_steps(bucket, increment, found_inf, hyper: torch.Tensor, algorithm: str) -> None:
    """The bucket's step counters advanced by `increment` (1.0 or a device mask) unless found_inf, and the step
    scalars of its params computed (one launch; see `v0adam.kernels.step_scalars`)."""
    hold_if_capturing(bucket.device, bucket.param_group)
    mask = increment if isinstance(increment, torch.Tensor) else None
    ADVANCE_STEPS(bucket.steps, mask, found_inf, bucket.param_group, hyper, bucket.step_scalars, algorithm)


def step_bucket(bucket, work, grad_scale, found_inf, rounding_seed, algorithm: str) -> None:
    """One fused launch over every segment of the bucket (two with an unaligned part); step counters and scalars
    were advanced by `advance_bucket_steps`. `rounding_seed` (a device int64 tensor) switches stochastic rounding
    on."""
    table = bucket.segment_table
    table.update(work)
    launch_step(
        table,
        bucket.step_scalars,
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


def launch_step(table: SegmentTable, scalars, steps, exp_avg, exp_avg_sq, max_exp_avg_sq, master, **options) -> None:
    """The kernel launches over `table` with this backend's block size and warps; `options` as `adam_step`'s."""
    hold_table_if_capturing(table)
    for block_segment, aligned in table.launches:
        adam_kernel.adam_step(
            table.segments,
            block_segment,
            scalars,
            steps,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            master,
            aligned=aligned,
            block=table.block,
            num_warps=NUM_WARPS,
            **options,
        )


def grad_norm_partials_of(bucket, work, norm_type: float) -> torch.Tensor:
    """Per-block partial norms of the bucket's grads (see `v0adam.kernels.grad_norm`)."""
    table = bucket.segment_table
    table.update(work)
    return partials_over(table, bucket.dtype, norm_type)


def partials_over(table: SegmentTable, param_dtype: torch.dtype, norm_type: float, capacity: int | None = None):
    """One partial per block of `table`, in a float32 tensor of `capacity` elements (default: as many as blocks),
    the rest zeros, which neither a sum nor a max of norms changes."""
    hold_table_if_capturing(table)
    partials = torch.zeros(table.num_blocks if capacity is None else capacity, device=table.device)
    start = 0
    for block_segment, aligned in table.launches:
        grad_norm_partials(
            table.segments,
            block_segment,
            partials[start : start + block_segment.numel()],
            param_dtype=param_dtype,
            norm_type=norm_type,
            aligned=aligned,
            block=table.block,
        )
        start += block_segment.numel()
    return partials


def partials_capacity(numels) -> int:
    """An upper bound of the blocks of segments of these sizes, however they are split for alignment (BLOCK is
    the smallest block of any table)."""
    return sum(-(-numel // BLOCK) + 1 for numel in numels)


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
