"""16-bit training modes: an fp32 master copy, stochastic rounding, bfloat16 optimizer states."""

import functools
import io

import pytest
import torch
import triton
import triton.language as tl
from conftest import BACKENDS, DEVICE
from helpers import MIXED_SHAPES, gradients, make_params
from v0adam.kernels.precision import stochastic_round_to_bfloat16

import v0adam
from v0adam.master_remainder import param_of_master

LOW = [torch.bfloat16, torch.float16]
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_master_tracks_fp32_adamw_and_params_are_its_rounding(backend, dtype, amsgrad):
    params = make_params(MIXED_SHAPES, dtype=dtype, device=DEVICE)
    fp32 = [torch.nn.Parameter(p.detach().float()) for p in params]
    opt = v0adam.V0AdamW(params, lr=1e-2, amsgrad=amsgrad, v0="zero", master_weights=True, backend=backend)
    ref = torch.optim.AdamW(fp32, lr=1e-2, amsgrad=amsgrad, foreach=False)
    for step in range(20):
        grads = gradients(params, step)  # 16-bit grads; the fp32 run gets the same values
        for p, q, g in zip(params, fp32, grads):
            p.grad, q.grad = g, g.float()
        opt.step()
        ref.step()
        for p, q in zip(params, fp32):
            state, master = opt.state[p], opt.master_weight(p)
            torch.testing.assert_close(master, q.detach(), **TOL)
            assert torch.equal(p.detach(), param_of_master(master, dtype))  # rounded to nearest
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key], ref.state[q][key], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["master_param", "param_remainder"])
def test_master_weights_state_dict(backend, kind):
    def build(params):
        master_weights = "fp32" if kind == "master_param" else True
        return v0adam.V0AdamW(params, lr=1e-2, v0="zero", master_weights=master_weights, backend=backend)

    params = make_params([(7, 5), (9,)], dtype=torch.bfloat16, device=DEVICE)
    opt = build(params)
    for step in range(3):
        for p, g in zip(params, gradients(params, step)):
            p.grad = g
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert kind in saved["state"][0]
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = build(resumed_params)
    resumed.load_state_dict(saved)
    for p, q in zip(params, resumed_params):
        assert torch.equal(resumed.state[q][kind], opt.state[p][kind])
        assert torch.equal(resumed.master_weight(q), opt.master_weight(p))

    # A plain torch checkpoint has no masters: they are taken from the params.
    plain_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.AdamW(plain_params, lr=1e-2)
    for p, g in zip(plain_params, gradients(plain_params, 0)):
        p.grad = g
    plain.step()
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in plain_params]
    fresh = build(fresh_params)
    fresh.load_state_dict(plain.state_dict())
    for p in fresh_params:
        assert torch.equal(fresh.master_weight(p), p.detach().float())


def first_step_of_ones(backend, stochastic_rounding, lr, numel=100_000):
    """Params of 1.0 and gradients of 1: with v0 = 0 and eps = 0 the first step is exactly -lr."""
    param = torch.nn.Parameter(torch.ones(numel, dtype=torch.bfloat16, device=DEVICE))
    opt = v0adam.V0Adam([param], lr=lr, eps=0.0, v0="zero", stochastic_rounding=stochastic_rounding, backend=backend)
    param.grad = torch.ones_like(param)
    opt.step()
    return param.detach().double()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stochastic_rounding_is_unbiased_and_keeps_tiny_updates(backend):
    # Below 1 the bfloat16 spacing is 2^-8; a step of 2^-10 is a quarter of it: round to nearest loses it.
    lr, numel = 2.0**-10, 100_000
    nearest = first_step_of_ones(backend, False, lr, numel)
    assert torch.all(nearest == 1.0)
    torch.manual_seed(1)
    rounded = first_step_of_ones(backend, True, lr, numel)
    assert set(rounded.unique().tolist()) == {1.0 - 2.0**-8, 1.0}
    # Each element moves by one spacing with probability 1/4: the mean is 1 - lr, with standard error
    # 2^-8 * sqrt(3/16 / numel); five of them.
    standard_error = 2.0**-8 * (3 / 16 / numel) ** 0.5
    assert abs(rounded.mean().item() - (1.0 - lr)) < 5 * standard_error
    torch.manual_seed(1)
    assert torch.equal(first_step_of_ones(backend, True, lr, numel), rounded)  # reproducible for a seed


@triton.jit
def _stochastic_rounding_kernel(x_ptr, rounded_ptr, draws_ptr, seed, first_element, step, BLOCK: tl.constexpr):
    """The kernel's stochastic rounding of BLOCK values, and the Philox draws of its counters (element index // 8,
    step), four outputs each."""
    offsets = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets)
    first_element = first_element.to(tl.int64)  # as the step's flat state offsets
    tl.store(rounded_ptr + offsets, stochastic_round_to_bfloat16(x, seed, first_element, step, BLOCK))
    counter = (first_element // 8 + tl.arange(0, BLOCK // 8)).to(tl.uint32)
    zeros = tl.zeros([BLOCK // 8], dtype=tl.uint32)
    draws = tl.philox(seed, counter, zeros, zeros + step.to(tl.uint32), zeros)
    for output in tl.static_range(4):
        tl.store(draws_ptr + tl.arange(0, BLOCK // 8) * 4 + output, draws[output])


def test_stochastic_rounding_gives_each_element_its_own_sixteen_random_bits():
    """Element 8i + 2j + h adds half h (low, high) of output j of the Philox draw of counter i: eight elements share
    a draw, none shares its bits."""
    block, first_element, seed, step = 256, 1024, 12345, 7
    x = torch.randn(block, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    rounded = torch.empty(block, dtype=torch.bfloat16, device=DEVICE)
    draws = torch.empty(block // 2, dtype=torch.int32, device=DEVICE)
    _stochastic_rounding_kernel[(1,)](x, rounded, draws, seed, first_element, step, BLOCK=block)
    words = draws.cpu().long() & 0xFFFFFFFF
    random = torch.stack([words & 0xFFFF, words >> 16], dim=1).reshape(block)
    expected = (((x.cpu().view(torch.int32).long() & 0xFFFFFFFF) + random) >> 16).to(torch.int16)
    assert torch.equal(rounded.cpu().view(torch.int16), expected)
    assert len(set(random.tolist())) > 0.99 * block  # distinct bits for each element, bar chance collisions


STEPS = 300


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x.to(self.net[0].weight.dtype)).float().squeeze(1)


@functools.cache  # each curve is deterministic, and several tests compare the same ones
def loss_curve(dtype, backend, mode=None):
    """The training losses of `Regression` in `dtype` with the precision option `mode` (a key of MODES)."""
    precision = MODES[mode] if mode else {}
    torch.manual_seed(0)
    model = Regression().to(device=DEVICE, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=generator).to(DEVICE)
    y = torch.sin(x.sum(1))
    # Flat grads: one segment per step, so the interpreter runs one program per step instead of one per param; the
    # roundings under test are the kernel's, the same whichever way the grads are read.
    opt = v0adam.V0AdamW(model.parameters(), lr=3e-3, v0="zero", backend=backend, flat_grads=True, **precision)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses)


MODES = {
    "master": dict(master_weights=True),
    "stochastic": dict(stochastic_rounding=True),
    "bf16-states": dict(state_dtype=torch.bfloat16),
    "round-to-nearest": {},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_bfloat16_training_follows_the_fp32_loss_curve(backend, mode):
    """A small regression MLP, 300 steps at lr 3e-3, loss from 0.56 to 0.03 in fp32. With bf16 params the forward
    pass alone (bf16 has an 8-bit mantissa, 0.4% relative) moves the curve by about 3e-3 (measured with master
    weights, whose updates are exact), and rounding each update to bf16 adds up to about 1e-2 more (measured: round
    to nearest 0.010, stochastic 0.007). Tolerance: every step after the tenth within 0.015 of the fp32 curve,
    under 3% of the starting loss, and the final loss within 50% of fp32's."""
    reference = loss_curve(torch.float32, backend)
    curve = loss_curve(torch.bfloat16, backend, mode)
    assert reference[-1] < 0.1 * reference[0]
    assert (curve[10:] - reference[10:]).abs().max() < 0.015
    assert curve[-1] < 1.5 * reference[-1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_master_weights_and_stochastic_rounding_beat_round_to_nearest(backend):
    """The reason both modes exist: updates smaller than half a bf16 spacing are not lost. Measured final losses:
    master 0.031, stochastic 0.034, round to nearest 0.039 (fp32 0.029)."""
    final = {mode: loss_curve(torch.bfloat16, backend, mode)[-1] for mode in MODES}
    assert final["master"] < final["round-to-nearest"]
    assert final["stochastic"] < final["round-to-nearest"]


def test_mixed_precision_errors():
    params = make_params([(4,)], dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="exclude each other"):
        v0adam.V0Adam(params, v0="zero", master_weights=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        v0adam.V0Adam(params, v0="zero", state_dtype=torch.float16)
    with pytest.raises(ValueError, match="stochastic_rounding supports bfloat16"):
        v0adam.V0Adam(make_params([(4,)], dtype=torch.float16), v0="zero", stochastic_rounding=True)


@pytest.mark.parametrize(
    "options",
    [
        dict(master_weights=True),
        dict(stochastic_rounding=True, state_dtype=torch.bfloat16),
        dict(state_dtype=torch.uint8, amsgrad=True, min_8bit_size=0),
        dict(state_dtype=torch.uint8, stochastic_rounding=True, min_8bit_size=0),
    ],
    ids=["master", "bf16-states-stochastic", "8-bit-amsgrad", "8-bit-stochastic"],
)
def test_the_pytorch_backend_steps_in_pieces_as_in_one(options, monkeypatch):
    """The PyTorch backend steps CHUNK elements at a time (its float32 temporaries stay small): pieces that cut
    params and 8-bit runs anywhere (at 512 elements) give bitwise the step taken in one piece."""

    def trained():
        # 8-bit states go to the last two; pieces of 512 cut the first and the 8-bit runs.
        params = make_params([(700,), (3, 300), (5,), (5, 256), (3, 512)], dtype=torch.bfloat16, device=DEVICE)
        torch.manual_seed(0)
        opt = v0adam.V0AdamW(params, lr=1e-2, v0="random", v0_seed=1, backend="torch", **options)
        for step in range(3):
            for p, g in zip(params, gradients(params, step)):
                p.grad = g
            opt.step()
        return params, opt

    whole, whole_opt = trained()
    eight_bit = any(bucket.moments.dtype == torch.uint8 for bucket in whole_opt._buckets)
    assert eight_bit == (options.get("state_dtype") == torch.uint8)
    monkeypatch.setattr(v0adam.torch_backend, "CHUNK", 512)
    pieces, pieces_opt = trained()
    for p, q in zip(whole, pieces):
        assert torch.equal(p, q)
        for key, value in whole_opt.state[p].items():
            assert torch.equal(value, pieces_opt.state[q][key]), key
