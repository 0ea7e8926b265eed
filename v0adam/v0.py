"""v0, the initial second moment (SPEC §2): how each param group's exp_avg_sq starts.

A group's "v0" entry is one of the mode names below. A user-supplied v0 (a dict {param: tensor} or a callable
`f(param) -> tensor`) is consumed when the group is added and recorded as "tensor".

random (paper eq. 11): v0 = sigma / (fan_in + fan_out) * z^2, z ~ N(0, 1) per element, for params with two or more
dimensions (fans as torch's xavier init: fan_in = size(1) * receptive field, fan_out = size(0) * receptive field);
params with one dimension or none start at 0. The authors' code draws xavier_normal_ squared, which is
2 * sigma / (fan_in + fan_out) * z^2: twice the paper's equation. We follow the equation.
"""

from collections.abc import Callable, Mapping

import torch

from v0adam.kernels.v0_init import draw_random_v0_

ZERO, RANDOM, DATA, TENSOR = "zero", "random", "data", "tensor"
MODES = (ZERO, RANDOM, DATA, TENSOR)
DEFAULT_SCALE = {RANDOM: 100.0, DATA: 1.0}


def split_v0(v0) -> tuple[str, Mapping | Callable | None]:
    """A group's v0 argument -> (mode name, user source or None). Raises ValueError on anything else."""
    if isinstance(v0, str):
        if v0 not in MODES or v0 == TENSOR:
            raise ValueError(f"Invalid v0 value: {v0!r}; expected 'zero', 'random', 'data', a dict or a callable")
        return v0, None
    if isinstance(v0, Mapping) or callable(v0):
        return TENSOR, v0
    raise ValueError(f"Invalid v0 value: {v0!r}; expected 'zero', 'random', 'data', a dict or a callable")


def user_v0(source: Mapping | Callable, params: list[torch.Tensor]) -> dict[torch.Tensor, torch.Tensor]:
    """The user's v0 for each param, checked: same shape as the param, finite and non-negative.

    A dict may leave params out (they start at 0); the optimizer checks that every key is one of its params.
    Runs once, when the group is added, so the checks may read values back to the host.
    """
    if isinstance(source, Mapping):
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


def resolve_scale(mode: str, scale: float | None) -> float:
    return DEFAULT_SCALE.get(mode, 1.0) if scale is None else float(scale)


def xavier_fans(shape: torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them for xavier init."""
    receptive_field = 1
    for size in shape[2:]:
        receptive_field *= size
    return shape[1] * receptive_field, shape[0] * receptive_field


# The PyTorch backend draws each run of this many elements of a param from a generator of its own.
TORCH_DRAW_CHUNK = 1 << 16


def draw_random_(
    exp_avg_sq: torch.Tensor,
    shape: torch.Size,
    *,
    sigma: float,
    seed: int,
    param_index: int,
    element_offset: int = 0,
    use_triton: bool,
) -> None:
    """Write eq. 11's random v0 for a param of `shape` into its exp_avg_sq slice (contiguous, 1-D or shaped):
    the elements from `element_offset` on (in the param's row-major order; non-zero for a shard).

    The draw for an element depends only on (seed, param_index, element index), so a shard gets the values the
    whole param would have there. The Triton kernel uses a counter-based Philox stream; the PyTorch backend a
    torch.Generator per (seed, param_index, run of TORCH_DRAW_CHUNK elements). The two backends give different
    (each reproducible) draws with the same distribution.
    """
    if len(shape) < 2:
        exp_avg_sq.zero_()
        return
    fan_in, fan_out = xavier_fans(shape)
    scale = sigma / (fan_in + fan_out)
    # Drawn in float32; bfloat16 states get it rounded once (through a temporary, at initialisation only).
    target = exp_avg_sq if exp_avg_sq.dtype == torch.float32 else torch.empty_like(exp_avg_sq, dtype=torch.float32)
    if use_triton:
        draw_random_v0_(target.view(-1), scale, seed, param_index, element_offset)
    else:
        _draw_chunked_(target.view(-1), seed, param_index, element_offset, shape.numel())
        target.square_().mul_(scale)
    if target is not exp_avg_sq:
        exp_avg_sq.copy_(target)


def _draw_chunked_(out: torch.Tensor, seed: int, param_index: int, element_offset: int, param_numel: int) -> None:
    """out <- N(0, 1) draws for elements [element_offset, element_offset + out.numel()) of a param of param_numel
    elements. Each chunk is drawn whole (its size depends only on param_numel), so a value does not depend on
    where the range starts or ends."""
    end = element_offset + out.numel()
    for chunk in range(element_offset // TORCH_DRAW_CHUNK, -(-end // TORCH_DRAW_CHUNK)):
        chunk_start = chunk * TORCH_DRAW_CHUNK
        generator = torch.Generator(device=out.device).manual_seed(hash((seed, param_index, chunk)) % 2**63)
        draw = torch.randn(min(TORCH_DRAW_CHUNK, param_numel - chunk_start), generator=generator, device=out.device)
        start, stop = max(chunk_start, element_offset), min(chunk_start + TORCH_DRAW_CHUNK, end)
        out[start - element_offset : stop - element_offset] = draw[start - chunk_start : stop - chunk_start]
