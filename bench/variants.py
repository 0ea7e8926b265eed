"""The optimizers under test, each built over a fresh copy of the case's params with grads in place."""

import functools
import importlib.util
import inspect
from typing import NamedTuple

import torch

import v0adam
from bench.cases import bytes_per_element
from bench.memory import state_bytes_per_param

LR = 1e-4


class Built(NamedTuple):
    step: object  # () -> None, one optimizer step
    bytes_per_element: float  # the minimum traffic of that implementation's step
    state_bytes: object  # () -> bytes its state holds per param, measured (after a step)


def _built(step, per_element, opt, params) -> Built:
    return Built(step, per_element, functools.partial(state_bytes_per_param, opt, params))


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
    master_weights = precision.get("master_weights", False)
    state_dtype = precision.get("state_dtype", torch.float32)
    per_element = bytes_per_element(case.dtype, state_dtype, case.amsgrad, master_weights)
    return _built(opt.step, per_element, opt, params)


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
        return _built(opt.step, bytes_per_element(case.dtype, case.dtype, case.amsgrad), opt, params)

    return build


def _library_8bit(module: str, name: str):
    """A builder for a library's 8-bit AdamW (`module.name`: torchao's, bitsandbytes'), for the 8-bit cases of
    AdamW; None where the library is not installed. Both keep tensors under 4096 elements in float32 states."""

    def build(case, device):
        if dict(case.precision).get("state_dtype") != torch.uint8 or case.optimizer != "adamw" or case.amsgrad:
            return None
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return None
        params, grads = _params_and_grads(case, device)
        for param, grad in zip(params, grads):
            param.grad = grad
        opt = getattr(importlib.import_module(module), name)(params, lr=LR)
        return _built(opt.step, bytes_per_element(case.dtype, torch.uint8, amsgrad=False), opt, params)

    return build


def build_compiled(case, device):
    params, grads = _params_and_grads(case, device)
    for param, grad in zip(params, grads):
        param.grad = grad
    options = dict(amsgrad=True) if case.amsgrad else {}
    opt = THEIRS[case.optimizer](params, lr=LR, **options)
    return _built(torch.compile(opt.step), bytes_per_element(case.dtype, case.dtype, case.amsgrad), opt, params)


def build_v0adam_compiled(case, device):
    built = build_v0adam(case, device)
    return built._replace(step=torch.compile(built.step))


def variants(device: torch.device, with_compile: bool):
    """name -> builder(case, device) -> `Built`, or None where that implementation does not exist for the case
    (torch's fused RAdam, a library's 8-bit AdamW for a case without 8-bit states or where it is not installed)."""
    eight_bit = {
        "torchao AdamW8bit": _library_8bit("torchao.optim", "AdamW8bit"),
        "bnb AdamW8bit": _library_8bit("bitsandbytes.optim", "AdamW8bit"),
    }
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
        return {**found, **eight_bit}
    return {
        "v0adam": build_v0adam,
        "v0adam flat_grads": build_v0adam_flat_grads,
        "torch foreach": _torch_optimizer(foreach=True),
        "torch fused": _torch_optimizer(fused=True),
        **eight_bit,
    }
