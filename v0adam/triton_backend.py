"""The Triton backend: turns a bucket's segments into the kernel's device-memory tables and launches one step
(`v0adam.traced_ops` launches it while torch.compile traces)."""

import os
import sys
from typing import NamedTuple

import torch

from v0adam import quantization
from v0adam.fixed_address import fixed_address
from v0adam.graph_capture import hold_if_capturing, upload, upload_into
from v0adam.kernels import adam as adam_kernel
from v0adam.kernels import tables
from v0adam.kernels.grad_norm import FUSED_NORM_TYPES, grad_norm_partials, reduce_partials
from v0adam.kernels.step_scalars import advance_steps, advance_steps_reference
from v0adam.kernels.tables import SegmentRow
from v0adam.kernels.v0_init import accumulate_gradient_moments_


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Elements and warps per program, from python -m bench.tune on an H200 (torch 2.11, triton 3.6), medians of 30:
#   BLOCK 1024, 4 warps: 64M fp32 0.450 ms (98.2% of copy bandwidth), GPT-2 small 0.828 ms (99.1%)
#   BLOCK 4096, 8 warps: 0.468 ms (94.5%), 0.856 ms;  16 warps or BLOCK 8192 with 4 warps: 82-50%.
# The interpreter pays ~1 ms per program instance whatever its size, so it gets large blocks.
# 8-bit states take the same: at 16 elements per thread (BLOCK 2048) their step needs 106 to 128 registers, 4 warps
# per scheduler, and the static model's issue model predicts 72% of copy with bfloat16 params and 89% with float32
# ones, against 81% and 91% at 8 (62 to 71 registers, 7 or 8 warps); the committed H200 run measured the fp32 step at
# 94.4% with 16 elements per thread against 98.2% with 8. Predicted (with the model's former 450-cycle latency),
# not yet measured with 8-bit states.
GPU_BLOCK, INTERPRETER_BLOCK = 1024, 4096
BLOCK = INTERPRETER_BLOCK if interpreter_enabled() else GPU_BLOCK
NUM_WARPS = 4
# Whether a segment that breaks the alignment promise costs only itself (see SegmentTable). The interpreter has
# no vector accesses to keep and pays per program: there the tables stay as they were (one launch, aligned only
# if every segment is), except where a test switches the split on to check it changes nothing.
SPLIT_UNALIGNED = not interpreter_enabled()


class LaunchKind(NamedTuple):
    """What the segments of one launch promise (`v0adam.kernels.tables`): their addresses aligned, the bytes
    their grads' addresses are a multiple of, their counts whole vectors (multiples of ALIGN_ELEMENTS)."""

    aligned: bool
    grad_alignment: int
    whole_vectors: bool


# The launches over a table, in this order. The aligned launch takes grads off its promise (DDP's bucket views after
# a grad of a size not a multiple of 8) two or one an access, and the tails of 16-bit params (`kernels/reads.py`);
# the unaligned launch, one element an access, promises nothing.
ALIGNED, GRADS_WORD_ALIGNED, GRADS_HALFWORD_ALIGNED, TAILS, UNALIGNED = KINDS = (
    LaunchKind(True, 16, True),
    LaunchKind(True, 4, True),
    LaunchKind(True, 2, True),
    LaunchKind(True, 16, False),
    LaunchKind(False, 1, False),
)
# The step scalars: the kernel, or under the interpreter its PyTorch twin, equal bit for bit (tests/test_kernel.py
# checks the kernel against it): the interpreter takes about 50 ms a step over the kernel's scalar-sized operations.
ADVANCE_STEPS = advance_steps_reference if interpreter_enabled() else advance_steps


def launches(tracing: bool):
    """The module whose launches step a Triton bucket now: `v0adam.traced_ops` while torch.compile traces (imported
    then, beside the compiler it needs), else this one."""
    if tracing:
        from v0adam import traced_ops

        return traced_ops
    return sys.modules[__name__]


class TritonBackend:
    """Steps a bucket with the fused kernels: one launch advances the step counters and computes each param's step
    scalars, one updates every segment (see `v0adam.backends` for the interface). Holds the hyperparameter table of
    each device and the stochastic-rounding seed's device copy, shared by the buckets it steps."""

    traceable = True
    runs_triton = True

    def __init__(self):
        self._hyper_tables = {}  # by device
        self._seeds = {}  # (seed, device) -> the seed as a device tensor

    def prepare(self, bucket, param_groups, rule, rounding_seed: int | None) -> None:
        """The bucket's device tables, built now, not at the first step: a first step traced by torch.compile finds
        them and later steps do not recompile."""
        bucket.segment_table = SegmentTable.for_bucket(bucket)
        bucket.param_group = fixed_address(upload(torch.tensor(bucket.groups, dtype=torch.int32), bucket.device))
        scalars = torch.zeros(len(bucket.params), tables.SCALAR_FIELDS.value, device=bucket.device)
        bucket.step_scalars = fixed_address(scalars)
        if bucket.device not in self._hyper_tables:
            self._hyper_tables[bucket.device] = HyperTable(bucket.device)
        self._hyper_tables[bucket.device].update(param_groups, rule)
        if rounding_seed is not None:
            self._device_seed(rounding_seed, bucket.device)

    @staticmethod
    def grad_key(grad: torch.Tensor) -> int:
        return grad.data_ptr()  # the launch tables hold it

    def hyper_table(self, device: torch.device, param_groups, rule, pin: bool = True) -> torch.Tensor:
        """The device's hyperparameter table, brought up to date with `param_groups`."""
        return self._hyper_tables[device].update(param_groups, rule, pin)

    def step(self, bucket, work, inputs, rounding_seed: int | None) -> None:
        launcher = launches(inputs.tracing)
        grad_scale, found_inf = inputs.grad_scale, inputs.found_inf
        if grad_scale is not None:  # the kernel reads a float32; a float64 model's norm is float64
            grad_scale = grad_scale.to(bucket.device, torch.float32, non_blocking=True)
        if found_inf is not None:
            found_inf = found_inf.to(bucket.device, non_blocking=True)
        increment = bucket.step_increment(work.stepped, inputs.tracing)
        hyper = self.hyper_table(bucket.device, inputs.param_groups, inputs.rule, pin=not inputs.tracing)
        launcher.advance_bucket_steps(bucket, increment, found_inf, hyper, inputs.rule)
        if rounding_seed is not None:
            rounding_seed = self._device_seed(rounding_seed, bucket.device)
        launcher.step_bucket(bucket, work, grad_scale, found_inf, rounding_seed, inputs.rule)

    def grad_norm_powered(self, bucket, work, norm_type: float, tracing: bool) -> torch.Tensor | None:
        """One launch of per-block partial norms (norm types 1, 2 and inf) that a torch reduction adds up."""
        if norm_type not in FUSED_NORM_TYPES:
            return None
        return reduce_partials(launches(tracing).grad_norm_partials_of(bucket, work, norm_type), norm_type)

    @staticmethod
    def accumulate_grad_moments_(bucket, segments, grad_sum, grad_sum_sq) -> None:
        table = SegmentTable.for_bucket(bucket)
        table.update_segments(segments)
        for block_segment, *_ in table.launches:
            accumulate_gradient_moments_(
                table.segments, block_segment, grad_sum, grad_sum_sq, param_dtype=bucket.dtype, block=table.block
            )

    def _device_seed(self, seed: int, device: torch.device) -> torch.Tensor:
        """The stochastic-rounding seed as a device tensor, uploaded once (the kernel reads it from memory)."""
        key = (seed, device)
        if key not in self._seeds:
            self._seeds[key] = torch.tensor([seed], dtype=torch.int64).to(device, non_blocking=True)
        return self._seeds[key]


class SegmentTable:
    """The segment and block tables of one bucket, in device memory, rebuilt only when an address changes.

    A segment that breaks the kernel's alignment promise costs only itself: its aligned bulk stays with the
    others, and what remains is stepped by a launch of its own kind (`KINDS`) over the blocks after theirs: the tail
    of a segment whose numel is not a multiple of ALIGN_ELEMENTS, a segment whose grad alone is at an unaligned
    address (DDP's bucket views), or one whose param or state is (the unaligned launch). 8-bit segments are whole
    quantization blocks (refused otherwise), so they have no tail and no block is shared by two launches. Without
    such parts, one launch.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, state_dtype=torch.float32):
        self.device = device
        self.itemsize = dtype.itemsize
        self.quantized = state_dtype == torch.uint8
        self.block = BLOCK  # elements per program of every launch over it
        self._key = None
        self._addresses = None
        self.segments = None
        self.block_segment = None
        self.launches = []  # (block_segment view, *its LaunchKind) per launch, in the order of KINDS

    @classmethod
    def for_bucket(cls, bucket) -> "SegmentTable":
        return cls(bucket.device, bucket.dtype, bucket.exp_avg.dtype)

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
                SegmentRow(
                    s.param.data_ptr(), s.grad.data_ptr(), s.state_offset, s.param.numel(), 0, s.group, s.step_index
                )
                for s in segments
            ]
        )

    def update_rows(self, rows: list[SegmentRow]) -> None:
        """One row per segment; their `first_block`s are set here."""
        if rows == self._key:
            return
        if self.quantized and any(row.numel % quantization.QBLOCK for row in rows):
            # The kernel's quantizers take every stored row for a whole block (`v0adam.kernels.quantization`).
            raise ValueError(f"8-bit segments must be whole blocks of {quantization.QBLOCK} elements")
        pieces = {kind: [] for kind in KINDS}
        for row in rows:
            for piece, kind in self._pieces(row):
                pieces[kind].append(piece)
        if not SPLIT_UNALIGNED and any(pieces[kind] for kind in KINDS if kind != ALIGNED):
            pieces = {kind: rows if kind == UNALIGNED else [] for kind in KINDS}
        table, blocks_per_segment, launch_blocks, spans = [], [], [], []
        for kind in KINDS:
            first_block = 0  # block numbers count from each launch's first program
            for row in pieces[kind]:
                blocks = -(-row.numel // self.block)
                table.append(row._replace(first_block=first_block))
                blocks_per_segment.append(blocks)
                first_block += blocks
            launch_blocks.append(first_block)
            # Each launch's view of the block table starts at a multiple of 4 entries (16 bytes), as the table does:
            # Triton specialises a kernel on a pointer's 16-byte alignment, and a view that started elsewhere was a
            # variant of its own to compile. The entries between launches are no program's.
            padding = -first_block % 4
            if padding:
                blocks_per_segment[-1] += padding
            spans.append(first_block + padding)
        host_table = torch.tensor(table, dtype=torch.int64).reshape(-1, tables.SEGMENT_FIELDS.value)
        host_blocks = torch.repeat_interleave(
            torch.arange(len(table), dtype=torch.int32), torch.tensor(blocks_per_segment, dtype=torch.int64)
        )
        self.segments = upload(host_table, self.device)
        self.block_segment = upload(host_blocks, self.device)
        starts = [sum(spans[:index]) for index in range(len(KINDS))]
        self.launches = [
            (self.block_segment[start : start + count], *kind)
            for start, count, kind in zip(starts, launch_blocks, KINDS)
            if count
        ]
        self._key = rows

    def _pieces(self, row: SegmentRow) -> list[tuple[SegmentRow, LaunchKind]]:
        """(row, kind) for the parts of one segment: its bulk, aligned (but perhaps for its grad), and its tail,
        either maybe empty; or the whole segment, unaligned."""
        align_bytes, align_elements = tables.ALIGN_BYTES.value, tables.ALIGN_ELEMENTS.value
        grad_alignment = next(bytes for bytes in (align_bytes, 4, 2, 1) if row.grad_addr % bytes == 0)
        if row.param_addr % align_bytes or row.state_offset % align_elements or not self._takes_grads(grad_alignment):
            return [(row, UNALIGNED)]
        bulk_kind = LaunchKind(True, grad_alignment, True)
        if row.numel % align_elements == 0:
            return [(row, bulk_kind)]
        bulk = row.numel - row.numel % align_elements
        step = bulk * self.itemsize
        pieces = [(row._replace(numel=bulk), bulk_kind)] if bulk else []
        if row.numel > bulk:
            tail = row._replace(
                param_addr=row.param_addr + step,
                grad_addr=row.grad_addr + step,
                state_offset=row.state_offset + bulk,
                numel=row.numel - bulk,
            )
            # Tails of float32 params gain nothing in whole vectors (97.6% of copy predicted either way), and
            # RAdam's spills there.
            tail_aligned = grad_alignment == align_bytes and self.itemsize == 2
            pieces.append((tail, TAILS if tail_aligned else UNALIGNED))
        return pieces

    def _takes_grads(self, alignment: int) -> bool:
        """Whether the aligned launch takes segments whose grads are at addresses multiple of `alignment` bytes,
        or leaves them to the unaligned launch. 8-bit states, at any address: theirs is the step that loses most
        in the unaligned launch (bfloat16 params: 61.1% of copy predicted; 90.1% to 90.2% with their grads read in
        words). 16-bit grads, read in words there too (`kernels/coalesced_grads.py`): bf16 states 94.3% -> 96.2%,
        with stochastic rounding 92.1% -> 95.9%, the other steps 0.3 to 1.2 points. Float32 grads: their move
        through shared memory costs about what it saves, or more (float32 params 97.6% -> 95.5%)."""
        if alignment == tables.ALIGN_BYTES.value or self.quantized:
            return True
        return self.itemsize == 2

    @property
    def num_blocks(self) -> int:
        """The entries of its block table: every launch's programs, and the padding between launches."""
        return self.block_segment.numel()


def advance_bucket_steps(bucket, increment, found_inf, hyper: torch.Tensor, rule) -> None:
    """The bucket's step counters advanced by `increment` (1.0 or a device mask) unless found_inf, and the step
    scalars of its params computed (one launch; see `v0adam.kernels.step_scalars`)."""
    hold_if_capturing(bucket.device, bucket.param_group)
    mask = increment if isinstance(increment, torch.Tensor) else None
    ADVANCE_STEPS(bucket.steps, mask, found_inf, bucket.param_group, hyper, bucket.step_scalars, rule)


def step_bucket(bucket, work, grad_scale, found_inf, rounding_seed, rule) -> None:
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
        algorithm=rule.name,
    )


def launch_step(table: SegmentTable, scalars, steps, exp_avg, exp_avg_sq, max_exp_avg_sq, master, **options) -> None:
    """The kernel launches over `table` with this backend's block size and warps; `options` as `adam_step`'s."""
    hold_table_if_capturing(table)
    for block_segment, aligned, grad_alignment, whole_vectors in table.launches:
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
            grad_alignment=grad_alignment,
            whole_vectors=whole_vectors,
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
    """One partial per block of `table`, where the block table has its entry, in a float32 tensor of `capacity`
    elements (default: as many as entries), the rest zeros, which neither a sum nor a max of norms changes. (Each
    launch's partials start 16 bytes in, as its view of the block table: no variant of the kernel to compile.)"""
    hold_table_if_capturing(table)
    partials = torch.zeros(table.num_blocks if capacity is None else capacity, device=table.device)
    for block_segment, *kind in table.launches:  # the grads are all it reads
        start = block_segment.storage_offset()
        grad_norm_partials(
            table.segments,
            block_segment,
            partials[start : start + block_segment.numel()],
            param_dtype=param_dtype,
            norm_type=norm_type,
            aligned=LaunchKind(*kind) == ALIGNED,
            block=table.block,
        )
    return partials


def partials_capacity(numels) -> int:
    """An upper bound of the block-table entries of segments of these sizes, however they are split for alignment
    (BLOCK is the smallest block of any table), with the padding between launches (fewer than 4 a launch)."""
    return sum(-(-numel // BLOCK) + 1 for numel in numels) + 3 * len(KINDS)


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

    def update(self, param_groups, rule, pin: bool = True) -> torch.Tensor:
        """The table of `param_groups` for `rule`; `pin` False while torch.compile traces, when the host values are
        constants of the graph."""
        rows, tensors = [], []
        for index, group in enumerate(param_groups):
            row = [0.0] * tables.HYPER_FIELDS.value
            for field, value in _hyper_values(group, rule):
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
                upload_into(self.table, values, pin)
            self._host_values = rows
        for index, field, value in tensors:
            self.table[index, field].copy_(value.reshape(()), non_blocking=True)
        return self.table


def _hyper_values(group, rule):
    """(column, value) pairs of one param group's row in the hyperparameter table: Adam's, and the rule's own."""
    beta1, beta2 = group["betas"]
    return (
        (tables.LR.value, group["lr"]),
        (tables.BETA1.value, beta1),
        (tables.BETA2.value, beta2),
        (tables.EPS.value, group["eps"]),
        (tables.WEIGHT_DECAY.value, group["weight_decay"]),
        (tables.MAXIMIZE.value, group["maximize"]),
        (tables.AMSGRAD.value, group["amsgrad"]),
        (tables.DECOUPLED.value, group["decoupled_weight_decay"]),
        *((column.value, group.get(key, default)) for key, column, default in rule.hyperparameters),
    )
