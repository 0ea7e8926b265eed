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
import weakref

import torch
import torch.distributed as dist
from torch.utils.weak import WeakIdKeyDictionary

from v0adam.sharding import is_dtensor

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
# param -> a weak reference to the GradRelease whose hook steps it: one at a time, or a backward steps it twice.
_RELEASED_BY = WeakIdKeyDictionary()


class GradRelease:
    """The hooks and the pending group of one optimizer, whose `step()` steps the params that hold a grad and
    whose `params()` are all its params (bound methods of it).

    The optimizer is held weakly, and the hooks hold this object weakly: an optimizer let go is freed at once, and
    its hooks are removed with it (`close`), so that a model handed to a new optimizer is not stepped by the old."""

    def __init__(self, step, params):
        self._step = weakref.WeakMethod(step)
        self._params = weakref.WeakMethod(params)
        model_bytes = sum(param.numel() * param.element_size() for param in self._live_params())
        self.group_bytes = min(GROUP_BYTES, model_bytes // GROUPS)
        self._handles = {}  # param -> its hook's handle
        self.close = weakref.finalize(self, _remove_hooks, self._handles)
        self._pending = []
        self._pending_bytes = 0
        self._flush_queued = False
        self._told_no_grads = False
        self.accumulating = False
        self.watch()

    def _live_params(self) -> list:
        """The optimizer's params; none once it is freed (a hook may run while it is being torn down)."""
        params = self._params()
        return [] if params is None else params()

    def watch(self) -> None:
        """Hook every trainable param not hooked yet (new in a group, or unfrozen). Refuses, before hooking any, a
        param that another live optimizer steps in backward."""
        new = [param for param in self._live_params() if param not in self._handles and param.requires_grad]
        for param in new:
            owner = _RELEASED_BY.get(param)
            if owner is not None and owner() not in (None, self):
                raise ValueError(
                    "a param is already stepped during backward by another optimizer with release_grads=True: both "
                    "would step it. Let that optimizer go (del it) first"
                )
        this = weakref.ref(self)
        for param in new:
            self._handles[param] = param.register_post_accumulate_grad_hook(_hook(this))
            _RELEASED_BY[param] = this

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
        aside = {param: param.grad for param in self._live_params() if param.grad is not None and param not in ready}
        for param in aside:
            param.grad = None
        try:
            self.step_all()
        finally:
            for param, grad in aside.items():
                param.grad = grad

    def step_assigned(self, grad_scale, found_inf) -> None:
        """An optimizer's step() with release_grads: backward has stepped the params; grads assigned since are
        stepped now."""
        if grad_scale is not None or found_inf is not None:
            raise RuntimeError(
                "release_grads cannot take a GradScaler: its step is skipped when any grad is inf or NaN, which is "
                "known only after backward has stepped the params. Train in bfloat16 without one, or drop "
                "release_grads"
            )
        self.watch()
        self.step_all()

    @torch.no_grad()
    def step_all(self) -> None:
        """Step every param that holds a grad, as an optimizer step does, and free the grads."""
        self._pending, self._pending_bytes = [], 0
        stepped = [param for param in self._live_params() if param.grad is not None]
        step = self._step()
        if stepped and step is not None:
            step()
        for param in stepped:
            param.grad = None

    @contextlib.contextmanager
    def accumulate(self):
        previous, self.accumulating = self.accumulating, True
        try:
            yield
        finally:
            self.accumulating = previous


def start(optimizer) -> "GradRelease | None":
    """The release of an optimizer built with release_grads=True (None without), refused under DDP."""
    if not optimizer.release_grads:
        return None
    params = [param for group in optimizer.param_groups for param in group["params"]]
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not all(map(is_dtensor, params)):
        raise ValueError(
            "release_grads steps a param when autograd has its grad; under DDP that is before DDP averages it. "
            "Shard the model with FSDP2 (fully_shard), whose reduced grads are released, or drop release_grads"
        )
    # A GradScaler then hands its scale to step(), which refuses it (it cannot skip a step already taken).
    optimizer._step_supports_amp_scaling = True
    return GradRelease(optimizer._step, optimizer._all_params)


def _hook(release: weakref.ref):
    """A param's post-accumulate-grad hook, which holds its GradRelease weakly."""

    def ready(param) -> None:
        live = release()
        if live is not None:
            live._ready(param)

    return ready


def _remove_hooks(handles: dict) -> None:
    for handle in handles.values():
        handle.remove()
    handles.clear()
