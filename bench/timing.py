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
    spread_pct: float  # the interquartile range of the runs over their median, in %: the middle half's width


def measure(step, device: torch.device, steps: int, warmup: int) -> Timing:
    times = _times_ms(step, device, steps, warmup)
    median = statistics.median(times)
    first, _, third = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
    return Timing(median, 100 * (third - first) / median)


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
