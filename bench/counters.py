"""python -m bench.counters: the step's issue utilisation and DRAM throughput as a GPU's hardware counters give them
(Nsight Compute), beside what the static model predicts for the same launch (issue #32, item 3).

Two halves, run by bench/device_check.sh:
  ncu --profile-from-start off --clock-control none --print-units base --csv --metrics <METRICS> \\
      --log-file <file> python -m bench.counters --step "<case>"        (once per case: one step, profiled)
  python -m bench.counters --report <static_model.csv> <file>...       (the table)
Where ncu cannot read the counters (it is missing, or the machine's runtime does not give them), the benchmark's
timings are what was measured.
"""

import argparse
import csv
from pathlib import Path

import torch

from bench import cases, timing, variants

METRICS = (
    "smsp__issue_active.avg.pct_of_peak_sustained_active",  # cycles a scheduler issued, of those it had warps
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__bytes.sum",
    "gpu__time_duration.sum",  # ns, with --print-units base
    "launch__registers_per_thread",
    "launch__grid_size",
)
KERNEL = "_adam_step_kernel"
# The cases profiled, each with the static model's row for its largest launch (the aligned one).
PREDICTED_AS = {
    "GPT-2 small fp32": "fp32 / step aligned",
    "GPT-2 small fp32 8-bit": "fp32 8-bit / step 8-bit aligned",
    "GPT-2 bf16 8-bit": "bf16 8-bit / step 8-bit aligned",
}


def step_once_profiled(case_name: str) -> None:
    """Two steps of the case to compile and warm up, then one between cudaProfilerStart and Stop: the launches
    ncu profiles with --profile-from-start off."""
    case = next(case for case in cases.gpu_cases(quick=False) if case.name == case_name)
    step = variants.build_v0adam(case, torch.device("cuda")).step
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    step()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def launches(ncu_csv: Path) -> list[dict[str, float]]:
    """The step kernel's launches in ncu's CSV (details page: a row per metric), each as {metric: value}."""
    lines = ncu_csv.read_text().splitlines()
    header = next((index for index, line in enumerate(lines) if line.startswith('"ID"')), None)
    if header is None:
        return []
    by_id: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(lines[header:]):
        if KERNEL in (row.get("Kernel Name") or "") and row.get("Metric Name") in METRICS:
            value = row["Metric Value"].replace(",", "")  # ncu writes thousands separators
            by_id.setdefault(row["ID"], {})[row["Metric Name"]] = float(value)
    return [metrics for metrics in by_id.values() if set(metrics) == set(METRICS)]


def case_of(ncu_csv: Path) -> str:
    """The case a CSV holds: device_check.sh names each after its case, spaces as underscores."""
    return ncu_csv.stem.replace("_", " ")


def table(static_csv: Path, ncu_csvs: list[Path], copy_gbps: float) -> list[str]:
    """The report's rows: per case, its largest launch of the step as measured, and the model's prediction."""
    predicted = {row["variant"]: row for row in csv.DictReader(static_csv.open())}
    measured_columns = "µs, DRAM GB/s (% of copy), DRAM % of peak, issue %"
    rows = [
        f"| case | launch | measured: {measured_columns} | predicted: % of copy, issue % |",
        "| --- | --- | --- | --- |",
    ]
    for path in ncu_csvs:
        case = case_of(path)
        found = launches(path)
        if not found:
            rows.append(f"| {case} | no counters read (see {path.name}) | | |")
            continue
        largest = max(found, key=lambda metrics: metrics["launch__grid_size"])
        seconds = largest["gpu__time_duration.sum"] * 1e-9
        gbps = largest["dram__bytes.sum"] / seconds / 1e9
        row = predicted.get(PREDICTED_AS.get(case, ""))
        prediction = (
            f"{float(row['pct_of_copy']):.1f}, {float(row['issue_pct']):.0f}" if row else "not in the model's run"
        )
        measured = (
            f"{seconds * 1e6:.0f}, {gbps:.0f} ({100 * gbps / copy_gbps:.1f}%), "
            f"{largest['dram__throughput.avg.pct_of_peak_sustained_elapsed']:.1f}, "
            f"{largest['smsp__issue_active.avg.pct_of_peak_sustained_active']:.0f}"
        )
        launch = f"{largest['launch__grid_size']:.0f} programs, {largest['launch__registers_per_thread']:.0f} registers"
        rows.append(f"| {case} | {launch} | {measured} | {prediction} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", choices=list(PREDICTED_AS), help="step the case once, profiled")
    parser.add_argument("--report", nargs="+", type=Path, metavar=("STATIC_CSV", "NCU_CSV"))
    parser.add_argument("--metrics", action="store_true", help="print the metrics, comma-separated, for ncu")
    args = parser.parse_args()
    if args.metrics:
        print(",".join(METRICS))
    elif args.step:
        step_once_profiled(args.step)
    elif args.report and len(args.report) >= 2:
        copy_gbps = timing.copy_bandwidth_gbps(torch.device("cuda"))
        print(f"{torch.cuda.get_device_name()}: copy bandwidth {copy_gbps:.0f} GB/s (without ncu); per launch:")
        print("\n".join(table(args.report[0], args.report[1:], copy_gbps)))
    else:
        parser.error("give --step CASE, --report STATIC_CSV NCU_CSV..., or --metrics")


if __name__ == "__main__":
    main()
