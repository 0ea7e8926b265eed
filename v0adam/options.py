"""The rules of V0Adam's options, checked once, here, before anything is built or written: the constructor's
(`check_hyperparameters` first, as torch's Adam checks them before the params), each param group's (at
construction and in `add_param_group`), and each param's (when it is laid out). In torch's wording where torch has
one."""

import hashlib
import operator

import torch

from v0adam import v0 as v0_modes
from v0adam.sharding import is_dtensor

BACKENDS = ("auto", "triton", "torch")


def check_hyperparameters(lr, betas, eps, weight_decay) -> None:
    """torch.optim.Adam's checks, in its wording."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= float(lr):  # an integer tensor too, as torch
            raise ValueError(f"Invalid learning rate: {lr}")
    elif not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas}; expected two values")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{index}] must be 1-element")
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {float(beta)}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def _checked_seed(seed) -> int:
    """A v0_seed as a Python int. Only an integer: random v0 is drawn from hash((seed, ...)), which Python salts per
    process for a str, and a checkpoint's param groups must load with torch.load(weights_only=True)."""
    try:
        if not isinstance(seed, bool):
            return operator.index(seed)
    except TypeError:
        pass
    raise ValueError(f"Invalid v0_seed value: {seed!r}; expected None or an integer")


def _check_state_dtype(state_dtype) -> None:
    if state_dtype not in (None, torch.float32, torch.bfloat16, torch.uint8):
        raise ValueError(
            f"Invalid state_dtype: {state_dtype}; expected None, torch.float32, torch.bfloat16 or torch.uint8"
        )


def check_param(param: torch.Tensor) -> None:
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {torch.typename(param)}")
    if not param.is_leaf:
        raise ValueError("can't optimize a non-leaf Tensor")
    if param.is_complex():
        raise ValueError("V0Adam does not support complex parameters; optimize torch.view_as_real(param) instead")
    if not param.is_floating_point():
        raise ValueError(f"V0Adam can only optimize floating-point parameters, got {param.dtype}")
    if param.is_sparse:
        raise ValueError("V0Adam does not support sparse parameters")
    if type(param) not in (torch.Tensor, torch.nn.Parameter) and not is_dtensor(param):
        raise ValueError(f"V0Adam supports plain tensors, nn.Parameter and DTensor, got {type(param).__name__}")


def check_construction(
    *,
    differentiable,
    backend,
    state_dtype,
    min_8bit_size,
    release_grads,
    flat_grads,
    skip_nonfinite,
    master_weights,
    stochastic_rounding,
) -> None:
    """The constructor's options beside the hyperparameters."""
    if differentiable:
        raise ValueError("V0Adam does not support differentiable=True: its step is a kernel, not autograd ops")
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r}; expected one of {BACKENDS}")
    _check_state_dtype(state_dtype)
    if not isinstance(min_8bit_size, int) or min_8bit_size < 0:
        raise ValueError(f"Invalid min_8bit_size: {min_8bit_size!r}; expected a number of elements")
    if release_grads and (flat_grads or skip_nonfinite):
        raise ValueError(
            "release_grads frees each grad once its param is stepped: flat_grads keeps them for good, and "
            "skip_nonfinite needs every grad to decide whether to skip the step"
        )
    if master_weights not in (False, True, "fp32"):
        raise ValueError(f"Invalid master_weights: {master_weights!r}; expected False, True or 'fp32'")
    if master_weights and stochastic_rounding:
        raise ValueError("master_weights and stochastic_rounding exclude each other: the master is never rounded")


def check_group(group: dict) -> None:
    """A param group with the optimizer's defaults filled in; its v0_seed made a Python int."""
    check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
    if group["v0_scale"] is not None and not 0.0 <= group["v0_scale"]:
        raise ValueError(f"Invalid v0_scale value: {group['v0_scale']}")
    if group["v0_seed"] is not None:
        group["v0_seed"] = _checked_seed(group["v0_seed"])
    _check_state_dtype(group.get("state_dtype"))


def prepared_group(param_group: dict, defaults: dict, group_number: int) -> tuple[dict, dict]:
    """A group for `add_param_group`, checked, with the defaults filled in and its params made a list (a generator,
    model.parameters(), would be empty by the time torch's method reads it), and the v0 its user gave for its
    params (param -> tensor; the group keeps the mode only). A random v0 without a seed gets one."""
    group = {key: value for key, value in param_group.items()}
    for key, value in defaults.items():
        group.setdefault(key, value)
    check_group(group)
    mode, source = v0_modes.split_v0(group["v0"])
    params = group["params"]
    group["params"] = params = [params] if isinstance(params, torch.Tensor) else list(params)
    # Named params come as (name, tensor); anything else is left for torch's own checks.
    tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
    tensors = [p for p in tensors if isinstance(p, torch.Tensor)]
    for param in tensors:
        check_param(param)
    group["v0"] = mode
    if mode == v0_modes.RANDOM and group["v0_seed"] is None:
        group["v0_seed"] = seed_following_manual_seed(f"v0 of group {group_number}")
    return group, v0_modes.user_v0(source, tensors) if source is not None else {}


def fill_group_defaults(param_groups, defaults: dict, decoupled_weight_decay: bool) -> None:
    """Fill in what a checkpoint of an older torch or v0adam may lack (torch.optim.Adam fills them in the same way);
    V0AdamW's groups always decouple weight decay."""
    for group in param_groups:
        group.setdefault("amsgrad", False)
        group.setdefault("maximize", False)
        for key in ("v0_scale", "v0_seed"):
            group.setdefault(key, None)
        group.setdefault("v0", v0_modes.ZERO)
        group.setdefault("decoupled_weight_decay", decoupled_weight_decay)
        if "rounding_seed" in defaults:
            group.setdefault("rounding_seed", defaults["rounding_seed"])
        if decoupled_weight_decay:
            group["decoupled_weight_decay"] = True


def seed_following_manual_seed(salt: str) -> int:
    """A seed that `torch.manual_seed` makes reproducible, taken from the state of torch's global generator without
    drawing from it: a draw would shift every later one (data order, dropout) in a run that swaps its optimizer.
    `salt` tells apart the seeds taken at one state (two param groups, v0 and rounding)."""
    state = bytes(torch.random.get_rng_state().tolist())  # uint8; not .numpy(): numpy is no dependency of ours
    return int.from_bytes(hashlib.blake2b(state + salt.encode(), digest_size=8).digest(), "little") % 2**62
