"""step() never synchronises with the host on the Triton backend: no Tensor.item, bool(tensor) or .cpu() from
v0adam's code during a step, whatever it does (flat path, replaced grads, GradScaler, guard, clipping, a tensor
lr and a schedule). The interpreter itself reads tensors on the host, so only calls from v0adam are refused."""

import sys

import pytest
import torch
from conftest import DEVICE
from helpers import MIXED_SHAPES, gradients, make_params, set_grads

import v0adam


@pytest.fixture
def refuse_host_reads(monkeypatch):
    def refusing(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("v0adam"):
                raise AssertionError(f"{caller} called Tensor.{name} during step()")
            return original(self, *args, **kwargs)

        return method

    def refuse():
        for name in ("item", "__bool__", "cpu", "tolist", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, refusing(name))

    return refuse


@pytest.mark.parametrize("grad_mode", ["autograd", "assign"])
def test_step_reads_nothing_back(refuse_host_reads, grad_mode):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    opt = v0adam.V0AdamW(params, lr=torch.tensor(1e-2), amsgrad=True, skip_nonfinite=True, backend="triton")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
    scaler = torch.amp.GradScaler(DEVICE)
    refuse_host_reads()
    for step in range(3):
        opt.zero_grad()
        if grad_mode == "autograd":
            loss = sum((p * g).sum() for p, g in zip(params, gradients(params, step)))
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            set_grads(params, gradients(params, step), "assign")
        opt.clip_grad_norm_(1.0)
        if grad_mode == "autograd":
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        schedule.step()
