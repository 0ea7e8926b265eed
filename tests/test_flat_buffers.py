"""Params re-homed into flat buffers: the model still computes the same forward and backward, grads are read where
autograd leaves them (or, with flat_grads, accumulate into the flat grad buffer), and every way a user can replace
params or grads stays correct."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import assert_states_close, clone_params, gradients, make_params, set_grads, step_both

import v0adam

TOL = dict(rtol=1e-5, atol=1e-6)


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 17), torch.nn.GELU(), torch.nn.Linear(17, 4)).to(DEVICE)


def data():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(32, 6, generator=generator).to(DEVICE), torch.randn(32, 4, generator=generator).to(DEVICE)


def loss_fn(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rehomed_model_computes_the_same_forward_and_backward(backend):
    model, twin = mlp(), mlp()
    twin.load_state_dict(model.state_dict())
    v0adam.V0AdamW(model.parameters(), v0="zero", backend=backend)
    x, y = data()
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    loss_fn(model, x, y).backward()
    loss_fn(twin, x, y).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_default_params_stay_where_the_model_keeps_them_and_grads_are_autograds_own(backend):
    model = mlp()
    addresses = [p.data_ptr() for p in model.parameters()]
    data_objects = [p.data for p in model.parameters()]
    opt = v0adam.V0AdamW(model.parameters(), v0="zero", backend=backend)
    (bucket,) = opt._buckets
    assert bucket.flat_param is None and bucket.flat_grad is None  # no param- or grad-sized buffer is allocated
    x, y = data()
    for _ in range(2):
        loss_fn(model, x, y).backward()
        opt.step()
    assert [p.data_ptr() for p in model.parameters()] == addresses
    assert all(
        p.untyped_storage().data_ptr() == d.untyped_storage().data_ptr()
        for p, d in zip(model.parameters(), data_objects)
    )
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    loss_fn(model, x, y).backward()
    grads = [p.grad for p in model.parameters()]
    opt.zero_grad(set_to_none=False)  # torch's: the same tensors, zeroed
    assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), grads))


def test_with_flat_grads_params_and_grads_are_views_of_one_buffer():
    model = mlp()
    opt = v0adam.V0AdamW(model.parameters(), v0="zero", flat_grads=True)
    (bucket,) = opt._buckets
    x, y = data()
    loss_fn(model, x, y).backward()
    for p in model.parameters():
        assert p.untyped_storage().data_ptr() == bucket.flat_param.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == bucket.flat_grad.untyped_storage().data_ptr()
        assert opt.state[p]["exp_avg_sq"].untyped_storage().data_ptr() == bucket.exp_avg_sq.data_ptr()
    grads = [p.grad.clone() for p in model.parameters()]
    loss_fn(model, x, y).backward()  # accumulates in place
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, 2 * g)
    opt.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    assert not bucket.flat_grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flat_grads", [False, True], ids=["autograd-grads", "flat-grads"])
@pytest.mark.parametrize("zero_grad", ["optimizer", "optimizer_zero", "model_set_to_none", "model_zero"])
def test_training_matches_torch_whatever_zero_grad_is_used(backend, flat_grads, zero_grad):
    model, twin = mlp(), mlp()
    twin.load_state_dict(model.state_dict())
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, v0="zero", backend=backend, flat_grads=flat_grads)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, foreach=False)
    x, y = data()
    for _ in range(8):
        if zero_grad.startswith("optimizer"):
            opt.zero_grad(set_to_none=zero_grad == "optimizer")
        else:
            model.zero_grad(set_to_none=zero_grad == "model_set_to_none")
        ref.zero_grad()
        loss_fn(model, x, y).backward()
        loss_fn(twin, x, y).backward()
        opt.step()
        ref.step()
        assert_states_close(opt, list(model.parameters()), ref, list(twin.parameters()), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_without_grad_is_skipped_like_torch(backend):
    params = make_params([(4,), (5,), (6,)], device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0Adam(params, lr=1e-2, v0="zero", backend=backend)
    ref = torch.optim.Adam(ref_params, lr=1e-2, foreach=False)
    for step in range(6):
        grads = gradients(params, step)
        for group in (params, ref_params):
            set_grads(group, grads, "assign")
            if step % 2:
                group[1].grad = None
        opt.step()
        ref.step()
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p.detach(), q.detach(), **TOL)
        assert float(opt.state[params[1]]["step"]) == float(ref.state[ref_params[1]]["step"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_replaced_and_non_contiguous_params_are_stepped_in_place(backend):
    params = make_params([(4, 6), (3,)], device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0Adam(params, lr=1e-2, v0="zero", backend=backend)
    ref = torch.optim.Adam(ref_params, lr=1e-2, foreach=False)
    # A user swaps the data for a non-contiguous tensor with the same values: no longer in the flat buffer.
    params[0].data = params[0].detach().t().contiguous().t()
    assert not params[0].is_contiguous()
    step_both(opt, params, ref, ref_params, steps=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_param_group_keeps_states_and_trajectory(backend):
    params = make_params([(4,), (7,), (9,)], device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params[:2], lr=1e-2, v0="zero", backend=backend)
    ref = torch.optim.AdamW(ref_params[:2], lr=1e-2, foreach=False)
    for step in range(6):
        if step == 3:
            opt.add_param_group({"params": [params[2]], "lr": 5e-3})
            ref.add_param_group({"params": [ref_params[2]], "lr": 5e-3})
        active = 2 if step < 3 else 3
        grads = gradients(params[:active], step)
        set_grads(params[:active], grads, "assign")
        set_grads(ref_params[:active], grads, "assign")
        opt.step()
        ref.step()
        assert_states_close(opt, params[:active], ref, ref_params[:active], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flat_grads", [False, True], ids=["autograd-grads", "flat-grads"])
@pytest.mark.parametrize("frozen_at_start", [False, True], ids=["trained-first", "frozen-first"])
def test_freezing_and_unfreezing_during_training_follow_torch(backend, flat_grads, frozen_at_start):
    """A layer frozen with requires_grad_(False) stays where it is (torch's zero_grad() leaves it without a grad),
    also under weight decay and momentum; unfrozen, it trains again (with flat grads, through a grad view of the
    flat buffer)."""
    model, twin = mlp(), mlp()
    twin.load_state_dict(model.state_dict())
    for layer in (model[0], twin[0]):
        layer.requires_grad_(not frozen_at_start)
    options = dict(lr=1e-2, weight_decay=0.1, v0="zero", backend=backend, flat_grads=flat_grads)
    opt = v0adam.V0AdamW(model.parameters(), **options)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    x, y = data()
    for step in range(8):
        if step in (3, 6):
            for layer in (model[0], twin[0]):
                layer.requires_grad_(not layer.weight.requires_grad)
        opt.zero_grad()
        ref.zero_grad()
        trained = model[0].weight.requires_grad
        assert (model[0].weight.grad is not None) == (trained and flat_grads)  # a zeroed view, or none
        loss_fn(model, x, y).backward()
        loss_fn(twin, x, y).backward()
        opt.step()
        ref.step()
        for param, reference in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(param, reference, **TOL)
            for key, value in ref.state[reference].items():
                torch.testing.assert_close(opt.state[param][key], value, **TOL)


def train_side_by_side(model, opt, twin, ref, steps, dtype=torch.float32, device=DEVICE):
    x, y = (tensor.to(device, dtype) for tensor in data())
    for _ in range(steps):
        for network, optimizer in ((model, opt), (twin, ref)):
            optimizer.zero_grad()
            loss_fn(network, x, y).backward()
            optimizer.step()
    for param, reference in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(param, reference, **TOL)
        for key, value in ref.state[reference].items():
            torch.testing.assert_close(opt.state[param][key], value.to(device), **TOL)


@pytest.mark.parametrize("converted_after_steps", [0, 2])
def test_a_model_converted_after_the_optimizer_was_built_trains_on(converted_after_steps):
    """model.double() after the optimizer was built: the buffers are laid out again (here from the Triton backend's
    float32 bucket to the PyTorch backend's float64 one), states carried over; torch's AdamW takes the conversion
    before its first step (its states do not exist yet), after it only with its states converted by hand."""
    model, twin = mlp(), mlp()
    twin.load_state_dict(model.state_dict())
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True, v0="zero")
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    train_side_by_side(model, opt, twin, ref, steps=converted_after_steps)
    model.double()
    twin.double()
    for state in ref.state.values():
        state.update({key: value.double() for key, value in state.items() if key != "step"})
    train_side_by_side(model, opt, twin, ref, steps=3, dtype=torch.float64)
    assert opt.state[model[0].weight]["exp_avg"].dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_conversion_to_bfloat16_before_the_first_step_equals_building_after_it(backend):
    """The new layout of a converted model takes a master copy from the params and keeps the random v0 drawn at
    construction: bitwise what an optimizer built on the converted model does."""
    model, twin = mlp(), mlp()
    twin.load_state_dict(model.state_dict())
    options = dict(lr=1e-2, weight_decay=0.1, master_weights=True, v0="random", v0_seed=3, backend=backend)
    opt = v0adam.V0AdamW(model.parameters(), **options)
    model.to(torch.bfloat16)
    twin.to(torch.bfloat16)
    ref = v0adam.V0AdamW(twin.parameters(), **options)
    train_side_by_side(model, opt, twin, ref, steps=3, dtype=torch.bfloat16)
    for param, reference in zip(model.parameters(), twin.parameters()):
        assert torch.equal(param, reference)
        assert torch.equal(opt.state[param]["param_remainder"], ref.state[reference]["param_remainder"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="moves a model from the CPU to a GPU")
def test_a_model_moved_to_the_gpu_after_the_optimizer_was_built_trains_on_it():
    """accelerate's prepare(model, optimizer) moves the model after the optimizer was built on the CPU."""
    model, twin = mlp().cpu(), mlp().cpu()
    twin.load_state_dict(model.state_dict())
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, v0="zero")
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    model.cuda()
    twin.cuda()
    train_side_by_side(model, opt, twin, ref, steps=3, device="cuda")
    assert opt.state[model[0].weight]["exp_avg"].is_cuda


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_params_and_mixed_dtypes(backend):
    params = make_params([(4,), (5,)], device=DEVICE) + make_params([(6,)], dtype=torch.bfloat16, device=DEVICE)
    params[0].requires_grad_(False)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend)
    assert len(opt._buckets) == 2 and params[0].grad is None
    frozen = params[0].detach().clone()
    for step in range(3):
        opt.zero_grad()
        set_grads(params[1:], gradients(params[1:], step), "autograd")
        opt.step()
    assert torch.equal(params[0].detach(), frozen)
    assert float(opt.state[params[1]]["step"]) == 3.0 and float(opt.state[params[0]]["step"]) == 0.0
