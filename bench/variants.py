"""The optimizers under test, each built over a fresh copy of the case's params with grads in place."""

import torch

import v0adam

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
    opt = v0adam.V0AdamW(params, lr=LR, amsgrad=case.amsgrad, v0="zero")
    for param, grad in zip(params, grads):
        param.grad.copy_(grad)  # the grads autograd would have accumulated into the flat buffer
    return opt.step, torch.float32


def _torch_adamw(**implementation):
    def build(case, device):
        params, grads = _params_and_grads(case, device)
        for param, grad in zip(params, grads):
            param.grad = grad
        opt = torch.optim.AdamW(params, lr=LR, amsgrad=case.amsgrad, **implementation)
        return opt.step, case.dtype

    return build


def build_compiled(case, device):
    params, grads = _params_and_grads(case, device)
    for param, grad in zip(params, grads):
        param.grad = grad
    opt = torch.optim.AdamW(params, lr=LR, amsgrad=case.amsgrad)
    return torch.compile(opt.step), case.dtype


def variants(device: torch.device, with_compile: bool):
    """name -> builder(case, device) -> (step callable, state dtype)."""
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
