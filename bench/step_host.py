"""Host time of one `step()` over many small tensors: what the optimizer costs the CPU that feeds the GPU (on the
CPU itself, with one thread, what it costs beyond the arithmetic). Part of `python -m bench --training`.

150 params of 64 elements, their grads put back each step at the same addresses, as CUDA's caching allocator hands
autograd the same blocks from one iteration to the next (the flat-grad loop copies them into its views instead, as
autograd would accumulate into them).
"""

import csv
import statistics
import time
from pathlib import Path

import torch

from bench import report
from bench.training import LOOPS

TENSORS, NUMEL, STEPS, WARMUP = 150, 64, 200, 10


def _host_us(loop, device) -> float:
    params = [torch.nn.Parameter(torch.randn(NUMEL, device=device)) for _ in range(TENSORS)]
    optimizer = loop.build(params)
    grads = [torch.randn(NUMEL, device=device) for _ in params]
    flat = getattr(optimizer, "flat_grads", False)
    times = []
    for step in range(WARMUP + STEPS):
        for param, grad in zip(params, grads):
            if flat:
                param.grad.copy_(grad)
            else:
                param.grad = grad
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        if step >= WARMUP:
            times.append((time.perf_counter() - start) * 1e6)
        optimizer.zero_grad()
    return statistics.median(times)


def measure(device: torch.device) -> dict[str, float]:
    """loop name -> median host µs of step(); on the CPU with one thread, as the step's arithmetic is then small
    beside the host work and per-tensor thread hand-offs do not hide it."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return {loop.name: _host_us(loop, device) for loop in LOOPS}
    finally:
        torch.set_num_threads(threads)


def format_table(results: dict[str, float]) -> str:
    fused = results["torch fused"]
    lines = [
        f"step() host time, {TENSORS} tensors of {NUMEL} elements, median of {STEPS}",
        "",
        "| loop | step() host µs | vs torch fused |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {us:.0f} | {us / fused:.2f}x |" for name, us in results.items()]
    return "\n".join(lines)


def save(results: dict[str, float], info: dict, out: Path) -> Path:
    path = report.stamped_path(out, info, "_step_host.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["loop", "tensors", "numel", "step_host_us"] + list(info))
        writer.writeheader()
        for name, us in results.items():
            writer.writerow({"loop": name, "tensors": TENSORS, "numel": NUMEL, "step_host_us": round(us, 1), **info})
    return path
