"""V0Adam's states in torch's layout: `state_dict`, `load_state_dict`, and the adoption of what was written into
`opt.state` itself (see `v0adam.state_table`). Values are checked before anything is written, then copied into the
flat buffers, whose views are published in `opt.state`."""

from copy import deepcopy
from itertools import chain

import torch

from v0adam import quantization
from v0adam.buckets import CODES_SUFFIX, MASTER_KEYS, MOMENTS, SCALES_SUFFIX
from v0adam.master_remainder import REMAINDER_DTYPE, join_master
from v0adam.sharding import is_dtensor, like_param, local, local_part, local_rows
from v0adam.state_table import ParamState

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master_param", "param_remainder")
# The block scales' key in checkpoints of the first 8-bit format (0.1, 0.2), whose codes index a dynamic code map.
LEGACY_SCALES_SUFFIX = "_absmax"
# Checkpoints of 0.3 to 0.5 (and of the first format) hold an 8-bit moment's codes under the moment's own key, not
# under "exp_avg" + CODES_SUFFIX: they still load (values are read with the moments' names, see `_as_moments`).
# The param-group key that holds `skipped_steps`, the live count (param groups are what every checkpointer saves).
SKIPPED_STEPS = "skipped_steps"


class TorchLayoutStates:
    """The state methods of V0Adam (a mixin: it reads the optimizer's buckets, param groups and published views)."""

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of V0Adam(W) or torch.optim.Adam(W), copying values into the flat buffers; hooks and
        entries of the state that belong to no param as torch's.

        Every size and shape is checked before anything is written. States are kept in float32 whatever the
        param dtype, so a 16-bit model loses no state precision on load. 8-bit states (codes and block scales)
        load as they are into an optimizer with 8-bit states and are dequantized into any other; float states are
        quantized into 8-bit ones, and so are 8-bit states of the first format (0.1, 0.2), dequantized with its map.
        """
        state_dict = state_dict.copy()  # shallow, as torch's: a pre-hook may replace its entries
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        self._follow_param_lists()  # the states go to the params the groups hold now
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
        params_by_id = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        saved_state = {params_by_id[key]: value for key, value in state_dict["state"].items() if key in params_by_id}
        saved_state = self._checked_states(saved_state)
        unassigned = {key: value for key, value in state_dict["state"].items() if key not in params_by_id}
        skipped_steps = [group.pop(SKIPPED_STEPS) for group in saved_groups if SKIPPED_STEPS in group]
        if skipped_steps:
            self._check_skipped_steps(skipped_steps[0])
        for group, saved in zip(self.param_groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        self.__setstate__({"param_groups": saved_groups})
        self._awaiting_data_v0 = False
        self._write_states(saved_state, self._published)
        for key in [key for key in self.state if key not in self._published]:  # torch's load keeps only these
            del self.state[key]
        self.state.update(unassigned)  # state of no param, kept as torch keeps it
        self._state_table.edited = False
        if self.skip_nonfinite:  # a checkpoint without the count (torch's, or without skip_nonfinite) restarts it
            self.skipped_steps.copy_(torch.as_tensor(skipped_steps[0] if skipped_steps else 0))
            self._hand_groups_the_count()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    @torch._disable_dynamo
    def state_dict(self) -> dict:
        """torch's state_dict, hooks included, each param's state a plain dict (a checkpoint loads without v0adam).
        The states of params taken out of their groups are left out (torch's own state_dict raises a KeyError on
        them). With `skip_nonfinite` every group holds `skipped_steps`, as in `opt.param_groups`.

        8-bit states are saved as they are: codes shaped as the param (under "exp_avg_code", not "exp_avg", which
        torch would read as values: `v0adam.buckets.CODES_SUFFIX`), block scales a row per param row, DTensors for a
        DTensor param. Blocks are the whole tensor's and never straddle two rows, so torch.distributed.checkpoint
        reshards codes and scales alike, into any world size or one process."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        # Params are numbered by their positions over all groups, a repeated param by its first, as torch does.
        param_ids, start = {}, 0
        param_groups = []
        for group in self.param_groups:
            for position, param in enumerate(group["params"], start):
                param_ids.setdefault(id(param), position)
            start += len(group["params"])
            packed = {key: value for key, value in group.items() if key != "params"}
            packed["params"] = [param_ids[id(param)] for param in group["params"]]
            param_groups.append(packed)
        state = {}
        for key, values in self.state.items():
            if not isinstance(key, torch.Tensor):
                state[key] = values  # whatever else was put into opt.state, kept as torch keeps it
            elif id(key) in param_ids:
                values = dict(values) if isinstance(values, ParamState) else values
                state[param_ids[id(key)]] = values
        state_dict = {"state": state, "param_groups": param_groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        return state_dict

    def _hand_groups_the_count(self) -> None:
        """Put `skipped_steps` into every param group, where every checkpointer saves it (torch's state_dict,
        torch.distributed.checkpoint, ZeroRedundancyOptimizer's consolidated state_dict)."""
        for group in self.param_groups:
            group[SKIPPED_STEPS] = self.skipped_steps

    @staticmethod
    def _check_skipped_steps(value) -> None:
        if torch.as_tensor(value).numel() != 1:
            raise ValueError(f"loaded '{SKIPPED_STEPS}' must be a single number")

    def _adopt_assigned_count(self) -> None:
        """A count assigned into the groups, not in place (ZeroRedundancyOptimizer's load hands each rank's groups
        the loaded one), becomes the count: checked, copied in, and the groups handed the count again."""
        assigned = [group.get(SKIPPED_STEPS) for group in self.param_groups]
        assigned = [value for value in assigned if value is not self.skipped_steps and value is not None]
        if assigned:
            self._check_skipped_steps(assigned[0])
            self.skipped_steps.copy_(torch.as_tensor(assigned[0]))
        self._hand_groups_the_count()

    def _count_was_assigned(self) -> bool:
        return self.skip_nonfinite and any(
            group.get(SKIPPED_STEPS) is not self.skipped_steps for group in self.param_groups
        )

    def _checked_states(self, states: dict) -> dict:
        """`states` (param -> values) checked against their params before anything is written, each value this
        rank's part (a DTensor param's shard; a layout mismatch raises here). 8-bit moments come out dequantized
        unless this optimizer's states are 8-bit too and they are of today's format. Values come back under the
        moments' names, 8-bit codes too (`_as_moments`)."""
        states = {param: _as_moments(values) for param, values in states.items()}
        for param, values in states.items():
            for key, value in values.items():
                copied = key in STATE_KEYS or key == "step" or key.endswith((SCALES_SUFFIX, LEGACY_SCALES_SUFFIX))
                if copied and isinstance(value, torch.Tensor) and local(value).is_meta:
                    raise ValueError(f"loaded state '{key}' is a meta tensor: it holds no values to load")
            for key in STATE_KEYS:
                if key in values and tuple(values[key].shape) != tuple(param.shape):
                    raise ValueError(
                        f"loaded state '{key}' has shape {tuple(values[key].shape)}, but its parameter has shape "
                        f"{tuple(param.shape)}"
                    )
            if "step" in values and torch.as_tensor(values["step"]).numel() != 1:
                raise ValueError("loaded state 'step' must be a single number")
            if "param_remainder" in values and torch.as_tensor(values["param_remainder"]).dtype != REMAINDER_DTYPE:
                raise ValueError(
                    f"loaded state 'param_remainder' must be {REMAINDER_DTYPE}: the low half of the master"
                )
            _check_scales(param, values)
        quantized = {param for bucket in self._buckets if bucket.quantized for param in bucket.params}
        states = {
            param: _dequantized(values, param, (SCALES_SUFFIX,) if param in quantized else ())
            for param, values in states.items()
        }
        return {
            param: {key: _local_value(param, key, value) for key, value in values.items()}
            for param, values in states.items()
        }

    def _write_states(self, states: dict, params) -> None:
        """Copy checked `states` into the flat buffers for each of `params` and publish them in opt.state. A
        missing value starts fresh: zero, exp_avg_sq at v0 and the master at the param, as torch creates state at a
        param's first step. A master of the other kind (a float32 copy, a remainder) is converted. Keys that are
        not states are kept."""
        for bucket in self._buckets:
            for index, param in enumerate(bucket.params):
                if param not in params:
                    continue
                amsgrad = self.param_groups[bucket.groups[index]]["amsgrad"]
                state = bucket.state_views(index, amsgrad)
                values = states.get(param, {})
                for key, view in state.items():
                    if key.endswith(SCALES_SUFFIX) or key == bucket.master_key:
                        continue  # written with its moment; the master below
                    name = key.removesuffix(CODES_SUFFIX)  # the moment of an 8-bit moment's codes
                    if name in values and bucket.quantized and name in MOMENTS:
                        _write_8bit(bucket, index, name, values)
                    elif name in values:
                        local(view).copy_(torch.as_tensor(values[name]))
                    elif name in MOMENTS:
                        bucket.zero_moment(name, index)
                    else:
                        local(view).zero_()
                if bucket.master is not None:
                    bucket.write_master(index, _loaded_master(param, values))
                if "exp_avg_sq" not in values:
                    self._initialise_v0(bucket, index, self._param_indices[param])
                bucket.set_step_history(index, hash(("loaded", float(state["step"]))))
                converted = MASTER_KEYS.values() if bucket.master is not None else ()  # the other kind of master
                written = {*state, *(key.removesuffix(CODES_SUFFIX) for key in state), *converted}
                extras = {key: value for key, value in values.items() if key not in written}
                self._publish(param, state, extras)
        self.state = self._state_table
        self._state_table.edited = False

    def _publish(self, param, state: dict, extras=None) -> None:
        self._published[param] = state
        self._state_table.publish(param, {**state, **(extras or {})})

    def _state_edited(self) -> bool:
        return self.state is not self._state_table or self._state_table.edited

    def _adopt_state_edits(self) -> None:
        """Bring what was written into opt.state itself, not in place into its views (see `v0adam.state_table`),
        into the flat buffers, as torch's optimizers would read it: a missing or empty entry starts its param
        afresh, a new value is copied in. Checked before anything is written."""
        edited, kept = {}, {}
        for param, published in self._published.items():
            entry = dict.get(self.state, param)
            if entry is None or any(entry.get(key) is not view for key, view in published.items()):
                edited[param] = dict(entry or {})
            elif any(key in entry and key + CODES_SUFFIX in published for key in MOMENTS):
                edited[param] = _moments_replacing_codes(entry)
            else:
                kept[param] = entry
        self._write_states(self._checked_states(edited), edited)
        for param, entry in kept.items():  # republished: the entry may be a copy that does not report edits
            published = self._published[param]
            self._publish(param, published, {key: value for key, value in entry.items() if key not in published})


def dequantized_state_dict(state_dict: dict) -> dict:
    """A copy of an optimizer state_dict with every 8-bit moment turned into float32 values (and its block scales
    dropped): what torch.optim.Adam(W), or a V0Adam with float states, loads. Needs no optimizer and no model, so
    it converts a saved checkpoint as well. Tensors other than the 8-bit moments are shared, not copied."""
    states = state_dict["state"]
    return {
        **state_dict,
        "state": {
            key: _dequantized(_as_moments(values)) if isinstance(values, dict) else values
            for key, values in states.items()
        },
    }


def moment_values(state: dict, name: str) -> torch.Tensor:
    """The float values of the moment `name` of a param's state entry (opt.state[p]), 8-bit ones decoded."""
    if name + CODES_SUFFIX not in state:
        return state[name]
    return quantization.dequantize(state[name + CODES_SUFFIX], state[name + SCALES_SUFFIX], MOMENTS[name])


def _moments_replacing_codes(entry: dict) -> dict:
    """An opt.state entry in which a moment was written under its own name beside its 8-bit codes (as into torch's
    optimizers): the values written replace the codes and their scales."""
    values = dict(entry)
    for key in MOMENTS:
        if key in values:
            values.pop(key + CODES_SUFFIX, None)
            values.pop(key + SCALES_SUFFIX, None)
    return values


def _as_moments(values: dict) -> dict:
    """A param's state values with each 8-bit moment's codes under the moment's own name (uint8 codes there mean
    codes, as in checkpoints of 0.3 to 0.5), which the checks, the dequantization and the writes go by."""
    values = dict(values)
    for key in MOMENTS:
        if key + CODES_SUFFIX not in values:
            continue
        codes = values.pop(key + CODES_SUFFIX)
        if key in values or torch.as_tensor(codes).dtype != torch.uint8:
            raise ValueError(f"loaded state '{key}{CODES_SUFFIX}' must be uint8 codes, and '{key}' absent")
        values[key] = codes
    return values


def _local_value(param, key: str, value):
    """This rank's part of a loaded state value: a state's, an 8-bit state's block scales' (a row per param row);
    other entries as they are."""
    if key in STATE_KEYS:
        return local_part(param, torch.as_tensor(value))
    if key.endswith(SCALES_SUFFIX):
        return local_rows(param, torch.as_tensor(value))
    return value


def _loaded_master(param, values: dict) -> torch.Tensor:
    """The float32 master (this rank's part) that loaded `values` give `param`: its copy, its remainder joined
    with the param, or, in a checkpoint without one (torch's), the param itself."""
    param_data = local(param).detach()
    if "master_param" in values:
        return local(torch.as_tensor(values["master_param"])).to(torch.float32)
    if "param_remainder" in values and param_data.dtype == torch.bfloat16:
        return join_master(param_data, local(torch.as_tensor(values["param_remainder"])))
    return param_data.to(torch.float32)


def _check_scales(param, values: dict) -> None:
    """An 8-bit moment (uint8 codes) comes with its block scales, one float per quantization block (of this rank's
    shard when the codes are a DTensor's), under today's key or the first format's."""
    for key in MOMENTS:
        if key not in values or torch.as_tensor(values[key]).dtype != torch.uint8:
            continue
        scales = values.get(key + SCALES_SUFFIX, values.get(key + LEGACY_SCALES_SUFFIX))
        expected = quantization.num_blocks(local(values[key]).numel())
        # One per block: a row per param row (today), or a flat list (0.3 and the first format, blocks laid on the
        # flattened tensor: the same blocks wherever rows are whole blocks).
        if scales is None or local(scales).numel() != expected or not scales.is_floating_point():
            raise ValueError(
                f"loaded 8-bit state '{key}' needs '{key}{SCALES_SUFFIX}', {expected} floats (one scale per "
                f"{quantization.QBLOCK} elements)"
            )


def _dequantized(values: dict, param=None, kept_formats=()) -> dict:
    """`values` with every 8-bit moment replaced by its float32 values, and its scales dropped, except those whose
    scales' suffix is in `kept_formats`. Codes that are a DTensor (with this rank's scales) come out a DTensor laid
    out as `param`."""
    values = dict(values)
    decoders = {SCALES_SUFFIX: quantization.dequantize, LEGACY_SCALES_SUFFIX: quantization.legacy_dequantize}
    for key, signed in MOMENTS.items():
        if key not in values or torch.as_tensor(values[key]).dtype != torch.uint8:
            continue
        suffix = next((suffix for suffix in decoders if key + suffix in values), None)
        if suffix is None or suffix in kept_formats:
            continue
        scales = local(values.pop(key + suffix)).reshape(-1).to(torch.float32)
        codes = values[key]
        values[key] = decoders[suffix](local(codes), scales, signed)
        if is_dtensor(codes):
            values[key] = like_param(param, values[key])
    return values


def _write_8bit(bucket, index: int, key: str, values: dict) -> None:
    """Write a loaded moment into an 8-bit slot: codes and scales as they are, float values quantized."""
    loaded = torch.as_tensor(values[key])
    if loaded.dtype == torch.uint8:
        local(bucket.slot(bucket.moment(key), index)).copy_(loaded)
        bucket.scale_slot(key, index).copy_(local(values[key + SCALES_SUFFIX]).reshape(-1))
    else:
        bucket.write_moment(key, index, loaded)
