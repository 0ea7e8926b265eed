"""CUDA graphs (GPU only; run by bench/device_check.sh): a captured zero_grad/forward/backward/step replays like
the same steps run eagerly, with the step counters and a tensor lr living on the device (capturable semantics);
torch.compile's reduce-overhead mode (CUDA graphs under inductor) does the same. The model has a frozen param, so
every step is a partial one (a step-counter mask)."""

import pytest
import torch
from torch._dynamo.utils import counters

import v0adam

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

STEPS, WARMUP = 5, 3


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
    model[0].bias.requires_grad_(False)
    lr = torch.tensor(1e-2, device="cuda")
    return model, v0adam.V0AdamW(model.parameters(), lr=lr, amsgrad=True, v0="random", v0_seed=2, backend="triton")


def batches(count):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 32, generator=generator), torch.randn(16, 8, generator=generator)) for _ in range(count)]


def train_step(model, opt, x, y, drop_grad=False):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    if drop_grad:  # a pattern of stepped params not seen before: new launch tables and mask
        model[2].bias.grad = None
    opt.step()
    return loss.detach()


def schedule(opt, step):
    opt.param_groups[0]["lr"].fill_(1e-2 * 0.8**step)


def eager_run(drop_grad_from=None):
    model, opt = build()
    for step, (x, y) in enumerate(batches(WARMUP + STEPS)):
        schedule(opt, step)
        train_step(model, opt, x.cuda(), y.cuda(), drop_grad=drop_grad_from is not None and step >= drop_grad_from)
    return model, opt


def assert_matches(model, opt, reference_model, reference_opt):
    for param, reference in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)
        for key, value in reference_opt.state[reference].items():
            torch.testing.assert_close(opt.state[param][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("new_layout_in_capture", [False, True], ids=["warm-layout", "new-layout"])
def test_captured_step_replays_like_eager(new_layout_in_capture):
    """The captured step either has the layout of the warm-up steps or one first seen while capturing (its
    uploads are then captured, from host buffers kept for the graph's replays)."""
    model, opt = build()
    data = batches(WARMUP + STEPS)
    static_x, static_y = data[0][0].cuda(), data[0][1].cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch's CUDA graph recipe does
        for step in range(WARMUP):
            schedule(opt, step)
            static_x.copy_(data[step][0])
            static_y.copy_(data[step][1])
            train_step(model, opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(model, opt, static_x, static_y, drop_grad=new_layout_in_capture)
    for step in range(WARMUP, WARMUP + STEPS):
        schedule(opt, step)
        static_x.copy_(data[step][0])
        static_y.copy_(data[step][1])
        graph.replay()
    assert_matches(model, opt, *eager_run(drop_grad_from=WARMUP if new_layout_in_capture else None))


def test_reduce_overhead_compile_matches_eager():
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace backward() inside a compiled function")
    torch._dynamo.reset()
    counters.clear()
    model, opt = build()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(train_step, mode="reduce-overhead", fullgraph=True)
        for step, (x, y) in enumerate(batches(WARMUP + STEPS)):
            schedule(opt, step)
            compiled(model, opt, x.cuda(), y.cuda())
    torch.cuda.synchronize()
    # A graph that cudagraph trees refuse runs without CUDA graphs, correctly: that must not pass unnoticed.
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert_matches(model, opt, *eager_run())
