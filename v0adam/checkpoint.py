"""`state_dict` and `load_state_dict` of V0Adam: torch's layout and hooks, so that a checkpoint loads into
torch.optim.Adam(W) and theirs into V0Adam; the states themselves go through `v0adam.state_io`'s checks into the
optimizer's layout (`v0adam.layout`). With `skip_nonfinite`, the count of skipped steps travels in every param
group, where every checkpointer saves it."""

from copy import deepcopy
from itertools import chain

import torch

from v0adam.state_table import ParamState

# The param-group key that holds `skipped_steps`, the live count (param groups are what every checkpointer saves).
SKIPPED_STEPS = "skipped_steps"


def state_dict(optimizer) -> dict:
    """torch's state_dict, hooks included, each param's state a plain dict (a checkpoint loads without v0adam).
    The states of params taken out of their groups are left out (torch's own state_dict raises a KeyError on
    them). With `skip_nonfinite` every group holds `skipped_steps`, as in `opt.param_groups`.

    8-bit states are saved as they are: codes shaped as the param (under "exp_avg_code", not "exp_avg", which
    torch would read as values: `v0adam.moments.CODES_SUFFIX`), block scales a row per param row, DTensors for a
    DTensor param. Blocks are the whole tensor's and never straddle two rows, so torch.distributed.checkpoint
    reshards codes and scales alike, into any world size or one process."""
    for pre_hook in optimizer._optimizer_state_dict_pre_hooks.values():
        pre_hook(optimizer)
    # Params are numbered by their positions over all groups, a repeated param by its first, as torch does.
    param_ids, start = {}, 0
    param_groups = []
    for group in optimizer.param_groups:
        for position, param in enumerate(group["params"], start):
            param_ids.setdefault(id(param), position)
        start += len(group["params"])
        packed = {key: value for key, value in group.items() if key != "params"}
        packed["params"] = [param_ids[id(param)] for param in group["params"]]
        param_groups.append(packed)
    state = {}
    for key, values in optimizer.state.items():
        if not isinstance(key, torch.Tensor):
            state[key] = values  # whatever else was put into opt.state, kept as torch keeps it
        elif id(key) in param_ids:
            values = dict(values) if isinstance(values, ParamState) else values
            state[param_ids[id(key)]] = values
    saved = {"state": state, "param_groups": param_groups}
    for post_hook in optimizer._optimizer_state_dict_post_hooks.values():
        hook_result = post_hook(optimizer, saved)
        if hook_result is not None:
            saved = hook_result
    return saved


def load_state_dict(optimizer, saved: dict) -> None:
    """Load a state_dict of V0Adam(W) or torch.optim.Adam(W) into `optimizer`, copying values into its flat
    buffers; hooks and entries of the state that belong to no param as torch's. Every size and shape is checked
    before anything is written (see `V0Adam.load_state_dict`)."""
    saved = saved.copy()  # shallow, as torch's: a pre-hook may replace its entries
    for pre_hook in optimizer._optimizer_load_state_dict_pre_hooks.values():
        hook_result = pre_hook(optimizer, saved)
        if hook_result is not None:
            saved = hook_result
    layout = optimizer._laid_out()  # the states go to the params the groups hold now
    saved_groups = deepcopy(saved["param_groups"])
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    for group, saved_group in zip(optimizer.param_groups, saved_groups):
        if len(group["params"]) != len(saved_group["params"]):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
            )
    params_by_id = dict(
        zip(
            chain.from_iterable(g["params"] for g in saved_groups),
            chain.from_iterable(g["params"] for g in optimizer.param_groups),
        )
    )
    saved_state = {params_by_id[key]: value for key, value in saved["state"].items() if key in params_by_id}
    saved_state = layout.checked(saved_state)
    unassigned = {key: value for key, value in saved["state"].items() if key not in params_by_id}
    skipped_steps = [group.pop(SKIPPED_STEPS) for group in saved_groups if SKIPPED_STEPS in group]
    if skipped_steps:
        check_count(skipped_steps[0])
    for group, saved_group in zip(optimizer.param_groups, saved_groups):
        saved_group["params"] = group["params"]
        if "param_names" in group and "param_names" not in saved_group:
            saved_group["param_names"] = group["param_names"]
    optimizer.__setstate__({"param_groups": saved_groups})
    optimizer._awaiting_data_v0 = False
    layout.write(saved_state, layout.published, optimizer.param_groups)
    optimizer.state = layout.table
    for key in [key for key in layout.table if key not in layout.published]:  # torch's load keeps only these
        del layout.table[key]
    layout.table.update(unassigned)  # state of no param, kept as torch keeps it
    layout.table.edited = False
    if optimizer.skip_nonfinite:  # a checkpoint without the count (torch's, or without skip_nonfinite) restarts it
        optimizer.skipped_steps.copy_(torch.as_tensor(skipped_steps[0] if skipped_steps else 0))
        hand_groups_the_count(optimizer.param_groups, optimizer.skipped_steps)
    for post_hook in optimizer._optimizer_load_state_dict_post_hooks.values():
        post_hook(optimizer)


def hand_groups_the_count(param_groups, count: torch.Tensor) -> None:
    """Put `skipped_steps` into every param group, where every checkpointer saves it (torch's state_dict,
    torch.distributed.checkpoint, ZeroRedundancyOptimizer's consolidated state_dict)."""
    for group in param_groups:
        group[SKIPPED_STEPS] = count


def count_was_assigned(param_groups, count: torch.Tensor) -> bool:
    """Whether a group holds a count other than the live one (assigned, not written in place)."""
    return any(group.get(SKIPPED_STEPS) is not count for group in param_groups)


def adopt_assigned_count(param_groups, count: torch.Tensor) -> None:
    """A count assigned into the groups, not in place (ZeroRedundancyOptimizer's load hands each rank's groups the
    loaded one), becomes the count: checked, copied in, and the groups handed the count again."""
    assigned = [group.get(SKIPPED_STEPS) for group in param_groups]
    assigned = [value for value in assigned if value is not count and value is not None]
    if assigned:
        check_count(assigned[0])
        count.copy_(torch.as_tensor(assigned[0]))
    hand_groups_the_count(param_groups, count)


def check_count(value) -> None:
    if torch.as_tensor(value).numel() != 1:
        raise ValueError(f"loaded '{SKIPPED_STEPS}' must be a single number")
