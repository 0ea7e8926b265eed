"""Gradient release (`release_grads=True`): params are stepped during backward, as soon as autograd (or FSDP2's
reduce-scatter) has their grad, and each grad is freed at once, so that an iteration never holds the whole
model's grads: about `GROUP_BYTES` of them (an eighth of a small model's), plus what backward is computing.

Ready params are stepped in groups, not one by one: a group is stepped when its grads reach that size, and the
rest when backward ends (an autograd engine callback), each group one ordinary step of the optimizer, one launch
per bucket. Exact for what it serves: every param steps once per backward with its whole grad; under
`optimizer.accumulate_grads()` a backward accumulates instead, and the next backward outside it steps.
What needs every grad before the first update (global-norm clipping, a GradScaler's skip of a step with an inf
anywhere, `skip_nonfinite`) and DDP, which averages grads after their hooks run, are refused (docs/memory.md).
"""

import contextlib
import warnings

import torch

# Grads held before the ready params are stepped: large enough that a launch covers many params, small beside a
# large model's grads (GPT-2 small's float32 grads are 500 MB), and at most a GROUPS-th of a small model's.
GROUP_BYTES = 32 * 2**20
GROUPS = 8
# Said at the end of the first backward that released grads: a training loop written for torch's optimizers
# (nanoGPT's) clips with torch.nn.utils.clip_grad_norm_ after backward, which then finds no grad and clips nothing.
NO_GRADS_AFTER_BACKWARD = (
    "release_grads=True stepped the params during backward and freed their grads: every .grad is None after "
    "backward, so torch.nn.utils.clip_grad_norm_ (or anything else that reads .grad then) finds none and does "
    "nothing. Said once per optimizer"
)


class GradRelease:
    """The hooks and the pending group of one optimizer, whose `step()` steps the params that hold a grad and
    whose `params()` are all its params."""

    def __init__(self, step, params):
        self._step = step
        self._params = params
        model_bytes = sum(param.numel() * param.element_size() for param in params())
        self.group_bytes = min(GROUP_BYTES, model_bytes // GROUPS)
        self._handles = {}  # param -> its hook's handle
        self._pending = []
        self._pending_bytes = 0
        self._flush_queued = False
        self._told_no_grads = False
        self.accumulating = False
        self.watch()

    def watch(self) -> None:
        """Hook every trainable param not hooked yet (new in a group, or unfrozen)."""
        for param in self._params():
            if param not in self._handles and param.requires_grad:
                self._handles[param] = param.register_post_accumulate_grad_hook(self._ready)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _ready(self, param) -> None:
        if self.accumulating:
            return
        self._pending.append(param)
        self._pending_bytes += param.grad.numel() * param.grad.element_size()
        if not self._flush_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self._flush_queued = True
        if self._pending_bytes >= self.group_bytes:
            self._step_pending()

    def _end_of_backward(self) -> None:
        self._flush_queued = False
        self.step_all()
        if not self._told_no_grads:
            self._told_no_grads = True
            warnings.warn(NO_GRADS_AFTER_BACKWARD, UserWarning, stacklevel=2)

    @torch.no_grad()
    def _step_pending(self) -> None:
        """Step the pending params during backward. Other grads, which backward may still accumulate into (after
        `accumulate_grads`), are set aside meanwhile: a step steps what holds a grad."""
        ready = set(self._pending)
        aside = {param: param.grad for param in self._params() if param.grad is not None and param not in ready}
        for param in aside:
            param.grad = None
        try:
            self.step_all()
        finally:
            for param, grad in aside.items():
                param.grad = grad

    @torch.no_grad()
    def step_all(self) -> None:
        """Step every param that holds a grad, as an optimizer step does, and free the grads."""
        self._pending, self._pending_bytes = [], 0
        stepped = [param for param in self._params() if param.grad is not None]
        if stepped:
            self._step()
        for param in stepped:
            param.grad = None

    @contextlib.contextmanager
    def accumulate(self):
        previous, self.accumulating = self.accumulating, True
        try:
            yield
        finally:
            self.accumulating = previous
