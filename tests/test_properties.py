"""Property-based tests (hypothesis): random shapes, dtypes, hyperparameters and awkward gradients against the
float64 reference, and the theory of the seeds (Adam's step-size bound, beta1 = beta2, the v0 first step)."""

import math

import pytest
import torch
from conftest import BACKENDS, DEVICE
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import v0adam
from v0adam.reference import adam_step_reference

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# One step from the same start: float32 math against float64 (a few float32 ulps); 16-bit params may land one
# unit in the last place away, when the float32 result sits near a rounding boundary.
PARAM_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}

shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)
betas = st.one_of(
    st.tuples(st.floats(0.0, 0.999), st.floats(0.0, 0.9999)),
    st.floats(0.0, 0.999).map(lambda beta: (beta, beta)),  # beta1 = beta2
    st.just((0.9, 0.999)),
)
# Gradient magnitudes from denormal to 1e18 (whose square still fits in float32), with exact zeros.
magnitudes = st.sampled_from([0.0, 1e-40, 1e-20, 1e-6, 1.0, 1e3, 1e18])


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    lr=st.one_of(st.just(0.0), st.floats(1e-5, 1.0)),
    eps=st.floats(1e-12, 1.0),
    beta_pair=betas,
    weight_decay=st.one_of(st.just(0.0), st.floats(0.0, 10.0)),
    decoupled=st.booleans(),
    amsgrad=st.booleans(),
    grad_scales=st.lists(magnitudes, min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_each_step_matches_the_reference(
    backend, shape, dtype, lr, eps, beta_pair, weight_decay, decoupled, amsgrad, grad_scales, seed
):
    if dtype == torch.float16:
        grad_scales = [min(scale, 1e3) for scale in grad_scales]  # float16 holds values up to 65504
    generator = torch.Generator().manual_seed(seed)
    param = torch.nn.Parameter(torch.randn(shape, generator=generator).to(DEVICE, dtype))
    cls = v0adam.V0AdamW if decoupled else v0adam.V0Adam
    opt = cls(
        [param], lr=lr, betas=beta_pair, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, v0="zero", backend=backend
    )
    for step, scale in enumerate(grad_scales, start=1):
        grad = (torch.randn(shape, generator=generator) * scale).to(DEVICE, dtype)
        state = {key: value.double() for key, value in opt.state[param].items()}
        exp_avg_before, exp_avg_sq_before = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
        before = param.detach().double()
        expected = before.clone()
        adam_step_reference(
            expected,
            grad.double(),
            state["exp_avg"],
            state["exp_avg_sq"],
            state.get("max_exp_avg_sq"),
            step,
            lr=lr,
            beta1=beta_pair[0],
            beta2=beta_pair[1],
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled,
            amsgrad=amsgrad,
            maximize=False,
        )
        param.grad = grad
        opt.step()
        ours = param.detach().double()
        assert not (ours.isnan() & expected.isfinite()).any()
        # Magnitudes of the operands of each update bound its float32 rounding error (see assert_within). The
        # states are checked against the reference; the param against the reference's last line applied to our
        # new states, so that a state's rounding is not counted twice.
        grad_scale = grad.double().abs() + (0.0 if decoupled else weight_decay * before.abs())
        new_state = {key: value.double() for key, value in opt.state[param].items()}
        assert_within(new_state["exp_avg"], state["exp_avg"], 1e-5, operands=exp_avg_before.abs() + grad_scale)
        assert_within(
            new_state["exp_avg_sq"], state["exp_avg_sq"], 1e-5, operands=exp_avg_sq_before.abs() + grad_scale**2
        )
        second_moment = new_state["max_exp_avg_sq"] if amsgrad else new_state["exp_avg_sq"]
        update = (
            lr
            * (new_state["exp_avg"] / (1 - beta_pair[0] ** step))
            / ((second_moment / (1 - beta_pair[1] ** step)).sqrt() + eps)
        )
        decayed = before * (1 - lr * weight_decay) if decoupled else before
        from_our_states = (decayed - update).to(dtype).double()
        assert_within(ours, from_our_states, PARAM_RTOL[dtype], operands=decayed.abs() + update.abs())


def assert_within(ours, expected, rtol, operands):
    """|ours - expected| <= rtol |expected| + 1e-6 |operands| + 8 subnormal ulps. float32 rounding (1e-6 is about
    8 ulps) scales with the operands of an update, which can cancel to a result much smaller than they are (for
    example m + (1 - beta1)(g - m) with beta1 near 0, as torch evaluates it); below 2^-126 float32 keeps a fixed
    absolute spacing of 2^-149."""
    allowed = rtol * expected.abs() + 1e-6 * operands + 8 * 2.0**-149
    assert ((ours - expected).abs() <= allowed).all(), (ours - expected).abs().max()


def reference_updates(grads, beta1, beta2, v0=0.0, lr=1.0):
    """Per-step |Δθ| of the float64 reference with eps = 0 and no weight decay."""
    param, exp_avg = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    exp_avg_sq = torch.full((1,), v0, dtype=torch.float64)
    updates = []
    for step, grad in enumerate(grads, start=1):
        before = param.clone()
        adam_step_reference(
            param,
            torch.tensor([grad], dtype=torch.float64),
            exp_avg,
            exp_avg_sq,
            None,
            step,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=0.0,
            weight_decay=0.0,
            decoupled_weight_decay=False,
            amsgrad=False,
            maximize=False,
        )
        updates.append(abs(float(param - before)))
    return updates


gradient_sequences = st.lists(
    st.tuples(st.sampled_from([-1.0, 1.0]), st.integers(-8, 8)).map(lambda pair: pair[0] * 10.0 ** pair[1]),
    min_size=1,
    max_size=30,
)


@SETTINGS
@given(grads=gradient_sequences, beta1=st.floats(0.0, 0.99), beta2=st.floats(0.01, 0.9999), v0=st.floats(0.0, 1.0))
def test_update_never_exceeds_the_step_bound(grads, beta1, beta2, v0):
    """seeds/002, Proposition 1 (Cauchy-Schwarz on the moment sums): for beta1^2 < beta2,
    |Δθ_t| <= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * (1 - beta1) sqrt(beta2) / sqrt((1 - beta2)(beta2 - beta1^2)),
    about 7.3 lr at the default betas, where the bias-correction factor is at most 1. A v0 > 0 only shrinks it."""
    if not beta1**2 < beta2:
        return
    ratio = (1 - beta1) * math.sqrt(beta2) / math.sqrt((1 - beta2) * (beta2 - beta1**2))
    for step, update in enumerate(reference_updates(grads, beta1, beta2, v0), start=1):
        bias_factor = math.sqrt(1 - beta2**step) / (1 - beta1**step)
        assert update <= bias_factor * ratio * (1 + 1e-9)


@SETTINGS
@given(grads=gradient_sequences)
def test_default_betas_bound_is_about_seven_lr(grads):
    assert max(reference_updates(grads, 0.9, 0.999)) <= 7.27


@SETTINGS
@given(grads=gradient_sequences, beta=st.floats(0.0, 0.9999), v0=st.floats(0.0, 1.0))
def test_equal_betas_give_updates_of_at_most_lr(grads, beta, v0):
    """seeds/003: with beta1 = beta2, |m̂ / sqrt(v̂)| <= 1, so no step is longer than lr."""
    assert max(reference_updates(grads, beta, beta, v0)) <= 1 + 1e-9


@SETTINGS
@given(grad=st.floats(1e-6, 1e6) | st.floats(-1e6, -1e-6), v0=st.floats(1e-12, 1e3), beta2=st.floats(0.5, 0.9999))
def test_nonzero_v0_shortens_the_first_step(grad, v0, beta2):
    """Paper eq. 12: the first step is lr * |g| / sqrt(g^2 + beta2 / (1 - beta2) * v0) < lr = the v0 = 0 step
    (strictly, wherever float64 can tell: v0's term above 1e-12 of g^2)."""
    assume(beta2 / (1 - beta2) * v0 > 1e-12 * grad**2)
    with_v0 = reference_updates([grad], 0.9, beta2, v0)[0]
    assert with_v0 < reference_updates([grad], 0.9, beta2, 0.0)[0] == pytest.approx(1.0)
    assert with_v0 == pytest.approx(abs(grad) / math.sqrt(grad**2 + beta2 / (1 - beta2) * v0), rel=1e-12)
