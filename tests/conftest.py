"""Test set-up: without a GPU the Triton kernels run in the interpreter, which must be switched on before the
kernels are defined (SPEC §5), so before anything imports v0adam."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the property tests on a fixed sample (reproducible); elsewhere hypothesis explores anew each run.
settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def inline_ptx() -> dict:
    """The PTX Triton writes for sm_90 around v0adam's inline PTX (`tests/inline_ptx_kernels.py`), compiled in a
    process of its own: {"block", "num_warps", "ptx": {kernel: its PTX}}."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("inline_ptx_kernels.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)
