"""Reliability: the non-finite guard, fused gradient clipping, int64 addressing past 2^31 elements, and bad input
handled before anything is written."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, assert_states_close, clone_params, gradients, make_params, set_grads
from v0adam.kernels import adam as adam_kernel
from v0adam.kernels import tables
from v0adam.kernels.step_scalars import advance_steps
from v0adam.kernels.v0_init import draw_random_v0_

import v0adam
from v0adam.reference import adam_step_reference
from v0adam.rules import adam as adam_rule

TOL = dict(rtol=1e-5, atol=1e-6)


def snapshot(opt, params):
    return [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]


def assert_unchanged(opt, params, before):
    for p, (value, state) in zip(params, before):
        assert torch.equal(p.detach(), value)
        for key, saved in state.items():
            assert torch.equal(opt.state[p][key], saved), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("grad_mode", ["autograd", "assign"])
def test_nonfinite_guard_skips_the_whole_step(backend, bad, grad_mode):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    opt = v0adam.V0AdamW(params, lr=1e-2, amsgrad=True, skip_nonfinite=True, backend=backend)
    opt.zero_grad()
    set_grads(params, gradients(params, 0), grad_mode)
    opt.step()
    before = snapshot(opt, params)
    grads = gradients(params, 1)
    grads[2][4000] = bad
    opt.zero_grad()
    set_grads(params, grads, grad_mode)
    opt.step()
    assert_unchanged(opt, params, before)
    assert int(opt.skipped_steps) == 1
    opt.zero_grad()
    set_grads(params, gradients(params, 2), grad_mode)
    opt.step()
    assert int(opt.skipped_steps) == 1 and float(opt.state[params[0]]["step"]) == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_the_guard_a_nan_gradient_poisons_only_its_elements(backend):
    """What the guard prevents: as in torch, the NaN reaches the param and both moments of that element."""
    params = make_params([(10,)], device=DEVICE)
    opt = v0adam.V0Adam(params, v0="zero", backend=backend)
    grad = torch.ones(10, device=DEVICE)
    grad[3] = float("nan")
    params[0].grad = grad
    opt.step()
    assert params[0].isnan().nonzero().flatten().tolist() == [3]
    assert opt.state[params[0]]["exp_avg_sq"].isnan().nonzero().flatten().tolist() == [3]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True], ids=["scaler-unscales", "fused"])
def test_guard_combines_with_grad_scaler(backend, fused):
    """With fused=True the scaler's found_inf reaches the step, which counts it; otherwise the scaler skips the
    step itself, as with torch's default AdamW, and the optimizer never sees it."""
    params = make_params([(33,), (4, 4)], device=DEVICE)
    opt = v0adam.V0AdamW(params, skip_nonfinite=True, backend=backend, fused=fused)
    scaler = torch.amp.GradScaler(DEVICE)
    for step, bad in enumerate([False, True, False]):
        opt.zero_grad()
        grads = gradients(params, step)
        if bad:
            grads[0][0] = float("inf")
        scaler.scale(sum((p * g).sum() for p, g in zip(params, grads))).backward()
        scaler.step(opt)
        scaler.update()
    assert int(opt.skipped_steps) == int(fused) and float(opt.state[params[0]]["step"]) == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0], ids=["l2", "l1", "inf", "l3"])
def test_clip_grad_norm_matches_torch(backend, norm_type):
    check_clipping_against_torch(make_params(MIXED_SHAPES, device=DEVICE), backend, norm_type, TOL)


@pytest.mark.parametrize("skip_nonfinite", [False, True], ids=["", "guard"])
def test_clipping_float64_params_matches_torch_in_float64(skip_nonfinite):
    """The PyTorch backend's float64 params: the norm is taken in float64, as torch's clip_grad_norm_ does."""
    params = make_params(MIXED_SHAPES, dtype=torch.float64, device=DEVICE)
    check_clipping_against_torch(params, "torch", 2.0, dict(rtol=1e-12, atol=1e-14), skip_nonfinite=skip_nonfinite)


def check_clipping_against_torch(params, backend, norm_type, tolerance, **options):
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, lr=1e-2, v0="zero", backend=backend, **options)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, foreach=False)
    for step in range(8):
        grads = [g * 10 for g in gradients(params, step)]
        opt.zero_grad()
        set_grads(params, grads, "autograd")
        set_grads(ref_params, grads, "assign")
        norm = opt.clip_grad_norm_(1.0, norm_type)
        expected = torch.nn.utils.clip_grad_norm_(ref_params, 1.0, norm_type)
        torch.testing.assert_close(norm, expected, rtol=tolerance["rtol"], atol=0)
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)  # clipping is applied inside the step, not written into the grads
        opt.step()
        ref.step()
        assert_states_close(opt, params, ref, ref_params, **tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_norm_skips_the_step_with_the_guard(backend):
    params = make_params([(6,), (3, 3)], device=DEVICE)
    opt = v0adam.V0Adam(params, skip_nonfinite=True, backend=backend)
    before = snapshot(opt, params)
    grads = gradients(params, 0)
    grads[1][1, 1] = float("nan")
    set_grads(params, grads, "assign")
    assert not torch.isfinite(opt.clip_grad_norm_(1.0))
    opt.step()
    assert_unchanged(opt, params, before)
    assert int(opt.skipped_steps) == 1


def test_addressing_past_two_to_the_31_elements():
    """A segment whose elements sit past index 2^32 of its tensor, reached through a crafted table that points
    back at eight real elements: offsets computed in 32 bits would wrap and miss them."""
    start, n, block = 2**32, 8, 4096
    param, grad = torch.randn(n, device=DEVICE), torch.randn(n, device=DEVICE)
    exp_avg, exp_avg_sq = torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE)
    expected = [t.clone().double() for t in (param, exp_avg, exp_avg_sq)]
    segments = torch.zeros(1, tables.SEGMENT_FIELDS.value, dtype=torch.int64)
    segments[0, tables.PARAM_ADDR.value] = param.data_ptr() - start * 4
    segments[0, tables.GRAD_ADDR.value] = grad.data_ptr() - start * 4
    segments[0, tables.STATE_OFFSET.value] = -start
    segments[0, tables.NUMEL.value] = start + n
    segments[0, tables.FIRST_BLOCK.value] = -(start // block)
    hyper = torch.zeros(1, tables.HYPER_FIELDS.value, dtype=torch.float64, device=DEVICE)
    hyper[0, :8] = torch.tensor([1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1.0])
    steps, group = torch.zeros(1, device=DEVICE), torch.zeros(1, dtype=torch.int32, device=DEVICE)
    scalars = torch.zeros(1, tables.SCALAR_FIELDS.value, device=DEVICE)
    advance_steps(steps, None, None, group, hyper, scalars, adam_rule.RULE)
    adam_kernel.adam_step(
        segments.to(DEVICE),
        torch.zeros(1, dtype=torch.int32, device=DEVICE),
        scalars,
        steps,
        exp_avg,
        exp_avg_sq,
        None,
        None,
        param_dtype=torch.float32,
        aligned=False,
        grad_alignment=1,
        whole_vectors=False,
        block=block,
        num_warps=4,
    )
    adam_step_reference(
        expected[0],
        grad.double(),
        expected[1],
        expected[2],
        None,
        1,
        lr=1e-2,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        decoupled_weight_decay=True,
        amsgrad=False,
        maximize=False,
    )
    for ours, reference in zip((param, exp_avg, exp_avg_sq), expected):
        torch.testing.assert_close(ours.double(), reference, **TOL)


def test_random_v0_counter_uses_the_high_word_of_the_element_index():
    low, high = torch.empty(4096, device=DEVICE), torch.empty(4096, device=DEVICE)
    draw_random_v0_(low, 1.0, seed=1, param_index=0, element_offset=0)
    draw_random_v0_(high, 1.0, seed=1, param_index=0, element_offset=2**32)
    assert not torch.equal(low, high)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_params_warn_and_are_stepped_once(backend):
    param = make_params([(5,)], device=DEVICE)[0]
    ref = clone_params([param])[0]
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = v0adam.V0Adam([param, param], v0="zero", backend=backend)
    torch_opt = torch.optim.Adam([ref], foreach=False)
    for step in range(3):
        grad = gradients([param], step)[0]
        param.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(param.detach(), ref.detach(), **TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (a GPU)")
def test_a_model_moved_where_the_forced_backend_cannot_go_is_refused_before_any_write():
    """A model moved after construction is laid out again on its new device (test_flat_buffers.py), unless the
    backend asked for cannot step there: backend='triton' on the CPU without the interpreter."""
    model = torch.nn.Linear(3, 2).cuda()
    opt = v0adam.V0Adam(model.parameters(), v0="zero", backend="triton")
    model.cpu()
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(1, 3)).sum().backward()
    with pytest.raises(ValueError, match="backend='triton' cannot step torch.float32 parameters on cpu"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
