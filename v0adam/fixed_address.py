"""The optimizer's long-lived tensors that a step mutates (flat state buffers, step counters, hyperparameters)
are told to torch.compile as living at fixed addresses, as torch does with its own optimizers' states.

Under `mode="reduce-overhead"` inductor replays CUDA graphs (cudagraph trees), which skip any compiled graph that
mutates an input of unknown address: unmarked, a compiled training step would silently run without CUDA graphs.
"""

import torch


def fixed_address(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, marked as keeping its address between compiled calls (a compiled graph guards on it). Called
    eagerly only: a tensor made while torch.compile traces cannot be marked (see `FlatBucket.ensure_max_exp_avg_sq`)."""
    torch._dynamo.mark_static_address(tensor, guard=True)
    return tensor
