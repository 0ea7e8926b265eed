"""pytest-benchmark suite: `pytest bench/ --benchmark-only`. The runner's cases, v0adam and each torch variant
grouped side by side; each timed call ends with a device synchronisation."""

import pytest
import torch

from bench import cases, variants

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = cases.gpu_cases(quick=True) if DEVICE.type == "cuda" else cases.cpu_cases(quick=True)
VARIANTS = variants.variants(DEVICE, with_compile=False)


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_step(benchmark, case, variant):
    built = VARIANTS[variant](case, DEVICE)
    if built is None:
        pytest.skip(f"torch has no {variant} implementation of {case.optimizer}")
    benchmark.group = case.name

    def timed_step():
        built.step()
        synchronize()

    for _ in range(3):
        timed_step()
    benchmark.pedantic(timed_step, rounds=20, iterations=1)
