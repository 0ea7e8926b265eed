"""Timers: CUDA events with the L2 cache flushed before every step, or wall-clock on CPU. Medians, and how far
apart the runs lie."""

import statistics
import time
from dataclasses import dataclass

import torch

L2_FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    median_ms: float
    spread_ms: float  # the interquartile range of the runs: the width of their middle half

    @classmethod
    def of(cls, times_ms: list[float]) -> "Timing":
        median = statistics.median(times_ms)
        first, _, third = statistics.quantiles(times_ms, n=4) if len(times_ms) > 1 else (median,) * 3
        return cls(median, third - first)

    @property
    def spread_pct(self) -> float:
        return 100 * self.spread_ms / self.median_ms


def measure(step, device: torch.device, steps: int, warmup: int) -> Timing:
    return Timing.of(_times_ms(step, device, steps, warmup))


def median_ms(step, device: torch.device, steps: int, warmup: int) -> float:
    return measure(step, device, steps, warmup).median_ms


def _times_ms(step, device: torch.device, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    torch.cuda.synchronize(device)
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def copy_bandwidth_gbps(device: torch.device, numel: int = 256 * 2**20, steps: int = 20) -> float:
    """Device-to-device copy of a large fp32 buffer, counting bytes read and written."""
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    milliseconds = median_ms(lambda: target.copy_(source), device, steps, warmup=3)
    return 2 * source.nbytes / milliseconds / 1e6


def in_place_bandwidth_gbps(device: torch.device, numel: int = 256 * 2**20, steps: int = 20) -> float:
    """An in-place update of a large fp32 buffer (as Adam's step is), counting bytes read and written."""
    buffer = torch.randn(numel, device=device)
    milliseconds = median_ms(lambda: buffer.mul_(1.0), device, steps, warmup=3)
    return 2 * buffer.nbytes / milliseconds / 1e6
