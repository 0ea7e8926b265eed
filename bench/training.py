"""python -m bench --training: whole training iterations (forward, backward, clip to norm 1.0, step, zero_grad), the
cost a user sees, of torch's AdamW loops and v0adam's.

Per model: the iteration (median), forward + backward alone (grads set to None, no optimizer), their difference
(the optimizer's share of the iteration: clipping, step, zero_grad, and what its grads cost the backward), and the
host time of `step()` (on a GPU the launch overhead; on the CPU the whole step). Modelled bytes per element are the
optimizer's traffic per iteration (SPEC §3): clipping as torch.nn.utils.clip_grad_norm_ (norm 4 B + scale 8 B) or
fused into the step (norm 4 B), the step (28 B; 16.06 B with 8-bit states), and grads kept between iterations
(accumulation 12 B + memset 4 B).
"""

import gc
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import v0adam
from bench import models, report, timing
from bench.cases import bytes_per_element

LR = 1e-4
MAX_NORM = 1.0


@dataclass
class Loop:
    """One training loop: how it clips, steps and zeroes, and the bytes per element that costs the optimizer."""

    name: str
    bytes_per_element: float
    build: object  # params -> optimizer
    clip: object  # (optimizer, params) -> None
    applies: object = None  # config -> whether the loop means anything for that model (None: always)

    def iteration(self, model, optimizer, params, tokens):
        loss = _loss(model, tokens)
        loss.backward()
        self.clip(optimizer, params)
        optimizer.step()
        optimizer.zero_grad()


def _torch_clip(optimizer, params):
    torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)


def _fused_clip(optimizer, params):
    optimizer.clip_grad_norm_(MAX_NORM)


LOOPS = (
    Loop("torch fused", 12 + 28, lambda params: torch.optim.AdamW(params, lr=LR, fused=True), _torch_clip),
    # torch's default implementation: foreach on CUDA, a for-loop over the tensors on the CPU.
    Loop("torch default", 12 + 28, lambda params: torch.optim.AdamW(params, lr=LR), _torch_clip),
    Loop("v0adam", 4 + 28, lambda params: v0adam.V0AdamW(params, lr=LR, v0="zero"), _fused_clip),
    Loop(
        "v0adam flat_grads",
        4 + 28 + 12 + 4,
        lambda params: v0adam.V0AdamW(params, lr=LR, v0="zero", flat_grads=True),
        _fused_clip,
    ),
    Loop(
        "v0adam 8-bit",
        4 + bytes_per_element(torch.float32, torch.uint8, amsgrad=False),
        lambda params: v0adam.V0AdamW(params, lr=LR, v0="zero", state_dtype=torch.uint8),
        _fused_clip,
        # Its matrices' rows are multiples of the width: whole 256-element blocks, which 8-bit states need.
        applies=lambda config: config.dim % 256 == 0,
    ),
)


@dataclass
class TrainingRow:
    model: str
    loop: str
    params: int
    tensors: int
    batch: str
    iteration_ms: float
    forward_backward_ms: float
    optimizer_ms: float  # iteration - forward_backward: what the optimizer adds to an iteration
    step_host_us: float
    bytes_per_element: float
    iteration_spread_pct: float = float("nan")  # the iterations' interquartile range over their median
    # The spreads of the iteration and of forward + backward, summed, over their difference: a small optimizer
    # share of a long iteration is the first figure a noisy machine spoils.
    optimizer_spread_pct: float = float("nan")


def _loss(model, tokens):
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


WARMUP = 3


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Contestant:
    """A fresh model (seed 0) and one timed call on it: an iteration of `loop`, or, without a loop, forward and
    backward alone with grads set to None after each. Records the host time of each `step()`."""

    def __init__(self, config, device, loop: Loop | None):
        torch.manual_seed(0)
        with torch.device(device):  # built where it trains: initialising a billion params on the host takes minutes
            self.model = models.build(config)
        self.params = list(self.model.parameters())
        self.loop = loop
        self.step_host_us = []
        if loop is not None:
            self.optimizer = loop.build(self.params)
            step = self.optimizer.step

            def timed_step(*args, **kwargs):
                start = time.perf_counter()
                result = step(*args, **kwargs)
                self.step_host_us.append((time.perf_counter() - start) * 1e6)
                return result

            self.optimizer.step = timed_step

    def __call__(self, tokens):
        if self.loop is None:
            _loss(self.model, tokens).backward()
            self.model.zero_grad(set_to_none=True)
        else:
            self.loop.iteration(self.model, self.optimizer, self.params, tokens)


def measure(config, tokens, device, iterations: int, interleaved: bool) -> dict[str, tuple[timing.Timing, float]]:
    """name -> (its calls' Timing, median host µs per step()) after WARMUP calls; "forward + backward" and each loop.
    Interleaved, one call of each in turn (all models resident), so that a noisy machine's drifts hit them alike;
    else one after the other, each model freed before the next is built (a GPU holds one large model at a time)."""
    contestants = {"forward + backward": None} | {loop.name: loop for loop in loops_for(config)}
    batches = [list(contestants.items())] if interleaved else [[item] for item in contestants.items()]
    results = {}
    for batch in batches:
        built = {name: Contestant(config, device, loop) for name, loop in batch}
        times = {name: [] for name in built}
        for round_index in range(WARMUP + iterations):
            for name, contestant in built.items():
                _synchronize(device)
                start = time.perf_counter()
                contestant(tokens)
                _synchronize(device)
                if round_index >= WARMUP:
                    times[name].append((time.perf_counter() - start) * 1e3)
        for name, contestant in built.items():
            host = contestant.step_host_us[WARMUP:]
            results[name] = (timing.Timing.of(times[name]), statistics.median(host) if host else float("nan"))
        del built, contestant
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def loops_for(config) -> list[Loop]:
    return [loop for loop in LOOPS if loop.applies is None or loop.applies(config)]


def configs_for(device: torch.device, quick: bool) -> list[tuple[models.Config, int, int]]:
    """(config, batch size, sequence length) per model: GPT-2 small and the largest Llama that fits on a GPU with
    fp32 params, grads and two AdamW states (16 B per param) plus room for activations; their narrow twins on CPU."""
    if device.type != "cuda":
        return [(models.GPT2_SMALL_NARROW, 2, 32), (models.LLAMA_NARROW, 2, 32)]
    chosen = [(models.GPT2_SMALL, 4, 256)]
    if not quick:
        free, _ = torch.cuda.mem_get_info(device)
        fitting = [config for config in models.LLAMA_SIZES if 16 * models.param_count(config) < 0.6 * free]
        if fitting:
            chosen.append((fitting[0], 1, 256))
    return chosen


def run(device: torch.device, quick: bool, iterations: int | None, out: Path | None) -> tuple[list, dict]:
    """The rows, printed as a table and saved under `out` (only if given), and the machine's stamp."""
    iterations = iterations or (20 if device.type == "cuda" else 60)  # a noisy CPU needs more
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 params, TF32 matmuls: how fp32 models are trained
    rows = []
    for config, batch, length in configs_for(device, quick):
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(config.vocab, (batch, length + 1), generator=generator).to(device)
        count = models.param_count(config)
        print(f"{config.name}: {count / 1e6:.1f}M params, batch {batch} x {length} tokens", flush=True)
        results = measure(config, tokens, device, iterations, interleaved=device.type == "cpu")
        baseline, _ = results.pop("forward + backward")
        print(f"  forward + backward  {baseline.median_ms:9.2f} ms", flush=True)
        for loop in LOOPS:
            if loop.name not in results:
                print(f"  {loop.name:<19} n/a: no tensor of this model takes it", flush=True)
                continue
            iteration, host_us = results[loop.name]
            optimizer_ms = iteration.median_ms - baseline.median_ms
            rows.append(
                TrainingRow(
                    config.name,
                    loop.name,
                    count,
                    _tensor_count(config),
                    f"{batch}x{length}",
                    iteration.median_ms,
                    baseline.median_ms,
                    optimizer_ms,
                    host_us,
                    loop.bytes_per_element,
                    iteration.spread_pct,
                    100 * (iteration.spread_ms + baseline.spread_ms) / abs(optimizer_ms) if optimizer_ms else math.inf,
                )
            )
            print(f"  {loop.name:<19} {iteration.median_ms:9.2f} ms, step() host {host_us:8.0f} µs", flush=True)
    info = report.stamp(device)
    print()
    print(format_table(rows, info))
    if out is not None:
        csv_path, png_path = save(rows, info, out)
        print(f"\nsaved {csv_path} and {png_path}")
    return rows, info


def _tensor_count(config) -> int:
    with torch.device("meta"):  # shapes only
        return len(list(models.build(config).parameters()))


def format_table(rows: list[TrainingRow], info: dict) -> str:
    fused = {row.model: row for row in rows if row.loop == "torch fused"}
    lines = [
        f"{info['device']} | torch {info['torch']} | triton {info['triton']} | {info['date']}",
        f"one iteration: forward, backward, clip to norm {MAX_NORM}, step, zero_grad; medians",
        "",
        "| model | loop | iteration ms | spread % | fwd+bwd ms | optimizer ms | optimizer spread % | vs torch fused "
        "| step() host µs | B/element |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        share = fused[row.model].optimizer_ms / row.optimizer_ms if row.model in fused else float("nan")
        optimizer_quoted = not row.optimizer_spread_pct > report.NOISY_SPREAD_PCT
        share_quoted = (
            optimizer_quoted
            and row.model in fused
            and not fused[row.model].optimizer_spread_pct > (report.NOISY_SPREAD_PCT)
        )
        lines.append(
            f"| {row.model} ({row.params / 1e6:.0f}M, {row.tensors} tensors, batch {row.batch}) | {row.loop} | "
            f"{row.iteration_ms:.2f} | {row.iteration_spread_pct:.0f} | {row.forward_backward_ms:.2f} | "
            f"{report.shown(f'{row.optimizer_ms:.2f}', optimizer_quoted)} | {row.optimizer_spread_pct:.0f} | "
            f"{report.shown(f'{share:.2f}x', share_quoted)} | {row.step_host_us:.0f} | {row.bytes_per_element:.3g} |"
        )
    lines.append("")
    lines.append("vs torch fused: torch fused's optimizer ms over this loop's (higher is better)")
    lines.append(
        f"(in parentheses): not a result: the spreads of the iteration and of forward + backward, summed, exceed "
        f"{report.NOISY_SPREAD_PCT:.0f}% of the optimizer's ms"
    )
    return "\n".join(lines)


def save(rows: list[TrainingRow], info: dict, out: Path) -> tuple[Path, Path]:
    return report.save_table(rows, info, out, "_training", _plot)


def _plot(rows: list[TrainingRow], info: dict, path: Path) -> None:
    """Per model, one stacked bar per loop: forward + backward, and the optimizer's share on top."""

    def draw(axis, model_name, model_rows):
        labels = [row.loop for row in model_rows]
        axis.bar(labels, [row.forward_backward_ms for row in model_rows], label="forward + backward", color="0.75")
        axis.bar(
            labels,
            [row.optimizer_ms for row in model_rows],
            bottom=[row.forward_backward_ms for row in model_rows],
            label="optimizer (clip, step, zero_grad, grad traffic)",
        )
        axis.set_title(f"{model_name}, batch {model_rows[0].batch}", fontsize=10)
        axis.set_ylabel("ms per iteration (median)")
        axis.tick_params(axis="x", labelrotation=20)
        axis.legend(fontsize=8)

    title = f"Training iteration, {info['device']}, torch {info['torch']}, triton {info['triton']}"
    report.plot_per_model(rows, path, title, (5, 4.5), draw)
