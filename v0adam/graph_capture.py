"""The step's host-to-device uploads, and what a CUDA graph being captured reads, kept alive for good.

A captured graph replays its kernels on the very tensors they read at capture time (launch tables, step masks), and
its captured host-to-device copies from their host sources. A later rebuild (new addresses) or a cache eviction
would free them under the graph, so whatever a launch or copy read during a capture is held here. Captures are few
and these tensors small.
"""

import torch

_HELD_FOR_CUDA_GRAPHS = {}  # by the ids of the tensors held together (alive, so their ids stay unique)


def capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def hold_if_capturing(device: torch.device, *tensors) -> None:
    """Keep `tensors` alive for good if a CUDA graph is being captured on `device`'s current stream."""
    if capturing(device):
        _HELD_FOR_CUDA_GRAPHS[tuple(map(id, tensors))] = tensors


def upload_into(target: torch.Tensor, host: torch.Tensor, pin: bool = True) -> torch.Tensor:
    """Copy the host tensor `host` into `target` without waiting. On CUDA outside a capture through pinned memory,
    so that the copy is truly asynchronous. While a CUDA graph is captured, straight from `host`: the graph reads it
    again at every replay, so it is kept for good; and allocating pinned memory during a capture fails on some torch
    versions (pytorch/pytorch#146924: the host allocator queries events). `pin` is False while torch.compile traces
    the copy: `host` is then a constant of the graph, copied as it is."""
    if target.device.type == "cuda" and pin:
        if capturing(target.device):
            hold_if_capturing(target.device, target, host)
        else:
            host = host.pin_memory()
    return target.copy_(host, non_blocking=True)


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of the host tensor `host` on `device`, made as `upload_into` does."""
    return upload_into(torch.empty_like(host, device=device), host)
