"""Writes into `opt.state` itself, not in place into its tensors (a reset with `opt.state[p] = {}`, a new tensor,
a whole new table, a copied entry), and into the param groups' lists of params, are read at the next step as
torch.optim.AdamW reads them; a bad one is refused before anything is written. (ZeroRedundancyOptimizer's
load_state_dict writes into opt.state: test_distributed.py.)"""

from collections import defaultdict

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
    longer stepped (torch keeps its last state in opt.state; v0adam drops it)."""
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
    stepped = [
        index for index, param in enumerate(reference_params) if param in set(reference.param_groups[0]["params"])
    ]
    assert_states_close(opt, [params[i] for i in stepped], reference, [reference_params[i] for i in stepped], **TOL)
    assert set(opt.state) == {params[i] for i in stepped}


def test_a_non_tensor_put_into_a_group_is_refused_before_any_write():
    params = make_params([(3,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero")
    opt.param_groups[0]["params"].append("weight")
    params[0].grad = torch.ones(3, device=DEVICE)
    before = params[0].detach().clone()
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors, but one of the params is str"):
        opt.step()
    assert torch.equal(params[0].detach(), before)
