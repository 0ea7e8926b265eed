"""copy.deepcopy and pickle: the copy keeps v0adam's settings and steps on exactly as torch.optim.AdamW's copy
does, over the copied params or, copied together with its model, the model's copies."""

import copy
import pickle

import pytest
import torch
import torch.distributed as dist
from conftest import BACKENDS, DEVICE
from helpers import assert_states_close, clone_params, make_params, step_both

import v0adam

SHAPES = [(3, 4), (5,), (70,)]
TOL = dict(rtol=1e-5, atol=1e-6)
COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda opt: pickle.loads(pickle.dumps(opt))}


def params_of(opt):
    return [param for group in opt.param_groups for param in group["params"]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("copy_of", COPIES.values(), ids=COPIES.keys())
def test_a_copy_steps_on_as_a_copy_of_torchs_does(backend, copy_of):
    params = make_params(SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, lr=1e-2, weight_decay=0.1, amsgrad=True, v0="zero", backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    step_both(opt, params, ref, ref_params, steps=3)
    ours, theirs = copy_of(opt), copy_of(ref)
    settings = [{key: value for key, value in group.items() if key != "params"} for group in opt.param_groups]
    assert [{key: value for key, value in group.items() if key != "params"} for group in ours.param_groups] == settings
    step_both(ours, params_of(ours), theirs, params_of(theirs), steps=3, start=3, tolerance=TOL)
    assert_states_close(opt, params, ref, ref_params, **TOL)  # the originals were left as they were
    for param, copied in zip(params, params_of(ours)):
        assert float(opt.state[param]["step"]) == 3.0 and float(ours.state[copied]["step"]) == 6.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_copy_keeps_the_settings_and_the_count_of_skipped_steps(backend):
    params = make_params(SHAPES, device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend, skip_nonfinite=True, flat_grads=True, fused=True)
    for param in params:
        param.grad.fill_(float("nan"))
    opt.step()
    copied = copy.deepcopy(opt)
    for name in ("backend", "precision", "skip_nonfinite", "flat_grads", "_step_supports_amp_scaling"):
        assert getattr(copied, name) == getattr(opt, name), name
    assert int(copied.skipped_steps) == 1 and copied.skipped_steps is not opt.skipped_steps
    copied.zero_grad()  # flat grads: each grad is the copy's own view again, zeroed
    copied_params = params_of(copied)
    assert all(torch.equal(param.grad, torch.zeros_like(param)) for param in copied_params)
    assert copied_params[0].grad.data_ptr() == copied._buckets[0].flat_grad.data_ptr()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_copied_with_its_optimizer_is_trained_by_the_copied_optimizer(backend):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(DEVICE)
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, v0="random", backend=backend)
    inputs = torch.randn(16, 4, device=DEVICE)
    model(inputs).square().mean().backward()
    opt.step()
    model_copy, opt_copy = copy.deepcopy((model, opt))
    assert all(map(torch.equal, model.parameters(), model_copy.parameters()))
    assert all(map(torch.equal, params_of(opt), params_of(opt_copy)))  # random v0 included, via the states
    assert all(a is b for a, b in zip(model_copy.parameters(), params_of(opt_copy)))
    before = [param.detach().clone() for param in model.parameters()]
    for trained_model, trained_opt in ((model, opt), (model_copy, opt_copy)):
        trained_opt.zero_grad()
        trained_model(inputs).square().mean().backward()
        trained_opt.step()
    for original, copied, old in zip(model.parameters(), model_copy.parameters(), before):
        assert not torch.equal(original, old)
        torch.testing.assert_close(copied, original, rtol=0, atol=0)


def test_an_optimizer_declared_a_partition_refuses_to_be_copied(tmp_path):
    """Its process group cannot be copied, and a copy without it would clip by its own share's norm."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        opt = v0adam.V0AdamW(make_params(SHAPES), backend="torch")
        copied = copy.deepcopy(opt)  # before: fine
        opt.set_partition_group()
        with pytest.raises(TypeError, match="copy it before, then call set_partition_group on the copy"):
            copy.deepcopy(opt)
        copied.set_partition_group()
    finally:
        dist.destroy_process_group()
