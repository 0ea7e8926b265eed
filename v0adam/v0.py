"""v0, the initial second moment (SPEC §2): how each param group's exp_avg_sq starts.

A group's "v0" entry is one of the mode names below. A user-supplied v0 (a dict {param: tensor} or a callable
`f(param) -> tensor`) is consumed when the group is added and recorded as "tensor".
"""

from collections.abc import Callable, Mapping

import torch

ZERO, RANDOM, DATA, TENSOR = "zero", "random", "data", "tensor"
MODES = (ZERO, RANDOM, DATA, TENSOR)
NOT_YET = {RANDOM: "random v0 (paper eq. 11)", DATA: "data-driven v0 (paper eq. 10)"}


def split_v0(v0) -> tuple[str, Mapping | Callable | None]:
    """A group's v0 argument -> (mode name, user source or None). Raises ValueError on anything else."""
    if isinstance(v0, str):
        if v0 not in MODES or v0 == TENSOR:
            raise ValueError(f"Invalid v0 value: {v0!r}; expected 'zero', 'random', 'data', a dict or a callable")
        if v0 in NOT_YET:
            raise NotImplementedError(
                f"v0={v0!r} ({NOT_YET[v0]}) is not implemented yet; use v0='zero' or supply v0 as a dict "
                "{param: tensor} or a callable f(param) -> tensor"
            )
        return v0, None
    if isinstance(v0, Mapping) or callable(v0):
        return TENSOR, v0
    raise ValueError(f"Invalid v0 value: {v0!r}; expected 'zero', 'random', 'data', a dict or a callable")


def user_v0(source: Mapping | Callable, params: list[torch.Tensor]) -> dict[torch.Tensor, torch.Tensor]:
    """The user's v0 for each param, checked: same shape as the param, finite and non-negative.

    A dict may leave params out (they start at 0). Runs once, when the group is added, so the checks may read
    values back to the host.
    """
    if isinstance(source, Mapping):
        known = {id(param) for param in params}
        if any(id(key) not in known for key in source):
            raise ValueError("v0 dict has a key that is not a parameter of this group")
        pairs = [(param, source[param]) for param in params if param in source]
    else:
        pairs = [(param, source(param)) for param in params]
    checked = {}
    for param, value in pairs:
        if not isinstance(value, torch.Tensor) or value.shape != param.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"v0 for a parameter of shape {tuple(param.shape)} must be a tensor of that shape, got {shape}"
            )
        if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise ValueError("v0 must be finite and non-negative (it is the initial exp_avg_sq)")
        checked[param] = value.detach()
    return checked
