"""torch.compile: a training step (forward, backward, clipping, step, zero_grad) compiled with fullgraph=True
follows the same step run eagerly and compiles once while a tensor lr follows a schedule; a step that cannot be
traced runs eagerly behind a graph break. Inductor on CUDA; on CPU aot_eager (the kernels run in the
interpreter)."""

import re
import shutil

import pytest
import torch
from conftest import DEVICE
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.utils import run_and_get_code

import v0adam

COMPILER = "inductor" if DEVICE == "cuda" else "aot_eager"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def trace_backward():
    """Let dynamo trace loss.backward() inside the compiled function (torch >= 2.12)."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace backward() inside a compiled function")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        yield


def build_model(dtype=torch.float32):
    torch.manual_seed(0)
    # The last weight's rows are 256 elements, whole blocks: it takes 8-bit states where they are asked for.
    layers = [torch.nn.Linear(6, 256), torch.nn.Tanh(), torch.nn.Linear(256, 3)]
    return torch.nn.Sequential(*layers).to(device=DEVICE, dtype=dtype)


def batch(step, dtype=torch.float32):
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)
    return x.to(DEVICE, dtype), y.to(DEVICE, dtype)


def train_step(model, opt, x, y):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.clip_grad_norm_(0.5)
    opt.step()
    opt.zero_grad()
    return loss.detach()


def assert_same_training(model, opt, reference_model, reference_opt, **tolerance):
    """Params and every state; torch.testing's tolerances for each tensor's dtype unless given."""
    for param, reference in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(param, reference, **tolerance)
        for key, value in reference_opt.state[reference].items():
            torch.testing.assert_close(opt.state[param][key], value, **tolerance)


@pytest.mark.parametrize(
    "precision",
    [
        dict(dtype=torch.float32, amsgrad=True, skip_nonfinite=True),
        dict(dtype=torch.bfloat16, master_weights=True),
        dict(dtype=torch.bfloat16, stochastic_rounding=True),
        dict(dtype=torch.float32, flat_grads=True),
        dict(dtype=torch.float32, amsgrad=True, state_dtype=torch.uint8, min_8bit_size=0),
    ],
    ids=["fp32-amsgrad-guard", "bf16-master", "bf16-stochastic", "fp32-flat-grads", "fp32-8bit-states"],
)
def test_compiled_training_step_follows_eager(trace_backward, precision):
    dtype = precision.pop("dtype")
    models = build_model(dtype), build_model(dtype)
    opts = [
        v0adam.V0AdamW(model.parameters(), lr=torch.tensor(1e-2), v0="random", v0_seed=3, backend="triton", **precision)
        for model in models
    ]
    if "rounding_seed" in opts[0].param_groups[0]:
        opts[1].param_groups[0]["rounding_seed"] = opts[0].param_groups[0]["rounding_seed"]
    counter = CompileCounterWithBackend(COMPILER)
    compiled_step = torch.compile(train_step, fullgraph=True, backend=counter)
    for step in range(4):
        x, y = batch(step, dtype)
        loss = compiled_step(models[0], opts[0], x, y)
        torch.testing.assert_close(loss, train_step(models[1], opts[1], x, y))
        for opt in opts:
            opt.param_groups[0]["lr"].fill_(1e-2 * 0.7 ** (step + 1))
    assert counter.frame_count == 1, "a new lr (a tensor) must not recompile"
    assert_same_training(models[0], opts[0], models[1], opts[1])


def test_compiled_step_follows_torch_adamw(trace_backward):
    models = build_model(), build_model()
    opt = v0adam.V0AdamW(models[0].parameters(), lr=torch.tensor(1e-2), v0="zero", backend="triton")
    reference = torch.optim.AdamW(models[1].parameters(), lr=1e-2, foreach=False)
    compiled_step = torch.compile(train_step, fullgraph=True, backend=COMPILER)

    def reference_step(x, y):
        torch.nn.functional.mse_loss(models[1](x), y).backward()
        torch.nn.utils.clip_grad_norm_(models[1].parameters(), 0.5)
        reference.step()
        reference.zero_grad()

    for step in range(4):
        x, y = batch(step)
        compiled_step(models[0], opt, x, y)
        reference_step(x, y)
    assert_same_training(models[0], opt, models[1], reference, rtol=1e-5, atol=1e-6)


def test_amsgrad_switched_on_inside_a_compiled_step_follows_the_eager_step(trace_backward):
    """The max v states are made while the step is traced (fullgraph: no graph break), and train as the eager
    step's (torch's own AdamW cannot switch AMSGrad on once it holds states)."""
    models = build_model(), build_model()
    opts = [v0adam.V0AdamW(model.parameters(), lr=torch.tensor(1e-2), backend="triton") for model in models]
    steps = torch.compile(train_step, fullgraph=True, backend=COMPILER), train_step
    for step in range(4):
        for model, opt, run in zip(models, opts, steps):
            if step == 2:
                opt.param_groups[0]["amsgrad"] = True
            run(model, opt, *batch(step))
    assert "max_exp_avg_sq" in opts[0].state[next(models[0].parameters())]
    assert_same_training(models[0], opts[0], models[1], opts[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "precision",
    [
        dict(amsgrad=True, skip_nonfinite=True),
        dict(master_weights=True),
        dict(amsgrad=True, state_dtype=torch.uint8, min_8bit_size=0),
    ],
)
def test_a_compiled_step_mutates_only_tensors_at_fixed_addresses(trace_backward, precision):
    """What mode="reduce-overhead" needs: CUDA graph trees skip (silently, falling back to plain launches) a graph
    that mutates an input whose address they do not know to be fixed. Checked with the same metadata inductor
    reads (aot_autograd's), over two calls: the second sees what the first created."""
    inputs_seen = []

    def record_inputs(graph, example_inputs):
        metadata = torch._guards.TracingContext.try_get().fw_metadata
        mutated = [index for index, info in enumerate(metadata.input_info) if info.mutates_data]
        inputs_seen.append((mutated, set(metadata.static_input_indices)))
        return graph

    dtype = torch.bfloat16 if precision.get("master_weights") else torch.float32
    model = build_model(dtype)
    opt = v0adam.V0AdamW(model.parameters(), lr=torch.tensor(1e-2), backend="triton", **precision)
    backend = torch._dynamo.backends.common.aot_autograd(fw_compiler=record_inputs)
    compiled_step = torch.compile(train_step, fullgraph=True, backend=backend)
    for step in range(2):
        compiled_step(model, opt, *batch(step, dtype))
    assert len(inputs_seen) == 1, "the second call must reuse the first graph"
    mutated, static = inputs_seen[0]
    assert len(mutated) > 4  # params, grads (zero_grad), moments, step counters...
    assert [index for index in mutated if index not in static] == []


def test_a_float_lr_change_keeps_the_hyperparameter_tables_address():
    """A schedule of float lrs rewrites the device table in place: compiled graphs and captured CUDA graphs hold
    its address."""
    model = build_model()
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, backend="triton")
    backend = opt._buckets[0].backend
    table = backend.hyper_table(torch.device(DEVICE), opt.param_groups, opt._RULE)
    address = table.data_ptr()
    opt.param_groups[0]["lr"] = 3e-3
    table = backend.hyper_table(torch.device(DEVICE), opt.param_groups, opt._RULE)
    assert table.data_ptr() == address
    assert float(table[0, v0adam.kernels.tables.LR.value]) == 3e-3


@pytest.mark.skipif(
    DEVICE == "cpu" and not (shutil.which("g++") or shutil.which("clang++")), reason="inductor on CPU needs C++"
)
@pytest.mark.parametrize("flat_grads", [False, True], ids=["by-address", "flat-buffers"])
def test_inductor_steps_each_param_where_it_lies(flat_grads):
    """No copies around the step: each param reaches its launch as the compiled graph's own input, all in one launch
    where the params are the model's own tensors. (Handed several views of the flat buffer, as with flat_grads,
    inductor copied each with everything before it, quadratic in the number of params: there a launch per param.)"""
    models = build_model(), build_model()
    opts = [
        v0adam.V0AdamW(
            model.parameters(), lr=torch.tensor(1e-2), v0="random", v0_seed=1, backend="triton", flat_grads=flat_grads
        )
        for model in models
    ]
    for model in models:
        torch.nn.functional.mse_loss(model(batch(0)[0]), batch(0)[1]).backward()
    _, code = run_and_get_code(torch.compile(opts[0].step, backend="inductor"))
    params_of_each_launch = re.findall(r"v0adam\.adam_step_\.default\(\[([^\]]*)\]", "\n".join(code))
    launched = [params.split(", ") for params in params_of_each_launch]
    assert [len(params) for params in launched] == ([1] * 4 if flat_grads else [4])
    assert all(re.fullmatch(r"arg\d+_1", param) for params in launched for param in params)
    opts[1].step()
    assert_same_training(models[0], opts[0], models[1], opts[1])


def test_with_a_scheduler_attached_the_step_is_compiled_on_its_own():
    """torch's schedulers wrap opt.step in a function dynamo skips: a graph break at the call, then the step is a
    graph of its own, and follows the same schedule run eagerly."""
    models = build_model(), build_model()
    opts = [
        v0adam.V0AdamW(model.parameters(), lr=torch.tensor(1e-2), v0="random", v0_seed=1, backend="triton")
        for model in models
    ]
    schedulers = [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=3) for opt in opts]
    traced_ops = []

    def record_ops(graph, example_inputs):
        traced_ops.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return graph.forward

    def step_and_schedule(opt, scheduler):
        opt.step()
        scheduler.step()

    compiled = torch.compile(step_and_schedule, backend=record_ops)
    for step in range(4):
        for model, opt, scheduler, run in zip(models, opts, schedulers, (compiled, step_and_schedule)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(batch(step)[0]), batch(step)[1]).backward()
            run(opt, scheduler)
    assert "v0adam.adam_step_.default" in traced_ops
    assert_same_training(models[0], opts[0], models[1], opts[1])


def test_compiled_step_alone():
    """Only opt.step() compiled (any torch version), two param groups, one of them frozen in part: same as eager."""
    models = build_model(), build_model()
    for model in models:
        model[2].bias.requires_grad_(False)
    opts = [
        v0adam.V0Adam(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": torch.tensor(3e-2)}],
            lr=torch.tensor(1e-2),
            v0="random",
            v0_seed=1,
            backend="triton",
        )
        for model in models
    ]
    counter = CompileCounterWithBackend(COMPILER)
    compiled = torch.compile(lambda opt: opt.step(), fullgraph=True, backend=counter)
    for step in range(3):
        for model, opt, run in zip(models, opts, (compiled, lambda opt: opt.step())):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(batch(step)[0]), batch(step)[1]).backward()
            run(opt)
    assert counter.frame_count == 1
    assert_same_training(models[0], opts[0], models[1], opts[1])


def test_edits_between_compiled_steps_are_adopted():
    """opt.state[p] = {} and a param taken out of its group, between steps of a compiled opt.step(): adopted
    eagerly behind a graph break, as the next compiled step finds them; same as torch.optim.AdamW eagerly."""
    models = build_model(), build_model()
    opt = v0adam.V0AdamW(models[0].parameters(), lr=torch.tensor(1e-2), v0="zero", backend="triton")
    reference = torch.optim.AdamW(models[1].parameters(), lr=1e-2, foreach=False)
    compiled = torch.compile(lambda opt: opt.step(), backend=COMPILER)
    for step in range(5):
        if step == 2:
            opt.state[models[0][0].weight] = {}
            reference.state[models[1][0].weight] = {}
        if step == 3:
            opt.param_groups[0]["params"].pop()
            reference.param_groups[0]["params"].pop()
        for model, optimizer, run in ((models[0], opt, compiled), (models[1], reference, torch.optim.AdamW.step)):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(batch(step)[0]), batch(step)[1]).backward()
            run(optimizer)
    for param, reference_param in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(param, reference_param)
    for param, reference_param in zip(list(models[0].parameters())[:-1], list(models[1].parameters())[:-1]):
        for key, value in reference.state[reference_param].items():
            torch.testing.assert_close(opt.state[param][key], value)


def test_an_untraceable_step_runs_eagerly():
    """The PyTorch backend is not traced: a graph break (an error under fullgraph=True), and the right result."""
    models = build_model(), build_model()
    opts = [v0adam.V0AdamW(model.parameters(), v0="random", v0_seed=1, backend="torch") for model in models]
    step = torch.compile(lambda opt: opt.step(), backend=COMPILER)
    for model, opt, run in zip(models, opts, (step, lambda opt: opt.step())):
        torch.nn.functional.mse_loss(model(batch(0)[0]), batch(0)[1]).backward()
        run(opt)
    assert_same_training(models[0], opts[0], models[1], opts[1], rtol=0, atol=0)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(lambda opt: opt.step(), fullgraph=True, backend=COMPILER)(opts[0])
