"""The tables, plots and raw CSV of `warmup_free.py`. Final loss: the mean of a run's last 20 losses. A run
diverged if a loss was not finite or its final loss is above its first; the mean ± std are over the seeds that did
not. A run stalled if it ended no better than a model of byte frequencies (the corpus's unigram entropy). Two
methods whose difference is smaller than the larger of their seed spreads are a tie."""

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

TAIL = 20


def final_loss(losses: list[float]) -> float:
    return statistics.mean(losses[-TAIL:])


def diverged(losses: list[float]) -> bool:
    return not all(map(math.isfinite, losses)) or final_loss(losses) > losses[0]


class Cell:
    """The runs of one (experiment, method, lr) over the seeds."""

    def __init__(self):
        self.curves, self.fades = [], []

    def add(self, result: dict) -> None:
        self.curves.append(result["losses"])
        if result["fade"] is not None:
            self.fades.append(result["fade"])

    @property
    def finals(self) -> list[float]:
        return [final_loss(curve) for curve in self.curves if not diverged(curve)]

    @property
    def divergences(self) -> int:
        return sum(map(diverged, self.curves))

    def stalls(self, stall_loss: float) -> int:
        return sum(final >= stall_loss for final in self.finals)

    @property
    def mean(self) -> float:
        return statistics.mean(self.finals) if self.finals else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0

    def text(self, stall_loss: float = math.inf) -> str:
        if not self.finals:
            return f"diverged {self.divergences}/{len(self.curves)}"
        notes = [
            f"{count}/{len(self.curves)} {what}"
            for count, what in ((self.divergences, "diverged"), (self.stalls(stall_loss), "stalled"))
            if count
        ]
        return f"{self.mean:.3f} ± {self.std:.3f}" + (f" ({', '.join(notes)})" if notes else "")


def cells(runs, results) -> dict:
    table = defaultdict(Cell)
    for run, result in zip(runs, results):
        table[run.experiment, run.method.name, run.lr].add(result)
    return table


def compare(cell: Cell, reference: Cell) -> str:
    difference = cell.mean - reference.mean
    if not math.isfinite(difference):
        return "—"
    if abs(difference) < max(cell.std, reference.std):
        return f"tie ({difference:+.3f})"
    return f"{'worse' if difference > 0 else 'better'} ({difference:+.3f})"


def write(runs, results, config, label: str, out: Path, seconds: float, stall_loss: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = cells(runs, results)
    _write_csv(runs, results, out / f"evidence_{label}.csv")
    lines = _markdown(table, runs, config, seconds, stall_loss)
    (out / f"evidence_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(table, runs, config, label, out)


def _write_csv(runs, results, path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["experiment", "method", "lr", "sigma", "seed", "step", "loss"])
        for run, result in zip(runs, results):
            for step, loss in enumerate(result["losses"], 1):
                writer.writerow(
                    [run.experiment, run.method.name, run.lr, run.method.sigma or "", run.seed, step, f"{loss:.4f}"]
                )


def best_lrs(sweep_csv: Path, lrs) -> dict:
    """{method: its best lr} from the raw CSV a sweep wrote (as its "at its best learning rate" table says)."""
    curves = defaultdict(list)
    with sweep_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            if row["experiment"] == "sweep":
                curves[row["method"], float(row["lr"]), row["seed"]].append(float(row["loss"]))
    table = defaultdict(Cell)
    for (method, lr, _), losses in curves.items():
        table["sweep", method, lr].add(dict(losses=losses, fade=None))
    methods = dict.fromkeys(method for method, _, _ in curves)
    return {method: _best(table, method, lrs)[0] for method in methods}


def write_long(runs, results, config, label: str, out: Path, seconds: float) -> None:
    """The long runs' table, raw CSV and loss curves (files evidence_<label>_long.*)."""
    out.mkdir(parents=True, exist_ok=True)
    table = cells(runs, results)
    _write_csv(runs, results, out / f"evidence_{label}_long.csv")
    shares = defaultdict(list)
    for run, result in zip(runs, results):
        if "v0_share" in result:
            shares[run.method.name].append(result["v0_share"])
    size, methods = config.size, _methods(runs, "long")
    lines = [
        f"The testbed of `evidence_{label}.md` ({size.layers} layers, dim {size.dim}), each method at its best "
        f"learning rate in that sweep, {config.long_steps} steps (cosine decay to 10% over them, warmup where named "
        f"over the first 10%), seeds 0–{config.seeds - 1}. {seconds / 60:.0f} min in all.",
        "",
        f"| method | lr | loss at step {config.steps} | final loss | against AdamW + warmup | v0 fades at step "
        "(predicted) | v0's share of v at the end (measured) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    reference = next(table["long", methods[0], run.lr] for run in runs if run.method.name == methods[0])
    for method in methods:
        lr = next(run.lr for run in runs if run.method.name == method)
        cell = table["long", method, lr]
        at_sweep_length = statistics.mean(
            statistics.mean(curve[config.steps - TAIL : config.steps]) for curve in cell.curves
        )
        versus = compare(cell, reference) if method != methods[0] else "—"
        share = f"{statistics.mean(shares[method]):.3f}" if shares[method] else "—"
        lines.append(
            f"| {method} | {lr:g} | {at_sweep_length:.3f} | {cell.text()} | {versus} | "
            f"{_fade(table, 'long', method, [lr])} | {share} |"
        )
    lines += [
        "",
        f"loss at step {config.steps}: the mean of steps {config.steps - TAIL + 1}–{config.steps} of these runs (their "
        "learning rate is still high there; the sweep's runs had decayed by then). v0's share of v: the median over "
        "the model's elements of β₂ᵗ · v0 / v_t after the last step, mean over seeds.",
    ]
    (out / f"evidence_{label}_long.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot_long(table, runs, methods, label, out)


def _plot_long(table, runs, methods, label: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.8))
    window = 50
    for method in methods:
        lr = next(run.lr for run in runs if run.method.name == method)
        curves = table["long", method, lr].curves
        mean = [statistics.mean(step) for step in zip(*curves)]
        smoothed = [statistics.mean(mean[max(0, i - window) : i + 1]) for i in range(len(mean))]
        axes.plot(range(1, len(mean) + 1), smoothed, label=f"{method} (lr {lr:g})")
    axes.set_xlabel("step")
    axes.set_ylabel(f"training loss (mean over seeds, running mean of {window})")
    axes.set_ylim(top=3.3)
    axes.set_title("each method at its best learning rate, long runs")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"evidence_{label}_long.png", dpi=110)
    plt.close(figure)


def _methods(runs, experiment: str) -> list:
    return list(dict.fromkeys(run.method.name for run in runs if run.experiment == experiment))


def _best(table, method: str, lrs) -> tuple:
    """The lr at which `method` ends lowest without a divergence, and its cell (None when every lr diverged)."""
    stable = [(table["sweep", method, lr].mean, lr) for lr in lrs if not table["sweep", method, lr].divergences]
    if not stable:
        return None, None
    _, lr = min(stable)
    return lr, table["sweep", method, lr]


def _fade(table, experiment: str, method: str, lrs) -> str:
    fades = [fade for lr in lrs for fade in table[experiment, method, lr].fades]
    return f"{statistics.median(fades):,.0f}" if fades else "—"


def _markdown(table, runs, config, seconds: float, stall_loss: float) -> list[str]:
    size = config.size
    methods = _methods(runs, "sweep")
    lines = [
        f"Post-LN byte-level transformer LM ({size.layers} layers, dim {size.dim}, {size.heads} heads, context "
        f"{size.context}, batch {size.batch}) on the Python standard library's source; {config.steps} steps, "
        f"cosine decay to 10%, warmup (where named) linear over the first 10%; AdamW betas (0.9, 0.999), weight "
        f"decay 0.1; seeds 0–{config.seeds - 1} (each seed: the same initial weights and batches for every "
        f"method). Final loss: mean of the last {TAIL} steps, mean ± std over the seeds that did not diverge "
        f"(a non-finite loss, or a final loss above the first); stalled: a final loss no better than the byte "
        f"frequencies' entropy, {stall_loss:.3f}. {seconds / 60:.0f} min in all.",
        "",
        "## Final loss by learning rate",
        "",
        "| method | " + " | ".join(f"lr {lr:g}" for lr in config.lrs) + " | v0 fades at step |",
        "| --- | " + " | ".join("---:" for _ in config.lrs) + " | ---: |",
    ]
    for method in methods:
        row = [table["sweep", method, lr].text(stall_loss) for lr in config.lrs]
        lines.append(f"| {method} | " + " | ".join(row) + f" | {_fade(table, 'sweep', method, config.lrs)} |")
    lines += [
        "",
        "v0 fades at step: the step after which v0 is less than half of Adam's second moment in the params that hold "
        "half the model's elements, predicted from the first batch's gradients (`v0adam.v0_fade_steps`); median "
        "over seeds.",
        "",
        "## Each method at its best learning rate",
        "",
        "| method | best lr | final loss | against AdamW + warmup at its best | lrs without a divergence or stall |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    _, reference = _best(table, methods[0], config.lrs)
    for method in methods:
        lr, cell = _best(table, method, config.lrs)
        stable = [f"{lr:g}" for lr in config.lrs if _stable(table["sweep", method, lr], stall_loss)]
        best = f"{lr:g}" if lr else "—"
        versus = compare(cell, reference) if cell and method != methods[0] else "—"
        lines.append(f"| {method} | {best} | {cell.text() if cell else '—'} | {versus} | {', '.join(stable)} |")
    sigma_lrs = config.sigma_lrs
    lines += ["", "## σ of the random v0", "", "| σ | " + " | ".join(f"lr {lr:g}" for lr in sigma_lrs) + " |"]
    lines.append("| --- | " + " | ".join("---:" for _ in sigma_lrs) + " |")
    for method in sorted({run.method.name for run in runs if run.method.v0 == "random"}, key=_sigma_of):
        row = [_cell(table, method, lr).text(stall_loss) for lr in sigma_lrs]
        lines.append(f"| {_sigma_of(method):g} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"## Fine-tuning: pre-trained {config.pretrain_steps} steps on Python source (AdamW + warmup, lr "
        f"{config.pretrain_lr:g}), then {config.finetune_steps} steps on English text at lr {config.finetune_lr:g}",
        "",
        f"| method | loss at step {config.finetune_steps // 10} | final loss | against AdamW + warmup "
        "| v0 fades at step |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    reference = table["finetune", methods[0], config.finetune_lr]
    early = config.finetune_steps // 10 - 1
    for method in _methods(runs, "finetune"):
        cell = table["finetune", method, config.finetune_lr]
        at_early = statistics.mean(curve[early] for curve in cell.curves)
        versus = compare(cell, reference) if method != methods[0] else "—"
        fade = _fade(table, "finetune", method, [config.finetune_lr])
        lines.append(f"| {method} | {at_early:.3f} | {cell.text()} | {versus} | {fade} |")
    return lines


def _stable(cell: Cell, stall_loss: float) -> bool:
    return not cell.divergences and not cell.stalls(stall_loss)


def _sigma_of(method: str) -> float:
    return float(method.rsplit("σ=", 1)[1])


def _cell(table, method: str, lr: float) -> Cell:
    """A random-v0 method's runs at `lr`, from the sweep or the σ experiment."""
    return table["sweep", method, lr] if ("sweep", method, lr) in table else table["sigma", method, lr]


def _plot(table, runs, config, label: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (sweep, sigma, finetune) = plt.subplots(1, 3, figsize=(17, 4.8))
    for method in _methods(runs, "sweep"):
        lrs = [lr for lr in config.lrs if table["sweep", method, lr].finals]
        means = [table["sweep", method, lr].mean for lr in lrs]
        stds = [table["sweep", method, lr].std for lr in lrs]
        line = sweep.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, label=method)
        failed = [lr for lr in config.lrs if table["sweep", method, lr].divergences]
        sweep.plot(failed, [4.0] * len(failed), "x", color=line[0].get_color(), markersize=10)
    sweep.set_xscale("log")
    sweep.set_xlabel("peak learning rate")
    sweep.set_ylabel(f"final loss (mean of last {TAIL} steps)")
    sweep.set_title("stable range: × marks a learning rate where a seed diverged")
    sweep.legend(fontsize=8)
    for lr in config.sigma_lrs:
        methods = sorted({run.method.name for run in runs if run.method.v0 == "random"}, key=_sigma_of)
        cells_at_lr = [_cell(table, method, lr) for method in methods]
        sigma.errorbar(
            [_sigma_of(m) for m in methods],
            [c.mean for c in cells_at_lr],
            yerr=[c.std for c in cells_at_lr],
            marker="o",
            capsize=3,
            label=f"lr {lr:g}",
        )
    sigma.set_xscale("log")
    sigma.set_xlabel("σ of the random v0")
    sigma.set_ylabel("final loss")
    sigma.set_title("V0AdamW random, no warmup")
    sigma.legend(fontsize=8)
    for method in _methods(runs, "finetune"):
        curves = table["finetune", method, config.finetune_lr].curves
        mean = [statistics.mean(step) for step in zip(*curves)]
        finetune.plot(range(1, len(mean) + 1), mean, label=method)
    finetune.set_xlabel("fine-tuning step")
    finetune.set_ylabel("training loss (mean over seeds)")
    finetune.set_title(f"fine-tuning at lr {config.finetune_lr:g}")
    finetune.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"evidence_{label}.png", dpi=110)
    plt.close(figure)
