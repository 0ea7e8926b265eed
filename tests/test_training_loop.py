"""The training iteration as torch runs it: with the default `zero_grad()` the backward hands each param a fresh
gradient (nothing accumulated, nothing zeroed), and a param that gets no gradient (an unused branch, a frozen
layer, a step without backward) is not stepped and keeps its step counter, as with torch.optim.AdamW."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from torch.profiler import ProfilerActivity, profile

import v0adam

TOL = dict(rtol=1e-5, atol=1e-6)


class TwoHeads(torch.nn.Module):
    """A trunk and two heads; a step's loss may use either head or both, so the other head gets no gradient."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(6, 16)
        self.first = torch.nn.Linear(16, 3)
        self.second = torch.nn.Linear(16, 3)

    def forward(self, x, heads):
        hidden = torch.tanh(self.trunk(x))
        return sum(getattr(self, head)(hidden) for head in heads)


def twins():
    model = TwoHeads().to(DEVICE)
    twin = TwoHeads().to(DEVICE)
    twin.load_state_dict(model.state_dict())
    return model, twin


def batch(step):
    generator = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=generator).to(DEVICE), torch.randn(8, 3, generator=generator).to(DEVICE)


def backward_ops(model, zero_grad) -> list[str]:
    """The names of the ops the profiler sees in zero_grad and the backward of the second iteration."""
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x, ("first",)), y).backward()  # grads exist, as after a first iteration
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        zero_grad()
        torch.nn.functional.mse_loss(model(x, ("first",)), y).backward()
    return [event.name for event in prof.events()]


ACCUMULATE_OR_ZERO = ("aten::add_", "aten::zero_", "aten::fill_", "aten::_foreach_zero_")


def torch_default_ops() -> list[str]:
    _, twin = twins()
    return backward_ops(twin, torch.optim.AdamW(twin.parameters()).zero_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_default_loop_accumulates_nothing_and_zeroes_nothing(backend):
    """The same in-place adds and fills as torch.optim.AdamW's loop (the loss's own, none into a param's grad)."""
    model, _ = twins()
    ours = backward_ops(model, v0adam.V0AdamW(model.parameters(), v0="zero", backend=backend).zero_grad)
    torchs = torch_default_ops()
    assert [ours.count(op) for op in ACCUMULATE_OR_ZERO] == [torchs.count(op) for op in ACCUMULATE_OR_ZERO]


def test_with_flat_grads_the_backward_accumulates_into_zeroed_views():
    """What the default avoids, seen by the same profile: the flat-grad opt-in memsets its buffer and autograd adds
    every param's gradient into its view."""
    model, _ = twins()
    ours = backward_ops(model, v0adam.V0AdamW(model.parameters(), v0="zero", flat_grads=True).zero_grad)
    torchs = torch_default_ops()
    assert ours.count("aten::zero_") == torchs.count("aten::zero_") + 1  # one memset for the whole bucket
    assert ours.count("aten::add_") == torchs.count("aten::add_") + 4  # trunk and first head, weights and biases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("set_to_none", [True, False], ids=["set_to_none", "zeroed"])
def test_unused_and_frozen_params_follow_torch(backend, set_to_none):
    """Five steps: the second head is used only in the first, the first head frozen from the third on, and the
    fourth step has no backward at all. Unused params keep their values bitwise and their step counters, as
    torch.optim.AdamW's; with set_to_none=False (grads kept, zeroed), both step them with zero gradients."""
    model, twin = twins()
    options = dict(lr=1e-2, weight_decay=0.1)
    opt = v0adam.V0AdamW(model.parameters(), v0="zero", backend=backend, **options)
    reference = torch.optim.AdamW(twin.parameters(), foreach=False, **options)
    untouched = {}
    for step in range(5):
        heads = ("first", "second") if step == 0 else ("first",)
        if step == 2:
            for network in (model, twin):
                network.first.requires_grad_(False)
        for network, optimizer in ((model, opt), (twin, reference)):
            optimizer.zero_grad(set_to_none=set_to_none)
            if step != 3:
                x, y = batch(step)
                torch.nn.functional.mse_loss(network(x, heads), y).backward()
        untouched = {name: param.detach().clone() for name, param in model.named_parameters() if param.grad is None}
        opt.step()
        reference.step()
        for name, param in model.named_parameters():
            if name in untouched:
                assert torch.equal(param.detach(), untouched[name]), name
        for (name, param), reference_param in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(param, reference_param, **TOL, msg=name)
            for key, value in reference.state[reference_param].items():
                tolerance = dict(rtol=0, atol=0) if key == "step" else TOL
                torch.testing.assert_close(opt.state[param][key], value, **tolerance, msg=f"{name} {key}")
    steps = {name: float(opt.state[param]["step"]) for name, param in model.named_parameters()}
    if set_to_none:
        trunk, first, second = 4.0, 2.0, 1.0  # no backward in step 3; first frozen from step 2; second used once
        expected = {"trunk": trunk, "first": first, "second": second}
        assert steps == {name: expected[name.split(".")[0]] for name in steps}
    else:
        assert set(steps.values()) == {5.0}  # zeroed grads are grads: every param is stepped every step


@pytest.mark.parametrize("backend", BACKENDS)
def test_grads_whose_addresses_repeat_reuse_the_launch_layout(backend):
    """The caching allocator hands autograd the same blocks every iteration: a step whose grads sit where the last
    step's did takes the cached work (no scan), and stays correct when one of them moves or goes."""
    params = [torch.nn.Parameter(torch.randn(shape, device=DEVICE)) for shape in [(4, 3), (5,), (7,)]]
    reference_params = [torch.nn.Parameter(param.detach().clone()) for param in params]
    opt = v0adam.V0AdamW(params, lr=1e-2, v0="zero", backend=backend)
    reference = torch.optim.AdamW(reference_params, lr=1e-2, foreach=False)
    pools = [[torch.empty_like(param) for param in params] for _ in range(2)]  # two fixed sets of grad blocks
    (bucket,) = opt._buckets
    scans = 0
    original_scan = bucket.work._scan

    def counting_scan():
        nonlocal scans
        scans += 1
        return original_scan()

    bucket.work._scan = counting_scan
    for step in range(8):
        pool = pools[step >= 4]  # the blocks move once, at step 4
        for param, reference_param, grad in zip(params, reference_params, pool):
            grad.copy_(torch.randn_like(grad))
            param.grad, reference_param.grad = grad, grad.clone()
        if step == 6:
            params[1].grad = reference_params[1].grad = None
        opt.step()
        reference.step()
        for param, reference_param in zip(params, reference_params):
            torch.testing.assert_close(param, reference_param, **TOL)
            for key, value in reference.state[reference_param].items():
                torch.testing.assert_close(opt.state[param][key], value, **TOL)
    # The first step, the move (only the Triton backend's tables hold the grads' addresses), the grad gone, its return.
    assert scans == (4 if backend == "triton" else 3)
