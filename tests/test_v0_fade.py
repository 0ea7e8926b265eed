"""v0_fade_steps: the step it predicts is the step at which v0's share of the optimizer's own second moment falls
below the share asked for, under constant gradients."""

import math

import pytest
import torch
from conftest import DEVICE

import v0adam
from v0adam.v0_fade import fade_step, v0_fade_steps

BETA2 = 0.9  # a short fade, so that the optimizer can be stepped past it


def first_step_below(share, opt, param, v0, steps):
    """The first step after which v0's share of exp_avg_sq (the bias corrections cancel in the share) < share."""
    for step in range(1, steps + 1):
        opt.step()
        if BETA2**step * v0 / float(opt.state[param]["exp_avg_sq"].mean()) < share:
            return step
    raise AssertionError("v0 never faded")


@pytest.mark.parametrize("v0, grad_sq", [(100.0, 1.0), (1e-3, 1e-6), (0.5, 2.0)])
@pytest.mark.parametrize("share", [0.5, 0.1])
def test_the_predicted_step_is_when_the_optimizers_v0_share_falls_below(v0, grad_sq, share):
    param = torch.nn.Parameter(torch.zeros(6, 5, device=DEVICE))
    opt = v0adam.V0AdamW(
        [param], lr=0.0, betas=(0.9, BETA2), v0={param: torch.full((6, 5), v0, device=DEVICE)}, backend="torch"
    )
    param.grad = torch.full_like(param, math.sqrt(grad_sq))
    predicted = v0_fade_steps(opt, share)[param]
    assert predicted == pytest.approx(fade_step(v0, grad_sq, BETA2, share))
    assert first_step_below(share, opt, param, v0, steps=400) == math.floor(predicted) + 1


def test_the_diagnostic_reads_v0_before_the_first_step_only():
    params = [torch.nn.Parameter(torch.randn(8, 4, device=DEVICE)), torch.nn.Parameter(torch.zeros(4, device=DEVICE))]
    opt = v0adam.V0AdamW(params, v0="random", backend="torch")
    params[0].grad = torch.ones_like(params[0])
    steps = v0_fade_steps(opt)
    assert list(steps) == [params[0]] and steps[params[0]] > 0  # the param without a grad is left out
    assert v0_fade_steps(opt, squared_grads={params[1]: 1.0})[params[1]] == 0.0  # a bias has no random v0
    assert math.isinf(fade_step(1.0, 0.0, 0.999)) and fade_step(0.0, 1.0, 0.999) == 0.0
    with pytest.raises(ValueError, match="share"):
        fade_step(1.0, 1.0, 0.999, share=1.0)
    opt.step()
    with pytest.raises(RuntimeError, match="before the first step"):
        v0_fade_steps(opt)


def test_8bit_states_give_the_fade_of_their_decoded_v0():
    """v0 is read decoded from 8-bit states, as from float32 ones (not their codes averaged)."""
    v0 = torch.full((4, 256), 0.25, device=DEVICE)
    predictions = []
    for options in ({}, {"state_dtype": torch.uint8, "min_8bit_size": 0}):
        param = torch.nn.Parameter(torch.zeros(4, 256, device=DEVICE))
        opt = v0adam.V0AdamW([param], v0={param: v0}, **options)
        param.grad = torch.full_like(param, 0.1)
        predictions.append(v0_fade_steps(opt)[param])
    assert "exp_avg_sq_code" in opt.state[param]
    assert predictions[1] == pytest.approx(predictions[0], rel=1e-2)
