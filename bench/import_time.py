"""python -m bench.import_time: the wall time of `import v0adam` against `import torch`, each in a fresh
interpreter, alternating so that both see the same load; medians, their spread, and the ratio of the medians.

v0adam imports what its step needs; the compiler (torch._dynamo, for a traced step) and DTensor support
(torch.distributed.tensor) come only when the program uses them."""

import argparse
import statistics
import subprocess
import sys
import time

STATEMENTS = {"torch": "import torch", "v0adam": "import v0adam"}


def wall_times(runs: int) -> dict[str, list[float]]:
    times = {name: [] for name in STATEMENTS}
    for _ in range(runs):
        for name, statement in STATEMENTS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_time", description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    times = wall_times(args.runs)
    for name, values in times.items():
        print(
            f"import {name:7s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})"
        )
    ratio = statistics.median(times["v0adam"]) / statistics.median(times["torch"])
    print(f"ratio {ratio:.2f}x over {args.runs} runs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
