"""Shared test helpers: parameter sets, deterministic gradients and state comparison."""

import torch

# Odd sizes: a scalar-like tensor, a non-power-of-two, one element past a block, a 3-d tensor, many small ones.
MIXED_SHAPES = [(1,), (3,), (4097,), (5, 7, 3), (2, 3)] + [(n,) for n in range(1, 30, 3)]


def make_params(shapes, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype))
        for shape in shapes
    ]


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def gradients(params, step, seed=1234):
    """The same gradients for every run, different at each step."""
    generator = torch.Generator().manual_seed(seed + step)
    return [torch.randn(p.shape, generator=generator).to(device=p.device, dtype=p.dtype) for p in params]


def set_grads(params, grads, mode):
    """'autograd': accumulate through backward into whatever p.grad is; 'assign': replace p.grad."""
    if mode == "assign":
        for p, g in zip(params, grads):
            p.grad = g.clone()
    else:
        loss = sum((p * g).sum() for p, g in zip(params, grads))
        loss.backward()


def assert_states_close(opt, params, ref_opt, ref_params, rtol, atol, check_params=True):
    for p, q in zip(params, ref_params):
        if check_params:
            torch.testing.assert_close(p.detach(), q.detach().to(p.dtype), rtol=rtol, atol=atol)
        ours, theirs = opt.state[p], ref_opt.state[q]
        assert set(theirs) <= set(ours), (set(ours), set(theirs))
        for key in theirs:
            expected = theirs[key].to(device=ours[key].device, dtype=ours[key].dtype)
            if key == "step":
                torch.testing.assert_close(ours[key], expected, rtol=0, atol=0)
            else:
                torch.testing.assert_close(ours[key], expected, rtol=rtol, atol=atol)


def step_both(opt, params, ref, ref_params, steps, grad_mode="assign", tolerance=None, start=0):
    """Give both optimizers the same gradients for `steps` steps; compare params and states after each."""
    for step in range(start, start + steps):
        grads = gradients(params, step)
        set_grads(params, grads, grad_mode)
        set_grads(ref_params, grads, grad_mode)
        opt.step()
        ref.step()
        assert_states_close(opt, params, ref, ref_params, **(tolerance or dict(rtol=1e-5, atol=1e-6)))
