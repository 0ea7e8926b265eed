"""torch's optimizer contract over states laid out in flat buffers: param groups (added, edited, their lists changed),
`opt.state` and its edits, zero_grad, state_dict and load_state_dict with their hooks, copies and pickles, and the
layout following a model moved or converted. V0Adam adds the step and the update rule to it.
"""

import torch
from torch.optim import Optimizer

from v0adam import checkpoint, grad_release, options, sharding, state_formats
from v0adam import v0 as v0_modes
from v0adam.fixed_address import fixed_address
from v0adam.guards import StepGuards
from v0adam.layout import Settings, StateLayout
from v0adam.work import ParamMoved

# The attributes a copy carries besides torch's: the settings, and what the steps taken so far left.
_CARRIED = (
    "backend",
    "precision",
    "skip_nonfinite",
    "flat_grads",
    "skipped_steps",
    "_step_supports_amp_scaling",
    "_step_calls",
    "_awaiting_data_v0",
    "release_grads",
)


@torch._disable_dynamo  # torch.compiler.disable, without importing torch._dynamo along with v0adam
def eagerly(function, *args):
    """function(*args) as without torch.compile: a graph break when traced (an error under fullgraph=True)."""
    return function(*args)


class FlatStateOptimizer(Optimizer):
    """An optimizer that owns its states only, in flat per-(device, dtype, format) buffers (`v0adam.layout`), and
    otherwise behaves as torch's do. Its subclass sets `precision`, `backend`, `flat_grads`, `skip_nonfinite`,
    `release_grads`, `_RULE` and `_DECOUPLED_WEIGHT_DECAY`, and defines `_step`."""

    def _all_params(self) -> list[torch.Tensor]:
        return [param for group in self.param_groups for param in group["params"]]

    def _start_unlaid(self, carried: dict | None = None) -> None:
        """The fields of an optimizer whose params are not laid out yet: at construction, and in a copy (whose
        `carried` states are adopted as its params are laid out)."""
        self._guards = StepGuards()
        self._layout = StateLayout(Settings(self.precision, self.backend, self.flat_grads, self._RULE), carried)
        self.state = self._layout.table

    @property
    def _buckets(self) -> list:
        return self._layout.buckets

    def __getstate__(self):
        """torch's (defaults, state, param_groups), and v0adam's settings: what `copy.deepcopy` and pickle carry.
        The flat buffers are not carried: the copy lays its params out afresh (see `__setstate__`)."""
        sharding.check_copyable(self._partition_group)
        state = super().__getstate__()
        state.update({name: self.__dict__[name] for name in _CARRIED})
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        options.fill_group_defaults(self.param_groups, self.defaults, self._DECOUPLED_WEIGHT_DECAY)
        if "_layout" not in self.__dict__:  # a copy or an unpickled optimizer; torch's load passes its groups only
            self._lay_out_copy()

    def _lay_out_copy(self) -> None:
        """Lay out the params of a copy (its own, or those copied along with it), their states and the count of
        skipped steps taken from what was carried."""
        skipped_steps = self.skipped_steps
        self._partition_group = None
        self._start_unlaid(carried=self.state)
        self.skipped_steps = None
        self._build_buckets()
        if skipped_steps is not None:
            self.skipped_steps.copy_(skipped_steps)
        self._release = grad_release.start(self)

    def add_param_group(self, param_group: dict) -> None:
        """As torch's, plus v0adam's checks; params added after construction get their own slots at once."""
        group, pending_v0 = options.prepared_group(param_group, self.defaults, len(self.param_groups))
        super().add_param_group(group)
        self._layout.pending_v0.update(pending_v0)
        if self._buckets:
            self._build_buckets()
            self._awaiting_data_v0 = self._awaiting_data_v0 or group["v0"] == v0_modes.DATA
        if getattr(self, "_release", None) is not None:
            self._release.watch()

    def _build_buckets(self) -> None:
        """Lay the states out afresh (`StateLayout.build`), and what the optimizer keeps beside them."""
        self._layout.build(self.param_groups, self.state)
        self.state = self._layout.table
        self._amsgrad_flags = [group["amsgrad"] for group in self.param_groups]
        if self.skip_nonfinite:  # on the first bucket's device, which a moved model changes
            device = self._buckets[0].device if self._buckets else torch.device("cpu")
            if self.skipped_steps is None or self.skipped_steps.device != device:
                count = torch.zeros((), dtype=torch.int64) if self.skipped_steps is None else self.skipped_steps
                self.skipped_steps = fixed_address(count.to(device))
            checkpoint.hand_groups_the_count(self.param_groups, self.skipped_steps)

    def _laid_out(self) -> StateLayout:
        """The layout, first laid out again if the param lists changed since it was."""
        self._follow_param_lists()
        return self._layout

    def _follow_param_lists(self) -> None:
        if self._layout.param_lists_changed(self.param_groups):
            eagerly(self._build_buckets)

    def _follow_moves(self, action):
        """action(), after laying the buffers out again if it finds a param moved or converted since they were
        (`model.to(device)` after the optimizer was built, as `accelerate`'s `prepare` does): states carried."""
        try:
            return action()
        except ParamMoved:
            self._build_buckets()
            return action()

    def _adopt_state_edits(self) -> None:
        self._layout.adopt_edits(self.param_groups, self.state)
        self.state = self._layout.table

    def state_formats(self) -> list[state_formats.StateFormat]:
        """Each param's state format (moments, master), why it got it (8-bit states only where the tensor fits
        them), and the bytes of state per param element it comes to; `print(*opt.state_formats(), sep="\n")`."""
        self._follow_param_lists()
        return state_formats.describe(self)

    @torch.no_grad()
    def master_weight(self, param: torch.Tensor) -> torch.Tensor:
        """The float32 value the optimizer updates for `param`, as a new tensor (a DTensor for a DTensor param):
        its master, rebuilt from the remainder where it is one, or the param widened where it has none. To save
        a float32 model: ``{name: opt.master_weight(p) for name, p in model.named_parameters()}``."""
        self._follow_param_lists()
        if self._layout.has_moved():
            self._build_buckets()  # states carried to the param's new device or dtype
        try:
            bucket, index = self._layout.locate(param)
        except KeyError:
            raise KeyError("master_weight: the param is not one of this optimizer's") from None
        return sharding.like_param(param, bucket.read_master(index))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's: every grad set to None (the default), so that the next backward hands each param a fresh
        gradient without accumulating into anything, or zeroed in place with `set_to_none=False`. A param without
        a grad at the next step is not stepped, and its step counter stays.

        With `flat_grads=True`, one memset per bucket instead, whatever `set_to_none` says: grads stay allocated
        as views of the flat grad buffer and autograd accumulates into them; a param frozen since the last call
        (`requires_grad_(False)`) is left without a grad, as torch's `zero_grad()` does, and is not stepped; an
        unfrozen one gets its view. A model moved or converted since the optimizer was built gets its buffers laid
        out again on its new device and dtype, states carried over."""
        self._follow_param_lists()
        tracing = torch.compiler.is_compiling()
        self._follow_moves(lambda: self._zero_grads(set_to_none, tracing))

    def _zero_grads(self, set_to_none: bool, tracing: bool) -> None:
        for bucket in self._buckets:
            if bucket.requires_grad_changed():
                eagerly(bucket.follow_requires_grad)
            bucket.zero_grad(set_to_none, tracing)

    @torch._disable_dynamo
    def state_dict(self) -> dict:
        """torch's state_dict, each param's state a plain dict: a checkpoint loads into torch.optim.Adam(W) (see
        `v0adam.checkpoint.state_dict`)."""
        return checkpoint.state_dict(self)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of V0Adam(W) or torch.optim.Adam(W), copying values into the flat buffers; hooks and
        entries of the state that belong to no param as torch's.

        Every size and shape is checked before anything is written. States are kept in float32 whatever the
        param dtype, so a 16-bit model loses no state precision on load. 8-bit states (codes and block scales)
        load as they are into an optimizer with 8-bit states and are dequantized into any other; float states are
        quantized into 8-bit ones, and so are 8-bit states of the first format (0.1, 0.2), dequantized with its map.
        """
        checkpoint.load_state_dict(self, state_dict)
