"""python -m bench --memory: what a training iteration holds, per optimizer mode, measured on real tensors.

Per model and mode: the bytes per param of each part of the training state (params, master, grads held when
backward ends, optimizer states), read from the tensors the model and optimizer hold, and the peak of one
iteration (forward, backward, step, zero_grad; no clipping, which gradient release refuses), after one iteration
that made the states. On a GPU the peak is torch's allocator's; on the CPU it is the bytes held before the
iteration plus the peak of what the CPU allocator handed out during it (torch.profiler's memory events).
The activations are a batch of 1 x 64 tokens: the peak is meant to show the state, not the activations. --quick:
the GPT-2 model only (the device check's).

The modes: torch.optim.AdamW on float32 params, with and without bfloat16 autocast; torchao's and bitsandbytes'
8-bit AdamW and torchao's 4-bit (where installed); FlashOptim (where installed, CUDA only); and v0adam's. On the
CPU v0adam steps with its PyTorch backend, whose 8-bit step works on float32 copies of a few million states at a
time (the Triton kernel holds none): their peak includes those.
"""

import gc
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import v0adam
from bench import models, report
from bench.memory import tensor_bytes

LR = 1e-4
TOKENS = (1, 65)  # batch, context + 1
# The CPU twins: the real vocabularies and depths at a width a CPU trains in seconds, every matrix's rows whole
# 256-element blocks (as at the real widths), so that 8-bit states apply as they would there.
CPU_CONFIGS = (
    models.Config("GPT-2 small, dim 256", "gpt2", vocab=50257, context=1024, dim=256, layers=12, heads=4),
    models.Config(
        "Llama, dim 256", "llama", vocab=32000, context=2048, dim=256, layers=8, heads=4, kv_heads=2, hidden=768
    ),
)
GPU_CONFIGS = (models.GPT2_SMALL, models.LLAMA_SIZES[2])


@dataclass(frozen=True)
class Mode:
    name: str
    build: object  # params -> optimizer
    param_dtype: torch.dtype = torch.float32
    autocast: bool = False
    needs: str | None = None  # the module it needs installed
    cuda_only: bool = False


def _v0adam(**options):
    return lambda params: v0adam.V0AdamW(params, lr=LR, v0="zero", **options)


def _torchao(bits):
    def build(params):
        from torchao.optim import AdamW4bit, AdamW8bit

        return (AdamW8bit if bits == 8 else AdamW4bit)(params, lr=LR)

    return build


def _bitsandbytes(params):
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(params, lr=LR)


def _flashoptim(params):
    import flashoptim

    return flashoptim.FlashAdamW(params, lr=LR)


EIGHT_BIT = dict(state_dtype=torch.uint8)
BF16 = torch.bfloat16
MODES = (
    Mode("torch AdamW fp32", lambda params: torch.optim.AdamW(params, lr=LR)),
    Mode("torch AdamW bf16 autocast", lambda params: torch.optim.AdamW(params, lr=LR), autocast=True),
    Mode("torchao AdamW8bit", _torchao(8), needs="torchao"),
    Mode("torchao AdamW4bit", _torchao(4), needs="torchao"),
    Mode("bitsandbytes AdamW8bit", _bitsandbytes, needs="bitsandbytes"),
    Mode("FlashOptim AdamW (bf16, 24-bit master)", _flashoptim, BF16, needs="flashoptim", cuda_only=True),
    Mode("v0adam fp32", _v0adam()),
    Mode("v0adam fp32 8-bit", _v0adam(**EIGHT_BIT)),
    Mode("v0adam bf16 fp32 master", _v0adam(master_weights="fp32"), BF16),
    Mode("v0adam bf16 master", _v0adam(master_weights=True), BF16),
    Mode("v0adam bf16 master 8-bit", _v0adam(master_weights=True, **EIGHT_BIT), BF16),
    Mode("v0adam bf16 master 8-bit release", _v0adam(master_weights=True, release_grads=True, **EIGHT_BIT), BF16),
    Mode(
        "v0adam bf16 stochastic 8-bit release", _v0adam(stochastic_rounding=True, release_grads=True, **EIGHT_BIT), BF16
    ),
)
STATE_PARTS = ("params", "master", "grads", "states")
MASTER_KEYS = ("master_param", "param_remainder")


@dataclass
class MemoryRow:
    model: str
    mode: str
    params: int
    params_bytes: float  # each part in bytes per param
    master_bytes: float
    grads_bytes: float
    states_bytes: float
    total_bytes: float
    peak_mb: float
    peak_bytes: float  # the peak per param


def _unique_bytes(tensors) -> int:
    """Bytes of the storages under `tensors`, each counted once (views of one flat buffer share it); a tensor
    subclass (torchao's states) by the plain tensors it is made of."""
    seen, total = set(), 0
    for tensor in tensors:
        if type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):
            total += tensor_bytes(tensor)
            continue
        tensor = v0adam.sharding.local(tensor)
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _state_tensors(optimizer, keys) -> list:
    return [
        value
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and key != "step" and (key in MASTER_KEYS) == (keys == "master")
    ]


def _iteration(model, optimizer, tokens, mode: Mode, grads_seen: list | None = None) -> None:
    with torch.autocast(tokens.device.type, torch.bfloat16, enabled=mode.autocast):
        logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    if grads_seen is not None:
        grads_seen.append(_unique_bytes([param.grad for param in model.parameters() if param.grad is not None]))
    optimizer.step()
    optimizer.zero_grad()


def measure(config, mode: Mode, device: torch.device) -> MemoryRow:
    torch.manual_seed(0)
    with torch.device(device):
        model = models.build(config).to(mode.param_dtype)
    params = list(model.parameters())
    numel = sum(param.numel() for param in params)
    optimizer = mode.build(params)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab, TOKENS, generator=generator).to(device)
    _iteration(model, optimizer, tokens, mode)  # states are made at the first step
    gc.collect()
    held = [
        *params,
        *model.buffers(),
        tokens,
        *_state_tensors(optimizer, "states"),
        *_state_tensors(optimizer, "master"),
    ]
    grads_seen = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _iteration(model, optimizer, tokens, mode, grads_seen)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        before = _unique_bytes(held)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            _iteration(model, optimizer, tokens, mode, grads_seen)
        peak = before + _peak_allocated(profiler)
    parts = {
        "params": _unique_bytes(params) / numel,
        "master": _unique_bytes(_state_tensors(optimizer, "master")) / numel,
        "grads": grads_seen[0] / numel,
        "states": _unique_bytes(_state_tensors(optimizer, "states")) / numel,
    }
    return MemoryRow(
        config.name,
        mode.name,
        numel,
        *(parts[name] for name in STATE_PARTS),
        sum(parts.values()),
        peak / 2**20,
        peak / numel,
    )


def _peak_allocated(profiler) -> int:
    """The highest net sum of the CPU allocations and frees the profiler recorded, in their order."""
    events = [event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def available(mode: Mode, device: torch.device) -> str | None:
    """Why `mode` cannot run here, or None."""
    if mode.needs and importlib.util.find_spec(mode.needs) is None:
        return f"{mode.needs} not installed"
    if mode.cuda_only and device.type != "cuda":
        return "needs CUDA"
    return None


def run(device: torch.device, quick: bool, out: Path | None) -> list[MemoryRow]:
    configs = GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS
    configs = configs[:1] if quick else configs
    rows, skipped = [], []
    for config in configs:
        for mode in MODES:
            reason = available(mode, device)
            if reason is not None:
                skipped.append(f"{mode.name}: {reason}")
                continue
            print(f"  {config.name:<22} {mode.name:<40}", end=" ", flush=True)
            rows.append(measure(config, mode, device))
            print(f"{rows[-1].total_bytes:6.2f} B/param  peak {rows[-1].peak_mb:8.1f} MB", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    info = report.stamp(device)
    print()
    print(format_table(rows, info))
    for line in sorted(set(skipped)):
        print(f"not run: {line}")
    if out is not None:
        print(f"\nsaved {' and '.join(map(str, save(rows, info, out)))}")
    return rows


def format_table(rows: list[MemoryRow], info: dict) -> str:
    lines = [
        f"{info['device']} | torch {info['torch']} | triton {info['triton']} | {info['date']}",
        "training state in bytes per param (grads: held when backward ends); peak of one iteration",
        f"{'model':<22} {'mode':<40} {'params':>6} {'master':>6} {'grads':>6} {'states':>6} {'total':>6} "
        f"{'peak MB':>9} {'peak/param':>10}",
    ]
    for row in rows:
        parts = " ".join(f"{getattr(row, name + '_bytes'):6.2f}" for name in STATE_PARTS)
        lines.append(
            f"{row.model:<22} {row.mode:<40} {parts} {row.total_bytes:6.2f} {row.peak_mb:9.1f} {row.peak_bytes:10.2f}"
        )
    return "\n".join(lines)


def save(rows: list[MemoryRow], info: dict, out: Path) -> tuple[Path, Path]:
    return report.save_table(rows, info, out, "_memory", _plot)


def _plot(rows: list[MemoryRow], info: dict, path: Path) -> None:
    """Per model, one stacked bar per mode: its training state's parts."""

    def draw(axis, model, model_rows):
        left = [0.0] * len(model_rows)
        for name in STATE_PARTS:
            widths = [getattr(row, name + "_bytes") for row in model_rows]
            axis.barh([row.mode for row in model_rows], widths, left=left, label=name)
            left = [a + b for a, b in zip(left, widths)]
        axis.invert_yaxis()
        axis.set_xlabel("bytes per param")
        axis.set_title(model)
        axis.legend(loc="lower right")

    title = f"Training state per param, {info['device']}, {info['date']}"
    report.plot_per_model(rows, path, title, (7, 6), draw)
