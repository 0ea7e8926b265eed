"""Optimizer states in torch's layout, read from checkpoints and from `opt.state`: each param's values checked against
it before anything is written, 8-bit moments of every format decoded where they do not load as they are, masters
of either kind converted. `v0adam.checkpoint` and `v0adam.layout` write them into the buckets."""

import torch

from v0adam import quantization
from v0adam.master_remainder import REMAINDER_DTYPE, join_master
from v0adam.moments import CODES_SUFFIX, MOMENTS, SCALES_SUFFIX
from v0adam.sharding import is_dtensor, like_param, local, local_part, local_rows

STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master_param", "param_remainder")
# The block scales' key in checkpoints of the first 8-bit format (0.1, 0.2), whose codes index a dynamic code map.
LEGACY_SCALES_SUFFIX = "_absmax"
# Checkpoints of 0.3 to 0.5 (and of the first format) hold an 8-bit moment's codes under the moment's own key, not
# under "exp_avg" + CODES_SUFFIX: they still load (values are read with the moments' names, see `_as_moments`).


def checked_values(param, values: dict, keep_codes: bool) -> dict:
    """A param's loaded state `values` checked against it before anything is written, each value this rank's part
    (a DTensor param's shard; a layout mismatch raises here). 8-bit moments come out decoded unless `keep_codes`
    (an optimizer whose 8-bit moments load as they are) and they are of today's format. Values come back under the
    moments' names, 8-bit codes too (`_as_moments`)."""
    values = _as_moments(values)
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
        raise ValueError(f"loaded state 'param_remainder' must be {REMAINDER_DTYPE}: the low half of the master")
    _check_scales(param, values)
    values = _dequantized(values, param, (SCALES_SUFFIX,) if keep_codes else ())
    return {key: _local_value(param, key, value) for key, value in values.items()}


def write_loaded_moment(bucket, index: int, name: str, values: dict) -> None:
    """Write checked loaded `values`' moment `name` into the bucket's slot for param `index`: 8-bit codes and their
    scales as they are (kept only where the bucket's moments load them), float values in the bucket's format."""
    loaded = torch.as_tensor(values[name])
    if loaded.dtype == torch.uint8:
        bucket.write_codes(name, index, loaded, local(values[name + SCALES_SUFFIX]).reshape(-1))
    else:
        bucket.write_moment(name, index, loaded)


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


def moments_replacing_codes(entry: dict) -> dict:
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


def loaded_master(param, values: dict) -> torch.Tensor:
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
