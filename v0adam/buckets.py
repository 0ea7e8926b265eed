"""Flat buffers: the params, grads and optimizer states of one (device, dtype) bucket, each in one allocation.

At construction every parameter is *re-homed*: its values are copied into a slot of the bucket's flat param
buffer and `p.data` becomes a view of that slot. The states users see (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`,
`step`) are views into the bucket's state buffers.

Grads are read where autograd leaves them. By default `zero_grad` sets them to None, as torch's does, and autograd
hands each param its fresh gradient tensor: no accumulation, no memset. With `flat_grads=True` the bucket also
keeps a flat grad buffer, and `p.grad` is a view of the param's slot in it, which autograd accumulates into and
`zero_grad` zeroes in one memset (the design of Megatron-LM's ParamAndGradBuffer).

Each step the bucket describes its work as *segments* (runs of elements sharing a param group and a step
counter). When params and grads are home in the flat buffers, one segment covers a whole param group. A grad (or
param) that lives elsewhere (autograd's own tensors, DDP bucket views, user-assigned tensors) is a segment of its
own, reached through its address: still one launch, no copy, unless the tensor is non-contiguous. The work is
cached on those addresses: the caching allocator hands autograd the same blocks each iteration, so a steady
training loop finds its launch tables already on the device.

DTensor params (FSDP2) form buckets of their own that are never re-homed: FSDP owns their storage and re-creates
their grads each backward, so their local shards are always reached by address (see `v0adam.sharding`).
"""

import operator
from dataclasses import dataclass

import torch

from v0adam import quantization
from v0adam.fixed_address import fixed_address
from v0adam.graph_capture import hold_if_capturing, upload
from v0adam.master_remainder import REMAINDER_DTYPE, join_master, split_master
from v0adam.sharding import is_dtensor, like_param, local

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """How 16-bit params are stepped: from an exact float32 master, or with stochastic rounding on store (else
    round to nearest even); and the dtype of the moments (float32 unless asked; float64 for float64 params;
    torch.uint8 for 8-bit blockwise-quantized moments, whatever the params).

    `master_weights` True keeps the master in the fewest bytes that are exact: an int16 remainder beside a
    bfloat16 param (`v0adam.master_remainder`), a float32 copy of a float16 one; "fp32" a float32 copy always."""

    master_weights: bool | str = False
    stochastic_rounding: bool = False
    state_dtype: torch.dtype | None = None
    min_8bit_size: int = 4096

    @property
    def quantized(self) -> bool:
        return self.state_dtype == torch.uint8

    def state_dtype_for(self, param_dtype: torch.dtype) -> torch.dtype:
        if param_dtype == torch.float64 and not self.quantized:
            return torch.float64
        return self.state_dtype or torch.float32

    def takes_8bit_states(self, param: torch.Tensor) -> bool:
        return self.why_not_8bit(param) is None

    def why_not_8bit(self, param: torch.Tensor) -> str | None:
        """Why `param` keeps float32 states where 8-bit ones are asked for; None where it takes them. Decided on
        the whole tensor (a DTensor's global shape), so alike on one process and at any FSDP2 world size: at least
        `min_8bit_size` elements (as bitsandbytes' and torchao's, smaller tensors keep float32 states), and rows
        (the dims after the first) of whole quantization blocks, which a cut between rows, FSDP2's Shard(0), never
        splits. A DTensor sharded along another dim does not qualify."""
        numel = param.numel()
        if numel == 0 or numel < self.min_8bit_size:
            return f"{numel} elements, fewer than min_8bit_size ({self.min_8bit_size})"
        if param.dim() < 2:
            return "1-d: 8-bit blocks are laid on rows (the dims after the first)"
        row = numel // param.shape[0]
        if row % quantization.QBLOCK:
            return f"rows of {row} elements, not whole {quantization.QBLOCK}-element blocks"
        if is_dtensor(param) and not all(
            placement.is_replicate() or (placement.is_shard() and placement.dim == 0) for placement in param.placements
        ):
            return f"a DTensor laid out as {param.placements}: 8-bit blocks need cuts between rows (Shard(0))"
        return None

    def master_dtype_for(self, param_dtype: torch.dtype) -> torch.dtype | None:
        """The dtype of a param's master: REMAINDER_DTYPE, torch.float32, or None for none."""
        if not self.master_weights or param_dtype not in LOW_PRECISION:
            return None
        if self.master_weights is True and param_dtype == torch.bfloat16:
            return REMAINDER_DTYPE
        return torch.float32

    def stochastic_for(self, param_dtype: torch.dtype) -> bool:
        """Stochastic rounding applies to bfloat16 params without a master copy."""
        return self.stochastic_rounding and param_dtype == torch.bfloat16 and not self.master_weights


# Slots start at multiples of 64 elements: every slot then satisfies the kernel's alignment promise (16 bytes,
# 8 elements) for every dtype, and the padding (zeros, never read by autograd) is safe to update with its slot.
# With 8-bit states at multiples of a quantization block, so that no block straddles two params.
SLOT_ALIGN = 64
# The moments, and whether their 8-bit format is signed (`v0adam.quantization`).
MOMENTS = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}
SCALES_SUFFIX = "_scale"  # the state key of an 8-bit moment's block scales: "exp_avg" + SCALES_SUFFIX
# The state key of an 8-bit moment's codes, in opt.state and checkpoints alike: "exp_avg" + CODES_SUFFIX, never the
# moment's own key, under which torch's optimizers (and whatever reads their state) expect values: torch.optim.AdamW
# would load codes of 0 to 255 as exp_avg and resume silently wrong; without the key it raises KeyError: 'exp_avg'.
CODES_SUFFIX = "_code"
# The state key of each kind of master, by its dtype.
MASTER_KEYS = {torch.float32: "master_param", REMAINDER_DTYPE: "param_remainder"}


def _padded(numel: int, align: int) -> int:
    return -(-numel // align) * align


class ParamMoved(RuntimeError):
    """A param now has another device or dtype than its bucket (the model was moved or converted after the
    optimizer was built): the optimizer lays its buffers out again, states carried over."""


@dataclass(slots=True)
class Segment:
    """A contiguous run of elements stepped together: params and grads (1-D views of the flat buffers for a run
    of params at home, else one param and its grad, shaped as the param), and where its states are."""

    param: torch.Tensor
    grad: torch.Tensor
    state_offset: int
    group: int
    step_index: int


class BucketWork:
    """What one step does to a bucket: the segments, the params whose step counter advances, and the
    non-contiguous params that are stepped through a contiguous copy and written back afterwards. `addresses`,
    when not None, determines the segments' layout (see `FlatBucket.collect_work`): launch tables built for it
    hold for every work with the same addresses, so a step that finds its tables needs no segments at all.
    `segments` may be given as a function that makes them when first asked for."""

    def __init__(self, segments, stepped: list[int], writebacks: list, addresses: tuple | None = None):
        self._segments = segments
        self.stepped = stepped
        self.writebacks = writebacks
        self.addresses = addresses

    @property
    def segments(self) -> list[Segment]:
        if callable(self._segments):
            self._segments = self._segments()
        return self._segments


class FlatBucket:
    """Params of one device and dtype, with their grads and their states in flat buffers.

    `entries` is a list of (param, group index), in the order of the param groups; `backend` ("triton" or
    "torch") is the backend that steps it. Either all or none of the params are DTensors. Params are reached where
    they lie, by address; with `flat_grads` plain params are re-homed into a flat param buffer and their grads into
    a flat grad buffer.
    """

    def __init__(
        self,
        entries: list[tuple[torch.Tensor, int]],
        device: torch.device,
        dtype: torch.dtype,
        backend: str,
        precision: "Precision",
        flat_grads: bool = False,
    ):
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.precision = precision
        self.segment_table = None  # the Triton backend's launch tables, cached between steps
        self.param_group = None  # the Triton backend's device copy of `groups` (int32)
        self.step_scalars = None  # the Triton backend's per-param scalars of the current step
        self.torch_plan = (None, None)  # the PyTorch backend's per-group lists and their key, cached between steps
        self.params = [param for param, _ in entries]
        self.groups = [group for _, group in entries]
        self.sharded = any(map(is_dtensor, self.params))
        # Params stay where the model keeps them, stepped by address; with flat grads they move into one flat
        # buffer (Megatron's param-and-grad buffer), each param a view of it. FSDP owns DTensors' storage.
        self.rehomed = flat_grads and not self.sharded
        self.flat_grads = self.rehomed
        self.local_shapes = [local(param).shape for param in self.params]
        self.quantized = precision.quantized
        self.slot_align = quantization.QBLOCK if self.quantized else SLOT_ALIGN
        self.offsets = []
        total = 0
        for shape in self.local_shapes:
            self.offsets.append(total)
            total += _padded(shape.numel(), self.slot_align)
        self.total = total
        self.flat_param = self.flat_grad = None
        if self.rehomed:
            self.flat_param = torch.zeros(total, dtype=dtype, device=device)
        if self.flat_grads:
            self.flat_grad = torch.zeros(total, dtype=dtype, device=device)
        self.state_dtype = precision.state_dtype_for(dtype)
        self.exp_avg = fixed_address(torch.zeros(total, dtype=self.state_dtype, device=device))
        self.exp_avg_sq = fixed_address(torch.zeros(total, dtype=self.state_dtype, device=device))
        self.max_exp_avg_sq = None
        # 8-bit moments: one float32 scale per quantization block, a row per moment (rows as MOMENTS), and every
        # code the zero buffers start with is the code of 0 (`quantization.ZERO_CODE`), so that padding, which a
        # step by address never writes, always reads back 0.
        self.scales = None
        if self.quantized:
            self.scales = fixed_address(torch.zeros(3, total // quantization.QBLOCK, device=device))
        # The fp32 master of 16-bit params, the value the optimizer updates (the params are its rounding): a copy,
        # or remainders, whose zeros make the master the param.
        self.master = None
        master_dtype = precision.master_dtype_for(dtype)
        if master_dtype is not None:
            self.master = fixed_address(torch.zeros(total, dtype=master_dtype, device=device))
        self.master_key = None if master_dtype is None else MASTER_KEYS[master_dtype]
        self.steps = fixed_address(torch.zeros(len(self.params), dtype=torch.float32, device=device))
        self.step_views = list(self.steps.unbind())  # each param's counter, made once (a view costs a dispatch)
        self._state_slices = {}  # (state offset, shape) -> its states, shaped, for the PyTorch backend
        # Host-side record of each param's step history: equal values guarantee equal device step counters,
        # so such params may share one segment (the kernel reads one counter per segment).
        self.step_history = [0] * len(self.params)
        self._home_grads = [None] * len(self.params)  # with flat_grads, the grad view objects handed to autograd
        self._home_work = None  # this step's work when everything is home, cached: the common case costs no scan
        self._addressed_work = (None, None)  # (addresses, (stepped, segment indices)) of the last cacheable scan
        if self.rehomed:
            self._rehome()
        elif self.master_key == "master_param":
            for index, param in enumerate(self.params):
                self.slot(self.master, index).copy_(local(param.detach()))
        self._home_param_addresses = [param.data_ptr() for param in self.params]
        self._last_mask = (None, None)
        self._count_trainable()

    def _count_trainable(self) -> None:
        """Record which params are trained, and their grad views' addresses. Frozen params make every step a
        partial one: their step-counter mask is uploaded here, once; the last other one is kept until the next
        differs (see step_increment)."""
        self._requires_grad = [param.requires_grad for param in self.params]
        self._home_grad_addresses = [None if grad is None else grad.data_ptr() for grad in self._home_grads]
        self._trainable = sum(grad is not None for grad in self._home_grads)
        self._trainable_indices = tuple(index for index, trained in enumerate(self._requires_grad) if trained)
        self._trainable_mask = None
        if len(self._trainable_indices) != len(self.params):
            mask = self._host_mask(self._trainable_indices)
            self._trainable_mask = fixed_address(upload(mask, self.device))
        self._home_work = None

    def has_moved(self) -> bool:
        return any(param.device != self.device or param.dtype != self.dtype for param in self.params)

    def requires_grad_changed(self) -> bool:
        return [param.requires_grad for param in self.params] != self._requires_grad

    def follow_requires_grad(self) -> None:
        """A param frozen (`requires_grad_(False)`) since the last call loses its grad view, so that `zero_grad`
        leaves it without a grad and it is no longer stepped, as torch's `zero_grad()` does; one unfrozen gets its
        view (back), and the fast path with it. Without flat grads only the record of trained params follows."""
        if self.flat_grads:
            for index, param in enumerate(self.params):
                if not param.requires_grad:
                    self._home_grads[index] = None
                elif self._home_grads[index] is None:
                    self._home_grads[index] = self.slot(self.flat_grad, index)
        self._count_trainable()

    def slot(self, buffer: torch.Tensor, index: int) -> torch.Tensor:
        offset = self.offsets[index]
        shape = self.local_shapes[index]
        return buffer[offset : offset + shape.numel()].view(shape)

    def _rehome(self) -> None:
        for index, param in enumerate(self.params):
            param_slot = self.slot(self.flat_param, index)
            param_slot.copy_(param.detach())
            param.data = param_slot
            if self.master_key == "master_param":
                self.slot(self.master, index).copy_(param_slot)
            if self.flat_grads and param.requires_grad:
                grad_slot = self.slot(self.flat_grad, index)
                if param.grad is not None:
                    grad_slot.copy_(param.grad)
                param.grad = self._home_grads[index] = grad_slot

    def ensure_max_exp_avg_sq(self) -> None:
        if self.max_exp_avg_sq is None:
            self.max_exp_avg_sq = fixed_address(torch.zeros_like(self.exp_avg_sq))
            self._state_slices.clear()

    def moment(self, name: str) -> torch.Tensor:
        """The flat buffer of a moment ("exp_avg", "exp_avg_sq" or "max_exp_avg_sq")."""
        return getattr(self, name)

    def scale_slot(self, name: str, index: int) -> torch.Tensor:
        """The block scales of an 8-bit moment's slot for param `index`."""
        first = self.offsets[index] // quantization.QBLOCK
        blocks = quantization.num_blocks(self.local_shapes[index].numel())
        return self.scales[list(MOMENTS).index(name), first : first + blocks]

    def scale_rows(self, name: str, index: int) -> torch.Tensor:
        """The block scales of param `index`'s moment as a row per param row (its rows are whole blocks), laid out
        as the param: a DTensor cut along the first dim where the param is."""
        param = self.params[index]
        blocks_per_row = param.numel() // param.shape[0] // quantization.QBLOCK
        rows = self.scale_slot(name, index).view(-1, blocks_per_row)
        return like_param(param, rows, (param.shape[0], blocks_per_row))

    def zero_moment(self, name: str, index: int) -> None:
        """Set the moment of param `index` to 0 (codes of 0 and scales of 0 for 8-bit states)."""
        self.slot(self.moment(name), index).fill_(quantization.ZERO_CODE if self.quantized else 0)
        if self.quantized:
            self.scale_slot(name, index).zero_()

    def write_moment(self, name: str, index: int, values: torch.Tensor) -> None:
        """Store `values` (shaped as the param's local part, any float dtype) as the moment of param `index`:
        quantized for 8-bit states, else rounded into the state dtype."""
        target = self.slot(self.moment(name), index)
        if self.quantized:
            codes, scales = quantization.quantize(values, MOMENTS[name])
            target.copy_(codes)
            self.scale_slot(name, index).copy_(scales)
        else:
            target.copy_(values)

    def read_master(self, index: int) -> torch.Tensor:
        """The float32 master of param `index`, shaped as its local part: a new tensor (the param's value widened
        when it has no master)."""
        param = local(self.params[index]).detach()
        if self.master_key == "param_remainder":
            return join_master(param, self.slot(self.master, index))
        if self.master_key == "master_param":
            return self.slot(self.master, index).clone()
        return param.to(torch.float32, copy=True)

    def write_master(self, index: int, master: torch.Tensor) -> None:
        """Make float32 `master` (shaped as the local part) the master of param `index`. A remainder needs the
        param to be the master's rounding, so that is written too; a copy leaves the param as it is."""
        if self.master_key == "param_remainder":
            param, remainder = split_master(master)
            local(self.params[index]).detach().copy_(param)
            self.slot(self.master, index).copy_(remainder)
        else:
            self.slot(self.master, index).copy_(master)

    def states_of(self, segment: Segment, amsgrad: bool) -> tuple:
        """exp_avg, exp_avg_sq, max_exp_avg_sq (None without amsgrad) and the master (None without one) of a
        segment, shaped as its param; made once per slot, since a step of many small params would spend more on
        slicing than on the update."""
        shape = segment.param.shape
        key = (segment.state_offset, shape)
        if key not in self._state_slices:
            start, end = segment.state_offset, segment.state_offset + segment.param.numel()
            self._state_slices[key] = tuple(
                None if buffer is None else buffer[start:end].view(shape)
                for buffer in (self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq, self.master)
            )
        exp_avg, exp_avg_sq, max_exp_avg_sq, master = self._state_slices[key]
        return exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None, master

    def state_views(self, index: int, amsgrad: bool) -> dict[str, torch.Tensor]:
        """torch.optim.Adam's per-param state, as views into the flat buffers (DTensors for a DTensor param); an
        8-bit moment as its codes and scales (`CODES_SUFFIX`, `SCALES_SUFFIX`)."""
        buffers = {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}
        if amsgrad:
            self.ensure_max_exp_avg_sq()
            buffers["max_exp_avg_sq"] = self.max_exp_avg_sq
        if self.master is not None:
            buffers[self.master_key] = self.master
        state = {"step": self.steps[index]}
        for key, buffer in buffers.items():
            view = like_param(self.params[index], self.slot(buffer, index))
            if self.quantized and key in MOMENTS:
                state[key + CODES_SUFFIX] = view
                state[key + SCALES_SUFFIX] = self.scale_rows(key, index)
            else:
                state[key] = view
        return state

    def zero_grad(self, set_to_none: bool) -> None:
        """As torch's `Optimizer.zero_grad`: grads set to None, or zeroed in place (detached from any graph). With
        flat grads, one memset for the whole bucket whatever `set_to_none` says, and grads that were replaced or
        set to None get their views back."""
        if not self.flat_grads:
            if set_to_none:
                for param in self.params:
                    param.grad = None
                return
            grads = [param.grad for param in self.params if param.grad is not None]
            for grad in grads:
                if grad.grad_fn is not None:
                    grad.detach_()
                else:
                    grad.requires_grad_(False)
            if grads:
                torch._foreach_zero_(grads)
            return
        if torch.compiler.is_compiling() and self.grads_are_traceable():
            # Traced, the same memset through the grads: torch.compile (2.13) fails on a write to the flat buffer
            # while the grads that view it are graph inputs. Padding between slots is never written, so stays 0.
            torch._foreach_zero_([grad for grad in self._home_grads if grad is not None])
            return
        grads_are_home = self._grads_are_home()
        if not grads_are_home and self.has_moved():  # its grad was moved too: checked only then
            raise ParamMoved("a parameter was moved or converted since the optimizer was built")
        self.flat_grad.zero_()
        if not grads_are_home:
            for param, grad in zip(self.params, self._home_grads):
                param.grad = grad

    def grads_are_traceable(self) -> bool:
        """Whether a traced step may take the grads as they are: with flat grads, whether every grad is the view
        `zero_grad` hands out (None for params without one), checked by identity only, which torch.compile can
        trace; otherwise grads are autograd's (or FSDP's) own tensors, taken whatever they are."""
        if not self.flat_grads:
            return True
        return all(map(operator.is_, [param.grad for param in self.params], self._home_grads))

    def _grads_are_home(self) -> bool:
        if not self.flat_grads:
            return False
        grads = [param.grad for param in self.params]
        return (
            all(map(operator.is_, grads, self._home_grads))
            and [None if grad is None else grad.data_ptr() for grad in grads] == self._home_grad_addresses
        )

    def _everything_home(self) -> bool:
        return self._grads_are_home() and [p.data_ptr() for p in self.params] == self._home_param_addresses

    def _is_home(self, index: int) -> bool:
        param, grad = self.params[index], self.params[index].grad
        return (
            self.flat_grads
            and grad is self._home_grads[index]
            and grad.data_ptr() == self._home_grad_addresses[index]
            and param.data_ptr() == self._home_param_addresses[index]
        )

    def set_step_history(self, index: int, value) -> None:
        self.step_history[index] = value
        self._home_work = None

    def collect_work(self) -> BucketWork:
        """This step's segments. Raises, before anything is written, on a grad or param that cannot be stepped."""
        if self._home_work is not None and self._everything_home():
            return self._home_work
        if self.flat_grads or self.sharded:
            work = self._scan()
            if len(work.stepped) == self._trainable and self._everything_home():
                self._home_work = work
            return work
        return self._addressed()

    def _addressed(self) -> BucketWork:
        """The work of plain params whose grads are reached by address (autograd's own tensors), cached on the
        addresses of the params and of the grads (the Triton backend's launch tables hold them; the PyTorch
        backend, given tensors, needs only which grads exist): while they stay, the segments are made again from
        the new grad objects without any check. Every way to change what a segment covers changes an address or
        the shapes (the grad setter and autograd keep a grad's shape, dtype and device those of its param; a
        tensor assigned to `grad.data` has storage of its own), or makes a tensor non-contiguous or sparse, which
        is scanned and checked at every step. An empty grad's address is 0: None, not 0, stands for no grad."""
        params = self.params
        grads = [param.grad for param in params]
        addresses = None
        # -1 for a non-contiguous grad (a sparse one included): such a step is scanned.
        grad_addresses = [None if grad is None else grad.data_ptr() if grad.is_contiguous() else -1 for grad in grads]
        if (
            -1 not in grad_addresses
            and all(map(torch.Tensor.is_contiguous, params))
            and [param.shape for param in params] == self.local_shapes
        ):
            if self.backend != "triton":  # handed tensors, not addresses: what each grad is, not where
                grad_addresses = [None if grad is None else (grad.shape, grad.dtype, grad.device) for grad in grads]
            addresses = (tuple(map(torch.Tensor.data_ptr, params)), tuple(grad_addresses))
        cached_addresses, cached = self._addressed_work
        if addresses is None or addresses != cached_addresses:
            work = self._scan()
            if addresses is not None:
                self._addressed_work = addresses, (work.stepped, [segment.step_index for segment in work.segments])
            work.addresses = addresses
            return work
        stepped, indices = cached
        offsets, groups = self.offsets, self.groups

        def segments():
            return [Segment(params[i], grads[i], offsets[i], groups[i], i) for i in indices]

        return BucketWork(segments, stepped, [], addresses)

    def _scan(self) -> BucketWork:
        segments, stepped, writebacks = [], [], []
        previous_home = False
        for index, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                previous_home = False
                continue
            self._check(index, grad)
            stepped.append(index)
            home = self._is_home(index)
            offset = self.offsets[index]
            if home:
                end = offset + _padded(param.numel(), self.slot_align)
                last = segments[-1] if segments else None
                if (
                    previous_home
                    and last.group == self.groups[index]
                    and self.step_history[last.step_index] == self.step_history[index]
                ):
                    start = last.state_offset
                    last.param = self.flat_param[start:end]
                    last.grad = self.flat_grad[start:end]
                else:
                    segments.append(
                        Segment(
                            self.flat_param[offset:end], self.flat_grad[offset:end], offset, self.groups[index], index
                        )
                    )
            else:
                param_data = local(param).detach()  # detach() of a DTensor would cost a dispatch
                if not param_data.numel():
                    previous_home = False
                    continue  # an empty shard: its step counter advances, nothing else to do
                if not param_data.is_contiguous():
                    contiguous = param_data.contiguous()
                    writebacks.append((param_data, contiguous))
                    param_data = contiguous
                segments.append(Segment(param_data, local(grad).contiguous(), offset, self.groups[index], index))
            previous_home = home
        return BucketWork(segments, stepped, writebacks)

    def traced_work(self) -> BucketWork:
        """The work of a traced step: every param with a grad, each its own segment. No address is read (the
        caller vouches for the grads, see `grads_are_traceable`); the launch builds its tables."""
        if self.flat_grads:
            stepped = [index for index, grad in enumerate(self._home_grads) if grad is not None]
            for index in stepped:
                self._check_param(index)
        else:
            stepped = [index for index, param in enumerate(self.params) if param.grad is not None]
            for index in stepped:
                self._check(index, self.params[index].grad)
        return BucketWork([], stepped, [])

    def _check(self, index: int, grad: torch.Tensor) -> None:
        param = self.params[index]
        if grad.is_sparse:
            raise RuntimeError("V0Adam does not support sparse gradients")
        self._check_param(index)
        if grad.device != param.device or grad.dtype != param.dtype or grad.shape != param.shape:
            raise RuntimeError(
                f"gradient ({grad.dtype}, {tuple(grad.shape)}, {grad.device}) does not match its parameter "
                f"({param.dtype}, {tuple(param.shape)}, {param.device})"
            )

    def step_increment(self, stepped: list[int]):
        """What a step of the params `stepped` adds to the step counters: 1, or a device mask of ones and zeros.
        The frozen params' mask lives with the bucket (a traced step takes it as an input); any other is uploaded
        when the pattern changes, as the launch tables are (while torch.compile traces, a constant of the graph),
        and kept for good once a CUDA graph being captured reads it."""
        if len(stepped) == len(self.params):
            return 1.0
        key = tuple(stepped)
        if key == self._trainable_indices:
            return self._trainable_mask
        if torch.compiler.is_compiling():
            return self._host_mask(key).to(self.device)
        if key != self._last_mask[0]:
            self._last_mask = (key, upload(self._host_mask(key), self.device))
        mask = self._last_mask[1]
        hold_if_capturing(self.device, mask)
        return mask

    def _host_mask(self, stepped: tuple[int, ...]) -> torch.Tensor:
        mask = torch.zeros(len(self.params), dtype=torch.float32)
        mask[list(stepped)] = 1.0
        return mask

    def _check_param(self, index: int) -> None:
        """The param still has the device, dtype and shape its slots were laid out for: a larger one would
        update its neighbours' states."""
        param = self.params[index]
        if param.device != self.device or param.dtype != self.dtype:
            raise ParamMoved(
                f"a parameter of shape {tuple(param.shape)} is now {param.dtype} on {param.device}, but its buffers "
                f"are {self.dtype} on {self.device}"
            )
        if local(param).shape != self.local_shapes[index]:
            raise RuntimeError(
                f"a parameter of shape {tuple(self.local_shapes[index])} now has shape {tuple(local(param).shape)}; "
                "its optimizer states keep the old shape: build the optimizer after resizing parameters"
            )

    def record_step(self, stepped: list[int], call_id: int) -> None:
        """Advance the host-side step histories. Params stepped together keep equal histories, so only a step
        that left some params out can split a segment, and only then is the cached work dropped. Only grads at
        home in a flat grad buffer make merged segments: without one there is nothing to record."""
        if not self.flat_grads:
            return
        for index in stepped:
            self.step_history[index] = hash((self.step_history[index], call_id))
        if len(stepped) != self._trainable:
            self._home_work = None
