"""The optimizers under test, each built over a fresh copy of the case's params with grads in place."""

import torch

import v0adam
from bench.cases import bytes_per_element

LR = 1e-4


def _params_and_grads(case, device):
    generator = torch.Generator(device=device).manual_seed(0)
    params, grads = [], []
    for shape in case.shapes:
        params.append(torch.nn.Parameter(torch.randn(shape, generator=generator, device=device, dtype=case.dtype)))
        grads.append(torch.randn(shape, generator=generator, device=device, dtype=case.dtype))
    return params, grads


def build_v0adam(case, device):
    params, grads = _params_and_grads(case, device)
    precision = dict(case.precision)
    opt = v0adam.V0AdamW(params, lr=LR, amsgrad=case.amsgrad, v0="zero", **precision)
    for param, grad in zip(params, grads):
        param.grad.copy_(grad)  # the grads autograd would have accumulated into the flat buffer
    master = precision.get("master_weights", False) and case.dtype != torch.float32
    return opt.step, bytes_per_element(case.dtype, precision.get("state_dtype", torch.float32), case.amsgrad, master)


def _torch_adamw(**implementation):
    def build(case, device):
        params, grads = _params_and_grads(case, device)
        for param, grad in zip(params, grads):
            param.grad = grad
        opt = torch.optim.AdamW(params, lr=LR, amsgrad=case.amsgrad, **implementation)
        return opt.step, bytes_per_element(case.dtype, case.dtype, case.amsgrad)

    return build


def build_compiled(case, device):
    params, grads = _params_and_grads(case, device)
    for param, grad in zip(params, grads):
        param.grad = grad
    opt = torch.optim.AdamW(params, lr=LR, amsgrad=case.amsgrad)
    return torch.compile(opt.step), bytes_per_element(case.dtype, case.dtype, case.amsgrad)


def variants(device: torch.device, with_compile: bool):
    """name -> builder(case, device) -> (step callable, minimum bytes per element of that implementation)."""
    if device.type == "cuda":
        found = {
            "v0adam": build_v0adam,
            "torch for-loop": _torch_adamw(foreach=False),
            "torch foreach": _torch_adamw(foreach=True),
            "torch fused": _torch_adamw(fused=True),
        }
        if with_compile:
            found["torch compile"] = build_compiled
        return found
    return {
        "v0adam": build_v0adam,
        "torch foreach": _torch_adamw(foreach=True),
        "torch fused": _torch_adamw(fused=True),
    }
