"""What an optimizer's state holds in memory, measured on its tensors (not modelled)."""

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a state tensor holds; a tensor subclass (torchao's 8-bit state) by the plain tensors it is made of."""
    if type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def state_bytes_per_param(opt, params) -> float:
    """Bytes of `opt.state`'s tensors (step counters left out) per element of `params`; states are made at the
    first step by most optimizers, so measure after one."""
    held = sum(
        tensor_bytes(value)
        for state in opt.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and key != "step"
    )
    return held / sum(param.numel() for param in params)
