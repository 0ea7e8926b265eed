"""The model's params stay the model's: building and stepping the optimizer never replaces `p.data` or the storage a
param lives in, so what the ecosystem does with a model works as with torch's optimizers: safetensors (which refuses
tensors that share storage), tied params, params that are views of the user's own buffer. Flat param buffers are an
opt-in (`flat_grads=True`)."""

import pytest
import torch
from conftest import BACKENDS, DEVICE

import v0adam

safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")

CONFIGURATIONS = {
    "fp32": dict(dtype=torch.float32, options={}),
    "8-bit": dict(dtype=torch.float32, options=dict(state_dtype=torch.uint8, min_8bit_size=0)),
    "bf16-master": dict(dtype=torch.bfloat16, options=dict(master_weights=True)),
}


def model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 3)).to(DEVICE, dtype)


def train(net, opt, steps):
    for step in range(steps):
        x = torch.randn(4, 256, generator=torch.Generator().manual_seed(step)).to(DEVICE, next(net.parameters()).dtype)
        opt.zero_grad()
        net(x).float().square().mean().backward()
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_a_trained_model_round_trips_through_safetensors_bit_for_bit(backend, configuration, tmp_path):
    settings = CONFIGURATIONS[configuration]
    net = model(settings["dtype"])
    addresses = [p.data_ptr() for p in net.parameters()]
    opt = v0adam.V0AdamW(net.parameters(), lr=1e-2, backend=backend, **settings["options"])
    train(net, opt, 3)
    assert [p.data_ptr() for p in net.parameters()] == addresses
    safetensors_torch.save_model(net, tmp_path / "model.safetensors")
    loaded = model(settings["dtype"])
    missing, unexpected = safetensors_torch.load_model(loaded, tmp_path / "model.safetensors")
    assert not missing and not unexpected
    for param, other in zip(net.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(param, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_that_share_a_users_buffer_keep_sharing_it(backend):
    """Params as views of one buffer of the user's (as Megatron's or a user's own flat weights): the buffer sees
    every step, as with torch's AdamW."""
    ours, theirs = torch.linspace(-1, 1, 24, device=DEVICE), torch.linspace(-1, 1, 24, device=DEVICE)
    params = [torch.nn.Parameter(ours[:8]), torch.nn.Parameter(ours[8:].view(4, 4))]
    references = [torch.nn.Parameter(theirs[:8]), torch.nn.Parameter(theirs[8:].view(4, 4))]
    opt = v0adam.V0AdamW(params, lr=1e-2, backend=backend)
    reference = torch.optim.AdamW(references, lr=1e-2)
    for step in range(3):
        for group in (params, references):
            group[0].grad = torch.full((8,), 0.5 + step, device=DEVICE)
            group[1].grad = torch.full((4, 4), -0.25, device=DEVICE)
        opt.step()
        reference.step()
    assert params[0].data_ptr() == ours.data_ptr() and params[1].data_ptr() == ours[8:].data_ptr()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_params_stay_tied_and_train_as_with_torch(backend):
    """A weight shared by two modules (GPT-2's embedding and head) is one Parameter: stepped once where it lies,
    still shared, as torch's AdamW steps it."""

    def tied_net():
        torch.manual_seed(0)
        embedding, head = torch.nn.Embedding(16, 8).to(DEVICE), torch.nn.Linear(8, 16, bias=False).to(DEVICE)
        head.weight = embedding.weight
        return torch.nn.Sequential(embedding, head)

    ours, theirs = tied_net(), tied_net()
    address = ours[0].weight.data_ptr()
    opt = v0adam.V0AdamW(ours.parameters(), lr=1e-2, backend=backend)
    reference = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    tokens = torch.arange(6, device=DEVICE)
    for net, optimizer in ((ours, opt), (theirs, reference)):
        for _ in range(3):
            optimizer.zero_grad()
            net(tokens).square().mean().backward()
            optimizer.step()
    assert ours[1].weight is ours[0].weight and ours[0].weight.data_ptr() == address
    torch.testing.assert_close(ours[0].weight, theirs[0].weight, rtol=1e-6, atol=1e-7)
    for key, value in reference.state[theirs[0].weight].items():
        torch.testing.assert_close(opt.state[ours[0].weight][key], value, rtol=1e-6, atol=1e-7)


def test_flat_param_buffers_are_an_opt_in(tmp_path):
    net = model(torch.float32)
    opt = v0adam.V0AdamW(net.parameters(), flat_grads=True)
    (bucket,) = opt._buckets
    assert all(
        p.untyped_storage().data_ptr() == bucket.flat_param.untyped_storage().data_ptr() for p in net.parameters()
    )
    with pytest.raises(RuntimeError, match="share memory|shared"):
        safetensors_torch.save_model(net, tmp_path / "model.safetensors")
