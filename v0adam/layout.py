"""The optimizer's own state, laid out: its buckets (flat state buffers per device, dtype and state format), the
views of them it publishes in `opt.state`, and how both follow the model and the param groups.

Params are laid out afresh when the param lists change, when a param was moved or converted (`model.to()` after
the optimizer was built, as accelerate's `prepare` does) and in a copy; states are carried over every time. What
was written into `opt.state` itself is adopted before the next step, as torch's optimizers would read it
(`v0adam.state_table`), and loaded checkpoints are written through the same checks (`v0adam.state_io`). Everything
is checked before anything is written.
"""

import dataclasses
import operator

import torch

from v0adam import options, sharding, state_io
from v0adam import v0 as v0_modes
from v0adam.backends import Backends
from v0adam.buckets import FlatBucket
from v0adam.masters import MASTER_KEYS
from v0adam.moments import CODES_SUFFIX, MOMENTS, SCALES_SUFFIX
from v0adam.sharding import local_part
from v0adam.state_table import StateTable


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an optimizer's construction fixes for its layouts."""

    precision: object  # `v0adam.precision.Precision`
    backend: str  # "auto", "triton" or "torch"
    flat_grads: bool
    rule: object  # the update rule (`v0adam.rules.rule.UpdateRule`), whose hyperparameters the device tables hold


class StateLayout:
    """The buckets of one optimizer and the state views it published (`published`: param -> its views, which
    `table`, the optimizer's `opt.state`, holds with whatever else was put there)."""

    def __init__(self, settings: Settings, carried: dict | None = None):
        self.settings = settings
        self.buckets = []
        self.pending_v0 = {}  # param -> v0 given by the user (a dict or a callable), until its param is laid out
        self.table = StateTable()
        if carried:  # a copy's states, adopted as its params are laid out
            self.table.update(carried)
            self.table.edited = False
        self.published = {}  # param -> the state views last published in opt.state
        self.param_indices = {}  # param -> its number, which seeds its random v0
        self.param_lists = []

    def locate(self, param) -> tuple:
        """(bucket, index) of a param of this layout; KeyError for any other tensor."""
        for bucket in self.buckets:
            for index, held in enumerate(bucket.params):
                if held is param:
                    return bucket, index
        raise KeyError("the param is not one of this optimizer's")

    def holds_trained_state(self) -> bool:
        """Whether a param has taken a step, here (compiled or not) or in a loaded checkpoint: a read on the host."""
        return any(bool(bucket.steps.any()) for bucket in self.buckets)

    def has_moved(self) -> bool:
        return any(bucket.has_moved() for bucket in self.buckets)

    def param_lists_changed(self, param_groups) -> bool:
        """Whether a param was put into or taken out of a group's list since the buckets were built (torch's
        optimizers step whatever the lists hold: an appended param is stepped, with fresh state)."""
        lists = self.param_lists
        return len(param_groups) != len(lists) or not all(
            len(group["params"]) == len(params) and all(map(operator.is_, group["params"], params))
            for group, params in zip(param_groups, lists)
        )

    def build(self, param_groups, state) -> None:
        """Lay every param out in flat buffers, on its current device and dtype, carrying over the values of any
        earlier layout. A param taken out of the groups leaves its last state in opt.state, as in torch (a copy,
        not a view that would keep the dropped buffers alive); a param entering with a state there (one taken out
        and put back, or given one by the user) resumes it. `state` is the optimizer's opt.state. Checks first,
        then writes."""
        backends = Backends(self.settings.backend)
        self._check(param_groups, backends)
        if self.edited(state):
            self.adopt_edits(param_groups, state)
        previous = {param: (bucket, index) for bucket in self.buckets for index, param in enumerate(bucket.params)}
        precision = self.settings.precision
        entries, param_indices = {}, {}
        for group_index, group in enumerate(param_groups):
            for param in group["params"]:
                if param in param_indices:
                    continue  # torch warned about the duplicate; step it once
                param_indices[param] = len(param_indices)
                moments = precision.moments_for(param.dtype, precision.asked_for(param, group))
                key = (param.device, param.dtype, sharding.layout_of(param), moments)
                entries.setdefault(key, []).append((param, group_index))
        entering = {
            param: dict(self.table[param]) for param in param_indices.keys() - previous.keys() if self.table.get(param)
        }
        entering = self.checked(entering)
        self.param_indices = param_indices
        self.buckets = [
            self._lay_out(bucket_entries, device, dtype, moments, backends, previous, param_groups)
            for (device, dtype, _, moments), bucket_entries in entries.items()
        ]
        for param in previous.keys() - param_indices.keys():
            left = self.published.pop(param)
            self.table.publish(param, {key: value.clone() for key, value in left.items()})
        if entering:
            self.write(entering, entering, param_groups)
        self.param_lists = [list(group["params"]) for group in param_groups]

    def _check(self, param_groups, backends) -> None:
        """Every param of every group can be laid out: checked before a layout writes anything."""
        for group in param_groups:
            for param in group["params"]:
                options.check_param(param)
                if self.settings.precision.stochastic_rounding and param.dtype == torch.float16:
                    raise ValueError(
                        "stochastic_rounding supports bfloat16 params; use master_weights=True for float16"
                    )
                backends.for_bucket(param.device, param.dtype)

    def _lay_out(self, bucket_entries, device, dtype, moments, backends, previous, param_groups) -> FlatBucket:
        """One bucket of the new layout, its params' states carried over from `previous` (param -> old bucket and
        index) or started at v0, and published in opt.state."""
        # With flat grads, a param laid out again keeps a missing grad (the step now due must not step it, as torch
        # would not); the next zero_grad hands it its view. New params get theirs now.
        without_grad = [param for param, _ in bucket_entries if param in previous and param.grad is None]
        precision, backend = self.settings.precision, backends.for_bucket(device, dtype)
        master = precision.master_for(dtype)
        bucket = FlatBucket(bucket_entries, device, dtype, backend, moments, master, self.settings.flat_grads)
        for param in without_grad:
            param.grad = None
        rounding_seed = param_groups[0]["rounding_seed"] if precision.stochastic_for(dtype) else None
        backend.prepare(bucket, param_groups, self.settings.rule, rounding_seed)
        for index, (param, group_index) in enumerate(bucket_entries):
            amsgrad = param_groups[group_index]["amsgrad"]
            state = bucket.state_views(index, amsgrad)
            if param in previous:
                old_bucket, old_index = previous[param]
                old_state = old_bucket.state_views(old_index, amsgrad)
                for key, value in state.items():
                    # A master copy is new after a conversion to 16 bits: the bucket took it from the param.
                    if key in old_state:
                        value.copy_(old_state[key])
                bucket.set_step_history(index, old_bucket.step_history[old_index])
            else:
                self.initialise_v0(bucket, index, param_groups)
            self.publish(param, state)
        return bucket

    def initialise_v0(self, bucket, index: int, param_groups) -> None:
        """exp_avg_sq of the bucket's param `index`, which has no state yet, starts at its group's v0 ("data" waits
        for its data pass)."""
        param, group = bucket.params[index], param_groups[bucket.groups[index]]
        exp_avg_sq = bucket.moment_values("exp_avg_sq", index)  # float moments: the slot; 8-bit: a float32 copy
        if param in self.pending_v0:
            exp_avg_sq.copy_(local_part(param, self.pending_v0.pop(param)))
        elif group["v0"] == v0_modes.RANDOM:
            v0_modes.draw_random_(
                exp_avg_sq,
                param.shape,
                sigma=v0_modes.resolve_scale(v0_modes.RANDOM, group["v0_scale"]),
                seed=group["v0_seed"],
                param_index=self.param_indices[param],
                element_offset=sharding.global_element_offset(param),
                use_triton=bucket.backend.runs_triton,
            )
        else:
            bucket.zero_moment("exp_avg_sq", index)
            return
        bucket.write_moment("exp_avg_sq", index, exp_avg_sq)  # float moments: the slot onto itself

    def renumber(self, params, param_groups) -> None:
        """Number the params by their positions in `params` (a list holding them all) and redraw random v0s."""
        position = {param: index for index, param in enumerate(params)}
        if any(param not in position for param in self.param_indices):
            raise ValueError("number_params_as needs a list holding every param of this optimizer")
        self.param_indices = {param: position[param] for param in self.param_indices}
        for bucket in self.buckets:
            for index, group_index in enumerate(bucket.groups):
                if param_groups[group_index]["v0"] == v0_modes.RANDOM:
                    self.initialise_v0(bucket, index, param_groups)

    def add_max_exp_avg_sq_states(self, param_groups, tracing: bool) -> None:
        """AMSGrad switched on in a group after construction: its params get a max v (zeros), published."""
        for bucket in self.buckets:
            for index, param in enumerate(bucket.params):
                published = self.published[param]
                amsgrad = param_groups[bucket.groups[index]]["amsgrad"]
                if amsgrad and not any(key.startswith("max_exp_avg_sq") for key in published):
                    bucket.ensure_max_exp_avg_sq(tracing)
                    self.publish(param, bucket.state_views(index, amsgrad=True))

    def publish(self, param, state: dict, extras=None) -> None:
        self.published[param] = state
        self.table.publish(param, {**state, **(extras or {})})

    def edited(self, state) -> bool:
        """Whether opt.state (`state`) was replaced, or written into, since the states were last published."""
        return state is not self.table or self.table.edited

    def adopt_edits(self, param_groups, state) -> None:
        """Bring what was written into opt.state itself (`state`, maybe a new object), not in place into its views
        (see `v0adam.state_table`), into the flat buffers, as torch's optimizers would read it: a missing or empty
        entry starts its param afresh, a new value is copied in. Checked before anything is written."""
        edited, kept = {}, {}
        for param, published in self.published.items():
            entry = dict.get(state, param)
            if entry is None or any(entry.get(key) is not view for key, view in published.items()):
                edited[param] = dict(entry or {})
            elif any(key in entry and key + CODES_SUFFIX in published for key in MOMENTS):
                edited[param] = state_io.moments_replacing_codes(entry)
            else:
                kept[param] = entry
        self.write(self.checked(edited), edited, param_groups)
        for param, entry in kept.items():  # republished: the entry may be a copy that does not report edits
            published = self.published[param]
            self.publish(param, published, {key: value for key, value in entry.items() if key not in published})

    def checked(self, states: dict) -> dict:
        """`states` (param -> values) checked against their params before anything is written (`state_io`), 8-bit
        moments decoded unless the param's bucket keeps 8-bit moments that load as they are."""
        loading_codes = {param for bucket in self.buckets if bucket.moments.loads_codes for param in bucket.params}
        return {
            param: state_io.checked_values(param, values, keep_codes=param in loading_codes)
            for param, values in states.items()
        }

    def write(self, states: dict, params, param_groups) -> None:
        """Copy checked `states` into the flat buffers for each of `params` and publish them in opt.state. A
        missing value starts fresh: zero, exp_avg_sq at v0 and the master at the param, as torch creates state at a
        param's first step. A master of the other kind (a float32 copy, a remainder) is converted. Keys that are
        not states are kept."""
        for bucket in self.buckets:
            for index, param in enumerate(bucket.params):
                if param not in params:
                    continue
                state = bucket.state_views(index, param_groups[bucket.groups[index]]["amsgrad"])
                values = states.get(param, {})
                written = {"step"}
                for name in MOMENTS:
                    keys = {name, name + CODES_SUFFIX, name + SCALES_SUFFIX} & state.keys()
                    if not keys:
                        continue  # max_exp_avg_sq without AMSGrad
                    if name in values:
                        state_io.write_loaded_moment(bucket, index, name, values)
                    else:
                        bucket.zero_moment(name, index)
                    written.update({name, *keys})
                if "step" in values:
                    state["step"].copy_(torch.as_tensor(values["step"]))
                else:
                    state["step"].zero_()
                if bucket.master is not None:
                    bucket.write_master(index, state_io.loaded_master(param, values))
                    written.update(MASTER_KEYS)  # either kind: the other is converted
                if "exp_avg_sq" not in values:
                    self.initialise_v0(bucket, index, param_groups)
                bucket.set_step_history(index, hash(("loaded", float(state["step"]))))
                extras = {key: value for key, value in values.items() if key not in written}
                self.publish(param, state, extras)
        self.table.edited = False
