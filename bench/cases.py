"""Benchmark cases: parameter shapes built from model configurations, no model code or weights needed."""

from dataclasses import dataclass

import torch

from v0adam.precision import Precision

M = 2**20
EIGHT_BIT = (("state_dtype", torch.uint8),)  # v0adam's 8-bit states, as a case's precision


@dataclass(frozen=True)
class Case:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype = torch.float32
    amsgrad: bool = False
    precision: tuple[tuple[str, object], ...] = ()  # v0adam's mixed-precision options, as (name, value) pairs
    optimizer: str = "adamw"  # adamw, radam, adabelief or adabound

    @property
    def numel(self) -> int:
        return sum(_numel(shape) for shape in self.shapes)


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def gpt2_small_shapes() -> tuple[tuple[int, ...], ...]:
    """GPT-2 small (124M): 148 tensors."""
    return gpt2_shapes(d=768, vocab=50257, context=1024, layers=12)


def gpt2_shapes(d: int, vocab: int, context: int, layers: int) -> tuple[tuple[int, ...], ...]:
    """The parameter shapes of a GPT-2 of this width, vocabulary, context and depth."""
    shapes = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return tuple(shapes + [(d,), (d,)])


def llama_1b_shapes() -> tuple[tuple[int, ...], ...]:
    """A Llama-3.2-1B-style model (1.24B): grouped-query attention, SwiGLU MLP, tied embeddings; 146 tensors."""
    d, vocab, layers, hidden, kv = 2048, 128256, 16, 8192, 512
    shapes = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d,), (d, d), (kv, d), (kv, d), (d, d), (d,), (hidden, d), (hidden, d), (d, hidden)]
    return tuple(shapes + [(d,)])


def gpu_cases(quick: bool) -> list[Case]:
    sizes = [64, 256] if quick else [1, 4, 16, 64, 256]
    cases = [Case(f"fp32 {size}M", ((size * M,),)) for size in sizes]
    cases.append(Case("GPT-2 small fp32", gpt2_small_shapes()))
    cases.append(Case("GPT-2 small AMSGrad", gpt2_small_shapes(), amsgrad=True))
    bf16 = dict(shapes=gpt2_small_shapes(), dtype=torch.bfloat16)
    cases.append(Case("GPT-2 small bf16", **bf16))
    cases.append(Case("GPT-2 bf16 master", **bf16, precision=(("master_weights", True),)))
    cases.append(Case("GPT-2 bf16 fp32 master", **bf16, precision=(("master_weights", "fp32"),)))
    cases.append(Case("GPT-2 bf16 stochastic", **bf16, precision=(("stochastic_rounding", True),)))
    cases.append(Case("GPT-2 bf16 bf16-states", **bf16, precision=(("state_dtype", torch.bfloat16),)))
    cases.append(Case("GPT-2 small fp32 8-bit", gpt2_small_shapes(), precision=EIGHT_BIT))
    cases.append(Case("GPT-2 bf16 8-bit", **bf16, precision=EIGHT_BIT))
    cases.append(Case("Llama 1B fp32", llama_1b_shapes()))
    for optimizer in ("radam", "adabelief", "adabound"):
        cases.append(Case(f"GPT-2 small {optimizer}", gpt2_small_shapes(), optimizer=optimizer))
    return cases


def cpu_cases(quick: bool) -> list[Case]:
    sizes = [1, 16] if quick else [1, 4, 16, 64]
    cases = [Case(f"fp32 {size}M", ((size * M,),)) for size in sizes]
    cases.append(Case("GPT-2 small fp32", gpt2_small_shapes()))
    cases.append(Case("fp32 16M 8-bit", ((4096, 4096),), precision=EIGHT_BIT))
    return cases


def bytes_per_element(
    param_dtype: torch.dtype, state_dtype: torch.dtype, amsgrad: bool, master_weights: bool | str = False
) -> int | float:
    """Minimum traffic of one step (SPEC §3): param read and written, grad read, each state read and written,
    and the master (`master_weights` as V0Adam's) read and written: a float32 copy, read instead of the param, or
    an int16 remainder beside it. An 8-bit state (uint8) also moves its float32 scale, one per 256 elements."""
    param, state = param_dtype.itemsize, state_dtype.itemsize
    if state_dtype == torch.uint8:
        state += 4 / 256
    states = 3 if amsgrad else 2
    moved = 2 * param + param + 2 * state * states
    master = Precision(master_weights).master_for(param_dtype).dtype
    if master == torch.float32:
        moved += 2 * master.itemsize - param
    elif master is not None:
        moved += 2 * master.itemsize
    return moved
