"""Two processes on gloo (CPU): v0adam inside DDP (with and without gradient_as_bucket_view) and inside
ZeroRedundancyOptimizer follows single-process torch.optim.AdamW on the global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BACKENDS

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_worker import model_and_data  # noqa: E402

WORLD = 2


def single_process_reference():
    model, batches = model_and_data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["ddp", "ddp-bucket-view", "zero"])
def test_two_processes_follow_one(backend, mode, tmp_path):
    out = tmp_path / "params.pt"
    # gloo runs on CPU tensors: there the Triton backend needs the interpreter, GPU or not.
    environment = {**os.environ, "TRITON_INTERPRET": "1"} if backend == "triton" else dict(os.environ)
    logs = [open(tmp_path / f"rank{rank}.log", "w") for rank in range(WORLD)]  # pipes could fill and deadlock
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD), str(tmp_path / "store"), mode, backend, str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        for rank, log in enumerate(logs)
    ]
    for rank, worker in enumerate(workers):
        worker.wait(timeout=120)
        logs[rank].close()
        assert worker.returncode == 0, (tmp_path / f"rank{rank}.log").read_text()[-3000:]
    for ours, expected in zip(torch.load(out, weights_only=True), single_process_reference()):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
