"""Bad input gets a clear error, in torch's wording where torch has one, before anything is written."""

import numpy
import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import make_params

import v0adam


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "Invalid learning rate: -1.0"),
        (dict(lr=torch.tensor([1e-3, 1e-3])), "Tensor lr must be 1-element"),
        (dict(lr=torch.tensor(-1)), "Invalid learning rate: -1"),
        (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
        (dict(betas=(1.5, 0.999)), "Invalid beta parameter at index 0: 1.5"),
        (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
        (dict(betas=(0.9, torch.tensor(0.99))), "betas must be either both floats or both Tensors"),
        (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
        (dict(v0="xavier"), "Invalid v0 value: 'xavier'"),
        (dict(v0=3.0), "Invalid v0 value: 3.0"),
        (dict(v0="zero", v0_scale=-1.0), "Invalid v0_scale value: -1.0"),
        (dict(v0="random", v0_seed="abc"), "Invalid v0_seed value: 'abc'; expected None or an integer"),
        (dict(v0="random", v0_seed=1.5), "Invalid v0_seed value: 1.5"),
        (dict(v0="zero", backend="cuda"), "Invalid backend: 'cuda'"),
        (dict(differentiable=True), "does not support differentiable=True"),
    ],
)
def test_invalid_hyperparameters(kwargs, message):
    params = make_params([(3,)], device=DEVICE)
    before = params[0].detach().clone()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        v0adam.V0AdamW(params, **{"v0": "zero", **kwargs})
    assert torch.equal(params[0].detach(), before)


class SubclassedTensor(torch.Tensor):
    pass


@pytest.mark.parametrize(
    "param, message",
    [
        (torch.zeros(3, dtype=torch.complex64), "complex parameters"),
        (torch.zeros(3, dtype=torch.int64), "floating-point parameters"),
        (torch.zeros(3).as_subclass(SubclassedTensor), "plain tensors, nn.Parameter and DTensor"),
    ],
    ids=["complex", "integer", "subclass"],
)
def test_unsupported_parameters(param, message):
    with pytest.raises(ValueError, match=message):
        v0adam.V0Adam([param], v0="zero")


def test_param_in_two_groups():
    p = make_params([(3,)])[0]
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        v0adam.V0Adam([{"params": [p]}, {"params": [p]}], v0="zero")


def test_bad_user_v0():
    p, q = make_params([(3,), (4,)])
    with pytest.raises(ValueError, match="must be a tensor of that shape"):
        v0adam.V0Adam([p], v0={p: torch.ones(4)})
    with pytest.raises(ValueError, match="finite and non-negative"):
        v0adam.V0Adam([p], v0={p: -torch.ones(3)})
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        v0adam.V0Adam([p], v0={q: torch.ones(4)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_grad_rejected_before_any_write(backend):
    params = make_params([(4,), (5, 3)], device=DEVICE)
    opt = v0adam.V0Adam(params, v0="zero", backend=backend)
    before = [p.detach().clone() for p in params]
    params[0].grad = torch.ones(4, device=DEVICE)
    params[1].grad = torch.eye(5, 3, device=DEVICE).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert float(opt.state[params[0]]["step"]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "new_shape, in_place", [((128,), False), ((8, 8), False), ((8, 8), True)], ids=["larger", "reshaped", "viewed"]
)
def test_param_resized_after_construction_rejected_before_any_write(backend, new_shape, in_place):
    """A param given new data of another shape: its slots in the state buffers keep the old size, and a larger
    param would otherwise update its neighbour's states. Viewed: the same memory under another shape, its grad too,
    so that every address the last step saw stays."""
    params = make_params([(64,), (64,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend)
    for param in params:
        param.grad = torch.randn_like(param)
    opt.step()
    if in_place:
        params[0].data = params[0].data.view(new_shape)
        params[0].grad = params[0].grad.view(new_shape)
    else:
        params[0].data = torch.randn(new_shape, device=DEVICE)
        params[0].grad = torch.randn(new_shape, device=DEVICE)
    before = [p.detach().clone() for p in params] + [value.clone() for value in opt.state[params[1]].values()]
    with pytest.raises(RuntimeError, match=r"shape \(64,\) now has shape"):
        opt.step()
    after = [p.detach() for p in params] + list(opt.state[params[1]].values())
    assert all(torch.equal(value, old) for value, old in zip(after, before))


def test_a_conversion_the_forced_backend_cannot_step_is_refused_before_any_write():
    """A model converted after construction is laid out again (test_flat_buffers.py), unless its new dtype is one
    the backend asked for cannot step."""
    model = torch.nn.Linear(3, 2).to(DEVICE)
    opt = v0adam.V0Adam(model.parameters(), v0="zero", backend="triton")
    model.double()
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(1, 3, dtype=torch.float64, device=DEVICE)).sum().backward()
    with pytest.raises(ValueError, match="backend='triton' cannot step torch.float64 parameters"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' cannot step"):
        v0adam.V0Adam(make_params([(3,)]), v0="zero", backend="triton")


def test_partition_group_needs_torch_distributed():
    opt = v0adam.V0Adam(make_params([(3,)]), backend="torch")
    with pytest.raises(RuntimeError, match="torch.distributed to be initialized"):
        opt.set_partition_group()


def test_setup_zero_needs_a_zero_redundancy_optimizer():
    with pytest.raises(ValueError, match="takes a ZeroRedundancyOptimizer"):
        v0adam.setup_zero(v0adam.V0Adam(make_params([(3,)]), backend="torch"))


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(lr=torch.tensor(-1)), dict(betas=(1.5, 0.999)), dict(eps=-1.0)])
def test_an_invalid_hyperparameter_is_reported_before_invalid_params_as_torch_does(kwargs):
    with pytest.raises(ValueError) as theirs:
        torch.optim.AdamW(None, **kwargs)
    with pytest.raises(ValueError) as ours:
        v0adam.V0AdamW(None, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_a_v0_seed_is_kept_as_a_python_int():
    opt = v0adam.V0AdamW(make_params([(3,)]), v0="random", v0_seed=numpy.int64(7))
    assert type(opt.param_groups[0]["v0_seed"]) is int and opt.param_groups[0]["v0_seed"] == 7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("swapped", ["shape", "dtype"])
def test_a_grad_swapped_through_its_data_is_refused_before_any_write(backend, swapped):
    """`p.grad.data = ...` keeps the grad object, unlike the grad setter, which checks shape and dtype; a step that
    found its work cached from the last one must still see it (the PyTorch backend read past the grad's end)."""
    params = make_params([(4,), (4,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend)
    for param in params:
        param.grad = torch.ones(4, device=DEVICE)
    opt.step()
    swapped_in = torch.ones(2, device=DEVICE) if swapped == "shape" else torch.ones(4, device=DEVICE).double()
    params[1].grad.data = swapped_in
    before = [p.detach().clone() for p in params] + [value.clone() for value in opt.state[params[0]].values()]
    with pytest.raises(RuntimeError, match="does not match its parameter"):
        opt.step()
    after = [p.detach() for p in params] + list(opt.state[params[0]].values())
    assert all(torch.equal(value, old) for value, old in zip(after, before))


def test_a_state_that_cannot_be_copied_is_refused_before_any_write():
    params = make_params([(4,), (4,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", lr=0.5)
    saved = {"step": torch.tensor(3.0), "exp_avg": torch.full((4,), 7.0), "exp_avg_sq": torch.ones(4)}
    state_dict = {
        "state": {0: saved, 1: {**saved, "exp_avg": torch.empty(4, device="meta")}},
        "param_groups": [{**opt.state_dict()["param_groups"][0], "lr": 0.1}],
    }
    with pytest.raises(ValueError, match="loaded state 'exp_avg' is a meta tensor"):
        opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["lr"] == 0.5
    assert not opt.state[params[0]]["exp_avg"].any() and float(opt.state[params[0]]["step"]) == 0.0
