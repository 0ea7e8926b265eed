"""Which state format each param got and why, and the bytes of optimizer state per param that comes to:
`V0Adam.state_formats()`, also logged once at construction at debug level (logger "v0adam"), as users of
bitsandbytes' and torchao's 8-bit optimizers expect to ask. 8-bit states go only to tensors that fit them
(`Precision.why_not_8bit`): in a small model most keep float32 ones, which this says instead of leaving it to guess.
"""

import logging
from dataclasses import dataclass

import torch

from v0adam import quantization
from v0adam.moments import MOMENTS

logger = logging.getLogger("v0adam")


@dataclass(frozen=True)
class StateFormat:
    """One param's states: `moments` "float32", "bfloat16", "float64" or "8-bit"; `master` "none", "int16
    remainder" or "float32 copy"; `bytes_per_param` the bytes of moments (8-bit scales included) and master per
    element of the param."""

    param: str  # its name where its group has param_names, else its number in state_dict()
    shape: tuple[int, ...]
    moments: str
    master: str
    reason: str
    bytes_per_param: float

    def __str__(self) -> str:
        return (
            f"{self.param} {list(self.shape)}: {self.moments} moments, master {self.master}, "
            f"{self.bytes_per_param:g} B/param ({self.reason})"
        )


def describe(optimizer) -> list[StateFormat]:
    """A StateFormat per param of `optimizer`, in the order of its param groups."""
    located = {param: (bucket, index) for bucket in optimizer._buckets for index, param in enumerate(bucket.params)}
    formats, number = [], 0
    for group in optimizer.param_groups:
        names = group.get("param_names", [])
        for position, param in enumerate(group["params"]):
            bucket, _ = located[param]
            name = names[position] if position < len(names) else f"param {number}"
            formats.append(_format_of(optimizer, param, group, bucket, name))
            number += 1
    return formats


def summary(formats: list[StateFormat]) -> str:
    """One line over all params: how many took each moment format, and the bytes per param over all elements."""
    counts = {}
    for state_format in formats:
        counts[state_format.moments] = counts.get(state_format.moments, 0) + 1
    elements = [max(1, torch.Size(state_format.shape).numel()) for state_format in formats]
    state_bytes = sum(state_format.bytes_per_param * n for state_format, n in zip(formats, elements))
    taken = ", ".join(f"{count} {moments}" for moments, count in counts.items())
    return f"{len(formats)} params: {taken} moments; {state_bytes / max(1, sum(elements)):.3g} B/param of state"


def log_at_construction(optimizer) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        formats = describe(optimizer)
        logger.debug("%s states: %s\n%s", type(optimizer).__name__, summary(formats), "\n".join(map(str, formats)))


def _format_of(optimizer, param, group, bucket, name) -> StateFormat:
    asked_by = "its param group's" if "state_dtype" in group else "the optimizer's"
    asked = group.get("state_dtype", optimizer.precision.state_dtype)
    moments = bucket.moments
    if asked == torch.uint8 and moments.dtype != torch.uint8:
        reason = f"8-bit asked by {asked_by} state_dtype, but {optimizer.precision.why_not_8bit(param)}"
    elif asked == torch.uint8:
        reason = f"asked by {asked_by} state_dtype; rows of whole {quantization.QBLOCK}-element blocks"
    elif asked is not None and moments.dtype == asked:
        reason = f"asked by {asked_by} state_dtype"
    elif moments.dtype == torch.float64:
        reason = "a float64 param keeps float64 moments"
    else:
        reason = "the default"
    master = bucket.master_kind
    moment_count = len(MOMENTS) if group["amsgrad"] else len(MOMENTS) - 1
    bytes_per_param = moment_count * moments.bytes_per_element + (master.dtype.itemsize if master.dtype else 0)
    return StateFormat(name, tuple(param.shape), moments.name, master.name, reason, bytes_per_param)
