"""Run by test_distributed.py: one rank of a gloo job using v0adam inside a training framework.
Usage: python distributed_worker.py RANK WORLD STORE SCENARIO BACKEND OUT

Scenarios (rank 0 saves a list of tensors to OUT):
  ddp, ddp-bucket-view, zero, fsdp: train STEPS steps on this rank's share of each global batch, clipping the
      gradients to MAX_NORM (with the non-finite guard on under ZeRO and FSDP2: both need the norm over all
      shards); the params.
  fsdp-dcp: train RESUME_AT steps under FSDP2, save model and optimizer with torch.distributed.checkpoint, load
      them into a fresh model and optimizer (checking the full optimizer state dict before and after, and loading
      that full state dict into a third optimizer), train the remaining steps there; the params.
  fsdp-compiled: fsdp with clipping and step compiled by torch.compile(fullgraph=True, backend="aot_eager").
  fsdp-save, fsdp-resume: the two halves of fsdp-dcp as separate jobs (which may differ in world size).
  fsdp-8bit: fsdp without the guard, with 8-bit states (on a model whose first weight takes them); the params.
  fsdp-8bit-save, fsdp-8bit-resume: its first RESUME_AT steps, saved with torch.distributed.checkpoint (codes and
      scales as DTensors), and the rest in a new job, maybe of another world size; the whole 8-bit states saved or
      loaded, then the params. fsdp-8bit-resume-plain: the rest on one process, without FSDP2.
  zero-resume: train RESUME_AT steps under ZeroRedundancyOptimizer, save its consolidated state_dict, load it into
      a fresh model and optimizer (ZeRO's load_state_dict assigns each rank's share into `optim.state`), train the
      remaining steps there; the params.
  fsdp-from-torch: every rank trains RESUME_AT steps with torch.optim.AdamW on the whole model and batch; its
      plain state_dict is loaded into V0AdamW over the FSDP2-sharded model, which trains the rest; the params.
  random-v0-fsdp: random v0 under FSDP2 (uneven and empty shards); every param's whole exp_avg_sq.
  random-v0-zero: random v0 under ZeroRedundancyOptimizer, numbered by setup_zero; the same.
  nonfinite-zero, nonfinite-fsdp: as zero and fsdp, clipping to MAX_NORM in the inf-norm, but at NAN_STEP rank 1
      puts a NaN in a grad of its own share; the params, then the skipped-step count of rank 0.
  data-v0-ddp, data-v0-fsdp, data-v0-zero: init_v0_from_data on this rank's share of the batches; every whole
      exp_avg_sq.
  release: release_grads under DDP is refused; under FSDP2 it trains (without clipping), with two groups per
      backward, then the ordinary loop trains a second model; the params of both.
"""

import faulthandler
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import v0adam
from v0adam import zero


@dataclass(frozen=True)
class Job:
    scenario: str
    backend: str
    rank: int
    world: int
    directory: str  # where OUT goes; checkpoints too


STEPS, RESUME_AT, GLOBAL_BATCH, NAN_STEP = 6, 3, 16, 2
MAX_NORM = 0.3  # gradients are clipped to it (their norms are about 0.8 to 1 here)
TRAINING = dict(lr=1e-2, weight_decay=0.1, v0="zero")
V0_SEED, DATA_SAMPLES = 7, 3 * GLOBAL_BATCH
FULL = StateDictOptions(full_state_dict=True)  # whole tensors on every rank


def model_and_data(inputs=5):
    """A small model whose layers split unevenly over two ranks (12 rows: 6/6, 3 rows: 2/1) and its batches. With
    256 inputs its first weight (12 rows of 256, cut 6/6 over two ranks, 3 each over four) takes 8-bit states."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(inputs, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(GLOBAL_BATCH, inputs, generator=generator), torch.randn(GLOBAL_BATCH, 3, generator=generator))
        for _ in range(STEPS)
    ]
    return model, batches


def random_v0_model():
    """Shards that cut the PyTorch backend's draw chunks mid-way (500 x 300 rows: 250/250), a 2/1 split and an
    empty shard (1 row over two ranks)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(300, 500), torch.nn.Linear(500, 3), torch.nn.Linear(3, 1))


def loss_of(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def local_batches(batches, job):
    share = GLOBAL_BATCH // job.world
    rows = slice(job.rank * share, (job.rank + 1) * share)
    return [(x[rows], y[rows]) for x, y in batches]


def shard(model):
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def whole(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach()


def consolidated_exp_avg_sq(opt, model, rank):
    """Every param's exp_avg_sq from all ranks of a ZeroRedundancyOptimizer, on rank 0 (else [])."""
    opt.consolidate_state_dict(to=0)
    if rank != 0:
        return []
    state = opt.state_dict()["state"]
    return [state[index]["exp_avg_sq"] for index in range(len(list(model.parameters())))]


def assert_same_state(state_dict, expected):
    assert state_dict["state"].keys() == expected["state"].keys()
    for name, values in expected["state"].items():
        assert state_dict["state"][name].keys() == values.keys(), name
        for key, value in values.items():
            assert torch.equal(state_dict["state"][name][key], value), (name, key)
    assert [g["lr"] for g in state_dict["param_groups"]] == [g["lr"] for g in expected["param_groups"]]


def local_optimizer(opt):
    """The V0AdamW that steps this rank's params: ZeroRedundancyOptimizer's `optim`, else `opt` itself."""
    return opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt


def clip_and_step(opt):
    local_optimizer(opt).clip_grad_norm_(MAX_NORM)
    opt.step()


def train(model, opt, batches, update=clip_and_step):
    for batch in batches:
        opt.zero_grad()
        loss_of(model, batch).backward()
        update(opt)


def trained_params(model):
    return [whole(p) for p in model.parameters()]


def ddp(job):
    model, batches = model_and_data()
    wrapped = DistributedDataParallel(model, gradient_as_bucket_view=job.scenario == "ddp-bucket-view")
    train(wrapped, v0adam.V0AdamW(model.parameters(), backend=job.backend, **TRAINING), local_batches(batches, job))
    return trained_params(model)


def zero_optimizer(model, job, **options):
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=v0adam.V0AdamW, backend=job.backend, **options)
    v0adam.setup_zero(opt)
    return opt


def zero_redundancy(job):
    model, batches = model_and_data()
    opt = zero_optimizer(model, job, skip_nonfinite=True, **TRAINING)
    train(DistributedDataParallel(model), opt, local_batches(batches, job))
    return trained_params(model)


def skip_a_nonfinite_step(model, opt):
    opt.zero_grad()
    for param in model.parameters():
        param.grad = torch.full_like(param, float("nan"))
    opt.step()


def zero_checkpoint(job):
    model, batches = model_and_data()
    batches = local_batches(batches, job)
    opt = zero_optimizer(model, job, skip_nonfinite=True, **TRAINING)
    train(DistributedDataParallel(model), opt, batches[:RESUME_AT])
    skip_a_nonfinite_step(model, opt)
    opt.consolidate_state_dict(to=0)
    checkpoint = os.path.join(job.directory, "zero-checkpoint.pt")
    if job.rank == 0:
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint)
    dist.barrier()
    saved = torch.load(checkpoint, weights_only=True)  # plain containers: no v0adam class in the checkpoint
    model = model_and_data()[0]
    model.load_state_dict(saved["model"])
    opt = zero_optimizer(model, job, lr=0.5, v0="random", skip_nonfinite=True)  # settings overwritten by the load
    opt.load_state_dict(saved["optim"])
    train(DistributedDataParallel(model), opt, batches[RESUME_AT:])
    assert int(opt.optim.skipped_steps) == 1  # the count was saved and adopted
    return trained_params(model)


def fsdp(job):
    model, batches = model_and_data()
    shard(model)
    opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, skip_nonfinite=True, **TRAINING)
    update = clip_and_step
    if job.scenario == "fsdp-compiled":
        opt.param_groups[0]["lr"] = torch.tensor(TRAINING["lr"])
        update = torch.compile(clip_and_step, fullgraph=True, backend="aot_eager")
    train(model, opt, local_batches(batches, job), update)
    return trained_params(model)


def fsdp_checkpoint(job):
    """fsdp-dcp, or its halves fsdp-save and fsdp-resume."""
    model, batches = model_and_data()
    batches = local_batches(batches, job)
    checkpoint = os.path.join(job.directory, "checkpoint")
    if job.scenario != "fsdp-resume":
        shard(model)
        opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, skip_nonfinite=True, **TRAINING)
        train(model, opt, batches[:RESUME_AT])
        skip_a_nonfinite_step(model, opt)  # the count of skipped steps is saved too
        saved = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.save(saved, checkpoint_id=checkpoint)
        if job.scenario == "fsdp-save":
            return []
        full_before = get_optimizer_state_dict(model, opt, options=FULL)
    model = shard(model_and_data()[0])
    # Settings overwritten by the load.
    opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, lr=0.5, v0="random", skip_nonfinite=True)
    loaded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_model_state_dict(model, loaded["model"])
    set_optimizer_state_dict(model, opt, loaded["optim"])
    assert int(opt.skipped_steps) == 1
    if job.scenario == "fsdp-dcp":
        assert_same_state(get_optimizer_state_dict(model, opt, options=FULL), full_before)
        other = v0adam.V0AdamW(model.parameters(), backend=job.backend, lr=0.5, v0="random", skip_nonfinite=True)
        set_optimizer_state_dict(model, other, full_before, options=FULL)
        assert_same_state(get_optimizer_state_dict(model, other, options=FULL), full_before)
        assert int(other.skipped_steps) == 1
    train(model, opt, batches[RESUME_AT:])
    return trained_params(model)


def full_8bit_states(model, opt):
    """Every 8-bit state's whole codes and scales, gathered (on every rank), in a fixed order; copies (without
    FSDP2 the full state dict holds the live states, which training goes on to change)."""
    state = get_optimizer_state_dict(model, opt, options=FULL)["state"]
    return [
        value.clone()
        for name in sorted(state)
        for key, value in sorted(state[name].items())
        if key.endswith("_scale") or (isinstance(value, torch.Tensor) and value.dtype == torch.uint8)
    ]


def fsdp_8bit(job):
    model, batches = model_and_data(inputs=256)
    batches = local_batches(batches, job)
    if job.scenario != "fsdp-8bit-resume-plain":
        shard(model)
    opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, state_dtype=torch.uint8, min_8bit_size=0, **TRAINING)
    checkpoint = os.path.join(job.directory, "checkpoint-8bit")
    if job.scenario == "fsdp-8bit":
        train(model, opt, batches)
        return trained_params(model)
    if job.scenario == "fsdp-8bit-save":
        train(model, opt, batches[:RESUME_AT])
        saved = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        codes = saved["optim"]["state"]["0.weight"]
        assert set(codes) == {"step", "exp_avg_code", "exp_avg_sq_code", "exp_avg_scale", "exp_avg_sq_scale"}, set(
            codes
        )
        for key, dtype in (("exp_avg_code", torch.uint8), ("exp_avg_scale", torch.float32)):
            assert isinstance(codes[key], DTensor) and codes[key].dtype == dtype, key
        assert set(saved["optim"]["state"]["2.weight"]) == {"step", "exp_avg", "exp_avg_sq"}  # float32 states
        dcp.save(saved, checkpoint_id=checkpoint)
        return full_8bit_states(model, opt)
    loaded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_model_state_dict(model, loaded["model"])
    set_optimizer_state_dict(model, opt, loaded["optim"])
    states = full_8bit_states(model, opt)
    train(model, opt, batches[RESUME_AT:])
    return states + trained_params(model)


def fsdp_from_torch(job):
    model, batches = model_and_data()
    reference = torch.optim.AdamW(model.parameters(), lr=TRAINING["lr"], weight_decay=TRAINING["weight_decay"])
    for batch in batches[:RESUME_AT]:
        reference.zero_grad()
        loss_of(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        reference.step()
    shard(model)
    opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, lr=0.5, v0="random")  # overwritten by the load
    opt.load_state_dict(reference.state_dict())
    train(model, opt, local_batches(batches, job)[RESUME_AT:])
    return trained_params(model)


def random_v0(job):
    model = random_v0_model()
    if job.scenario == "random-v0-zero":
        opt = zero_optimizer(model, job, v0="random", v0_seed=V0_SEED)
        return consolidated_exp_avg_sq(opt, model, job.rank)
    shard(model)
    opt = v0adam.V0AdamW(model.parameters(), v0="random", v0_seed=V0_SEED, backend=job.backend)
    return [whole(opt.state[p]["exp_avg_sq"]) for p in model.parameters()]


def data_v0(job):
    model, batches = model_and_data()
    batches = local_batches(batches, job)
    wrapped = shard(model) if job.scenario == "data-v0-fsdp" else DistributedDataParallel(model)

    def loss_fn(batch):
        return loss_of(wrapped, batch)

    if job.scenario == "data-v0-zero":
        opt = zero_optimizer(model, job, v0="data")
        assert zero.init_v0_from_data(opt, batches, loss_fn, num_samples=DATA_SAMPLES) == DATA_SAMPLES
        return consolidated_exp_avg_sq(opt, model, job.rank)
    opt = v0adam.V0AdamW(model.parameters(), v0="data", backend=job.backend)
    assert opt.init_v0_from_data(batches, loss_fn, num_samples=DATA_SAMPLES) == DATA_SAMPLES
    return [whole(opt.state[p]["exp_avg_sq"]) for p in model.parameters()]


def nonfinite(job):
    """A NaN in a grad that only rank 1 steps must skip the step on every rank, under the inf-norm too (whose
    all-reduce is a max)."""
    model, batches = model_and_data()
    if job.scenario == "nonfinite-zero":
        wrapped = DistributedDataParallel(model)
        opt = zero_optimizer(model, job, skip_nonfinite=True, **TRAINING)
    else:
        wrapped = shard(model)
        opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, skip_nonfinite=True, **TRAINING)
    local = local_optimizer(opt)
    for index, batch in enumerate(local_batches(batches, job)):
        opt.zero_grad()
        loss_of(wrapped, batch).backward()
        if index == NAN_STEP and job.rank == 1:
            grad = local.param_groups[0]["params"][-1].grad
            with torch.no_grad():
                v0adam.sharding.local(grad).view(-1)[0] = float("nan")
        local.clip_grad_norm_(MAX_NORM, norm_type=float("inf"))
        opt.step()
    return trained_params(model) + [local.skipped_steps]


def step_released(opt):
    """The loop's step() after a released backward, which has stepped every param in two groups or more."""
    assert all(param.grad is None for group in opt.param_groups for param in group["params"])
    assert opt._step_calls >= 2 * (getattr(opt, "backwards", 0) + 1), opt._step_calls
    opt.backwards = getattr(opt, "backwards", 0) + 1
    opt.step()


def release(job):
    model, batches = model_and_data()
    try:
        v0adam.V0AdamW(DistributedDataParallel(model).parameters(), release_grads=True)
        raise AssertionError("release_grads under DDP was not refused")
    except ValueError as error:
        assert "DDP" in str(error), error
    trained = []
    for release_grads in (True, False):
        model = shard(model_and_data()[0])
        opt = v0adam.V0AdamW(model.parameters(), backend=job.backend, release_grads=release_grads, **TRAINING)
        if release_grads:
            opt._release.group_bytes = 100  # this rank's shard of the last layer: its first group
        train(model, opt, local_batches(batches, job), update=step_released if release_grads else type(opt).step)
        trained += trained_params(model)
    return trained


SCENARIOS = {
    "ddp": ddp,
    "ddp-bucket-view": ddp,
    "zero": zero_redundancy,
    "zero-resume": zero_checkpoint,
    "fsdp": fsdp,
    "fsdp-compiled": fsdp,
    "fsdp-dcp": fsdp_checkpoint,
    "fsdp-save": fsdp_checkpoint,
    "fsdp-resume": fsdp_checkpoint,
    "fsdp-from-torch": fsdp_from_torch,
    "fsdp-8bit": fsdp_8bit,
    "fsdp-8bit-save": fsdp_8bit,
    "fsdp-8bit-resume": fsdp_8bit,
    "fsdp-8bit-resume-plain": fsdp_8bit,
    "random-v0-fsdp": random_v0,
    "random-v0-zero": random_v0,
    "data-v0-ddp": data_v0,
    "data-v0-fsdp": data_v0,
    "data-v0-zero": data_v0,
    "nonfinite-zero": nonfinite,
    "nonfinite-fsdp": nonfinite,
    "release": release,
}


def main(rank, world, store, scenario, backend, out):
    faulthandler.dump_traceback_later(100, exit=True)  # a hung rank reports where, instead of stalling the suite
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    result = SCENARIOS[scenario](Job(scenario, backend, rank, world, os.path.dirname(out)))
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    # Tearing down the process group, DDP's reducer or ZeRO (their destructors, when main returns) sometimes hangs
    # in a native gloo thread here, about one run in three, after the results were written: leave without it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
