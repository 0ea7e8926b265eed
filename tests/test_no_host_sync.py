"""step() never synchronises with the host on the Triton backend: no Tensor.item, bool(tensor) or .cpu() from
v0adam's code during a step, whatever it does (flat path, replaced grads, GradScaler, guard, clipping, a tensor
lr and a schedule). Nor, once a step has seen its layout, does it make a host tensor to upload: a CUDA graph
capture refuses uploads from pageable memory. The interpreter itself reads tensors on the host, so only calls from
v0adam are refused."""

import sys

import pytest
import torch
from conftest import DEVICE
from helpers import MIXED_SHAPES, gradients, make_params, set_grads

import v0adam

HOST_READS = ("item", "__bool__", "cpu", "tolist", "__float__", "__int__")
# Called without a device, these make a host tensor, which a step on a GPU would then have to upload.
HOST_TENSOR_FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange")


@pytest.fixture
def refuse_from_v0adam(monkeypatch):
    """refuse(owner, names, when): make owner.name raise when v0adam's code calls it with arguments that `when`
    accepts."""

    def refusing(owner, name, when):
        original = getattr(owner, name)

        def function(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("v0adam") and when(kwargs):
                raise AssertionError(f"{caller} called {name} during step()")
            return original(*args, **kwargs)

        return function

    def refuse(owner, names, when=lambda kwargs: True):
        for name in names:
            monkeypatch.setattr(owner, name, refusing(owner, name, when))

    return refuse


@pytest.mark.parametrize("grad_mode", ["autograd", "assign"])
def test_step_reads_nothing_back(refuse_from_v0adam, grad_mode):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    opt = v0adam.V0AdamW(params, lr=torch.tensor(1e-2), amsgrad=True, skip_nonfinite=True, backend="triton", fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
    scaler = torch.amp.GradScaler(DEVICE)
    refuse_from_v0adam(torch.Tensor, HOST_READS)
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


@pytest.mark.parametrize("flat_grads", [False, True], ids=["autograd-grads", "flat-grads"])
@pytest.mark.parametrize("without_grad", [(), (3,)], ids=["frozen", "frozen-and-grad-None"])
def test_steps_upload_nothing_while_their_layout_stays(refuse_from_v0adam, flat_grads, without_grad):
    """A frozen param, and a grad set to None before every step, make partial steps: the step counters' mask is
    uploaded when the pattern appears (the frozen one at construction), not at every step. Grads read by address
    come back to the same blocks each iteration, as CUDA's caching allocator hands them to autograd (here: the
    same tensors, refilled), and their launch tables are not uploaded again."""
    params = make_params(MIXED_SHAPES, device=DEVICE)
    params[1].requires_grad_(False)
    reference_params = [param.detach().clone().requires_grad_(param.requires_grad) for param in params]
    options = dict(lr=torch.tensor(1e-2), v0="zero", backend="triton", flat_grads=flat_grads)
    opt = v0adam.V0AdamW(params, **options)
    reference = torch.optim.AdamW(reference_params, lr=torch.tensor(1e-2))
    blocks = {param: torch.empty_like(param) for param in params}
    for step in range(4):
        if step == 1:
            refuse_from_v0adam(torch, HOST_TENSOR_FACTORIES, when=lambda kwargs: kwargs.get("device") is None)
        for model_params, optimizer in ((params, opt), (reference_params, reference)):
            optimizer.zero_grad()
            trainable = [param for param in model_params if param.requires_grad]
            if optimizer is reference or flat_grads:
                set_grads(trainable, gradients(trainable, step), "autograd")
            else:
                for param, grad in zip(trainable, gradients(trainable, step)):
                    param.grad = blocks[param].copy_(grad)
            for index in without_grad:
                model_params[index].grad = None
            optimizer.step()
    for param, reference_param in zip(params, reference_params):
        torch.testing.assert_close(param, reference_param, rtol=1e-5, atol=1e-6)
        for key, value in reference.state.get(reference_param, {}).items():
            torch.testing.assert_close(opt.state[param][key], value, rtol=1e-5, atol=1e-6)
