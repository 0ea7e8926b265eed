"""Test set-up: without a GPU the Triton kernels run in the interpreter, which must be switched on before the
kernels are defined (SPEC §5), so before anything imports v0adam."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the property tests on a fixed sample (reproducible); elsewhere hypothesis explores anew each run.
settings.register_profile("ci", derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Compiling the step takes torch >= 2.12, v0adam's floor (setup.py): torch 2.11's dynamo, which the lent GPUs run,
# refuses the optimizer's attribute writes inside the step. Below the floor these tests are skipped, not run.
requires_compilable_step = pytest.mark.skipif(
    torch.__version__ < "2.12", reason="below v0adam's torch floor, 2.12: this dynamo cannot trace the step"
)
BACKENDS = ["torch", "triton"]


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
