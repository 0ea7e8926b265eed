"""v0adam's optimizer steps with every Triton kernel compiled for sm_90, as a GPU would launch it (the runtime's
specialization, the launch shapes of a GPU), and its PTX run on `tests/ptx_machine` over the CPU tensors' own
memory. `python tests/compiled_kernels.py OUT STEPS` saves, for every configuration and model (`CASES`), the
params and every state after the steps, or the error that stopped them (tests/test_compiled_kernels.py compares
them with the interpreter's). Run in a process of its own: the kernels must be compiled, not interpreted."""

import functools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ptx_machine import Machine  # noqa: E402

from bench import launches, static  # noqa: E402

POISON = 0xFF  # what a read outside every tensor of the launch returns: NaN in every float format
# A small GPT-2-like set of params: two tensors with 8-bit states (4096 elements or more), one too small for them,
# an odd-sized head; with the grads as DDP's bucket views, those after the head's bias 4 (bfloat16) or 8 (float32)
# bytes past a 16-byte boundary, or, after a 7-class head's, 2 bytes past a 4-byte one; with the params as views of
# one buffer, a 7-element bias first, every param after it at an unaligned address (the unaligned launch).
SHAPES = ((40, 256), (24, 256), (256,), (10, 256), (10,))
MODELS = {
    "own grads": launches.Model(SHAPES),
    "grads as DDP's bucket views": launches.Model(SHAPES, bucket_view_grads=True),
    "grads as bucket views, 2 bytes off": launches.Model(SHAPES[:3] + ((7, 256), (7,)), bucket_view_grads=True),
    "params as views of one buffer, unaligned": launches.Model(((7,),) + SHAPES[:4], param_views=True),
}


class TensorMemory:
    """The bytes of the storages a launch's tensors live in, at their own addresses. A read elsewhere returns
    `POISON`; a write elsewhere is an error."""

    def __init__(self, tensors: list[torch.Tensor]):
        storages = {}
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
        self.bases = np.array(sorted(storages), dtype=np.int64)
        self.arrays = [storages[base] for base in sorted(storages)]
        self.ends = self.bases + np.array([array.size for array in self.arrays], dtype=np.int64)

    def _region(self, addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        region = np.searchsorted(self.bases, addresses, side="right") - 1
        inside = (region >= 0) & (addresses < self.ends[np.maximum(region, 0)])
        return region, inside

    def read(self, addresses: np.ndarray) -> np.ndarray:
        region, inside = self._region(addresses)
        values = np.full(addresses.shape, POISON, dtype=np.uint8)
        for index in np.unique(region[inside]):
            where = inside & (region == index)
            values[where] = self.arrays[index][addresses[where] - self.bases[index]]
        return values

    def write(self, addresses: np.ndarray, values: np.ndarray):
        region, inside = self._region(addresses)
        assert inside.all(), f"a write outside the launch's tensors, at {addresses[~inside][:4]}"
        for index in np.unique(region):
            where = region == index
            self.arrays[index][addresses[where] - self.bases[index]] = values[where]


def _bits(value, kind: str) -> int:
    if isinstance(value, torch.Tensor):
        return value.data_ptr()
    if kind == "fp32":
        return int(np.float32(value).view(np.uint32))
    if kind == "fp64":
        return int(np.float64(value).view(np.uint64))
    return int(value) & ((1 << 64) - 1)


@functools.cache
def _compile(launch: launches.Launch, kernel):
    return static.compile_launch(launch, kernel, fp_fusion=False)


class Emulated:
    """Stands in for a jitted kernel: `kernel[grid](*args, **kwargs)` compiles the launch and runs its PTX, over the
    memory of its tensors and of `params` and their grads (which the launch tables address)."""

    def __init__(self, kernel, params: list[torch.Tensor]):
        self.kernel, self.params = kernel, params

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, num_warps=4, maxnreg=None, **kwargs):
        launch = launches.launch_of(self.kernel, args, kwargs, num_warps, maxnreg)
        values = launches.bound(self.kernel, args, kwargs)
        if callable(grid):
            grid = grid({param.name: value for param, value in zip(self.kernel.params, values)})
        programs, *others = tuple(grid)
        assert all(other == 1 for other in others), grid
        kinds = dict(launch.signature)
        params = [
            _bits(value, kinds[p.name]) for p, value in zip(self.kernel.params, values) if kinds[p.name] != "constexpr"
        ]
        compiled = _compile(launch, self.kernel)
        tensors = [value for value in values if isinstance(value, torch.Tensor)] + self.params
        tensors += [param.grad for param in self.params if param.grad is not None]
        machine = Machine(programs, 32 * num_warps, params + [0, 0], TensorMemory(tensors), compiled.metadata.shared)
        machine.run(compiled.asm["ptx"])


CASES = [(configuration.name, model) for configuration in launches.CONFIGURATIONS for model in MODELS]


def results(configuration: launches.Configuration, model: str, steps: int, stand_in=None) -> dict:
    """The params and every state after `steps` steps (`launches.train`), each kernel `stand_in(kernel, params)`
    if given, else the kernel itself."""
    from v0adam import triton_backend

    params = launches.seeded_params(configuration, MODELS[model])
    torch.manual_seed(0)  # the seeds a step draws (stochastic rounding's, random v0's)
    # A GPU's launch shapes, in the interpreter too: the grad norm's partials, one a block, are summed alike.
    shapes = triton_backend.BLOCK, triton_backend.SPLIT_UNALIGNED
    triton_backend.BLOCK, triton_backend.SPLIT_UNALIGNED = triton_backend.GPU_BLOCK, True
    try:
        if stand_in is None:
            opt = launches.train(configuration, MODELS[model], params, steps)
        else:
            with launches.kernels_replaced(lambda kernel: stand_in(kernel, params)):
                opt = launches.train(configuration, MODELS[model], params, steps)
    finally:
        triton_backend.BLOCK, triton_backend.SPLIT_UNALIGNED = shapes
    return {"params": [param.detach() for param in params], "states": [opt.state[param] for param in params]}


def main(out: str, steps: str) -> None:
    """Every case's results, or the error that stopped it, saved to `out`."""
    configurations = {configuration.name: configuration for configuration in launches.CONFIGURATIONS}
    saved = {}
    for name, model in CASES:
        try:
            saved[name, model] = results(configurations[name], model, int(steps), Emulated)
        except Exception as error:  # noqa: BLE001 - reported by the test of that case
            saved[name, model] = f"{type(error).__name__}: {error}"
    torch.save(saved, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
