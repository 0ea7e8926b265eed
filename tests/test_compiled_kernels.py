"""The kernels as a GPU runs them, without a GPU: every configuration of the static model (`bench.launches`), over
params with 8-bit and float states, an odd-sized head, grads of their own or as DDP's bucket views, and params as
views of one buffer at unaligned addresses, stepped twice with every Triton kernel compiled for sm_90 as the
runtime would launch it and its PTX run on `tests/ptx_machine` (`tests/compiled_kernels.py`), against the same
steps in the interpreter: params and every state bit for bit. The compiled code paths the interpreter never takes
(the inline PTX, hardware bfloat16 rounding, the step scalars' kernel, 16-byte accesses, warp shuffles and
reductions, stores through shared memory) are the ones this checks; a write outside the tensors a launch reaches
fails it.

Compiled without FP fusion: the one difference from the launched kernels, which may round a multiply and an add
once where the interpreter rounds twice (a last-bit difference, which the tests against the reference tolerate)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compiled_kernels import CASES, results

from bench import launches

STEPS = 2
CONFIGURATIONS = {configuration.name: configuration for configuration in launches.CONFIGURATIONS}


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> dict:
    """Every case's results from the compiled kernels (or the error that stopped it), in a process of its own."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    out = tmp_path_factory.mktemp("compiled") / "results.pt"
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compiled_kernels.py")
    run = subprocess.run(
        [sys.executable, str(script), str(out), str(STEPS)], capture_output=True, text=True, env=environment
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out, weights_only=False)


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    ours, theirs = ours.reshape(-1), theirs.reshape(-1)
    return ours.dtype == theirs.dtype and torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))


def _rounded_otherwise(configuration: launches.Configuration) -> str | None:
    """Why the compiled kernels' floats may differ from the interpreter's in the last bits, if they may."""
    if configuration.clip_norm_type is not None:
        return "the grad norm's partials, each summed in the order of a GPU's threads and warps, not numpy's"
    if dict(configuration.options).get("v0") == "random":
        return "random v0's logarithm and cosine, libdevice's compiled, numpy's interpreted"
    return None


def _assert_equal(ours: torch.Tensor, theirs: torch.Tensor, rounded_otherwise: str | None, what: str):
    if rounded_otherwise is None or not ours.is_floating_point():
        assert _same(ours, theirs), f"{what}: {int((ours != theirs).sum())} of {ours.numel()} differ"
        return
    tolerance = dict(rtol=2**-7, atol=0.0) if ours.dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, theirs, **tolerance, msg=f"{what}, where {rounded_otherwise}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the suite runs the kernels themselves")
@pytest.mark.parametrize("configuration, model", CASES, ids=[f"{c} / {m}" for c, m in CASES])
def test_compiled_kernels_step_as_the_interpreted_ones(compiled, configuration, model):
    """Bit for bit; within float32's (bfloat16's) last bits where the two round otherwise (`_rounded_otherwise`)."""
    got = compiled[configuration, model]
    assert not isinstance(got, str), got
    rounded_otherwise = _rounded_otherwise(CONFIGURATIONS[configuration])
    expected = results(CONFIGURATIONS[configuration], model, STEPS)
    for index, (param, theirs) in enumerate(zip(expected["params"], got["params"])):
        _assert_equal(param, theirs, rounded_otherwise, f"param {index}")
    for index, (state, theirs) in enumerate(zip(expected["states"], got["states"])):
        assert state.keys() == theirs.keys()
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                _assert_equal(value, theirs[key], rounded_otherwise, f"param {index}'s {key}")
