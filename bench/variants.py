"""The optimizers under test, each built over a fresh copy of the case's params with grads in place."""

import inspect

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


OURS = {
    "adamw": v0adam.V0AdamW,
    "radam": v0adam.V0RAdam,
    "adabelief": v0adam.V0AdaBelief,
    "adabound": v0adam.V0AdaBound,
}
# torch's counterpart of each; AdaBelief and AdaBound have none, so they are timed against AdamW, the same traffic.
THEIRS = {
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,
    "adabelief": torch.optim.AdamW,
    "adabound": torch.optim.AdamW,
}


def build_v0adam(case, device, flat_grads=False):
    params, grads = _params_and_grads(case, device)
    precision = dict(case.precision)
    if case.amsgrad:
        precision["amsgrad"] = True
    opt = OURS[case.optimizer](params, lr=LR, v0="zero", flat_grads=flat_grads, **precision)
    for param, grad in zip(params, grads):
        if flat_grads:
            param.grad.copy_(grad)  # the grads autograd would have accumulated into the flat buffer
        else:
            param.grad = grad  # autograd's own tensors, read by address
    master = precision.get("master_weights", False) and case.dtype != torch.float32
    return opt.step, bytes_per_element(case.dtype, precision.get("state_dtype", torch.float32), case.amsgrad, master)


def build_v0adam_flat_grads(case, device):
    return build_v0adam(case, device, flat_grads=True)


def _torch_optimizer(**implementation):
    """A builder for torch's counterpart with this implementation; it returns None where torch has none (no
    fused RAdam)."""

    def build(case, device):
        cls = THEIRS[case.optimizer]
        if not set(implementation) <= set(inspect.signature(cls).parameters):
            return None
        params, grads = _params_and_grads(case, device)
        for param, grad in zip(params, grads):
            param.grad = grad
        options = dict(amsgrad=True) if case.amsgrad else {}
        opt = cls(params, lr=LR, **options, **implementation)
        return opt.step, bytes_per_element(case.dtype, case.dtype, case.amsgrad)

    return build


def build_compiled(case, device):
    params, grads = _params_and_grads(case, device)
    for param, grad in zip(params, grads):
        param.grad = grad
    options = dict(amsgrad=True) if case.amsgrad else {}
    opt = THEIRS[case.optimizer](params, lr=LR, **options)
    return torch.compile(opt.step), bytes_per_element(case.dtype, case.dtype, case.amsgrad)


def build_v0adam_compiled(case, device):
    step, per_element = build_v0adam(case, device)
    return torch.compile(step), per_element


def variants(device: torch.device, with_compile: bool):
    """name -> builder(case, device) -> (step callable, minimum bytes per element of that implementation), or
    None where that implementation does not exist for the case's optimizer."""
    if device.type == "cuda":
        found = {
            "v0adam": build_v0adam,
            "v0adam flat_grads": build_v0adam_flat_grads,
            "torch for-loop": _torch_optimizer(foreach=False),
            "torch foreach": _torch_optimizer(foreach=True),
            "torch fused": _torch_optimizer(fused=True),
        }
        if with_compile:
            found["torch compile"] = build_compiled
            found["v0adam compile"] = build_v0adam_compiled
        return found
    return {
        "v0adam": build_v0adam,
        "v0adam flat_grads": build_v0adam_flat_grads,
        "torch foreach": _torch_optimizer(foreach=True),
        "torch fused": _torch_optimizer(fused=True),
    }
