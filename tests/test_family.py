"""The family: V0RAdam against torch.optim.RAdam; V0AdaBelief and V0AdaBound against their float64 references;
all three with a non-zero v0 against runs whose second-moment state was pre-filled, and with master weights."""

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, clone_params, gradients, make_params, set_grads, step_both

import v0adam
from v0adam.master_remainder import param_of_master
from v0adam.reference import adabelief_step_reference, adabound_step_reference

TOL = dict(rtol=1e-5, atol=1e-6)
SHAPES = [(5, 7), (3,), (4097,), (2, 3, 4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
@pytest.mark.parametrize("v0", ["zero", "random"])
@pytest.mark.parametrize("maximize", [False, True], ids=["", "maximize"])
def test_radam_matches_torch(backend, decoupled, v0, maximize):
    """20 steps cover both of RAdam's regimes: rho_t <= 5 (steps 1-5 at beta2 = 0.999) and the rectified one."""
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    kwargs = dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=decoupled, maximize=maximize)
    opt = v0adam.V0RAdam(params, v0=v0, v0_seed=0, backend=backend, **kwargs)
    ref = torch.optim.RAdam(ref_params, foreach=False, **kwargs)
    for p, q in zip(params, ref_params):  # torch's state, pre-filled with our v0 (zeros for v0="zero")
        ref.state[q] = {
            "step": torch.tensor(0.0),
            "exp_avg": torch.zeros_like(q),
            "exp_avg_sq": opt.state[p]["exp_avg_sq"].clone(),
        }
    step_both(opt, params, ref, ref_params, steps=20)


def reference_run(name, params, initial_v0, steps, amsgrad, decoupled, **hyper):
    """The float64 reference of `name` from the same params and v0, returning params and states after each step."""
    params = [p.detach().double() for p in params]
    states = [
        dict(exp_avg=torch.zeros_like(p), exp_avg_sq=v.double(), max_exp_avg_sq=torch.zeros_like(p))
        for p, v in zip(params, initial_v0)
    ]
    for step in range(1, steps + 1):
        for p, g, state in zip(params, gradients(params, step - 1), states):
            arguments = dict(step=step, amsgrad=amsgrad, decoupled_weight_decay=decoupled, maximize=False, **hyper)
            if name == "adabelief":
                adabelief_step_reference(
                    p, g, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"], **arguments
                )
            else:
                adabound_step_reference(
                    p, g, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"], **arguments
                )
        yield params, states


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adabelief", "adabound"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
@pytest.mark.parametrize("v0", ["zero", "random"])
def test_matches_the_float64_reference(backend, name, amsgrad, decoupled, v0, gamma=1e-3):
    params = make_params(SHAPES, device=DEVICE)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.05)
    common = dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=decoupled, v0=v0, v0_seed=0, backend=backend)
    if name == "adabelief":
        opt = v0adam.V0AdaBelief(params, amsgrad=amsgrad, **common)
        hyper.update(eps=1e-16)
    else:
        opt = v0adam.V0AdaBound(params, amsbound=amsgrad, final_lr=0.1, gamma=gamma, **common)
        hyper.update(eps=1e-8, base_lr=1e-2, final_lr=0.1, gamma=gamma)
    initial_v0 = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    expected_runs = reference_run(name, params, initial_v0, 20, amsgrad, decoupled, **hyper)
    for step, (expected_params, expected_states) in enumerate(expected_runs):
        set_grads(params, gradients(params, step), "assign")
        opt.step()
        for p, q, state in zip(params, expected_params, expected_states):
            torch.testing.assert_close(p.detach().double(), q, **TOL)
            for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
                torch.testing.assert_close(opt.state[p][key].double(), state[key], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adabound_bounds_that_bind(backend):
    """With gamma = 0.1 the lower bound passes Adam's natural step within a few steps, so the clamp decides."""
    test_matches_the_float64_reference(backend, "adabound", False, True, "zero", gamma=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [v0adam.V0AdaBelief, v0adam.V0RAdam, v0adam.V0AdaBound], ids=lambda c: c.__name__)
def test_master_weights_follow_the_float32_run(backend, cls):
    params = make_params(SHAPES, dtype=torch.bfloat16, device=DEVICE)
    fp32 = [torch.nn.Parameter(p.detach().float()) for p in params]
    opt = cls(params, lr=1e-2, v0="random", v0_seed=0, master_weights=True, backend=backend)
    ref = cls(fp32, lr=1e-2, v0="random", v0_seed=0, backend=backend)
    for step in range(10):
        grads = gradients(params, step)
        for p, q, g in zip(params, fp32, grads):
            p.grad, q.grad = g, g.float()
        opt.step()
        ref.step()
    for p, q in zip(params, fp32):
        torch.testing.assert_close(opt.master_weight(p), q.detach(), **TOL)
        assert torch.equal(p.detach(), param_of_master(q.detach(), torch.bfloat16))


def test_adabound_checks_its_arguments():
    params = make_params([(3,)])
    with pytest.raises(ValueError, match="Invalid final learning rate"):
        v0adam.V0AdaBound(params, final_lr=-1.0, v0="zero")
    with pytest.raises(ValueError, match="Invalid gamma parameter"):
        v0adam.V0AdaBound(params, gamma=1.5, v0="zero")
