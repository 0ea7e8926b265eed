"""16-bit params (fp32 states, fp32 math, param rounded to nearest even on store) against the float64 reference."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, gradients, make_params

import v0adam
from v0adam.reference import adam_step_reference

# One 16-bit step from the same start may differ from the float64 reference by one unit in the last place: a
# float32 result within a few float32 ulps of a rounding boundary can round either way.
ONE_ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
STATE_TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_each_step_matches_float64_reference(backend, dtype, decoupled, amsgrad):
    params = make_params(MIXED_SHAPES, dtype=dtype, device=DEVICE)
    cls = v0adam.V0AdamW if decoupled else v0adam.V0Adam
    hyper = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    opt = cls(params, v0="zero", backend=backend, amsgrad=amsgrad, **hyper)
    for step in range(1, 21):
        grads = gradients(params, step)
        before = [(p.detach().double(), {k: v.double() for k, v in opt.state[p].items()}) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, g, (param64, state64) in zip(params, grads, before):
            adam_step_reference(
                param64,
                g.double(),
                state64["exp_avg"],
                state64["exp_avg_sq"],
                state64.get("max_exp_avg_sq"),
                step,
                beta1=0.9,
                beta2=0.999,
                lr=1e-2,
                eps=1e-8,
                weight_decay=0.1,
                decoupled_weight_decay=decoupled,
                amsgrad=amsgrad,
                maximize=False,
            )
            torch.testing.assert_close(p.detach(), param64.to(dtype), rtol=ONE_ULP[dtype], atol=1e-6)
            state = opt.state[p]
            assert state["exp_avg"].dtype == torch.float32
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in state64 and key in state:
                    torch.testing.assert_close(state[key].double(), state64[key], **STATE_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32-states", "bf16-states"])
def test_bfloat16_training_error_no_worse_than_torch(backend, state_dtype):
    """STYLE point 8: over 20 steps with bf16 params, our run's distance to a float64 run is at most twice that of
    torch's bf16 AdamW (whose states are bf16), with float32 states and with bfloat16 ones."""
    params64 = make_params(MIXED_SHAPES, dtype=torch.float64, device=DEVICE)
    ours = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params64]
    theirs = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params64]
    opts = [
        torch.optim.AdamW(params64, lr=1e-3, foreach=False),
        v0adam.V0AdamW(ours, lr=1e-3, v0="zero", state_dtype=state_dtype, backend=backend),
        torch.optim.AdamW(theirs, lr=1e-3, foreach=False),
    ]
    assert opts[1].state[ours[0]]["exp_avg"].dtype == state_dtype
    for step in range(20):
        grads = gradients(params64, step)
        for group, opt in zip((params64, ours, theirs), opts):
            for p, g in zip(group, grads):
                p.grad = g.to(p.dtype)
            opt.step()

    def error(run):
        return sum((p.detach().double() - q.detach()).abs().sum() for p, q in zip(run, params64))

    assert error(ours) <= 2 * error(theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_rounds_to_nearest_even(backend):
    """An update that lands just above halfway between two bf16 values must round up, not truncate."""
    param = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16, device=DEVICE))
    # With v0 = 0 the first step moves every element by lr (eps = 0). Below 1 the bf16 spacing is 2^-8, so
    # 1 - 1.25 * 2^-8 is nearest to 1 - 2^-8; truncation would give 1 - 2^-7.
    opt = v0adam.V0Adam([param], lr=1.25 * 2**-8, eps=0.0, v0="zero", backend=backend)
    param.grad = torch.ones_like(param)
    opt.step()
    assert torch.all(param.detach() == torch.tensor(1 - 2**-8, dtype=torch.bfloat16))
