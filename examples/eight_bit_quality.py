"""Do lean optimizer states train as well as float32 ones? On the evidence testbed (`testbed.py`: a post-LN
byte-level transformer LM on the standard library's source), from the same weights and batches at every seed:

  pretrain   600 steps at lr 3e-3 (AdamW's best in the v0 sweep), warmup over the first 10%, cosine decay to 10%
  finetune   a model pre-trained 400 steps by float32 AdamW, continued 200 steps on English text at lr 1e-3

Two suites, against torch.optim.AdamW with float32 params and states:
  8-bit    three 8-bit AdamWs: v0adam's (`state_dtype=torch.uint8`), torchao's `AdamW8bit` and bitsandbytes'
           `AdamW8bit` (each where it is installed)
  memory   v0adam's memory modes on a bfloat16 model: the exact 2-byte master, then with 8-bit states and
           gradient release (6 bytes per param of training state), and stochastic rounding with both (4 bytes);
           and torch's AdamW on the bfloat16 model, without a master

The testbed is 2 layers of width 256 here, so that every matrix takes 8-bit states (rows of whole 256-element
blocks; `eight_bit_cpu.md`, from before that rule, ran 6 layers of width 64). Writes a markdown table (final
loss, the comparison with float32 AdamW, the measured state memory per parameter), the raw losses (CSV) and the
loss curves (PNG) to --out.

    pip install -e ".[compare]"                                   # torchao and bitsandbytes (both run on the CPU)
    python examples/eight_bit_quality.py                          # the 8-bit suite, 3 seeds
    python examples/eight_bit_quality.py --suite memory           # the memory suite, 3 seeds
    python examples/eight_bit_quality.py --quick                  # 1 seed, short runs
"""

import argparse
import csv
import importlib.util
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # the repository root, for bench.memory
import evidence_report  # noqa: E402
import testbed  # noqa: E402
import warmup_free  # noqa: E402

import v0adam  # noqa: E402
from bench.memory import state_bytes_per_param  # noqa: E402

SIZE = testbed.Size(dim=256, layers=2, heads=4, context=32, batch=16)
HYPER = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=warmup_free.WEIGHT_DECAY)
REFERENCE = "AdamW, fp32"


def _v0adam(**options):
    return lambda params, lr: v0adam.V0AdamW(params, lr=lr, **HYPER, **options)


def _torchao_8bit(params, lr):
    from torchao.optim import AdamW8bit

    return AdamW8bit(params, lr=lr, **HYPER)


def _bitsandbytes_8bit(params, lr):
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(params, lr=lr, **HYPER)


@dataclass(frozen=True)
class Optimizer:
    build: object  # (params, lr) -> optimizer
    needs: str | None = None  # the module it needs installed
    param_dtype: torch.dtype = torch.float32


EIGHT_BIT = dict(state_dtype=torch.uint8)
SUITES = {
    "8-bit": {
        REFERENCE: Optimizer(lambda params, lr: torch.optim.AdamW(params, lr=lr, **HYPER)),
        "V0AdamW, 8-bit states": Optimizer(_v0adam(**EIGHT_BIT)),
        "torchao AdamW8bit": Optimizer(_torchao_8bit, "torchao"),
        "bitsandbytes AdamW8bit": Optimizer(_bitsandbytes_8bit, "bitsandbytes"),
    },
    "memory": {
        REFERENCE: Optimizer(lambda params, lr: torch.optim.AdamW(params, lr=lr, **HYPER)),
        "AdamW, bf16 params": Optimizer(
            lambda params, lr: torch.optim.AdamW(params, lr=lr, **HYPER), param_dtype=torch.bfloat16
        ),
        "V0AdamW bf16, master": Optimizer(_v0adam(master_weights=True), param_dtype=torch.bfloat16),
        "V0AdamW bf16, master, 8-bit, release": Optimizer(
            _v0adam(master_weights=True, release_grads=True, **EIGHT_BIT), param_dtype=torch.bfloat16
        ),
        "V0AdamW bf16, stochastic, 8-bit, release": Optimizer(
            _v0adam(stochastic_rounding=True, release_grads=True, **EIGHT_BIT), param_dtype=torch.bfloat16
        ),
    },
}
FILE_STEMS = {"8-bit": "eight_bit", "memory": "memory_modes"}


@dataclass(frozen=True)
class Run:
    suite: str
    experiment: str  # "pretrain" or "finetune"
    optimizer: str
    lr: float
    seed: int
    steps: int


def train(run: Run, pretrained=None) -> dict:
    torch.manual_seed(run.seed)
    model = testbed.PostNormLM(SIZE)
    if pretrained is not None:
        model.load_state_dict(pretrained)
    optimizer = SUITES[run.suite][run.optimizer]
    model.to(optimizer.param_dtype)
    corpus = testbed.text_corpus() if run.experiment == "finetune" else testbed.stdlib_corpus()
    data = testbed.batches(corpus, SIZE, run.seed, "cpu")
    opt = optimizer.build(list(model.parameters()), run.lr)
    schedule = warmup_free.schedule(opt, run.steps, warmup=True)
    loss_fn, losses = testbed.lm_loss(model), []
    start = time.perf_counter()
    for _ in range(run.steps):
        opt.zero_grad()
        loss = loss_fn(next(data))
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    result = dict(losses=losses, fade=None, seconds=time.perf_counter() - start)
    result["state_bytes"] = state_bytes_per_param(opt, list(model.parameters()))
    if run.optimizer == REFERENCE and run.experiment == "pretrain":
        result["weights"] = {name: value.clone() for name, value in model.state_dict().items()}
    return result


def _train(arguments):
    return train(*arguments)


def run_all(runs, pretrained=None) -> list[dict]:
    arguments = [(run, pretrained and pretrained[run.seed]) for run in runs]
    with multiprocessing.get_context("fork").Pool(os.cpu_count(), initializer=warmup_free._worker_init) as pool:
        results = []
        for run, result in zip(runs, pool.imap(_train, arguments, chunksize=1)):
            print(
                f"{run.experiment:<8} | {run.optimizer:<24} | seed {run.seed} | final "
                f"{evidence_report.final_loss(result['losses']):.3f} | {result['seconds']:.0f} s",
                flush=True,
            )
            results.append(result)
    return results


def write(runs, results, out: Path, stem: str, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["experiment", "optimizer", "lr", "seed", "step", "loss"])
        for run, result in zip(runs, results):
            for step, loss in enumerate(result["losses"], 1):
                writer.writerow([run.experiment, run.optimizer, run.lr, run.seed, step, f"{loss:.4f}"])
    cells, memory = {}, {}
    for run, result in zip(runs, results):
        cells.setdefault((run.experiment, run.optimizer), evidence_report.Cell()).add(result)
        memory[run.optimizer] = result["state_bytes"]
    seeds = max(run.seed for run in runs) + 1
    lines = [
        f"The testbed of `evidence_cpu.md` at {SIZE.layers} layers of width {SIZE.dim}; AdamW betas (0.9, 0.999), eps "
        f"1e-8, weight decay {warmup_free.WEIGHT_DECAY}, warmup over the first 10% and cosine decay to 10% for "
        f"every run; seeds 0–{seeds - 1}, each the same weights and batches for every optimizer. Final loss: mean "
        f"of the last {evidence_report.TAIL} steps, mean ± std over seeds; a difference smaller than the larger "
        f"seed spread is a tie. {seconds / 60:.0f} min in all, on the CPU (v0adam's PyTorch backend, the same "
        "quantizer as its kernel).",
        "",
    ]
    for experiment, title in (("pretrain", "Pre-training"), ("finetune", "Fine-tuning")):
        first = next(run for run in runs if run.experiment == experiment)
        lines += [
            f"## {title}: {first.steps} steps at lr {first.lr:g}",
            "",
            "| optimizer | final loss | against fp32 AdamW | state memory (bytes per param) |",
            "| --- | ---: | --- | ---: |",
        ]
        reference = cells[experiment, REFERENCE]
        for name in dict.fromkeys(run.optimizer for run in runs):
            cell = cells[experiment, name]
            versus = evidence_report.compare(cell, reference) if name != REFERENCE else "—"
            lines.append(f"| {name} | {cell.text()} | {versus} | {memory[name]:.2f} |")
        lines.append("")
    suite = SUITES[runs[0].suite]
    missing = [
        name for name, optimizer in suite.items() if optimizer.needs and not importlib.util.find_spec(optimizer.needs)
    ]
    if missing:
        lines.append(f"Not installed, so not run: {', '.join(missing)}.")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(runs, cells, out / f"{stem}.png")


def _plot(runs, cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    window = 20
    for axis, experiment in zip(axes, ("pretrain", "finetune")):
        for name in dict.fromkeys(run.optimizer for run in runs):
            curves = cells[experiment, name].curves
            mean = [statistics.mean(step) for step in zip(*curves)]
            smoothed = [statistics.mean(mean[max(0, i - window) : i + 1]) for i in range(len(mean))]
            axis.plot(range(1, len(mean) + 1), smoothed, label=name)
        axis.set_xlabel("step")
        axis.set_ylabel(f"training loss (mean over seeds, running mean of {window})")
        axis.set_title(experiment)
        axis.legend(fontsize=8)
    axes[0].set_ylim(top=3.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="8-bit", help="which optimizers (see above)")
    parser.add_argument("--quick", action="store_true", help="one seed, short runs")
    parser.add_argument("--out", type=Path, default=Path("examples/results"))
    args = parser.parse_args()
    seeds, steps, pretrain_steps, finetune_steps = (1, 150, 100, 60) if args.quick else (3, 600, 400, 200)
    suite = SUITES[args.suite]
    names = [
        name for name, optimizer in suite.items() if not optimizer.needs or importlib.util.find_spec(optimizer.needs)
    ]
    start = time.perf_counter()
    runs = [Run(args.suite, "pretrain", name, 3e-3, seed, steps) for seed in range(seeds) for name in names]
    results = run_all(runs)
    pretraining = [Run(args.suite, "pretrain", REFERENCE, 3e-3, seed, pretrain_steps) for seed in range(seeds)]
    pretrained = {run.seed: result["weights"] for run, result in zip(pretraining, run_all(pretraining))}
    finetuning = [
        Run(args.suite, "finetune", name, 1e-3, seed, finetune_steps) for seed in range(seeds) for name in names
    ]
    results += run_all(finetuning, pretrained)
    stem = f"{FILE_STEMS[args.suite]}_{'cpu-quick' if args.quick else 'cpu'}"
    write(runs + finetuning, results, args.out, stem, time.perf_counter() - start)


if __name__ == "__main__":
    main()
