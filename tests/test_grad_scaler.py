"""torch.amp.GradScaler with V0AdamW as with torch.optim.AdamW: by default the scaler unscales the grads and skips
a step with an inf gradient itself; with fused=True it hands grad_scale and found_inf to the step, which unscales
inside the kernel. Either way a step with an inf gradient changes nothing at all (params, states, step counters)."""

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


AMP_FLAG = "_step_supports_amp_scaling"
FUSED = pytest.mark.parametrize("fused", [False, True], ids=["scaler-unscales", "fused"])


@FUSED
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_matches_torch(backend, fused):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, lr=1e-2, v0="zero", backend=backend, fused=fused)
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


@FUSED
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_found_inf_changes_nothing(backend, bad, fused):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    opt = v0adam.V0AdamW(params, lr=1e-2, amsgrad=True, v0="zero", backend=backend, fused=fused)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_default_the_scaler_leaves_unscaled_grads_for_clipping_as_with_torch(backend):
    """What Lightning's 16-mixed precision relies on to clip: `_step_supports_amp_scaling` as on torch's default
    AdamW, and grads unscaled by `scaler.step` (with fused=True they stay scaled, as torch's fused AdamW leaves
    them on a GPU)."""
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend)
    ref = torch.optim.AdamW(ref_params)
    for fused in (False, True):  # read as GradScaler and Lightning read it
        ours = v0adam.V0AdamW(clone_params(params), fused=fused)
        theirs = torch.optim.AdamW(clone_params(params), fused=fused)
        assert getattr(ours, AMP_FLAG, False) == getattr(theirs, AMP_FLAG, False) == fused
    for trained, trained_opt in ((params, opt), (ref_params, ref)):
        scaled_step(torch.amp.GradScaler(DEVICE, init_scale=2.0**10), trained, trained_opt, gradients(params, 0))
    for param, ref_param, grad in zip(params, ref_params, gradients(params, 0)):
        torch.testing.assert_close(param.grad, ref_param.grad, rtol=0, atol=0)
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=0)
