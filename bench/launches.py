"""What v0adam launches, recorded instead of run: optimizers in each precision mode step GPT-2-shaped params (and
the same with an odd-sized classifier head, and with that head's grads laid out as DDP's bucket views) on the CPU,
and every Triton launch is kept with the specialization Triton's runtime gives its arguments (pointer and integer
divisibility by 16, integers equal to 1), ready to be compiled ahead of time (`bench.static`)."""

import contextlib
from dataclasses import dataclass

import torch
import triton
from triton._C.libtriton import native_specialize_impl

from bench import cases


@dataclass(frozen=True)
class Configuration:
    name: str
    dtype: torch.dtype = torch.float32
    options: tuple = ()  # V0AdamW keyword arguments, as (name, value) pairs
    optimizer: str = "V0AdamW"
    clip_norm_type: float | None = None  # clip_grad_norm_ of this type first: a grad-norm launch, a grad divisor


EIGHT_BIT = (("state_dtype", torch.uint8),)
STOCHASTIC = (("stochastic_rounding", True),)
FAMILY = (("RAdam", "V0RAdam"), ("AdaBelief", "V0AdaBelief"), ("AdaBound", "V0AdaBound"))
CONFIGURATIONS = (
    Configuration("fp32"),
    Configuration("fp32 AMSGrad", options=(("amsgrad", True),)),
    Configuration("fp32 clip + nonfinite guard", options=(("skip_nonfinite", True),), clip_norm_type=2.0),
    Configuration("fp32 nonfinite guard", options=(("skip_nonfinite", True),)),
    Configuration("fp32 random v0", options=(("v0", "random"),)),
    Configuration("fp32 data v0", options=(("v0", "data"),)),
    Configuration("bf16", torch.bfloat16),
    Configuration("bf16 clip", torch.bfloat16, clip_norm_type=2.0),
    Configuration("bf16 clip inf-norm", torch.bfloat16, clip_norm_type=float("inf")),
    Configuration("bf16 data v0", torch.bfloat16, (("v0", "data"),)),
    Configuration("bf16 master", torch.bfloat16, (("master_weights", True),)),
    Configuration("bf16 fp32 master", torch.bfloat16, (("master_weights", "fp32"),)),
    Configuration("bf16 stochastic", torch.bfloat16, STOCHASTIC),
    Configuration("bf16 bf16-states", torch.bfloat16, (("state_dtype", torch.bfloat16),)),
    Configuration("bf16 bf16-states stochastic", torch.bfloat16, (("state_dtype", torch.bfloat16),) + STOCHASTIC),
    Configuration("fp32 8-bit", options=EIGHT_BIT),
    Configuration("bf16 8-bit", torch.bfloat16, EIGHT_BIT),
    Configuration("fp32 8-bit AMSGrad", options=EIGHT_BIT + (("amsgrad", True),)),
    *(Configuration(f"fp32 {name}", optimizer=optimizer) for name, optimizer in FAMILY),
    *(Configuration(f"bf16 stochastic {name}", torch.bfloat16, STOCHASTIC, optimizer) for name, optimizer in FAMILY),
    *(
        Configuration(f"bf16 master {name}", torch.bfloat16, (("master_weights", True),), optimizer)
        for name, optimizer in FAMILY
    ),
    *(Configuration(f"fp32 8-bit {name}", options=EIGHT_BIT, optimizer=optimizer) for name, optimizer in FAMILY),
)


@dataclass(frozen=True)
class Model:
    """Params of these shapes, each grad a tensor of its own; or, with `bucket_view_grads`, the grads laid out as
    DDP's bucket views (`gradient_as_bucket_view=True`): one buffer, the params' grads in reverse order (as DDP
    buckets them), each where the last one ended, so that all after an odd-sized one are at unaligned addresses.
    With `param_views`, the params themselves are views of one buffer of the user's, each where the last ended."""

    shapes: tuple
    bucket_view_grads: bool = False
    param_views: bool = False


# Width 256: rows of whole 256-element blocks, as 8-bit states need. As DDP's bucket views, the grads after the
# 10-class head's bias are 4 (bfloat16) or 8 (float32) bytes past a 16-byte boundary, those after a 7-class one's
# bias 2 bytes past a 4-byte one (bfloat16).
GPT2 = cases.gpt2_shapes(d=256, vocab=512, context=64, layers=2)
GPT2_WITH_HEAD = GPT2 + ((10, 256), (10,))
MODELS = {
    "GPT-2": Model(GPT2),
    "GPT-2 + 10-class head": Model(GPT2_WITH_HEAD),
    "GPT-2 + 10-class head, grads as DDP's bucket views": Model(GPT2_WITH_HEAD, bucket_view_grads=True),
    "GPT-2 + 7-class head, grads as DDP's bucket views": Model(GPT2 + ((7, 256), (7,)), bucket_view_grads=True),
}


@dataclass(frozen=True)
class Launch:
    """One recorded launch: which kernel, and what its compilation specialises on."""

    kernel: str
    signature: tuple  # (name, type) per argument, "constexpr" for the constants
    constexprs: tuple  # (name, value)
    divisible: tuple  # indices of the arguments Triton's runtime marks divisible by 16
    num_warps: int
    maxnreg: int | None = None  # the register ceiling the launch asks ptxas for, if any


def launch_of(kernel, args, kwargs, num_warps=4, maxnreg=None) -> Launch:
    """What `kernel[grid](*args, **kwargs)` compiles to: the specialization Triton's runtime gives its arguments."""
    from triton.backends.nvidia.compiler import CUDABackend

    signature, constexprs, divisible = [], [], []
    for index, (param, value) in enumerate(zip(kernel.params, bound(kernel, args, kwargs))):
        if param.is_constexpr:
            signature.append((param.name, "constexpr"))
            constexprs.append((param.name, _constant(value)))
            continue
        kind, specialization = native_specialize_impl(CUDABackend, value, False, not param.do_not_specialize, True)
        if kind == "constexpr":  # an integer 1
            constexprs.append((param.name, specialization))
        elif specialization == "D":
            divisible.append(index)
        signature.append((param.name, kind))
    return Launch(kernel.__name__, tuple(signature), tuple(constexprs), tuple(divisible), num_warps, maxnreg)


class _Recorder:
    """Stands in for a jitted kernel: `kernel[grid](*args, **kwargs)` records the launch and runs nothing."""

    def __init__(self, kernel, launches: set):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return self._record

    def _record(self, *args, num_warps=4, maxnreg=None, **kwargs):
        self.launches.add(launch_of(self.kernel, args, kwargs, num_warps, maxnreg))


def bound(kernel, args, kwargs) -> list:
    """The values of a launch's arguments, in the kernel's order."""
    names = [param.name for param in kernel.params]
    return list(args) + [kwargs[name] for name in names[len(args) :]]


def _constant(value):
    return value.value if isinstance(value, triton.language.constexpr) else value


def kernel_modules():
    from v0adam.kernels import adam, grad_norm, step_scalars, v0_init

    return {
        "_adam_step_kernel": adam,
        "_advance_steps_kernel": step_scalars,
        "_grad_norm_partials_kernel": grad_norm,
        "_random_v0_kernel": v0_init,
        "_accumulate_moments_kernel": v0_init,
    }


def _hand_over(params, grads, bucket_views: bool) -> None:
    """Each param's grad: a copy of its own (as autograd leaves it), or a view of one bucket (`Model`)."""
    if not bucket_views:
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        return
    bucket = torch.cat([grad.flatten() for grad in reversed(grads)])
    end = bucket.numel()
    for param in params:
        param.grad = bucket[end - param.numel() : end].view_as(param)
        end -= param.numel()


@contextlib.contextmanager
def kernels_replaced(stand_in):
    """While the block runs, each of v0adam's kernels is `stand_in(kernel)` (what `kernel[grid](...)` reaches), and
    the Triton backend takes CPU tensors."""
    from v0adam import triton_backend

    modules = kernel_modules()
    originals = {name: getattr(module, name) for name, module in modules.items()}
    interpreter_enabled = triton_backend.interpreter_enabled
    try:
        for name, module in modules.items():
            setattr(module, name, stand_in(originals[name]))
        triton_backend.interpreter_enabled = lambda: True
        yield
    finally:
        for name, module in modules.items():
            setattr(module, name, originals[name])
        triton_backend.interpreter_enabled = interpreter_enabled


def seeded_params(configuration: Configuration, model: Model) -> list[torch.nn.Parameter]:
    """Params of `model`'s shapes and `configuration`'s dtype, drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(shape, generator=generator).to(configuration.dtype) for shape in model.shapes]
    if model.param_views:
        buffer, start, views = torch.cat([value.flatten() for value in values]), 0, []
        for value in values:
            views.append(buffer[start : start + value.numel()].view_as(value))
            start += value.numel()
        values = views
    return [torch.nn.Parameter(value) for value in values]


def train(configuration: Configuration, model: Model, params: list, steps: int = 1):
    """An optimizer in `configuration` on the Triton backend over `params` (of `model`'s shapes), stepped `steps`
    times, each step's seeded grads handed over as in a training loop (and clipped, if it clips)."""
    import v0adam

    generator = torch.Generator().manual_seed(1)
    opt = getattr(v0adam, configuration.optimizer)(params, lr=1e-3, backend="triton", **dict(configuration.options))
    for step in range(steps):
        grads = [torch.randn(param.shape, generator=generator).to(configuration.dtype) for param in params]
        if step == 0 and dict(configuration.options).get("v0") == "data":
            opt.init_v0_from_data(
                [torch.zeros(2)], lambda batch, grads=grads: sum(p.mul(g).sum() for p, g in zip(params, grads))
            )
        _hand_over(params, grads, model.bucket_view_grads)
        if configuration.clip_norm_type is not None:
            opt.clip_grad_norm_(1.0, configuration.clip_norm_type)
        opt.step()
    return opt


def record_launches(configuration: Configuration, model: Model) -> set[Launch]:
    """The launches of one optimizer step (and its construction) in `configuration` over the params of `model`,
    grads handed over as in a training loop."""
    launches = set()
    with kernels_replaced(lambda kernel: _Recorder(kernel, launches)):
        train(configuration, model, seeded_params(configuration, model))
    return launches
