"""Does a non-zero v0 remove the need for learning-rate warmup, at which learning rates, and at what cost?

On the post-LayerNorm byte-level language model of `testbed.py`, three experiments, each seed the same data and
initial weights for every method:

  sweep      a log grid of learning rates x {AdamW + warmup, AdamW without warmup, V0AdamW random at sigma 100
             (v0adam's former default) and at sigma 1, V0AdamW data}, no warmup for the V0AdamW runs
  sigma      V0AdamW random at sigma 1, 10, 100, 1000 at two learning rates (the paper's flat-sigma claim)
  finetune   a model pre-trained on Python source, fine-tuned on English text by each method
  long       (--long, after the sweep) each method at its best learning rate in the sweep, for long enough that
             v0 fades in the data mode; the share v0 still holds of the second moment at the end is measured

Every run follows a cosine decay to a tenth of its learning rate; the warmup, where there is one, is linear over
the first 10% of the steps. Writes the raw losses (CSV), the tables (markdown) and the plots (PNG) to --out.

    python examples/warmup_free.py                 # the full CPU sweep (make evidence), under an hour on 2 cores
    python examples/warmup_free.py --quick         # one seed, two learning rates, a few minutes
    python examples/warmup_free.py --device cuda   # the GPU-sized configuration, within 5 minutes
    python examples/warmup_free.py --long          # the long runs, from the sweep's results in --out
"""

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import evidence_report  # noqa: E402
import testbed  # noqa: E402

import v0adam  # noqa: E402

WEIGHT_DECAY, WARMUP_FRACTION, FINAL_LR_FRACTION = 0.1, 0.1, 0.1
V0_BATCHES = 20  # mini-batches that v0="data" estimates v0 from (paper eq. 10)


@dataclass(frozen=True)
class Method:
    name: str
    v0: str | None = None  # None: torch.optim.AdamW
    sigma: float | None = None
    warmup: bool = False


METHODS = (
    Method("AdamW + warmup", warmup=True),
    Method("AdamW, no warmup"),
    Method("V0AdamW random σ=100", "random", 100.0),
    Method("V0AdamW random σ=1", "random", 1.0),
    Method("V0AdamW data", "data", 1.0),
)
SIGMAS = (1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class Config:
    size: testbed.Size
    steps: int
    lrs: tuple
    seeds: int
    sigma_lrs: tuple
    pretrain_lr: float
    pretrain_steps: int
    finetune_lr: float
    finetune_steps: int
    long_steps: int


CONFIGS = {
    "cpu": Config(
        size=testbed.Size(dim=64, layers=6, heads=4, context=32, batch=16),
        steps=600,
        lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        seeds=3,
        sigma_lrs=(3e-3, 3e-2),
        pretrain_lr=3e-3,
        pretrain_steps=400,
        finetune_lr=1e-3,
        finetune_steps=200,
        long_steps=2500,
    ),
    "cuda": Config(
        size=testbed.Size(dim=256, layers=8, heads=8, context=128, batch=32),
        steps=400,
        lrs=(1e-3, 3e-3, 1e-2, 3e-2),
        seeds=2,
        sigma_lrs=(3e-3,),
        pretrain_lr=3e-3,
        pretrain_steps=400,
        finetune_lr=1e-3,
        finetune_steps=200,
        long_steps=1200,
    ),
}
QUICK = dict(
    steps=150, lrs=(3e-3, 3e-2), seeds=1, sigma_lrs=(3e-2,), pretrain_steps=150, finetune_steps=80, long_steps=300
)


@dataclass(frozen=True)
class Run:
    experiment: str  # "sweep", "sigma", "finetune", "pretrain" or "long"
    method: Method
    lr: float
    seed: int
    steps: int


def schedule(opt, steps: int, warmup: bool):
    """Linear warmup over the first 10% of the steps (if asked), then a cosine decay to a tenth."""
    warmup_steps = int(WARMUP_FRACTION * steps) if warmup else 0

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_optimizer(method: Method, model, lr: float, v0_data, size: testbed.Size):
    if method.v0 is None:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    opt = v0adam.V0AdamW(
        model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, v0=method.v0, v0_scale=method.sigma, v0_seed=0
    )
    if method.v0 == "data":
        opt.init_v0_from_data(v0_data, testbed.lm_loss(model), num_samples=V0_BATCHES * size.batch, model=model)
    return opt


def train(run: Run, config: Config, device: str, pretrained=None) -> dict:
    """One run: its loss at every step (NaN after a divergence stops it), the median over params of the step at
    which v0 stops dominating the second moment in params holding half the elements (`v0adam.v0_fade_steps`, from
    the first batch), its time; for a long run with a v0, the share v0 holds of the second moment at the end."""
    torch.manual_seed(run.seed)
    model = testbed.PostNormLM(config.size).to(device)
    finetuning = run.experiment == "finetune"
    if finetuning:
        model.load_state_dict(pretrained)
    corpus = testbed.text_corpus() if finetuning else testbed.stdlib_corpus()
    data = testbed.batches(corpus, config.size, run.seed, device)
    v0_data = testbed.batches(corpus, config.size, run.seed + 1000, device)  # training batches stay the same
    opt = make_optimizer(run.method, model, run.lr, v0_data, config.size)
    lr_schedule = schedule(opt, run.steps, run.method.warmup)
    loss_fn, losses, fade, v0 = testbed.lm_loss(model), [], None, None
    start = time.perf_counter()
    for step in range(run.steps):
        opt.zero_grad()
        loss = loss_fn(next(data))
        loss.backward()
        if step == 0 and run.method.v0 is not None:
            fade = weighted_median(v0adam.v0_fade_steps(opt))
            v0 = {param: state["exp_avg_sq"].clone() for param, state in opt.state.items()}
        opt.step()
        lr_schedule.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            losses += [math.nan] * (run.steps - len(losses))
            break
    result = dict(losses=losses, fade=fade, seconds=time.perf_counter() - start)
    if run.experiment == "long" and v0 is not None:
        result["v0_share"] = v0_share(opt, v0)
    if run.experiment == "pretrain":
        result["weights"] = {name: value.cpu() for name, value in model.state_dict().items()}
    return result


def weighted_median(fade_steps: dict) -> float:
    """The step by which v0 has faded in the params holding half the model's elements."""
    ordered = sorted(fade_steps.items(), key=lambda item: item[1])
    half, seen = sum(param.numel() for param, _ in ordered) / 2, 0
    for param, steps in ordered:
        seen += param.numel()
        if seen >= half:
            return steps


@torch.no_grad()
def v0_share(opt, v0: dict) -> float:
    """The median over the model's elements of the share v0 still holds of Adam's second moment: β₂ᵗ · v0 / v_t
    (the bias corrections cancel), measured on the optimizer's own states (one param group here)."""
    beta2, shares = float(opt.param_groups[0]["betas"][1]), []
    for param, state in opt.state.items():
        decayed = v0[param] * beta2 ** float(state["step"])
        shares.append((decayed / state["exp_avg_sq"].clamp_min(torch.finfo(torch.float32).tiny)).flatten())
    return torch.cat(shares).clamp_max(1.0).median().item()


def plan(config: Config) -> list[Run]:
    runs = [
        Run("sweep", method, lr, seed, config.steps)
        for seed in range(config.seeds)
        for lr in config.lrs
        for method in METHODS
    ]
    covered = {(run.method.sigma, run.lr) for run in runs if run.method.v0 == "random"}
    runs += [
        Run("sigma", Method(f"V0AdamW random σ={sigma:g}", "random", sigma), lr, seed, config.steps)
        for seed in range(config.seeds)
        for lr in config.sigma_lrs
        for sigma in SIGMAS
        if (sigma, lr) not in covered
    ]
    return runs


def _worker_init():
    torch.set_num_threads(1)  # one process per core: small matmuls scale better across processes than threads


def _train_on_cpu(arguments):
    return train(*arguments)


def run_all(runs, config, device, pretrained=None):
    """Results in the order of `runs`: on the CPU one process per core, on a GPU one after another."""
    arguments = [(run, config, device, pretrained and pretrained[run.seed]) for run in runs]
    if device == "cpu":
        with multiprocessing.get_context("fork").Pool(os.cpu_count(), initializer=_worker_init) as pool:
            results = _reported(runs, pool.imap(_train_on_cpu, arguments, chunksize=1))
    else:
        results = _reported(runs, map(_train_on_cpu, arguments))
    return results


def _reported(runs, results) -> list[dict]:
    """The results, each printed as it comes."""
    collected = []
    for run, result in zip(runs, results):
        final = statistics.mean(result["losses"][-20:])
        print(
            f"{run.experiment:<8} | {run.method.name:<22} | lr {run.lr:<6g} | seed {run.seed} | final {final:.3f} "
            f"| {result['seconds']:.0f} s",
            flush=True,
        )
        collected.append(result)
    return collected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="one seed, two learning rates, short runs")
    parser.add_argument("--long", action="store_true", help="the long runs, at the best lrs of the sweep in --out")
    parser.add_argument("--out", type=Path, default=Path("examples/results"))
    args = parser.parse_args()
    config = replace(CONFIGS[args.device], **QUICK) if args.quick else CONFIGS[args.device]
    label = f"{args.device}-quick" if args.quick else args.device
    start = time.perf_counter()
    if args.long:
        best_lrs = evidence_report.best_lrs(args.out / f"evidence_{label}.csv", config.lrs)
        runs = [
            Run("long", method, best_lrs[method.name], seed, config.long_steps)
            for seed in range(config.seeds)
            for method in METHODS
        ]
        results = run_all(runs, config, args.device)
        evidence_report.write_long(runs, results, config, label, args.out, time.perf_counter() - start)
        return

    runs = plan(config)
    results = run_all(runs, config, args.device)
    pretrain = Method("pre-training: AdamW + warmup", warmup=True)
    pretraining = [
        Run("pretrain", pretrain, config.pretrain_lr, seed, config.pretrain_steps) for seed in range(config.seeds)
    ]
    pretrained = {
        run.seed: result["weights"] for run, result in zip(pretraining, run_all(pretraining, config, args.device))
    }
    finetuning = [
        Run("finetune", method, config.finetune_lr, seed, config.finetune_steps)
        for seed in range(config.seeds)
        for method in METHODS
    ]
    results += run_all(finetuning, config, args.device, pretrained)
    stall_loss = testbed.unigram_entropy(testbed.stdlib_corpus())
    evidence_report.write(runs + finetuning, results, config, label, args.out, time.perf_counter() - start, stall_loss)


if __name__ == "__main__":
    main()
