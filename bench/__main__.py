"""python -m bench: time one optimizer step of v0adam and of each torch.optim.AdamW implementation per case.

On CUDA: v0adam, torch for-loop, foreach, fused and torch.compile, and v0adam's step under torch.compile; on CPU:
v0adam's CPU path against foreach and fused. Prints the table, saves a CSV stamped with device, versions and date,
and a PNG plot.

With --training: whole training iterations of real models instead (see `bench.training`); with --memory: the
training state and peak memory of each optimizer mode (see `bench.training_memory`). Their CSV and plot are saved
only where --out says.
"""

import argparse
import gc
import sys
from pathlib import Path

import torch

from bench import cases, report, step_host, timing, training, training_memory, variants

QUICK_COMPILE_CASE = "GPT-2 small fp32"
COMPILED = ("torch compile", "v0adam compile")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and steps (the device check uses this)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (median), default 30 / 10 on CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--case", action="append", help="only cases whose name contains this (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="where the CSV and PNG go (default bench/results)")
    parser.add_argument("--training", action="store_true", help="time training iterations of real models instead")
    parser.add_argument(
        "--memory", action="store_true", help="measure the training state and peak memory of each mode instead"
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.memory:
        training_memory.run(device, args.quick, args.out)
        return 0
    if args.training:
        _, info = training.run(device, args.quick, args.steps, args.out)
        host_us = step_host.measure(device)
        print()
        print(step_host.format_table(host_us))
        if args.out is not None:
            print(f"\nsaved {step_host.save(host_us, info, args.out)}")
        return 0
    if device.type == "cpu":
        print("No GPU found: benchmarking v0adam's CPU path against torch.optim.AdamW on the CPU.", flush=True)
    steps = args.steps or (30 if device.type == "cuda" else 10)
    selected = cases.gpu_cases(args.quick) if device.type == "cuda" else cases.cpu_cases(args.quick)
    if args.case:
        selected = [case for case in selected if any(part in case.name for part in args.case)]
    builders = variants.variants(device, with_compile=not args.no_compile)

    copy_gbps = timing.copy_bandwidth_gbps(device)
    limit_pct = report.physical_limit_pct(copy_gbps, timing.in_place_bandwidth_gbps(device))
    print(f"copy bandwidth: {copy_gbps:.0f} GB/s; in place: {limit_pct / report.LIMIT_MARGIN:.0f}% of it", flush=True)
    rows = []
    for case in selected:
        for name, build in builders.items():
            if name in COMPILED and args.quick and case.name != QUICK_COMPILE_CASE:
                continue  # compiling takes ~a minute per case; the quick run compiles one
            print(f"  {case.name:<22} {name:<15}", end=" ", flush=True)
            built = build(case, device)
            if built is None:
                print("n/a", flush=True)
                continue
            timed = timing.measure(built.step, device, steps=steps, warmup=3)
            rows.append(
                report.make_row(
                    case,
                    name,
                    built.bytes_per_element,
                    timed.median_ms,
                    copy_gbps,
                    built.state_bytes(),
                    timed.spread_pct,
                )
            )
            print(f"{timed.median_ms:8.3f} ms  {rows[-1].gbps:7.0f} GB/s  spread {timed.spread_pct:3.0f}%", flush=True)
            del built
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report.add_speedups(rows, limit_pct)
    info = report.stamp(device)
    print()
    print(report.format_table(rows, copy_gbps, info))
    csv_path, png_path = report.save(rows, copy_gbps, info, args.out or Path("bench/results"))
    print(f"\nsaved {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
