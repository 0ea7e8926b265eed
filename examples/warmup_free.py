"""Does non-zero v0 remove the need for warmup? A small byte-level transformer language model trained on the
Python standard library's own source files (offline, no downloads), four ways, several seeds each:

  torch.optim.AdamW with linear warmup | torch.optim.AdamW without warmup | V0AdamW v0="random" | V0AdamW v0="data"

Writes loss curves (PNG), a markdown table (final loss mean ± std, tokens/s) and the distribution of the first
step's update magnitudes for v0 = 0, random and data (PNG) into --out.

    python examples/warmup_free.py                 # CPU-sized, a few minutes
    python examples/warmup_free.py --device cuda   # a larger model and more steps
"""

import argparse
import statistics
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import v0adam

SIZES = {
    "cpu": dict(dim=128, layers=2, heads=4, context=64, batch=32, steps=300),
    "cuda": dict(dim=384, layers=6, heads=6, context=256, batch=64, steps=1500),
}
LR, WEIGHT_DECAY, WARMUP_FRACTION = 5e-3, 0.1, 0.1
RUNS = ("AdamW + warmup", "AdamW, no warmup", "V0AdamW random, no warmup", "V0AdamW data, no warmup")


def stdlib_corpus(max_bytes: int = 4_000_000) -> torch.Tensor:
    """Bytes of the standard library's .py files, in a fixed order."""
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()


class Block(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x, mask):
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, dim, layers, heads, context):
        super().__init__()
        self.embed = torch.nn.Embedding(256, dim)
        self.position = torch.nn.Parameter(torch.randn(context, dim) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 256)

    def forward(self, tokens):
        length = tokens.shape[1]
        mask = torch.triu(torch.full((length, length), float("-inf"), device=tokens.device), diagonal=1)
        x = self.embed(tokens) + self.position[:length]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def batches(corpus, size, context, seed, device):
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(len(corpus) - context - 1, (size,), generator=generator)
        window = torch.stack([corpus[s : s + context + 1] for s in starts]).to(device)
        yield window[:, :-1], window[:, 1:]


def lm_loss(model):
    def loss(batch):
        inputs, targets = batch
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())

    return loss


def make_optimizer(run, model, data, steps):
    params = model.parameters()
    if run.startswith("AdamW"):
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    else:
        mode = "random" if "random" in run else "data"
        opt = v0adam.V0AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, v0=mode, v0_seed=0)
        if mode == "data":
            opt.init_v0_from_data(data, lm_loss(model), num_samples=5000, model=model)
    warmup = int(WARMUP_FRACTION * steps) if "+ warmup" in run else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return opt, schedule


def train(run, seed, corpus, size, device):
    torch.manual_seed(seed)
    model = TinyLM(size["dim"], size["layers"], size["heads"], size["context"]).to(device)
    data = batches(corpus, size["batch"], size["context"], seed, device)
    opt, schedule = make_optimizer(run, model, data, size["steps"])
    loss_fn, losses = lm_loss(model), []
    start = time.perf_counter()
    for _ in range(size["steps"]):
        opt.zero_grad()
        loss = loss_fn(next(data))
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    tokens_per_second = size["steps"] * size["batch"] * size["context"] / (time.perf_counter() - start)
    return losses, tokens_per_second


def first_step_magnitudes(corpus, size, device, seed=0):
    """|Δθ| / lr of every element after one step from the same model and batch, for each v0."""
    result = {}
    for label, mode in (("v0 = 0 (Adam)", "zero"), ("v0 random", "random"), ("v0 data", "data")):
        torch.manual_seed(seed)
        model = TinyLM(size["dim"], size["layers"], size["heads"], size["context"]).to(device)
        data = batches(corpus, size["batch"], size["context"], seed, device)
        opt = v0adam.V0AdamW(model.parameters(), lr=LR, weight_decay=0.0, v0=mode, v0_seed=0)
        if mode == "data":
            opt.init_v0_from_data(data, lm_loss(model), num_samples=5000, model=model)
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        lm_loss(model)(next(data)).backward()
        opt.step()
        result[label] = torch.cat([(p.detach() - b).abs().flatten() / LR for p, b in zip(model.parameters(), before)])
    return result


def write_results(curves, speeds, magnitudes, out: Path, device: str, size: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for run, runs in curves.items():
        stacked = torch.tensor(runs)
        mean, std = stacked.mean(0), stacked.std(0) if len(stacked) > 1 else torch.zeros(stacked.shape[1])
        steps = torch.arange(1, len(mean) + 1)
        axes.plot(steps, mean, label=run)
        axes.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (nats/byte)")
    axes.set_ylim(top=float(torch.tensor(curves[RUNS[0]])[:, 0].mean()) + 0.5)
    axes.set_title(f"byte-level LM on the Python stdlib, lr {LR}, {len(runs)} seeds, {device}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"loss_curves_{device}.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 4.5))
    bins = torch.logspace(-6, 1, 120)
    for label, values in magnitudes.items():
        axes.hist(values.clamp(1e-6, 10).numpy(), bins=bins.numpy(), histtype="step", label=label, linewidth=1.5)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("|first update| / lr, per element")
    axes.set_ylabel("elements")
    axes.set_title("first Adam step: sign descent at v0 = 0, graded steps with v0 > 0")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / f"first_step_{device}.png", dpi=120)
    plt.close(figure)

    lines = [
        f"Byte-level transformer LM ({size['layers']} layers, dim {size['dim']}, context {size['context']}, "
        f"batch {size['batch']}, {size['steps']} steps), AdamW lr {LR}, weight decay {WEIGHT_DECAY}, "
        f"device {device}, {len(next(iter(curves.values())))} seeds. Final loss: mean of the last 20 steps.",
        "",
        f"| run | final loss (mean ± std) | loss at step {size['steps'] // 10} (mean) | tokens/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for run, runs in curves.items():
        finals = [statistics.mean(losses[-20:]) for losses in runs]
        early = [losses[size["steps"] // 10 - 1] for losses in runs]
        spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
        lines.append(
            f"| {run} | {statistics.mean(finals):.3f} ± {spread:.3f} | "
            f"{statistics.mean(early):.3f} | {statistics.mean(speeds[run]):,.0f} |"
        )
    lines += [
        "",
        "First step, |Δθ| / lr over all elements:",
        "",
        "| v0 | median | 99th percentile | max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, values in magnitudes.items():
        quantiles = torch.quantile(values[torch.randperm(len(values))[:1_000_000]], torch.tensor([0.5, 0.99]))
        lines.append(f"| {label} | {quantiles[0]:.3g} | {quantiles[1]:.3g} | {values.max():.3g} |")
    (out / f"results_{device}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="override the device's default")
    parser.add_argument("--out", type=Path, default=Path("examples/results"))
    args = parser.parse_args()
    size = dict(SIZES[args.device])
    if args.steps:
        size["steps"] = args.steps
    corpus = stdlib_corpus()
    curves = {run: [] for run in RUNS}
    speeds = {run: [] for run in RUNS}
    for seed in range(args.seeds):
        for run in RUNS:
            losses, tokens_per_second = train(run, seed, corpus, size, args.device)
            curves[run].append(losses)
            speeds[run].append(tokens_per_second)
            print(
                f"seed {seed} | {run:<26} | final {statistics.mean(losses[-20:]):.3f} | {tokens_per_second:,.0f} tok/s",
                flush=True,
            )
    magnitudes = first_step_magnitudes(corpus, size, args.device)
    write_results(curves, speeds, magnitudes, args.out, args.device, size)


if __name__ == "__main__":
    main()
