"""Inputs at the edges of what torch.optim.Adam(W) takes, where v0adam must do what torch does: switches given as
any truthy value, an empty param, a param holding inf or NaN without weight decay. Each against the real torch,
on both backends, over several steps, states included."""

import numpy
import pytest
import torch
from conftest import BACKENDS, DEVICE

import v0adam

TOLERANCE = dict(rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("switches", [dict(amsgrad=numpy.bool_(True)), dict(maximize=1)], ids=["numpy", "int"])
def test_switches_of_any_truthy_type_train_as_with_torch(backend, switches):
    ours = torch.nn.Parameter(torch.linspace(-1, 1, 6, device=DEVICE))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt = v0adam.V0AdamW([ours], v0="zero", backend=backend, **switches)
    reference = torch.optim.AdamW([theirs], **switches)
    for step in range(3):
        gradient = torch.linspace(0.5, -0.3 * step, 6, device=DEVICE)
        ours.grad, theirs.grad = gradient.clone(), gradient.clone()
        opt.step()
        reference.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), **TOLERANCE)
    for key, value in reference.state[theirs].items():
        torch.testing.assert_close(opt.state[ours][key], value, **TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_param_counts_only_the_steps_it_has_a_grad_in(backend):
    """The other param keeps one grad tensor throughout (zero_grad(set_to_none=False) does that), so every address
    the last step saw stays; only whether the empty param has a grad changes (an empty tensor's address is 0)."""
    ours = [torch.nn.Parameter(torch.zeros(0, device=DEVICE)), torch.nn.Parameter(torch.ones(3, device=DEVICE))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = v0adam.V0AdamW(ours, v0="zero", backend=backend)
    reference = torch.optim.AdamW(theirs)
    for params in (ours, theirs):
        params[1].grad = torch.ones(3, device=DEVICE)
    for empty_has_grad in (True, False, False, True, False):
        for params in (ours, theirs):
            params[0].grad = torch.zeros(0, device=DEVICE) if empty_has_grad else None
        opt.step()
        reference.step()
        assert [float(opt.state[p]["step"]) for p in ours] == [float(reference.state[p]["step"]) for p in theirs]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nonfinite_param_without_weight_decay_leaves_its_moments_as_torch_does(backend):
    """With weight_decay=0 torch adds no decay term at all: 0 * inf would be NaN."""
    values = torch.tensor([float("inf"), float("nan"), 1.0, -2.0], device=DEVICE)
    ours, theirs = torch.nn.Parameter(values.clone()), torch.nn.Parameter(values.clone())
    opt = v0adam.V0Adam([ours], v0="zero", backend=backend, weight_decay=0.0)
    reference = torch.optim.Adam([theirs], weight_decay=0.0)
    for step in range(3):
        gradient = torch.tensor([0.5, -0.25, 1.0 + step, 0.125], device=DEVICE)
        ours.grad, theirs.grad = gradient.clone(), gradient.clone()
        opt.step()
        reference.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), equal_nan=True, **TOLERANCE)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.isfinite(opt.state[ours][key]).all()
        torch.testing.assert_close(opt.state[ours][key], reference.state[theirs][key], **TOLERANCE)
