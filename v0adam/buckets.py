"""Flat buffers: the optimizer states of one (device, dtype) bucket, each in one allocation, and where its params
and grads are.

The optimizer owns its states only: each param has a slot in the bucket's state buffers (`exp_avg`, `exp_avg_sq`,
`max_exp_avg_sq`, the master, 8-bit block scales) and a step counter, whose views users see in `opt.state`. Params
stay where the model keeps them and are stepped by address (`v0adam.work`).

Grads are read where autograd leaves them. By default `zero_grad` sets them to None, as torch's does, and autograd
hands each param its fresh gradient tensor: no accumulation, no memset. With `flat_grads=True` (opt-in) the bucket
also *re-homes* its params: their values are copied into a flat param buffer, `p.data` becomes a view of it, and
`p.grad` a view of the param's slot in a flat grad buffer, which autograd accumulates into and `zero_grad` zeroes
in one memset (the design of Megatron-LM's ParamAndGradBuffer).

DTensor params (FSDP2) form buckets of their own that are never re-homed: FSDP owns their storage and re-creates
their grads each backward, so their local shards are always reached by address (see `v0adam.sharding`).
"""

import operator

import torch

from v0adam import quantization
from v0adam.fixed_address import fixed_address
from v0adam.graph_capture import hold_if_capturing, upload
from v0adam.moments import MOMENTS
from v0adam.sharding import is_dtensor, like_param, local
from v0adam.work import ParamMoved, Segment, WorkSource, padded


class FlatBucket:
    """Params of one device and dtype, with their grads and their states in flat buffers.

    `entries` is a list of (param, group index), in the order of the param groups; `backend` is the backend that
    steps it (`v0adam.backends`), `moments` the format of its moments (`v0adam.moments`), `master` the kind of its
    master (`v0adam.masters`). Either all or none of the params are DTensors. Params are reached where they lie, by
    address; with `flat_grads` plain params are re-homed into a flat param buffer and their grads into a flat grad
    buffer.
    """

    def __init__(
        self,
        entries: list[tuple[torch.Tensor, int]],
        device: torch.device,
        dtype: torch.dtype,
        backend,
        moments,
        master,
        flat_grads: bool = False,
    ):
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.moments = moments
        self.master_kind = master
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
        self.offsets = []
        total = 0
        for shape in self.local_shapes:
            self.offsets.append(total)
            total += padded(shape.numel(), moments.slot_align)
        self.total = total
        self.flat_param = self.flat_grad = None
        if self.rehomed:
            self.flat_param = torch.zeros(total, dtype=dtype, device=device)
        if self.flat_grads:
            self.flat_grad = torch.zeros(total, dtype=dtype, device=device)
        self.exp_avg = fixed_address(torch.zeros(total, dtype=moments.dtype, device=device))
        self.exp_avg_sq = fixed_address(torch.zeros(total, dtype=moments.dtype, device=device))
        self.max_exp_avg_sq = None
        self.scales = moments.new_scales(total, device)  # 8-bit moments' block scales, a row per moment
        if self.scales is not None:
            fixed_address(self.scales)
        self.master = None  # the master's buffer, for a kind that keeps one
        if master.dtype is not None:
            self.master = fixed_address(torch.zeros(total, dtype=master.dtype, device=device))
        self.steps = fixed_address(torch.zeros(len(self.params), dtype=torch.float32, device=device))
        self.step_views = list(self.steps.unbind())  # each param's counter, made once (a view costs a dispatch)
        self._state_slices = {}  # (state offset, shape) -> its states, shaped, for the PyTorch backend
        # Host-side record of each param's step history: equal values guarantee equal device step counters,
        # so such params may share one segment (the kernel reads one counter per segment).
        self.step_history = [0] * len(self.params)
        self._home_grads = [None] * len(self.params)  # with flat_grads, the grad view objects handed to autograd
        self.work = WorkSource(self)
        if self.rehomed:
            self._rehome()
        for index, param in enumerate(self.params):
            self.master_kind.start_(local(param.detach()), self.master_slot(index))
        self._home_param_addresses = [param.data_ptr() for param in self.params]
        self._last_mask = (None, None)
        self._count_trainable()

    def _count_trainable(self) -> None:
        """Record which params are trained, and their grad views' addresses. Frozen params make every step a
        partial one: their step-counter mask is uploaded here, once; the last other one is kept until the next
        differs (see step_increment)."""
        self._requires_grad = [param.requires_grad for param in self.params]
        self._home_grad_addresses = [None if grad is None else grad.data_ptr() for grad in self._home_grads]
        self.trainable_count = sum(grad is not None for grad in self._home_grads)
        self._trainable_indices = tuple(index for index, trained in enumerate(self._requires_grad) if trained)
        self._trainable_mask = None
        if len(self._trainable_indices) != len(self.params):
            mask = self._host_mask(self._trainable_indices)
            self._trainable_mask = fixed_address(upload(mask, self.device))
        self.work.forget_home_work()

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
            if self.flat_grads and param.requires_grad:
                grad_slot = self.slot(self.flat_grad, index)
                if param.grad is not None:
                    grad_slot.copy_(param.grad)
                param.grad = self._home_grads[index] = grad_slot

    def ensure_max_exp_avg_sq(self, tracing: bool = False) -> None:
        """The max v buffer (AMSGrad), zeros when new; made while torch.compile traces (AMSGrad switched on inside
        a compiled step), it cannot be marked as keeping its address."""
        if self.max_exp_avg_sq is None:
            max_exp_avg_sq = torch.zeros_like(self.exp_avg_sq)
            self.max_exp_avg_sq = max_exp_avg_sq if tracing else fixed_address(max_exp_avg_sq)
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

    def master_slot(self, index: int) -> torch.Tensor | None:
        return None if self.master is None else self.slot(self.master, index)

    def zero_moment(self, name: str, index: int) -> None:
        """Set the moment of param `index` to 0."""
        self.moments.zero_(self.slot(self.moment(name), index), self._scale_slot(name, index))

    def write_moment(self, name: str, index: int, values: torch.Tensor) -> None:
        """Store `values` (shaped as the param's local part, any float dtype) as the moment of param `index`, in
        the moments' format."""
        self.moments.store_(self.slot(self.moment(name), index), self._scale_slot(name, index), values, MOMENTS[name])

    def write_codes(self, name: str, index: int, codes: torch.Tensor, scales: torch.Tensor) -> None:
        """Store a loaded 8-bit moment of param `index` as it is: codes shaped as its local part, flat scales."""
        self.slot(self.moment(name), index).copy_(codes)
        self.scale_slot(name, index).copy_(scales)

    def moment_values(self, name: str, index: int) -> torch.Tensor:
        """The float values of param `index`'s moment (a view for float moments, decoded for 8-bit ones)."""
        return self.moments.values(self.slot(self.moment(name), index), self._scale_slot(name, index), MOMENTS[name])

    def _scale_slot(self, name: str, index: int) -> torch.Tensor | None:
        return None if self.scales is None else self.scale_slot(name, index)

    def read_master(self, index: int) -> torch.Tensor:
        """The float32 master of param `index`, shaped as its local part: a new tensor (the param's value widened
        when it has no master)."""
        return self.master_kind.read(local(self.params[index]).detach(), self.master_slot(index))

    def write_master(self, index: int, master: torch.Tensor) -> None:
        """Make float32 `master` (shaped as the local part) the master of param `index`."""
        self.master_kind.write_(local(self.params[index]).detach(), self.master_slot(index), master)

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
        state = {"step": self.steps[index]}
        for key, buffer in buffers.items():
            view = like_param(self.params[index], self.slot(buffer, index))
            state.update(self.moments.entries(key, view, lambda key=key: self.scale_rows(key, index)))
        if self.master is not None:
            state[self.master_kind.key] = like_param(self.params[index], self.master_slot(index))
        return state

    def zero_grad(self, set_to_none: bool, tracing: bool = False) -> None:
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
        if tracing and self.grads_are_traceable():
            # Traced, the same memset through the grads: torch.compile (2.13) fails on a write to the flat buffer
            # while the grads that view it are graph inputs. Padding between slots is never written, so stays 0.
            torch._foreach_zero_([grad for grad in self._home_grads if grad is not None])
            return
        grads_are_home = self.grads_are_home()
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

    def grads_are_home(self) -> bool:
        if not self.flat_grads:
            return False
        grads = [param.grad for param in self.params]
        return (
            all(map(operator.is_, grads, self._home_grads))
            and [None if grad is None else grad.data_ptr() for grad in grads] == self._home_grad_addresses
        )

    def everything_home(self) -> bool:
        return self.grads_are_home() and [p.data_ptr() for p in self.params] == self._home_param_addresses

    def is_home(self, index: int) -> bool:
        param, grad = self.params[index], self.params[index].grad
        return (
            self.flat_grads
            and grad is self._home_grads[index]
            and grad.data_ptr() == self._home_grad_addresses[index]
            and param.data_ptr() == self._home_param_addresses[index]
        )

    def set_step_history(self, index: int, value) -> None:
        self.step_history[index] = value
        self.work.forget_home_work()

    def step_increment(self, stepped: list[int], tracing: bool = False):
        """What a step of the params `stepped` adds to the step counters: 1, or a device mask of ones and zeros.
        The frozen params' mask lives with the bucket (a traced step takes it as an input); any other is uploaded
        when the pattern changes, as the launch tables are (while torch.compile traces, a constant of the graph),
        and kept for good once a CUDA graph being captured reads it."""
        if len(stepped) == len(self.params):
            return 1.0
        key = tuple(stepped)
        if key == self._trainable_indices:
            return self._trainable_mask
        if tracing:
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

    def record_step(self, stepped: list[int], call_id: int) -> None:
        """Advance the host-side step histories. Params stepped together keep equal histories, so only a step
        that left some params out can split a segment, and only then is the cached work dropped. Only grads at
        home in a flat grad buffer make merged segments: without one there is nothing to record."""
        if not self.flat_grads:
            return
        for index in stepped:
            self.step_history[index] = hash((self.step_history[index], call_id))
        if len(stepped) != self.trainable_count:
            self.work.forget_home_work()
