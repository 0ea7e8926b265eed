"""torch.amp.GradScaler hands grad_scale and found_inf to the step: grads are unscaled inside the step, and a
step with an inf gradient changes nothing at all (params, states, step counters)."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, assert_states_close, clone_params, gradients, make_params

import v0adam


def scaled_step(scaler, params, opt, grads):
    opt.zero_grad()
    loss = sum((p * g).sum() for p, g in zip(params, grads))
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_matches_torch(backend):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, lr=1e-2, v0="zero", backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler(DEVICE, init_scale=2.0**10, growth_interval=3) for _ in range(2)]
    for step in range(10):
        grads = gradients(params, step)
        if step in (4, 7):
            grads[2][17] = float("inf")
        scaled_step(scalers[0], params, opt, grads)
        scaled_step(scalers[1], ref_params, ref, grads)
        assert_states_close(opt, params, ref, ref_params, rtol=1e-5, atol=1e-6)
    assert scalers[0].get_scale() == scalers[1].get_scale()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_found_inf_changes_nothing(backend, bad):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    opt = v0adam.V0AdamW(params, lr=1e-2, amsgrad=True, v0="zero", backend=backend)
    scaler = torch.amp.GradScaler(DEVICE)
    scaled_step(scaler, params, opt, gradients(params, 0))
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]
    grads = gradients(params, 1)
    grads[0][0] = bad
    scaled_step(scaler, params, opt, grads)
    for p, (value, state) in zip(params, before):
        assert torch.equal(p.detach(), value)
        for key, saved in state.items():
            assert torch.equal(opt.state[p][key], saved), key


def test_found_inf_set_by_hand_skips_the_step():
    params = make_params([(5,)], device=DEVICE)
    opt = v0adam.V0Adam(params, v0="zero")
    params[0].grad = torch.ones_like(params[0])
    opt.found_inf = torch.ones((), device=DEVICE)
    before = params[0].detach().clone()
    opt.step()
    assert torch.equal(params[0].detach(), before) and float(opt.state[params[0]]["step"]) == 0.0
    del opt.found_inf
    opt.step()
    assert not torch.equal(params[0].detach(), before) and float(opt.state[params[0]]["step"]) == 1.0
