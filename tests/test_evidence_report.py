"""The evidence sweep's report (examples/evidence_report.py) on made-up losses: divergences, stalls, best learning
rates, ties and the files it writes. The sweep itself is `make evidence`."""

import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import evidence_report  # noqa: E402
import warmup_free  # noqa: E402

STALL = 3.0
CONFIG = replace(warmup_free.CONFIGS["cpu"], steps=30, lrs=(1e-3, 1e-2), seeds=2, sigma_lrs=(1e-2,), finetune_steps=30)


def made_up_losses(run) -> list[float]:
    """Each run ends at a loss of our choosing: AdamW without warmup diverges at the larger lr, random v0 at
    σ=100 stalls at the smaller, V0AdamW data beats AdamW + warmup by more than the seed spread, and random v0 at
    σ=1 ties with it (a difference smaller than the spread)."""
    end = {"AdamW + warmup": 2.0, "V0AdamW data": 1.5, "V0AdamW random σ=1": 2.005}.get(run.method.name, 2.2)
    end += 0.01 * run.seed
    if run.method.name == "AdamW, no warmup" and run.lr == 1e-2:
        return [5.0] * 10 + [math.nan] * 20
    if run.method.name == "V0AdamW random σ=100" and run.lr == 1e-3:
        end = 3.2
    return [5.0] + [end] * (run.steps - 1)


def rows_of(section: str) -> dict[str, list[str]]:
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {row[0]: row for row in rows}


def test_the_report_marks_divergences_stalls_and_ties(tmp_path):
    runs = warmup_free.plan(CONFIG)
    runs += [warmup_free.Run("finetune", method, CONFIG.finetune_lr, 0, 30) for method in warmup_free.METHODS]
    results = [dict(losses=made_up_losses(run), fade=None if run.method.v0 is None else 100.0) for run in runs]
    evidence_report.write(runs, results, CONFIG, "test", tmp_path, seconds=60, stall_loss=STALL)
    sections = (tmp_path / "evidence_test.md").read_text().split("\n## ")
    by_lr, at_best = (rows_of(section) for section in sections[1:3])
    assert by_lr["AdamW, no warmup"][1:3] == ["2.205 ± 0.007", "diverged 2/2"]
    assert by_lr["V0AdamW random σ=100"][1] == "3.200 ± 0.000 (2/2 stalled)"
    assert at_best["V0AdamW data"][1:4] == ["0.001", "1.505 ± 0.007", "better (-0.500)"]
    assert at_best["V0AdamW random σ=1"][3] == "tie (+0.005)"
    assert at_best["AdamW, no warmup"][-1] == "0.001"  # its stable range: at 1e-2 both seeds diverged
    assert at_best["V0AdamW random σ=100"][-1] == "0.01"  # at 1e-3 both stalled
    csv_rows = (tmp_path / "evidence_test.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + sum(run.steps for run in runs)
    assert (tmp_path / "evidence_test.png").stat().st_size > 0


def test_the_long_runs_start_from_the_sweeps_best_lrs_and_report_v0s_measured_share(tmp_path):
    runs = warmup_free.plan(CONFIG)
    runs += [warmup_free.Run("finetune", method, CONFIG.finetune_lr, 0, 30) for method in warmup_free.METHODS]
    results = [dict(losses=made_up_losses(run), fade=None) for run in runs]
    evidence_report.write(runs, results, CONFIG, "test", tmp_path, seconds=60, stall_loss=STALL)
    best = evidence_report.best_lrs(tmp_path / "evidence_test.csv", CONFIG.lrs)
    assert best["AdamW, no warmup"] == 1e-3  # it diverged at 1e-2
    assert best["V0AdamW random σ=100"] == 1e-2  # it stalled at 1e-3, a higher loss
    config = replace(CONFIG, long_steps=40)
    long_runs = [
        warmup_free.Run("long", method, best[method.name], seed, 40)
        for seed in range(2)
        for method in warmup_free.METHODS
    ]
    long_results = [
        dict(losses=made_up_losses(run), fade=None if run.method.v0 is None else 1000.0)
        | ({} if run.method.v0 is None else {"v0_share": 0.5 + 0.1 * run.seed})
        for run in long_runs
    ]
    evidence_report.write_long(long_runs, long_results, config, "test", tmp_path, seconds=60)
    rows = rows_of((tmp_path / "evidence_test_long.md").read_text())
    assert rows["V0AdamW data"][1:] == ["0.001", "1.505", "1.505 ± 0.007", "better (-0.500)", "1,000", "0.550"]
    assert rows["AdamW + warmup"][-2:] == ["—", "—"]
    assert (tmp_path / "evidence_test_long.png").stat().st_size > 0
