"""Writes into `opt.state` itself, not in place into its tensors (a reset with `opt.state[p] = {}`, a new tensor,
a whole new table, a copied entry), and into the param groups' lists of params, are read at the next step as
torch.optim.AdamW reads them; a bad one is refused before anything is written. (ZeroRedundancyOptimizer's
load_state_dict writes into opt.state: test_distributed.py.)"""

import random
from collections import defaultdict
from copy import deepcopy

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, assert_states_close, clone_params, gradients, make_params, set_grads

import v0adam

TOL = dict(rtol=1e-5, atol=1e-6)


def reset(opt, params):
    opt.state[params[0]] = {}


def delete(opt, params):
    del opt.state[params[2]]


def new_tensors(opt, params):
    state = opt.state[params[1]]
    state["exp_avg"] = torch.full_like(params[1], 0.1)
    state["exp_avg_sq"] = torch.full_like(params[1], 0.5)
    state["step"] = torch.tensor(10.0)


def new_table(opt, params):
    opt.state = defaultdict(dict)


def copied_entries(opt, params):
    """As Lightning moves optimizer states: every entry rebuilt as a new mapping of its type, same tensors."""
    for param, state in list(opt.state.items()):
        opt.state[param] = type(state)(state.items())


EDITS = [reset, delete, new_tensors, new_table, copied_entries]


def pair(backend):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    reference_params = clone_params(params)
    options = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend, **options)
    return params, opt, reference_params, torch.optim.AdamW(reference_params, foreach=False, **options)


def train(params, opt, reference_params, reference, steps, start):
    for step in range(start, start + steps):
        grads = gradients(params, step)
        set_grads(params, grads, "assign")
        set_grads(reference_params, grads, "assign")
        opt.step()
        reference.step()
        assert_states_close(opt, params, reference, reference_params, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "edits",
    [[edit] for edit in EDITS] + [[copied_entries, new_tensors]],
    ids=lambda edits: "+".join(e.__name__ for e in edits),
)
def test_edits_are_read_as_torch_reads_them(backend, edits):
    """Each edit after two steps, then a third step before the next: a copied entry must still report edits."""
    params, opt, reference_params, reference = pair(backend)
    train(params, opt, reference_params, reference, steps=2, start=0)
    for index, edit in enumerate(edits):
        edit(opt, params)
        edit(reference, reference_params)
        train(params, opt, reference_params, reference, steps=1, start=2 + index)
    train(params, opt, reference_params, reference, steps=2, start=2 + len(edits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_keys_are_kept(backend):
    params, opt, reference_params, reference = pair(backend)
    train(params, opt, reference_params, reference, steps=1, start=0)
    exp_avg = opt.state[params[0]]["exp_avg"]
    opt.state[params[0]]["note"] = 3
    train(params, opt, reference_params, reference, steps=1, start=1)
    assert opt.state[params[0]]["note"] == 3 and opt.state[params[0]]["exp_avg"] is exp_avg
    saved = opt.state_dict()["state"][0]
    assert type(saved) is dict and saved["note"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_edit_is_refused_before_any_write(backend):
    params, opt, reference_params, reference = pair(backend)
    train(params, opt, reference_params, reference, steps=1, start=0)
    views = dict(opt.state[params[0]])  # views of the flat buffers
    before = [param.detach().clone() for param in params] + [view.clone() for view in views.values()]
    opt.state[params[0]] = {}  # a valid edit (a reset), beside a bad one: not applied either
    opt.state[params[2]]["exp_avg"] = torch.zeros(7, device=DEVICE)  # params[2] has 4097 elements
    set_grads(params, gradients(params, 1), "assign")
    with pytest.raises(ValueError, match=r"'exp_avg' has shape \(7,\), but its parameter has shape \(4097,\)"):
        opt.step()
    after = [param.detach() for param in params] + list(views.values())
    assert all(torch.equal(value, old) for value, old in zip(after, before))


def append(group, extra):
    group["params"].append(extra)


def remove(group, extra):
    del group["params"][3]


def insert_by_new_list(group, extra):
    group["params"] = group["params"][:2] + [extra] + group["params"][2:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", [append, remove, insert_by_new_list], ids=lambda change: change.__name__)
def test_param_list_edits_are_read_as_torch_reads_them(backend, change):
    """A param put into a group's list is stepped from the next step on, with fresh state; one taken out is no
    longer stepped, its last state left in opt.state, as torch does; state_dict() leaves it out."""
    params, opt, reference_params, reference = pair(backend)
    params += make_params([(6,)], device=DEVICE, seed=1)
    reference_params += clone_params(params[-1:])
    for step in range(5):
        if step == 2:
            change(opt.param_groups[0], params[-1])
            change(reference.param_groups[0], reference_params[-1])
        grads = gradients(params, step)
        set_grads(params, grads, "assign")
        set_grads(reference_params, grads, "assign")
        opt.step()
        reference.step()
    for param, reference_param in zip(params, reference_params):
        torch.testing.assert_close(param, reference_param, **TOL)
    with_state = [_index_of(reference_params, param) for param, state in reference.state.items() if state]
    assert sorted(_index_of(params, param) for param in opt.state) == sorted(with_state)
    assert_states_close(
        opt, [params[i] for i in with_state], reference, [reference_params[i] for i in with_state], **TOL
    )
    assert len(opt.state_dict()["state"]) == len(opt.param_groups[0]["params"])  # torch's would fail on the removed


def test_a_non_tensor_put_into_a_group_is_refused_before_any_write():
    params = make_params([(3,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero")
    opt.param_groups[0]["params"].append("weight")
    params[0].grad = torch.ones(3, device=DEVICE)
    before = params[0].detach().clone()
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors, but one of the params is str"):
        opt.step()
    assert torch.equal(params[0].detach(), before)


OPERATIONS = ("step",) * 4 + ("drop_grad", "freeze", "unfreeze", "reset", "append", "remove", "new_group", "round_trip")


# How the loop zeroes grads: torch's default (None), zeroed in place (both optimizers), or v0adam's flat grad buffer
# (its zero_grad keeps zeroed views; torch's leaves None).
ZERO_GRAD_MODES = [("set_to_none", seed) for seed in range(6)] + [
    (mode, seed) for mode in ("zeroed", "flat_grads") for seed in range(3)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zero_grad_mode, seed", ZERO_GRAD_MODES)
def test_random_sequences_of_edits_follow_torch(backend, zero_grad_mode, seed):
    """Steps interleaved at random with freezing, unfreezing, state resets, params put into and taken out of the
    first group (and back, resuming their state) or given a group of their own, state_dict round trips, grads
    dropped before a step, clipped steps and NaN grads (skipped under skip_nonfinite; torch is then not stepped):
    params (also those out of the groups) and, after each step, states as torch's."""
    rng = random.Random(seed)
    shapes = [(4,), (3, 5), (7,), (1,), (2, 2), (6,), (5,)]
    params = make_params(shapes, device=DEVICE, seed=seed)
    reference_params = clone_params(params)
    spare = [len(shapes) - 1]  # indices of the params outside the groups
    options = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    flat_grads = zero_grad_mode == "flat_grads"
    opt = v0adam.V0AdamW(params[:-1], v0="zero", backend=backend, skip_nonfinite=True, flat_grads=flat_grads, **options)
    reference = torch.optim.AdamW(reference_params[:-1], foreach=False, **options)
    pairs = ((params, opt), (reference_params, reference))
    for step in range(60):
        if _edit_both(rng.choice(OPERATIONS), rng, spare, pairs) != "step":
            continue  # an edit shows in opt.state from the next step on
        grads = gradients(params, step)
        dropped = rng.randrange(len(shapes)) if rng.random() < 0.2 else None  # a grad set to None before the step
        clipped = rng.random() < 0.3
        poisoned = rng.randrange(len(shapes)) if rng.random() < 0.2 else None  # a NaN in this param's grad
        for model_params, optimizer in pairs:
            optimizer.zero_grad(set_to_none=zero_grad_mode != "zeroed")
            trained = [(param, grad) for param, grad in zip(model_params, grads) if param.requires_grad]
            if trained:
                sum((param * grad).sum() for param, grad in trained).backward()
            if dropped is not None:
                model_params[dropped].grad = None
            grouped = [param for group in optimizer.param_groups for param in group["params"]]
            nan = poisoned is not None and model_params[poisoned].grad is not None
            if nan:
                model_params[poisoned].grad.view(-1)[0] = float("nan")
            if clipped and optimizer is opt:
                opt.clip_grad_norm_(1.0)
            elif clipped:
                torch.nn.utils.clip_grad_norm_(grouped, 1.0)
            if optimizer is opt or not (nan and any(param is model_params[poisoned] for param in grouped)):
                optimizer.step()  # skip_nonfinite skips a step whose grads hold a NaN: torch is not stepped then
        for param, reference_param in zip(params, reference_params):
            torch.testing.assert_close(param, reference_param, **TOL)
        grouped = [_index_of(params, param) for group in opt.param_groups for param in group["params"]]
        ours, theirs = [params[i] for i in grouped], [reference_params[i] for i in grouped]
        assert_states_close(opt, ours, reference, theirs, **TOL)
    assert int(opt.skipped_steps) > 0


def _edit_both(operation, rng, spare, pairs) -> str:
    """Make the edit `operation` to both (params, optimizer) pairs, or none where it cannot apply: then "step"."""
    (params, opt), (_, reference) = pairs
    index = rng.randrange(len(params))
    first_group = opt.param_groups[0]["params"]
    if operation in ("freeze", "unfreeze"):
        for model_params, _ in pairs:
            model_params[index].requires_grad_(operation == "unfreeze")
    elif operation == "reset":
        for model_params, optimizer in pairs:
            optimizer.state[model_params[index]] = {}
    elif operation in ("append", "new_group") and spare:
        index = spare.pop(rng.randrange(len(spare)))
        for model_params, optimizer in pairs:
            if operation == "append":
                optimizer.param_groups[0]["params"].append(model_params[index])
            else:
                optimizer.add_param_group({"params": [model_params[index]], "lr": 5e-3})
    elif operation == "remove" and len(first_group) > 1:
        position = rng.randrange(len(first_group))
        spare.append(_index_of(params, first_group[position]))
        for _, optimizer in pairs:
            del optimizer.param_groups[0]["params"][position]
    elif operation == "round_trip" and not _removed_states(reference):  # torch's state_dict fails on those
        for _, optimizer in pairs:
            optimizer.load_state_dict(deepcopy(optimizer.state_dict()))
    else:
        return "step"
    return operation


def _removed_states(optimizer) -> bool:
    grouped = {id(param) for group in optimizer.param_groups for param in group["params"]}
    return any(id(param) not in grouped for param in optimizer.state)


def _index_of(tensors, tensor):
    return next(index for index, candidate in enumerate(tensors) if candidate is tensor)
