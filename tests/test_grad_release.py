"""Gradient release (`release_grads=True`): params stepped during backward, grads freed at once, bit for bit the
training of the ordinary loop; gradient accumulation through `accumulate_grads`; what it cannot serve refused
before the step it would get wrong. Under FSDP2 (and refused under DDP): test_distributed.py."""

import warnings

import pytest
import torch
from conftest import BACKENDS, DEVICE

import v0adam


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)
    ).to(DEVICE)


def batches(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)) for _ in range(count)]


def loss_of(model, batch):
    x, y = (tensor.to(DEVICE) for tensor in batch)
    return torch.nn.functional.mse_loss(model(x), y)


def optimizer(model, backend, release, **options):
    opt = v0adam.V0AdamW(
        model.parameters(), lr=1e-2, weight_decay=0.1, backend=backend, release_grads=release, **options
    )
    if release:
        opt._release.group_bytes = 2000  # several groups per backward: the first stepped while backward runs
    return opt


def assert_same_model(model, other):
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_released_training_is_the_ordinary_loop_bit_for_bit(backend):
    released, ordinary = mlp(), mlp()
    opt, reference = optimizer(released, backend, True), optimizer(ordinary, backend, False)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    reference_schedule = torch.optim.lr_scheduler.StepLR(reference, step_size=2, gamma=0.5)
    held = []  # how many grads are alive when the first layer's is ready, the last of a backward
    released[0].weight.register_post_accumulate_grad_hook(lambda _: held.append(count_grads(released)))
    for batch in batches(5):
        steps_before = opt._step_calls
        loss_of(released, batch).backward()
        assert opt._step_calls - steps_before > 1  # stepped in groups
        assert all(param.grad is None for param in released.parameters())  # every grad freed
        assert held[-1] < len(list(released.parameters()))  # never all of them at once
        opt.step()  # nothing left to step
        opt.zero_grad()
        schedule.step()
        reference.zero_grad()
        loss_of(ordinary, batch).backward()
        reference.step()
        reference_schedule.step()
        assert_same_model(released, ordinary)
    for p, q in zip(released.parameters(), ordinary.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], reference.state[q][key])


def count_grads(model):
    return sum(param.grad is not None for param in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulate_grads_sums_micro_batches_and_the_next_backward_steps(backend):
    released, ordinary = mlp(), mlp()
    opt, reference = optimizer(released, backend, True), optimizer(ordinary, backend, False)
    micro_batches = batches(6)
    for first in (0, 3):
        group = micro_batches[first : first + 3]
        with opt.accumulate_grads():
            for batch in group[:-1]:
                loss_of(released, batch).backward()
        assert all(param.grad is not None for param in released.parameters())  # held, not stepped
        # The last layer gets no gradient from the last micro-batch: stepped all the same, as step() would.
        head = released[4]
        loss_of(released[:4], (group[-1][0], torch.zeros(16, 32))).backward()
        assert head.weight.grad is None and all(param.grad is None for param in released.parameters())
        for batch in group[:-1]:
            loss_of(ordinary, batch).backward()
        loss_of(ordinary[:4], (group[-1][0], torch.zeros(16, 32))).backward()
        reference.step()
        reference.zero_grad()
        assert_same_model(released, ordinary)


def test_grads_assigned_by_hand_are_stepped_by_step():
    released, ordinary = mlp(), mlp()
    opt, reference = optimizer(released, "torch", True), optimizer(ordinary, "torch", False)
    for p, q in zip(released.parameters(), ordinary.parameters()):
        p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    opt.step()
    reference.step()
    assert_same_model(released, ordinary)
    assert all(param.grad is None for param in released.parameters())


def test_data_v0_collects_gradients_without_stepping():
    model = mlp()
    before = [param.detach().clone() for param in model.parameters()]
    opt = v0adam.V0AdamW(model.parameters(), v0="data", release_grads=True)
    opt.init_v0_from_data(batches(2), lambda batch: loss_of(model, batch), num_samples=32)
    assert all(torch.equal(param, value) for param, value in zip(model.parameters(), before))
    assert all(float(opt.state[param]["exp_avg_sq"].sum()) > 0 for param in model.parameters())
    loss_of(model, batches(1)[0]).backward()
    assert not torch.equal(next(model.parameters()), before[0])


def test_what_needs_every_grad_is_refused():
    with pytest.raises(ValueError, match="flat_grads"):
        v0adam.V0AdamW(mlp().parameters(), release_grads=True, flat_grads=True)
    with pytest.raises(ValueError, match="skip_nonfinite"):
        v0adam.V0AdamW(mlp().parameters(), release_grads=True, skip_nonfinite=True)
    with pytest.raises(RuntimeError, match="release_grads"):
        v0adam.V0AdamW(mlp().parameters()).accumulate_grads()
    model = mlp()
    opt = v0adam.V0AdamW(model.parameters(), release_grads=True)
    with pytest.raises(RuntimeError, match="clip_grad_norm_"):
        opt.clip_grad_norm_(1.0)
    scaler = torch.amp.GradScaler(DEVICE)
    scaler.scale(loss_of(model, batches(1)[0])).backward()
    with pytest.raises(RuntimeError, match="GradScaler"):
        scaler.step(opt)


def test_the_first_released_backward_says_once_that_grads_are_gone():
    """A loop written for torch's optimizers clips with torch.nn.utils.clip_grad_norm_ after backward: with
    release_grads it finds no grad and clips nothing, which the user is told once, at the first backward."""
    model = mlp()
    opt = optimizer(model, "torch", True)
    with pytest.warns(UserWarning, match="clip_grad_norm_ .* finds none") as told:
        loss_of(model, batches(1)[0]).backward()
    assert len(told) == 1 and all(p.grad is None for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_of(model, batches(1)[0]).backward()
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_optimizer_let_go_takes_its_hooks_with_it(backend):
    """The hooks hold the optimizer weakly: once it is let go, backward no longer steps the model for it, and a new
    optimizer with release_grads steps it once per backward, as the ordinary loop does."""
    model, ordinary = mlp(), mlp()
    forgotten = optimizer(model, backend, True)
    before = [p.detach().clone() for p in model.parameters()]
    del forgotten
    loss_of(model, batches(1)[0]).backward()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    model.zero_grad()
    opt, reference = optimizer(model, backend, True), optimizer(ordinary, backend, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the first release's notice
        for batch in batches(3):
            loss_of(model, batch).backward()
            opt.step()
            loss_of(ordinary, batch).backward()
            reference.step()
            reference.zero_grad()
    assert_same_model(model, ordinary)


def test_two_live_optimizers_cannot_both_release_one_param():
    model = mlp()
    first = optimizer(model, "torch", True)
    with pytest.raises(ValueError, match="already stepped during backward by another optimizer"):
        optimizer(model, "torch", True)
    del first
    optimizer(model, "torch", True)  # once the first is let go
