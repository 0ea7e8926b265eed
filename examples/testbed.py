"""The evidence testbed: a byte-level post-LayerNorm transformer language model on the Python standard library's own
source (offline, nothing downloaded).

Post-LN (LayerNorm after each residual sum, as in the original Transformer and the paper's translation runs) is
the classic case where Adam without learning-rate warmup fails (Xiong et al., "On Layer Normalization in the
Transformer Architecture", 2020): the gradients near the output are large at initialisation, and Adam's first steps,
sign descent of full size lr, throw the model off before its second moment knows their scale.
"""

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

VOCAB = 256  # bytes


@dataclass(frozen=True)
class Size:
    dim: int
    layers: int
    heads: int
    context: int
    batch: int


def stdlib_corpus(max_bytes: int = 4_000_000, skip_bytes: int = 0) -> torch.Tensor:
    """Bytes of the standard library's .py files in a fixed order, from `skip_bytes` on (a second corpus)."""
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= skip_bytes + max_bytes:
            break
    data = b"".join(chunks)[skip_bytes : skip_bytes + max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def text_corpus(max_bytes: int = 1_000_000) -> torch.Tensor:
    """Other data, for fine-tuning: the text, reStructuredText and HTML files shipped with the standard library
    (licences, test data: English prose, not Python)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [path for pattern in ("**/*.txt", "**/*.rst", "**/*.html") for path in sorted(stdlib.glob(pattern))]
    data = b"".join(path.read_bytes() for path in paths)[:max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def unigram_entropy(corpus: torch.Tensor) -> float:
    """The loss of a model that knows only how often each byte occurs: a run that ends at or above it stalled."""
    frequencies = torch.bincount(corpus, minlength=VOCAB).double() / len(corpus)
    frequencies = frequencies[frequencies > 0]
    return float(-(frequencies * frequencies.log()).sum())


class PostNormBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.ReLU(), torch.nn.Linear(4 * dim, dim))
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)

    def forward(self, x, mask):
        x = self.norm1(x + self.attention(x, x, x, attn_mask=mask, need_weights=False)[0])
        return self.norm2(x + self.mlp(x))


class PostNormLM(torch.nn.Module):
    def __init__(self, size: Size):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, size.dim)
        self.position = torch.nn.Parameter(torch.randn(size.context, size.dim) * 0.02)
        self.blocks = torch.nn.ModuleList(PostNormBlock(size.dim, size.heads) for _ in range(size.layers))
        self.head = torch.nn.Linear(size.dim, VOCAB)

    def forward(self, tokens):
        length = tokens.shape[1]
        mask = torch.triu(torch.full((length, length), float("-inf"), device=tokens.device), diagonal=1)
        x = self.embed(tokens) + self.position[:length]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


def batches(corpus: torch.Tensor, size: Size, seed: int, device):
    """Random windows of the corpus, the same for every method at a given seed."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(len(corpus) - size.context - 1, (size.batch,), generator=generator)
        window = torch.stack([corpus[s : s + size.context + 1] for s in starts]).to(device)
        yield window[:, :-1], window[:, 1:]


def lm_loss(model):
    def loss(batch):
        inputs, targets = batch
        return F.cross_entropy(model(inputs).flatten(0, 1).float(), targets.flatten())  # a 16-bit model's too

    return loss
