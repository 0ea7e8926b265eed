"""V0AdamW in torchtitan's optimizer container (`v0adam.torchtitan`), on the CPU: its param groups by FQN pattern,
its flat FQN-keyed state dict through torch.distributed.checkpoint, and its lr-0 step that creates missing state,
which must leave v0 as set. Runs where torchtitan is installed (`pip install torchtitan`; its optimizer container
needs only tyro and spmd_types beside torch, as CI installs it)."""

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import DEVICE

pytest.importorskip("torchtitan.components.optimizer", reason="torchtitan is not installed")

from torchtitan.components.optimizer import OptimizersContainer, ParamGroupConfig  # noqa: E402

import v0adam  # noqa: E402
from v0adam.torchtitan import V0OptimizersContainer  # noqa: E402

WIDTH = 256  # rows of whole 256-element blocks: the weights take 8-bit states when asked


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, 4)).to(DEVICE)


def config(name="V0AdamW", **options):
    """torchtitan's way: biases without decay, the rest with it, each a ParamGroupConfig."""
    kwargs = {"lr": 1e-2, "betas": (0.9, 0.95), **options}
    return V0OptimizersContainer.Config(
        param_groups=[
            ParamGroupConfig(pattern=r"\.bias$", optimizer_name=name, optimizer_kwargs={**kwargs, "weight_decay": 0}),
            ParamGroupConfig(pattern=".*", optimizer_name=name, optimizer_kwargs={**kwargs, "weight_decay": 0.1}),
        ],
        implementation="foreach",
    )


def train(net, optimizers, steps, start=0):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, WIDTH, generator=generator).to(DEVICE)
        optimizers.zero_grad()
        net(x).square().mean().backward()
        optimizers.step()


def states_of(optimizers):
    return [
        {key: value.clone() for key, value in optimizer.state[param].items()}
        for optimizer in optimizers
        for group in optimizer.param_groups
        for param in group["params"]
    ]


def assert_same(net, other, states, other_states):
    for param, other_param in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(param, other_param)
    for state, other_state in zip(states, other_states, strict=True):
        assert state.keys() == other_state.keys()
        for key, value in state.items():
            assert torch.equal(value, other_state[key]), key


def test_the_container_builds_v0adam_with_torchtitans_groups():
    net = model()
    container = config(v0="random", v0_seed=3).build(model_parts=[net])
    (optimizer,) = container.optimizers
    assert type(optimizer) is v0adam.V0AdamW and isinstance(container, OptimizersContainer)
    assert [group["param_names"] for group in optimizer.param_groups] == [
        ["0.bias", "2.bias"],
        ["0.weight", "2.weight"],
    ]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0, 0.1]
    plain_net = model()
    plain = v0adam.V0AdamW(
        [
            {"params": [plain_net[0].bias, plain_net[2].bias], "weight_decay": 0},
            {"params": [plain_net[0].weight, plain_net[2].weight], "weight_decay": 0.1},
        ],
        lr=1e-2,
        betas=(0.9, 0.95),
        v0="random",
        v0_seed=3,
    )
    train(net, container, 3)
    train(plain_net, plain, 3)
    assert_same(net, plain_net, states_of(container.optimizers), states_of([plain]))


@pytest.mark.parametrize("states", ["fp32", "8-bit"])
def test_a_checkpoint_through_dcp_resumes_bitwise_and_v0_is_left_as_set(states, tmp_path):
    options = {"v0": "random", "v0_seed": 7}
    if states == "8-bit":
        options.update(state_dtype=torch.uint8, min_8bit_size=0)
    net = model()
    container = config(**options).build(model_parts=[net])
    v0 = states_of(container.optimizers)
    saved = container.state_dict()  # the container's lr-0 step runs only where an optimizer holds no state
    assert_same(net, model(), states_of(container.optimizers), v0)
    assert (states == "8-bit") == any(key.endswith(".exp_avg_sq_code") for key in saved)
    train(net, container, 3)
    dcp.save(container.state_dict(), checkpoint_id=tmp_path / "optimizer")
    resumed_net = model()
    resumed_net.load_state_dict(net.state_dict())
    resumed = config(**options).build(model_parts=[resumed_net])
    loaded = resumed.state_dict()
    dcp.load(loaded, checkpoint_id=tmp_path / "optimizer")
    resumed.load_state_dict(loaded)
    assert_same(net, resumed_net, states_of(container.optimizers), states_of(resumed.optimizers))
    train(net, container, 2, start=3)
    train(resumed_net, resumed, 2, start=3)
    assert_same(net, resumed_net, states_of(container.optimizers), states_of(resumed.optimizers))


def test_v0adamw_with_v0_zero_trains_as_torchtitans_adamw():
    ours, theirs = model(), model()
    v0adam_container = config(v0="zero").build(model_parts=[ours])
    torch_container = config("AdamW").build(model_parts=[theirs])
    assert type(torch_container.optimizers[0]) is torch.optim.AdamW
    train(ours, v0adam_container, 4)
    train(theirs, torch_container, 4)
    for param, reference in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)
