"""gloo jobs on CPU (see distributed_worker.py): v0adam inside DDP (with and without gradient_as_bucket_view),
ZeroRedundancyOptimizer and FSDP2 follows single-process torch.optim.AdamW on the global batch, clipped gradients
included, also across a torch.distributed.checkpoint save and load (also into another world size), across a
ZeroRedundancyOptimizer save and load, and from a plain torch.optim.AdamW state_dict into sharded params; a NaN
that one rank sees skips the step on all; random v0 does not depend on the world size; data v0 under DDP, FSDP2
and ZeRO is the single-process value on the global batches; 8-bit states under FSDP2 across a DCP save and load."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BACKENDS, DEVICE

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from distributed_worker import DATA_SAMPLES, MAX_NORM, NAN_STEP, TRAINING, loss_of, model_and_data  # noqa: E402

import v0adam  # noqa: E402


def run_jobs(tmp_path, *jobs):
    """Run each job, (scenario, backend, world size), on its own gloo processes, all at once; what each one's rank 0
    saved."""
    started = []
    for scenario, backend, world in jobs:
        out = tmp_path / f"{scenario}-{world}.pt"
        # gloo runs on CPU tensors: there the Triton backend needs the interpreter, GPU or not.
        environment = {**os.environ, "TRITON_INTERPRET": "1"} if backend == "triton" else dict(os.environ)
        store = tmp_path / f"store-{scenario}-{world}"
        logs = [open(tmp_path / f"{scenario}-{world}-rank{rank}.log", "w") for rank in range(world)]  # pipes fill
        workers = [
            subprocess.Popen(
                [sys.executable, str(WORKER), str(rank), str(world), str(store), scenario, backend, str(out)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
            for rank, log in enumerate(logs)
        ]
        started.append((out, logs, workers))
    for _, logs, workers in started:
        for log, worker in zip(logs, workers):
            worker.wait(timeout=180)
            log.close()
            assert worker.returncode == 0, Path(log.name).read_text()[-3000:]
    return [torch.load(out, weights_only=True) for out, _, _ in started]


def run_job(tmp_path, scenario, backend, world=2):
    """Run `scenario` on `world` gloo processes; what rank 0 saved."""
    return run_jobs(tmp_path, (scenario, backend, world))[0]


def single_process_training(norm_type=2.0, skipped_step=None):
    model, batches = model_and_data()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAINING["lr"], weight_decay=TRAINING["weight_decay"])
    for index, batch in enumerate(batches):
        if index == skipped_step:
            continue
        opt.zero_grad()
        loss_of(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM, norm_type)
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "scenario", ["ddp", "ddp-bucket-view", "zero", "zero-resume", "fsdp", "fsdp-dcp", "fsdp-from-torch"]
)
def test_two_processes_follow_one(backend, scenario, tmp_path):
    ours = run_job(tmp_path, scenario, backend)
    expected = single_process_training()
    assert len(ours) == len(expected)
    for param, reference in zip(ours, expected):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)


def test_grad_release_under_fsdp2_is_the_ordinary_loop_and_ddp_refuses_it(tmp_path):
    """FSDP2 calls the hooks on each reduced shard: released, the training is the ordinary loop's, bit for bit."""
    trained = run_job(tmp_path, "release", "torch")
    released, ordinary = trained[: len(trained) // 2], trained[len(trained) // 2 :]
    for param, reference in zip(released, ordinary, strict=True):
        assert torch.equal(param, reference)


TORCH = torch.torch_version.TorchVersion(torch.__version__)


@pytest.mark.skipif(
    TORCH < (2, 10) or (2, 14) <= TORCH < (2, 15),
    reason="these torch's dynamo cannot trace over FSDP2's DTensor params: 2.9 fails to fake them (AssertionError "
    "2 != 1 in symbolic_shapes), 2.14 to build their shape guards (IndexError in produce_guards), with v0adam 0.5 "
    "too; 2.11, 2.13 and 2.15 pass, 2.10 was not run",
)
def test_compiled_step_under_fsdp(tmp_path):
    """Clipping and step compiled with fullgraph=True over DTensor params (the Triton backend is traced)."""
    ours = run_job(tmp_path, "fsdp-compiled", "triton")
    for param, reference in zip(ours, single_process_training()):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", ["zero", "fsdp"])
def test_nonfinite_grad_on_one_rank_skips_the_step_on_all(backend, wrapper, tmp_path):
    """Rank 1 alone sees a NaN (in a param only it steps) and the clip norm is the inf-norm, reduced by a max."""
    *ours, skipped_steps = run_job(tmp_path, f"nonfinite-{wrapper}", backend)
    assert int(skipped_steps) == 1  # counted on rank 0, which saw no NaN of its own
    for param, reference in zip(ours, single_process_training(float("inf"), skipped_step=NAN_STEP), strict=True):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)


def test_zero_ranks_without_params_join_the_norm(tmp_path):
    """8 ranks, 4 params: half the ranks' optimizers hold no param and still take part in clipping's all-reduce."""
    ours = run_job(tmp_path, "zero", "torch", world=8)
    for param, reference in zip(ours, single_process_training(), strict=True):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_resumes_at_another_world_size(backend, tmp_path):
    """Saved by two ranks with torch.distributed.checkpoint, resumed by one: the states are resharded."""
    run_job(tmp_path, "fsdp-save", backend)
    ours = run_job(tmp_path, "fsdp-resume", backend, world=1)
    for param, reference in zip(ours, single_process_training()):
        torch.testing.assert_close(param, reference, rtol=1e-5, atol=1e-6)


def test_fsdp2_8bit_checkpoints_hold_codes_and_resume_bitwise_at_any_world_size(tmp_path):
    """Quantization blocks are the whole tensor's and never straddle two rows, where FSDP2 cuts: DCP saves codes and
    scales as they are, and a load at another world size, or on one process without FSDP2, finds them bit for bit.
    The resumed runs then differ from the uninterrupted one by their grads' reduction order only."""
    straight, saved = run_jobs(tmp_path, ("fsdp-8bit", "triton", 2), ("fsdp-8bit-save", "triton", 2))
    resumed = run_jobs(
        tmp_path,
        ("fsdp-8bit-resume", "triton", 2),
        ("fsdp-8bit-resume", "triton", 4),
        ("fsdp-8bit-resume-plain", "triton", 1),
    )
    assert len(saved) == 4  # the first weight's codes and scales of m and v
    for index, run in enumerate(resumed):
        states, params = run[: len(saved)], run[len(saved) :]
        for loaded, expected in zip(states, saved, strict=True):
            assert torch.equal(loaded, expected), index
        # The same world size steps the same shards; others round their reduced grads otherwise, which may take
        # a moment one code away (1/16 of m) in each of the three resumed steps of lr 0.01.
        tolerance = 1e-6 if index == 0 else 3 * 0.01 / 16
        for param, reference in zip(params, straight, strict=True):
            torch.testing.assert_close(param, reference, rtol=0, atol=tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", ["fsdp", "zero"])
def test_random_v0_does_not_depend_on_world_size(backend, wrapper, tmp_path):
    scenario = f"random-v0-{wrapper}"
    one, two = run_jobs(tmp_path, (scenario, backend, 1), (scenario, backend, 2))
    assert [v.shape for v in one] == [torch.Size([500, 300]), (500,), (3, 500), (3,), (1, 3), (1,)]
    for v0_one, v0_two in zip(one, two):
        assert torch.equal(v0_one, v0_two)
    assert all(bool((v0 > 0).all()) for v0 in one if v0.dim() == 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp", "zero"])
def test_data_v0_is_the_single_process_value(backend, wrapper, tmp_path):
    ours = run_job(tmp_path, f"data-v0-{wrapper}", backend)
    model, batches = model_and_data()
    model.to(DEVICE)
    opt = v0adam.V0AdamW(model.parameters(), v0="data", backend=backend)
    on_device = [tuple(t.to(DEVICE) for t in batch) for batch in batches]
    seen = opt.init_v0_from_data(on_device, lambda batch: loss_of(model, batch), num_samples=DATA_SAMPLES)
    assert seen == DATA_SAMPLES
    for v0, param in zip(ours, model.parameters()):
        expected = opt.state[param]["exp_avg_sq"].cpu()
        assert bool((expected > 0).any())
        torch.testing.assert_close(v0, expected, rtol=1e-5, atol=1e-12)
