"""v0, the initial second moment: the paper's random (eq. 11) and data (eq. 10) modes, user-supplied v0, and the
bias correction left as the paper has it (parity with torch.optim.Adam whose exp_avg_sq was pre-filled)."""

import math

import pytest
import torch
from conftest import BACKENDS, DEVICE
from helpers import clone_params, make_params, step_both
from v0adam.kernels.v0_init import draw_random_v0_

import v0adam
from v0adam.sharding import is_one_run
from v0adam.v0 import TORCH_DRAW_CHUNK, draw_random_


def initial_v0(opt, params):
    return [opt.state[p]["exp_avg_sq"].clone() for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(256, 128), (64, 32, 3, 3)], ids=["linear", "conv"])
def test_random_v0_follows_eq_11(backend, shape):
    """Per tensor: mean sigma / (fan_in + fan_out), and var / mean^2 = 2 (chi-squared, one degree of freedom)."""
    param = make_params([shape], device=DEVICE)[0]
    opt = v0adam.V0Adam([param], v0="random", v0_scale=100.0, v0_seed=3, backend=backend)
    v0 = opt.state[param]["exp_avg_sq"].double()
    receptive = math.prod(shape[2:])
    expected_mean = 100.0 / (shape[1] * receptive + shape[0] * receptive)
    n = v0.numel()
    # Sampling error of the mean of n chi-squared(1) draws is sqrt(2 / n) relative; of var / mean^2 about
    # sqrt(56 / n) / 2. Five standard errors each.
    assert v0.mean().item() == pytest.approx(expected_mean, rel=5 * math.sqrt(2 / n))
    assert (v0.var() / v0.mean() ** 2).item() == pytest.approx(2.0, rel=5 * math.sqrt(56 / n) / 2)
    assert (v0 >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_v0_is_zero_for_biases_and_sigma_100_by_default(backend):
    model = torch.nn.Linear(16, 8).to(DEVICE)
    opt = v0adam.V0AdamW(model.parameters(), v0="random", backend=backend)
    assert opt.param_groups[0]["v0"] == "random" and opt.param_groups[0]["v0_scale"] is None
    assert not opt.state[model.bias]["exp_avg_sq"].any()
    assert opt.state[model.weight]["exp_avg_sq"].gt(0).all()
    assert opt.state[model.weight]["exp_avg_sq"].mean().item() == pytest.approx(100 / 24, rel=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_default_v0_is_zero_and_the_optimizer_is_torchs_adamw(backend):
    """The default the evidence sweep chose (docs/v0.md, "v0: when it helps"): swapping AdamW for V0AdamW changes
    nothing but the speed."""
    params = make_params([(6, 5), (5,)], device=DEVICE)
    ref_params = clone_params(params)
    opt = v0adam.V0AdamW(params, backend=backend)
    assert opt.param_groups[0]["v0"] == "zero" and not any(opt.state[p]["exp_avg_sq"].any() for p in params)
    step_both(opt, params, torch.optim.AdamW(ref_params, foreach=False), ref_params, steps=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_v0_depends_only_on_seed_param_and_element(backend):
    shapes = [(30, 20), (7,), (40, 3)]

    def draw(seed, grouped=False):
        params = make_params(shapes, device=DEVICE)
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.1}] if grouped else params
        return initial_v0(v0adam.V0Adam(groups, v0="random", v0_seed=seed, backend=backend), params)

    same, again, split, other = draw(1), draw(1), draw(1, grouped=True), draw(2)
    for a, b, c, d in zip(same, again, split, other):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert not a.any() or not torch.equal(a, d)


def test_random_draw_is_the_same_for_any_block_size_and_shard():
    whole = torch.empty(10_000, device=DEVICE)
    draw_random_v0_(whole, 1.0, seed=5, param_index=2, block=1024)
    other_block = torch.empty(10_000, device=DEVICE)
    draw_random_v0_(other_block, 1.0, seed=5, param_index=2, block=256)
    shard = torch.empty(3_000, device=DEVICE)
    draw_random_v0_(shard, 1.0, seed=5, param_index=2, element_offset=6_000)
    assert torch.equal(whole, other_block) and torch.equal(whole[6_000:9_000], shard)


def test_unseeded_random_v0_follows_torch_manual_seed():
    torch.manual_seed(11)
    first = v0adam.V0Adam(make_params([(8, 8)]), v0="random", backend="torch").param_groups[0]["v0_seed"]
    torch.manual_seed(11)
    assert v0adam.V0Adam(make_params([(8, 8)]), v0="random", backend="torch").param_groups[0]["v0_seed"] == first


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("mode", ["random", "dict", "callable"])
def test_matches_torch_with_prefilled_exp_avg_sq(backend, name, mode):
    """The authors' method: torch.optim.Adam with state["exp_avg_sq"] = v0 before the first step. 20 steps."""
    ours_cls, torch_cls = {"adam": (v0adam.V0Adam, torch.optim.Adam), "adamw": (v0adam.V0AdamW, torch.optim.AdamW)}[
        name
    ]
    params = make_params([(12, 9), (9,), (5, 4, 3)], device=DEVICE)
    ref_params = clone_params(params)
    user = [torch.rand(p.shape, device=DEVICE) * 0.01 for p in params]
    user_by_param = dict(zip(params, user))
    v0 = {"random": "random", "dict": user_by_param, "callable": lambda p: user_by_param[p]}[mode]
    opt = ours_cls(params, lr=1e-2, weight_decay=0.05, v0=v0, v0_seed=0, backend=backend)
    ref = torch_cls(ref_params, lr=1e-2, weight_decay=0.05, foreach=False)
    for p, q, supplied in zip(params, ref_params, user):
        start = opt.state[p]["exp_avg_sq"].clone()
        if mode != "random":
            assert torch.equal(start, supplied)
        ref.state[q] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(q), "exp_avg_sq": start}
    step_both(opt, params, ref, ref_params, steps=20)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_step_is_no_longer_sign_descent(backend):
    """Paper eq. 12, with eps = 0: |step 1| = lr for every element when v0 = 0, and
    lr * |g| / sqrt(g^2 + beta2 / (1 - beta2) * v0) when v0 > 0."""
    lr, beta2 = 1e-2, 0.999
    shape = (32, 16)
    grad = torch.randn(shape, device=DEVICE)
    v0 = torch.rand(shape, device=DEVICE) * 1e-3
    steps = {}
    for name in ("zero", "v0"):
        # Starting at 0 the step is the param itself, free of the rounding of a difference.
        param = torch.nn.Parameter(torch.zeros(shape, device=DEVICE))
        initial = {param: v0} if name == "v0" else "zero"
        start = param.detach().clone()
        opt = v0adam.V0Adam([param], lr=lr, betas=(0.9, beta2), eps=0.0, v0=initial, backend=backend)
        param.grad = grad.clone()
        opt.step()
        steps[name] = (param.detach() - start).abs()
    torch.testing.assert_close(steps["zero"], torch.full(shape, lr, device=DEVICE), rtol=1e-5, atol=0)
    expected = lr * grad.abs() / torch.sqrt(grad**2 + beta2 / (1 - beta2) * v0)
    torch.testing.assert_close(steps["v0"], expected, rtol=1e-4, atol=1e-8)
    assert (steps["v0"] < steps["zero"]).all()


class LeastSquares(torch.nn.Module):
    """0.5 * mean((x @ w + b - y)^2): per-batch gradients w.r.t. w and b are closed form."""

    def __init__(self, dim):
        super().__init__()
        self.linear = torch.nn.Linear(dim, 1)
        self.unused = torch.nn.Parameter(torch.ones(3))  # gets a zero gradient in every batch
        self.seen_training = []

    def forward(self, batch):
        x, y = batch
        self.seen_training.append(self.training)
        return 0.5 * ((self.linear(x).squeeze(1) - y) ** 2).mean() + 0.0 * self.unused.sum()


def expected_data_v0(model, batches, sigma):
    w = model.linear.weight.detach().double().squeeze(0)
    b = model.linear.bias.detach().double()
    grads_w, grads_b = [], []
    for x, y in batches:
        x, y = x.double(), y.double()
        residual = x @ w + b - y
        grads_w.append(x.T @ residual / len(y))
        grads_b.append(residual.mean(0, keepdim=True))
    expected = []
    for grads in (grads_w, grads_b):
        stacked = torch.stack(grads)
        mean, var = stacked.mean(0), stacked.var(0, unbiased=False)
        expected.append(sigma * (mean**2 + len(batches[0][1]) * var))
    return expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_v0_equals_the_closed_form(backend):
    torch.manual_seed(0)
    model = LeastSquares(5).to(DEVICE)
    batches = [(torch.randn(10, 5, device=DEVICE), torch.randn(10, device=DEVICE) * 3) for _ in range(4)]
    before = [p.detach().clone() for p in model.parameters()]
    opt = v0adam.V0Adam(model.parameters(), v0="data", v0_scale=2.0, backend=backend)
    with pytest.raises(RuntimeError, match="init_v0_from_data"):
        opt.step()
    seen = opt.init_v0_from_data(batches, model, num_samples=35, model=model)
    assert seen == 40 and len(model.seen_training) == 4 and not any(model.seen_training) and model.training
    expected_w, expected_b = expected_data_v0(model, batches, sigma=2.0)
    # float32 sums of four gradients against a float64 closed form.
    torch.testing.assert_close(
        opt.state[model.linear.weight]["exp_avg_sq"].double().squeeze(0), expected_w, rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(opt.state[model.linear.bias]["exp_avg_sq"].double(), expected_b, rtol=1e-4, atol=1e-7)
    assert not opt.state[model.unused]["exp_avg_sq"].any()
    for p, b in zip(model.parameters(), before):
        # Grads are left as zero_grad() leaves them: None.
        assert torch.equal(p.detach(), b) and p.grad is None and not opt.state[p]["exp_avg"].any()
    model(batches[0]).backward()
    opt.step()  # now allowed


def test_data_v0_needs_a_data_group_and_no_step_yet():
    params = make_params([(3, 3)])
    with pytest.raises(ValueError, match="v0='data'"):
        v0adam.V0Adam(params, v0="zero").init_v0_from_data([], lambda batch: None)
    opt = v0adam.V0Adam(params, v0="data")
    opt.init_v0_from_data([torch.ones(2, 3)], lambda batch: (params[0] @ batch.T).sum())
    params[0].grad = torch.ones(3, 3)
    opt.step()
    with pytest.raises(RuntimeError, match="before the first step"):
        opt.init_v0_from_data([torch.ones(2, 3)], lambda batch: (params[0] @ batch.T).sum())


@pytest.mark.parametrize(
    "trained_by, message",
    # torch's param groups carry no v0: loaded, they make the group v0="zero", as they set every other option.
    [("v0adam", "not after load_state_dict"), ("torch", "needs at least one param group with v0='data'")],
)
def test_data_v0_refuses_an_optimizer_that_loaded_a_trained_state(trained_by, message):
    """init_v0_from_data after load_state_dict would overwrite the restored moments: refused, nothing written."""
    params = make_params([(3, 3)])
    trained = [torch.nn.Parameter(p.detach().clone()) for p in params]
    if trained_by == "torch":
        trainer = torch.optim.AdamW(trained)
    else:
        trainer = v0adam.V0AdamW(trained, v0="data")
        trainer.init_v0_from_data([torch.ones(2, 3)], lambda batch: (trained[0] @ batch.T).sum())
    for step in range(2):
        trained[0].grad = torch.full((3, 3), step + 1.0)
        trainer.step()
    opt = v0adam.V0AdamW(params, v0="data")
    opt.load_state_dict(trainer.state_dict())
    restored = {key: value.clone() for key, value in opt.state[params[0]].items()}
    with pytest.raises((RuntimeError, ValueError), match=message):
        opt.init_v0_from_data([torch.ones(2, 3)], lambda batch: (params[0] @ batch.T).sum())
    for key, value in restored.items():
        assert torch.equal(opt.state[params[0]][key], value)
    for key, value in trainer.state[trained[0]].items():
        torch.testing.assert_close(opt.state[params[0]][key], value, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shard_draws_what_the_whole_param_has_there(backend):
    """The random v0 of a slice of a param (an FSDP2 shard) is that slice of the whole param's, on both backends:
    the PyTorch backend's generator chunks are cut at the start, inside and at the end of a shard."""
    shape = torch.Size((3 * TORCH_DRAW_CHUNK // 64 + 5, 64))  # three whole draw chunks and part of a fourth
    options = dict(sigma=100.0, seed=5, param_index=2, use_triton=backend == "triton")
    whole = torch.empty(shape, device=DEVICE)
    draw_random_(whole, shape, **options)
    numel = shape.numel()
    for start, stop in [(0, 100), (TORCH_DRAW_CHUNK - 10, TORCH_DRAW_CHUNK + 10), (70_000, numel), (numel - 90, numel)]:
        shard = torch.empty(stop - start, device=DEVICE)
        draw_random_(shard, shape, element_offset=start, **options)
        assert torch.equal(shard, whole.view(-1)[start:stop])


@pytest.mark.parametrize(
    "box, shape, expected",
    [
        ((2, 5), (3, 5), True),  # Shard(0)
        ((3, 5), (3, 5), True),  # Replicate
        ((0, 5), (1, 5), True),  # an empty shard
        ((1, 2, 4), (3, 2, 4), True),
        ((1, 1, 4), (3, 2, 4), True),  # one row of one plane
        ((3, 2), (3, 5), False),  # Shard(1)
        ((2, 1, 4), (3, 2, 4), False),
    ],
)
def test_which_shards_are_one_run_of_the_param(box, shape, expected):
    assert is_one_run(box, shape) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_share_numbered_as_the_whole_draws_the_whole_models_v0(backend):
    """What setup_zero relies on under ZeRO: an optimizer over some params, numbered by their positions in
    the whole list, draws the v0 an optimizer over the whole list draws for them."""
    params = make_params([(6, 5), (4,), (7, 3), (2, 9)], device=DEVICE)
    whole = v0adam.V0Adam(params, v0="random", v0_seed=2, backend=backend)
    copies = clone_params(params)
    share = v0adam.V0Adam(copies[2:], v0="random", v0_seed=2, backend=backend)
    assert not torch.equal(share.state[copies[2]]["exp_avg_sq"], whole.state[params[2]]["exp_avg_sq"])
    share.number_params_as(copies)
    for param, copy in zip(params[2:], copies[2:]):
        assert torch.equal(share.state[copy]["exp_avg_sq"], whole.state[param]["exp_avg_sq"])


def test_numbering_needs_every_param_and_no_step_yet():
    params = make_params([(3, 3), (2, 2)])
    opt = v0adam.V0Adam(params, backend="torch")
    with pytest.raises(ValueError, match="every param of this optimizer"):
        opt.number_params_as(params[:1])
    params[0].grad = torch.ones(3, 3)
    opt.step()
    with pytest.raises(RuntimeError, match="before the first step"):
        opt.number_params_as(params)


@pytest.mark.parametrize(
    "options", [dict(v0="random"), dict(stochastic_rounding=True)], ids=["random-v0", "stochastic-rounding"]
)
def test_building_the_optimizer_leaves_the_global_generator_alone(options):
    """Swapping torch.optim.AdamW for V0AdamW keeps every later draw (data order, dropout) of a seeded run."""
    draws = []
    for build in (torch.optim.AdamW, lambda params: v0adam.V0AdamW(params, **options)):
        torch.manual_seed(0)
        build(make_params([(8, 8), (8,)], dtype=torch.bfloat16))
        draws.append(torch.rand(3))
    assert torch.equal(*draws)


def test_unseeded_groups_get_seeds_of_their_own_that_follow_manual_seed():
    seeds = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        params = make_params([(8, 8), (4, 4)])
        opt = v0adam.V0Adam([{"params": params[:1]}, {"params": params[1:]}], v0="random", backend="torch")
        seeds.append(tuple(group["v0_seed"] for group in opt.param_groups))
    assert seeds[0] == seeds[1] and seeds[0] != seeds[2] and len(set(seeds[0])) == 2
