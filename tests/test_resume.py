"""Exact resume: N steps, torch.save of model and optimizer, torch.load in a fresh process, M more steps — bitwise
equal to an uninterrupted N + M run (random v0, AMSGrad and stochastic rounding included)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BACKENDS

WORKER = Path(__file__).with_name("resume_worker.py")


def run_workers(backend, precision, *phases_and_paths):
    """Run the worker once per (phase, path), all at once, each in a fresh process."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), backend, precision, phase, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for phase, path in phases_and_paths
    ]
    for worker in workers:
        _, stderr = worker.communicate()
        assert worker.returncode == 0, stderr[-3000:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "bf16-stochastic"])
def test_resume_in_a_fresh_process_is_bitwise_exact(backend, precision, tmp_path):
    run_workers(backend, precision, ("full", tmp_path / "full.pt"), ("first", tmp_path / "resumed.pt"))
    run_workers(backend, precision, ("second", tmp_path / "resumed.pt"))
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in full["optimizer"]["state"].items():
        assert set(state) == set(resumed["optimizer"]["state"][index])
        for key, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][key]), (index, key)
    assert float(full["optimizer"]["state"][0]["step"]) == 8.0
