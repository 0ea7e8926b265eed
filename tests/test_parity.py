"""V0Adam(W) with v0='zero' against torch.optim.Adam(W): params and every state, every step, over 20 steps."""

import itertools

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, assert_states_close, clone_params, gradients, make_params, set_grads, step_both

import v0adam

PAIRS = {"adam": (v0adam.V0Adam, torch.optim.Adam), "adamw": (v0adam.V0AdamW, torch.optim.AdamW)}
FP32_TOL = dict(rtol=1e-5, atol=1e-6)
STEPS = 20


def run_pair(name, backend, grad_mode, shapes=MIXED_SHAPES, steps=STEPS, groups=None, **kwargs):
    ours_cls, torch_cls = PAIRS[name]
    params = make_params(shapes, device=DEVICE)
    ref_params = clone_params(params)
    lr = kwargs.pop("lr", 1e-2)
    ours_lr = torch.tensor(lr) if kwargs.pop("tensor_lr", False) else lr
    if groups is None:
        opt = ours_cls(params, lr=ours_lr, v0="zero", backend=backend, **kwargs)
        ref = torch_cls(ref_params, lr=lr, foreach=False, **kwargs)
    else:
        opt = ours_cls(  # params of a group as an iterator, as model.parameters() gives them
            [dict(params=iter(params[i::groups]), lr=lr * (i + 1)) for i in range(groups)],
            lr=ours_lr,
            v0="zero",
            backend=backend,
            **kwargs,
        )
        ref = torch_cls(
            [dict(params=ref_params[i::groups], lr=lr * (i + 1)) for i in range(groups)], lr=lr, foreach=False, **kwargs
        )
    ordered = [p for g in opt.param_groups for p in g["params"]]
    ref_ordered = [p for g in ref.param_groups for p in g["params"]]
    assert len(ordered) == len(ref_ordered) == len(shapes)
    for step in range(steps):
        grads = gradients(ordered, step)
        opt.zero_grad()
        ref.zero_grad()
        set_grads(ordered, grads, grad_mode)
        set_grads(ref_ordered, grads, grad_mode)
        opt.step()
        ref.step()
        assert_states_close(opt, ordered, ref, ref_ordered, **FP32_TOL)
    return opt


OPTIONS = dict(grad_mode=("autograd", "assign"), name=("adam", "adamw"), weight_decay=(0.0, 0.1))
OPTIONS.update(amsgrad=(False, True), maximize=(False, True))


def covering(options: dict, strength: int) -> list[dict]:
    """Combinations of the options in which every `strength` of them take every set of values together at least
    once (a covering array, chosen greedily: 12 of the 32 combinations for 5 switches and strength 3)."""
    names, combinations = list(options), [dict(zip(options, values)) for values in itertools.product(*options.values())]
    subsets = list(itertools.combinations(names, strength))

    def covers(combination):
        return {(subset, tuple(combination[name] for name in subset)) for subset in subsets}

    uncovered, chosen = set().union(*map(covers, combinations)), []
    while uncovered:
        best = max(combinations, key=lambda combination: len(covers(combination) & uncovered))
        chosen.append(best)
        uncovered -= covers(best)
    return chosen


def _case(backend: str, options: dict):
    label = "-".join(
        [backend, options["name"], options["grad_mode"], f"wd{options['weight_decay']:g}"]
        + [name for name in ("amsgrad", "maximize") if options[name]]
    )
    return pytest.param(backend, options, id=label)


# Every combination on the PyTorch backend; on the Triton backend, which runs in the interpreter on a CPU, every
# three switches in every combination of their values (the kernel's branches on them are independent).
CASES = [_case("torch", dict(zip(OPTIONS, values))) for values in itertools.product(*OPTIONS.values())]
CASES += [_case("triton", options) for options in covering(OPTIONS, strength=3)]


@pytest.mark.parametrize("backend, options", CASES)
def test_matches_torch(backend, options):
    options = dict(options)
    run_pair(options.pop("name"), backend, options.pop("grad_mode"), **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_tensor_lr_matches_torch(backend, name):
    run_pair(name, backend, "autograd", tensor_lr=True, weight_decay=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_param_groups_with_different_lr(backend, name):
    opt = run_pair(name, backend, "autograd", groups=3, weight_decay=0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 2e-2, 3e-2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_and_multidimensional(backend):
    run_pair("adamw", backend, "autograd", shapes=[(3, 4099), (64, 65), (1,)], steps=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_betas_near_limits_and_large_eps(backend):
    run_pair("adam", backend, "assign", betas=(0.0, 0.5), eps=1e-3, steps=10)
    run_pair("adam", backend, "assign", betas=(0.99, 0.9999), eps=1e-12, steps=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_schedule_matches_torch(backend):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, lr=0.05, v0="zero", backend=backend)
    ref = torch.optim.AdamW(ref_params, lr=0.05, foreach=False)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0 / (1 + step)) for o in (opt, ref)]
    for step in range(12):
        grads = gradients(params, step)
        set_grads(params, grads, "assign")
        set_grads(ref_params, grads, "assign")
        opt.step()
        ref.step()
        for schedule in schedules:
            schedule.step()
        assert_states_close(opt, params, ref, ref_params, **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_implementation_switches_are_accepted(backend):
    """A call site written for torch.optim.AdamW (foreach=, fused=, capturable=) works unchanged."""
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, lr=1e-2, v0="zero", backend=backend, foreach=False, fused=True, capturable=True)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, foreach=False)
    step_both(opt, params, ref, ref_params, steps=3)
