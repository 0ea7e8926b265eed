"""What one step does to a bucket, found from where its params and grads are now: the segments (runs of elements
sharing a param group and a step counter) and the params whose counters advance.

When params and grads are home in flat buffers (`flat_grads`), one segment covers a whole param group. A grad (or
param) that lives elsewhere (autograd's own tensors, DDP bucket views, user-assigned tensors, the model's own params)
is a segment of its own, reached through its address: still one launch, no copy, unless the tensor is
non-contiguous. The work is cached on those addresses: the caching allocator hands autograd the same blocks each
iteration, so a steady training loop finds its launch tables already on the device.
"""

from dataclasses import dataclass

import torch

from v0adam.sharding import local


class ParamMoved(RuntimeError):
    """A param now has another device or dtype than its bucket (the model was moved or converted after the
    optimizer was built): the optimizer lays its buffers out again, states carried over."""


def padded(numel: int, align: int) -> int:
    return -(-numel // align) * align


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
    when not None, determines the segments' layout (see `WorkSource.collect`): launch tables built for it
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


class WorkSource:
    """A bucket's work each step, and what is cached of it between steps."""

    def __init__(self, bucket):
        self.bucket = bucket
        self._home_work = None  # this step's work when everything is home, cached: the common case costs no scan
        self._addressed_work = (None, None)  # (addresses, (stepped, segment indices)) of the last cacheable scan

    def forget_home_work(self) -> None:
        """Drop the cached work of a bucket at home: what it covers may have changed (step histories, grads)."""
        self._home_work = None

    def collect(self) -> BucketWork:
        """This step's segments. Raises, before anything is written, on a grad or param that cannot be stepped."""
        bucket = self.bucket
        if self._home_work is not None and bucket.everything_home():
            return self._home_work
        if bucket.flat_grads or bucket.sharded:
            work = self._scan()
            if len(work.stepped) == bucket.trainable_count and bucket.everything_home():
                self._home_work = work
            return work
        return self._addressed()

    def _addressed(self) -> BucketWork:
        """The work of plain params whose grads are reached by address (autograd's own tensors), cached on the
        addresses of the params and on each grad's key (the backend's `grad_key`: its address for the Triton
        backend, whose launch tables hold it; what the grad is for the PyTorch backend, given tensors): while they
        stay, the segments are made again from the new grad objects without any check. Every way to change what a
        segment covers changes an address or the shapes (the grad setter and autograd keep a grad's shape, dtype
        and device those of its param; a tensor assigned to `grad.data` has storage of its own), or makes a tensor
        non-contiguous or sparse, which is scanned and checked at every step. An empty grad's address is 0: None,
        not 0, stands for no grad."""
        bucket = self.bucket
        params = bucket.params
        grads = [param.grad for param in params]
        addresses = None
        if (
            all(grad is None or grad.is_contiguous() for grad in grads)  # a sparse grad is not: such steps are scanned
            and all(map(torch.Tensor.is_contiguous, params))
            and [param.shape for param in params] == bucket.local_shapes
        ):
            grad_keys = tuple(None if grad is None else bucket.backend.grad_key(grad) for grad in grads)
            addresses = (tuple(map(torch.Tensor.data_ptr, params)), grad_keys)
        cached_addresses, cached = self._addressed_work
        if addresses is None or addresses != cached_addresses:
            work = self._scan()
            if addresses is not None:
                self._addressed_work = addresses, (work.stepped, [segment.step_index for segment in work.segments])
            work.addresses = addresses
            return work
        stepped, indices = cached
        offsets, groups = bucket.offsets, bucket.groups

        def segments():
            return [Segment(params[i], grads[i], offsets[i], groups[i], i) for i in indices]

        return BucketWork(segments, stepped, [], addresses)

    def _scan(self) -> BucketWork:
        bucket = self.bucket
        segments, stepped, writebacks = [], [], []
        previous_home = False
        for index, param in enumerate(bucket.params):
            grad = param.grad
            if grad is None:
                previous_home = False
                continue
            self._check(index, grad)
            stepped.append(index)
            home = bucket.is_home(index)
            offset = bucket.offsets[index]
            if home:
                end = offset + padded(param.numel(), bucket.moments.slot_align)
                last = segments[-1] if segments else None
                if (
                    previous_home
                    and last.group == bucket.groups[index]
                    and bucket.step_history[last.step_index] == bucket.step_history[index]
                ):
                    start = last.state_offset
                    last.param = bucket.flat_param[start:end]
                    last.grad = bucket.flat_grad[start:end]
                else:
                    home_param, home_grad = bucket.flat_param[offset:end], bucket.flat_grad[offset:end]
                    segments.append(Segment(home_param, home_grad, offset, bucket.groups[index], index))
            else:
                param_data = local(param).detach()  # detach() of a DTensor would cost a dispatch
                if not param_data.numel():
                    previous_home = False
                    continue  # an empty shard: its step counter advances, nothing else to do
                if not param_data.is_contiguous():
                    contiguous = param_data.contiguous()
                    writebacks.append((param_data, contiguous))
                    param_data = contiguous
                segments.append(Segment(param_data, local(grad).contiguous(), offset, bucket.groups[index], index))
            previous_home = home
        return BucketWork(segments, stepped, writebacks)

    def traced(self) -> BucketWork:
        """The work of a traced step: every param with a grad, each its own segment. No address is read (the
        caller vouches for the grads, see `grads_are_traceable`); the launch builds its tables."""
        bucket = self.bucket
        if bucket.flat_grads:
            stepped = [index for index, grad in enumerate(bucket._home_grads) if grad is not None]
            for index in stepped:
                self._check_param(index)
        else:
            stepped = [index for index, param in enumerate(bucket.params) if param.grad is not None]
            for index in stepped:
                self._check(index, bucket.params[index].grad)
        return BucketWork([], stepped, [])

    def _check(self, index: int, grad: torch.Tensor) -> None:
        bucket = self.bucket
        param = bucket.params[index]
        if grad.is_sparse:
            raise RuntimeError("V0Adam does not support sparse gradients")
        self._check_param(index)
        if grad.device != param.device or grad.dtype != param.dtype or grad.shape != param.shape:
            raise RuntimeError(
                f"gradient ({grad.dtype}, {tuple(grad.shape)}, {grad.device}) does not match its parameter "
                f"({param.dtype}, {tuple(param.shape)}, {param.device})"
            )

    def _check_param(self, index: int) -> None:
        """The param still has the device, dtype and shape its slots were laid out for: a larger one would
        update its neighbours' states."""
        bucket = self.bucket
        param = bucket.params[index]
        if param.device != bucket.device or param.dtype != bucket.dtype:
            raise ParamMoved(
                f"a parameter of shape {tuple(param.shape)} is now {param.dtype} on {param.device}, but its buffers "
                f"are {bucket.dtype} on {bucket.device}"
            )
        if local(param).shape != bucket.local_shapes[index]:
            raise RuntimeError(
                f"a parameter of shape {tuple(bucket.local_shapes[index])} now has shape {tuple(local(param).shape)}; "
                "its optimizer states keep the old shape: build the optimizer after resizing parameters"
            )
