"""state_dict in torch's layout: V0AdamW -> torch.optim.AdamW and back, through a real torch.save/torch.load,
with the trajectory continuing exactly as an uninterrupted run."""

import io

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, assert_states_close, clone_params, gradients, make_params, set_grads

import v0adam

TOL = dict(rtol=1e-5, atol=1e-6)


def save_and_load(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def train(params, opt, steps, start=0):
    for step in range(start, start + steps):
        set_grads(params, gradients(params, step), "assign")
        opt.step()


def make(kind, params, backend, amsgrad):
    if kind == "ours":
        return v0adam.V0AdamW(params, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, v0="zero", backend=backend)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, foreach=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
@pytest.mark.parametrize("direction", [("ours", "torch"), ("torch", "ours"), ("ours", "ours")], ids="->".join)
def test_resume_continues_the_trajectory(backend, amsgrad, direction):
    first, second = direction
    params = make_params(MIXED_SHAPES, device=DEVICE)
    uninterrupted = clone_params(params)
    reference = torch.optim.AdamW(uninterrupted, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, foreach=False)
    train(uninterrupted, reference, 14)

    opt = make(first, params, backend, amsgrad)
    train(params, opt, 7)
    saved = save_and_load(opt.state_dict())
    resumed_params = clone_params(params)
    resumed = make(second, resumed_params, backend, amsgrad)
    resumed.load_state_dict(saved)
    train(resumed_params, resumed, 7, start=7)
    assert_states_close(resumed, resumed_params, reference, uninterrupted, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_layout_is_torchs(backend):
    params = make_params([(3, 4), (5,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", amsgrad=True, backend=backend)
    train(params, opt, 2)
    state_dict = opt.state_dict()
    assert sorted(state_dict["state"]) == [0, 1]
    assert set(state_dict["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert state_dict["state"][0]["exp_avg"].shape == (3, 4)
    assert float(state_dict["state"][1]["step"]) == 2.0
    group = state_dict["param_groups"][0]
    assert group["params"] == [0, 1] and group["decoupled_weight_decay"] is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_rejects_wrong_shapes_before_writing(backend):
    params = make_params([(3, 4), (5,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend)
    train(params, opt, 2)
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    bad = opt.state_dict()
    bad = {"state": {k: dict(v) for k, v in bad["state"].items()}, "param_groups": bad["param_groups"]}
    bad["state"][1]["exp_avg"] = torch.zeros(6)
    with pytest.raises(ValueError, match="has shape"):
        opt.load_state_dict(bad)
    for key, value in before.items():
        assert torch.equal(opt.state[params[0]][key], value)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})


@pytest.mark.parametrize("backend", BACKENDS)
def test_loaded_states_are_still_views_of_the_flat_buffers(backend):
    params = make_params([(3, 4), (5,)], device=DEVICE)
    opt = v0adam.V0Adam(params, v0="zero", backend=backend)
    train(params, opt, 1)
    opt.load_state_dict(save_and_load(opt.state_dict()))
    flat = opt._buckets[0].exp_avg
    for p in params:
        assert opt.state[p]["exp_avg"].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


# Group keys that torch.optim.AdamW's state_dict holds and an older torch's did not.
NEWER_GROUP_KEYS = ("maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_of_an_older_torch_loads_and_trains_on(backend):
    """Param groups without the keys newer torch versions added: both optimizers fill in their defaults."""
    params = make_params(MIXED_SHAPES, device=DEVICE)
    original = make("torch", params, backend, amsgrad=False)
    train(params, original, steps=3)
    saved = original.state_dict()
    for group in saved["param_groups"]:
        for key in NEWER_GROUP_KEYS:
            group.pop(key, None)
    ours_params, their_params = clone_params(params), clone_params(params)
    ours, theirs = make("ours", ours_params, backend, amsgrad=False), make("torch", their_params, backend, False)
    ours.load_state_dict(save_and_load(saved))
    theirs.load_state_dict(save_and_load(saved))
    train(ours_params, ours, steps=3, start=3)
    train(their_params, theirs, steps=3, start=3)
    assert_states_close(ours, ours_params, theirs, their_params, **TOL)


def register_hooks(opt, calls: list) -> None:
    """One hook of each kind torch's optimizers take, each leaving a mark that the test can compare."""
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
    opt.register_state_dict_post_hook(lambda o, state_dict: {**state_dict, "saved_by": "post hook"})
    opt.register_load_state_dict_pre_hook(
        lambda o, state_dict: {**state_dict, "param_groups": [{**g, "lr": 5e-3} for g in state_dict["param_groups"]]}
    )
    opt.register_load_state_dict_post_hook(lambda o: calls.append("loaded"))
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("before step"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("after step"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_act_as_on_torchs_optimizer(backend):
    params = make_params(MIXED_SHAPES, device=DEVICE)
    ref_params = clone_params(params)
    ours, theirs = make("ours", params, backend, amsgrad=False), make("torch", ref_params, backend, amsgrad=False)
    our_calls, their_calls = [], []
    register_hooks(ours, our_calls)
    register_hooks(theirs, their_calls)
    train(params, ours, 2)
    train(ref_params, theirs, 2)
    our_dict, their_dict = ours.state_dict(), theirs.state_dict()
    assert our_dict["state"]["test"] == their_dict["state"]["test"] == 1 and ours.state["test"] == 1
    assert our_dict["saved_by"] == their_dict["saved_by"] == "post hook"
    ours.load_state_dict(save_and_load(our_dict))
    theirs.load_state_dict(save_and_load(their_dict))
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == 5e-3
    assert ours.state["test"] == theirs.state["test"] == 1  # state of no param survives the load
    train(params, ours, 2, start=2)
    train(ref_params, theirs, 2, start=2)
    assert our_calls == their_calls
    assert_states_close(ours, params, theirs, ref_params, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_count_of_skipped_steps_is_saved_and_resumed(backend):
    params = make_params([(3, 4), (5,)], device=DEVICE)
    opt = v0adam.V0AdamW(params, v0="zero", backend=backend, skip_nonfinite=True)
    train(params, opt, 1)
    for param in params:
        param.grad.fill_(float("inf"))
    opt.step()
    saved = save_and_load(opt.state_dict())
    resumed = v0adam.V0AdamW(clone_params(params), v0="zero", backend=backend, skip_nonfinite=True)
    resumed.load_state_dict(saved)
    assert int(resumed.skipped_steps) == 1
    assert all(group["skipped_steps"] is resumed.skipped_steps for group in resumed.param_groups)  # the live count
    torch_params = clone_params(params)
    torch.optim.AdamW(torch_params).load_state_dict(saved)  # the extra group key does not trouble torch's
    resumed.load_state_dict(torch.optim.AdamW(torch_params).state_dict())
    assert int(resumed.skipped_steps) == 0  # a checkpoint without the count restarts it, as it replaces the states
