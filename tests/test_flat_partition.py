"""A DeepSpeed-style flat fp32 partition: the optimizer steps one flat master tensor whose grad is assigned each
step (the model's grads flattened) and whose values are copied back into the model; training follows
torch.optim.AdamW on the model itself, params and states."""

import pytest
import torch
from conftest import BACKENDS, DEVICE

import v0adam


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).to(DEVICE)


def train(model, step_fn, steps=5):
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=generator).to(DEVICE), torch.randn(8, 2, generator=generator).to(DEVICE)
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        step_fn()


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_partition_follows_torch_adamw(backend):
    model, reference_model = build_model(), build_model()
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    opt = v0adam.V0AdamW([flat], lr=1e-2, v0="zero", backend=backend)
    sizes = [p.numel() for p in model.parameters()]

    def flat_step():
        flat.grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        opt.step()
        for param, chunk in zip(model.parameters(), flat.detach().split(sizes)):
            param.data.copy_(chunk.view_as(param))

    reference = torch.optim.AdamW(reference_model.parameters(), lr=1e-2)
    train(model, flat_step)
    train(reference_model, reference.step)
    for param, expected in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(param, expected, rtol=1e-5, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        expected = torch.cat([reference.state[p][key].reshape(-1) for p in reference_model.parameters()])
        torch.testing.assert_close(opt.state[flat][key], expected, rtol=1e-5, atol=1e-6)
    assert opt.state[flat]["step"].item() == reference.state[next(reference_model.parameters())]["step"].item()
