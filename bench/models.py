"""The models of the training-iteration benchmark, built here from their configurations (no downloads, no weights):
a GPT-2-style transformer (learned positions, LayerNorm, GELU MLP, tied embeddings) and a Llama-style one (RMSNorm,
rotary positions, grouped-query attention, SwiGLU MLP)."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Config:
    name: str
    style: str  # "gpt2" or "llama"
    vocab: int
    context: int
    dim: int
    layers: int
    heads: int
    kv_heads: int = 0  # llama: grouped-query attention
    hidden: int = 0  # llama: the SwiGLU width


GPT2_SMALL = Config("GPT-2 small", "gpt2", vocab=50257, context=1024, dim=768, layers=12, heads=12)
# The 148 tensors of GPT-2 small at a width the CPU trains in milliseconds: the per-tensor costs stay visible.
GPT2_SMALL_NARROW = Config("GPT-2 small, dim 64", "gpt2", vocab=512, context=64, dim=64, layers=12, heads=4)
LLAMA_SIZES = (
    Config("Llama 8B", "llama", vocab=128256, context=8192, dim=4096, layers=32, heads=32, kv_heads=8, hidden=14336),
    Config("Llama 3B", "llama", vocab=128256, context=8192, dim=3072, layers=28, heads=24, kv_heads=8, hidden=8192),
    Config("Llama 1B", "llama", vocab=128256, context=8192, dim=2048, layers=16, heads=32, kv_heads=8, hidden=8192),
)
LLAMA_NARROW = Config(
    "Llama, dim 64", "llama", vocab=512, context=64, dim=64, layers=4, heads=4, kv_heads=2, hidden=128
)


def param_count(config: Config) -> int:
    """Params of the model `build(config)` makes, without building it."""
    dim, layers = config.dim, config.layers
    if config.style == "gpt2":
        per_layer = 4 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * 4 * dim + 4 * dim) * 2 - 3 * dim
        return config.vocab * dim + config.context * dim + layers * per_layer + 2 * dim
    head_dim = dim // config.heads
    attention = 2 * dim * dim + 2 * dim * config.kv_heads * head_dim
    per_layer = 2 * dim + attention + 3 * dim * config.hidden
    return config.vocab * dim + layers * per_layer + dim


def build(config: Config) -> nn.Module:
    return GPT2(config) if config.style == "gpt2" else Llama(config)


class GPT2Block(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.heads = config.heads
        self.ln_1, self.ln_2 = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.attn_qkv = nn.Linear(config.dim, 3 * config.dim)
        self.attn_proj = nn.Linear(config.dim, config.dim)
        self.mlp_fc = nn.Linear(config.dim, 4 * config.dim)
        self.mlp_proj = nn.Linear(4 * config.dim, config.dim)

    def forward(self, x):
        batch, length, dim = x.shape
        q, k, v = self.attn_qkv(self.ln_1(x)).split(dim, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp_proj(F.gelu(self.mlp_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """GPT-2 (Radford et al. 2019): 148 param tensors at 12 layers, 124M params at GPT-2 small's sizes."""

    def __init__(self, config: Config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab, config.dim)
        self.wpe = nn.Embedding(config.context, config.dim)
        self.blocks = nn.ModuleList(GPT2Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.dim)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied head


def _rotate(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class LlamaBlock(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.heads, self.kv_heads = config.heads, config.kv_heads
        head_dim = config.dim // config.heads
        self.attention_norm, self.mlp_norm = nn.RMSNorm(config.dim), nn.RMSNorm(config.dim)
        self.q = nn.Linear(config.dim, config.dim, bias=False)
        self.kv = nn.Linear(config.dim, 2 * config.kv_heads * head_dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)
        self.gate_up = nn.Linear(config.dim, 2 * config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.dim, bias=False)

    def forward(self, x, cos, sin):
        batch, length, dim = x.shape
        normed = self.attention_norm(x)
        q = self.q(normed).view(batch, length, self.heads, -1).transpose(1, 2)
        k, v = (t.view(batch, length, self.kv_heads, -1).transpose(1, 2) for t in self.kv(normed).chunk(2, dim=-1))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Llama(nn.Module):
    """A Llama-3-style decoder (Dubey et al. 2024): RMSNorm, rotary positions, grouped-query attention, SwiGLU,
    tied embeddings."""

    def __init__(self, config: Config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab, config.dim)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.dim)
        head_dim = config.dim // config.heads
        frequencies = 1.0 / 500000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(config.context).float(), frequencies).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens):
        length = tokens.shape[1]
        cos, sin = self.cos[:length], self.sin[:length]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x) @ self.embed.weight.t()
