"""The exact 2-byte master (`v0adam.master_remainder`): a bfloat16 param and an int16 remainder are the float32
master bit for bit, so training is bitwise that of a float32 master copy, and checkpoints convert between the two."""

import io

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import gradients, make_params

import v0adam
from v0adam.master_remainder import join_master, split_master

SHAPES = [(300,), (7, 11), (1,), (1030,), (3, 256)]  # the last takes 8-bit states where they are asked for


def bits(tensor):
    return tensor.view({2: torch.int16, 4: torch.int32}[tensor.element_size()])


def test_split_and_join_are_exact_for_every_kind_of_float32():
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randint(-(2**31), 2**31, (1 << 18,), generator=generator, dtype=torch.int64)
    # Ties to an even and to an odd param, the largest finite values, infinities, zeros, subnormals, NaNs.
    edges = [0x8000, 0x18000, 0x3F808000, 0x3F818000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0x7F800000, 0, 1, 0x7FC00000]
    patterns = torch.cat([patterns, torch.tensor(edges), -torch.tensor(edges[:-1]) - 1, torch.tensor([-(2**31)])])
    master = (patterns - (patterns >= 2**31) * 2**32).to(torch.int32).view(torch.float32)
    param, remainder = split_master(master)
    rebuilt = join_master(param, remainder)
    number = ~master.isnan()
    assert torch.equal(bits(rebuilt)[number], bits(master)[number])
    assert rebuilt[~number].isnan().all() and param[~number].isnan().all()
    # The param is the master to nearest: within half a bfloat16 spacing, and round-half-even's but on ties.
    nearest = master.to(torch.bfloat16)
    tie = (bits(master) & 0xFFFF) == 0x8000
    assert torch.equal(bits(param)[number & ~tie], bits(nearest)[number & ~tie])
    away = tie & number & (master.abs() < torch.finfo(torch.bfloat16).max)
    assert (param[away].float().abs() > master[away].abs()).all()


def train(backend, master_weights, steps, state_dtype=None, amsgrad=False, start=None):
    """bfloat16 params stepped `steps` times from seeded grads; `start` an optimizer state_dict and the params to
    continue from."""
    params = make_params(SHAPES, dtype=torch.bfloat16, device=DEVICE)
    opt = v0adam.V0AdamW(
        params,
        lr=3e-2,
        weight_decay=0.1,
        amsgrad=amsgrad,
        v0="random",
        v0_seed=3,
        master_weights=master_weights,
        state_dtype=state_dtype,
        min_8bit_size=0,
        backend=backend,
    )
    first = 0
    if start is not None:
        state_dict, values = start
        with torch.no_grad():
            for p, value in zip(params, values):
                p.copy_(value)
        opt.load_state_dict(state_dict)
        first = int(state_dict["state"][0]["step"])
    for step in range(first, first + steps):
        for p, g in zip(params, gradients(params, step)):
            p.grad = g
        opt.step()
    return opt, params


def assert_same_training(one, other):
    (opt, params), (other_opt, other_params) = one, other
    for p, q in zip(params, other_params):
        assert torch.equal(bits(p.detach()), bits(q.detach()))
        assert torch.equal(bits(opt.master_weight(p)), bits(other_opt.master_weight(q)))
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"):
            if key in other_opt.state[q]:
                assert torch.equal(opt.state[p][key], other_opt.state[q][key]), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "state_dtype, amsgrad", [(None, False), (None, True), (torch.uint8, False)], ids=["fp32", "amsgrad", "8-bit"]
)
def test_remainder_trains_bit_for_bit_as_a_float32_master_copy(backend, state_dtype, amsgrad):
    remainder = train(backend, True, 12, state_dtype, amsgrad)
    copy = train(backend, "fp32", 12, state_dtype, amsgrad)
    assert_same_training(remainder, copy)
    (opt, params), (copy_opt, copy_params) = remainder, copy
    assert any(bucket.moments.dtype == torch.uint8 for bucket in opt._buckets) == (state_dtype == torch.uint8)
    for p, q in zip(params, copy_params):
        state = opt.state[p]
        assert "master_param" not in state and state["param_remainder"].dtype == torch.int16
        # The param and its remainder are the split of the master the float32 run holds (the kernel's split is
        # the reference's).
        param, low = split_master(copy_opt.state[q]["master_param"])
        assert torch.equal(bits(p.detach()), bits(param)) and torch.equal(state["param_remainder"], low)
    # Well apart from the master-free run: the remainder is doing something.
    rounded = train(backend, False, 12, state_dtype, amsgrad)
    assert not all(torch.equal(p, q) for p, q in zip(params, rounded[1]))


def saved(opt, params):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True), [p.detach().clone() for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("saved_as, resumed_as", [(True, True), (True, "fp32"), ("fp32", True)])
def test_a_run_resumes_bit_for_bit_from_either_kind_of_master(backend, saved_as, resumed_as):
    uninterrupted = train(backend, True, 8)
    start = saved(*train(backend, saved_as, 4))
    key = "param_remainder" if saved_as is True else "master_param"
    assert set(start[0]["state"][0]) == {"step", "exp_avg", "exp_avg_sq", key}
    resumed = train(backend, resumed_as, 4, start=start)
    assert_same_training(resumed, uninterrupted)
    # A master of the other kind was converted, not kept beside its replacement.
    own = "param_remainder" if resumed_as is True else "master_param"
    assert {"master_param", "param_remainder"} & set(resumed[0].state[resumed[1][0]]) == {own}


def test_torch_adamw_loads_a_remainder_checkpoint():
    params = make_params(SHAPES, dtype=torch.bfloat16, device=DEVICE)
    opt = v0adam.V0AdamW(params, lr=1e-2, master_weights=True, backend="torch")
    for p, g in zip(params, gradients(params, 0)):
        p.grad = g
    opt.step()
    plain_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.AdamW(plain_params, lr=1e-2)
    plain.load_state_dict(opt.state_dict())
    for p, q in zip(params, plain_params):
        assert torch.equal(plain.state[q]["exp_avg"], opt.state[p]["exp_avg"].to(q.dtype))  # torch casts to it
        q.grad = torch.ones_like(q)
    plain.step()


def test_an_edit_of_the_param_moves_the_master_with_it():
    """A remainder master is the param's high half: writing the param (an EMA swap, a re-initialised layer) writes
    the master to within the remainder, where a float32 copy would overwrite the edit at the next step."""
    (param,) = make_params([(64,)], dtype=torch.bfloat16, device=DEVICE)
    opt = v0adam.V0AdamW([param], lr=1e-2, master_weights=True)
    param.grad = torch.ones_like(param)
    opt.step()
    with torch.no_grad():
        param.fill_(2.0)
    torch.testing.assert_close(opt.master_weight(param), torch.full((64,), 2.0, device=DEVICE), rtol=2**-8, atol=0)


def test_bad_master_settings_and_remainders_are_refused_before_anything_is_written():
    (param,) = make_params([(8,)], dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="master_weights"):
        v0adam.V0AdamW([param], master_weights="bf16")
    opt = v0adam.V0AdamW([param], master_weights=True)
    state_dict = opt.state_dict()
    state_dict["state"] = {0: {"step": torch.tensor(3.0), "param_remainder": torch.zeros(8)}}
    before = param.detach().clone()
    with pytest.raises(ValueError, match="param_remainder"):
        opt.load_state_dict(state_dict)
    assert torch.equal(param.detach(), before) and float(opt.state[param]["step"]) == 0
    with pytest.raises(KeyError, match="master_weight"):
        opt.master_weight(torch.nn.Parameter(torch.zeros(2)))
