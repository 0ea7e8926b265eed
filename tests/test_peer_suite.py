"""torch's own Adam/AdamW test inputs (torch.testing._internal.common_optimizers), run against V0Adam/V0AdamW:
every configuration must follow torch's trajectory, every error input must raise torch's error."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, clone_params, make_params, step_both

import v0adam

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

# torch's implementation selectors: v0adam has one implementation per backend and takes none of them.
TORCH_ONLY = {"foreach", "fused", "capturable", "differentiable"}
CLASSES = {"adam": (v0adam.V0Adam, torch.optim.Adam), "adamw": (v0adam.V0AdamW, torch.optim.AdamW)}


def optimizer_inputs(name):
    return getattr(common_optimizers, f"optim_inputs_func_{name}")(DEVICE, torch.float32)


def error_inputs(name):
    # torch lists its construction errors under "cpu"; under "cuda" it lists only fused/foreach ones.
    return [
        error
        for error in getattr(common_optimizers, f"optim_error_inputs_func_{name}")("cpu", torch.float32)
        if not TORCH_ONLY & set(error.optimizer_error_input.kwargs)
    ]


def ours_kwargs(kwargs):
    return {key: value for key, value in kwargs.items() if key not in TORCH_ONLY}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_torch_inputs_follow_torch(name, backend):
    ours_cls, torch_cls = CLASSES[name]
    for optimizer_input in optimizer_inputs(name):
        params = make_params(MIXED_SHAPES, device=DEVICE)
        ref_params = clone_params(params)
        opt = ours_cls(params, v0="zero", backend=backend, **ours_kwargs(optimizer_input.kwargs))
        ref = torch_cls(ref_params, **optimizer_input.kwargs)
        step_both(opt, params, ref, ref_params, steps=10)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_torch_error_inputs_raise_torchs_errors(name):
    ours_cls, _ = CLASSES[name]
    errors = error_inputs(name)
    assert errors, "torch's error inputs were all filtered out"
    for error in errors:
        optimizer_input = error.optimizer_error_input
        params = optimizer_input.params
        if params is None:
            params = [torch.nn.Parameter(torch.randn(2, 2, device=DEVICE))]
        expect = pytest.warns if issubclass(error.error_type, Warning) else pytest.raises
        with expect(error.error_type, match=error.error_regex):
            ours_cls(params, v0="zero", **optimizer_input.kwargs)
