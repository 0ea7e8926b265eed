"""Run by test_distributed.py: one rank of a 2-process gloo job training a small model with v0adam inside DDP or
ZeroRedundancyOptimizer. Usage: python distributed_worker.py RANK WORLD STORE MODE BACKEND OUT"""

import faulthandler
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import v0adam

STEPS, GLOBAL_BATCH = 6, 16


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(GLOBAL_BATCH, 5, generator=generator), torch.randn(GLOBAL_BATCH, 3, generator=generator))
        for _ in range(STEPS)
    ]
    return model, batches


def main(rank, world, store, mode, backend, out):
    faulthandler.dump_traceback_later(60, exit=True)  # a hung rank reports where, instead of stalling the suite
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model, batches = model_and_data()
    options = dict(lr=1e-2, weight_decay=0.1, v0="zero", backend=backend)
    if mode == "zero":
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=v0adam.V0AdamW, **options)
        wrapped = DistributedDataParallel(model)
    else:
        wrapped = DistributedDataParallel(model, gradient_as_bucket_view=mode == "ddp-bucket-view")
        opt = v0adam.V0AdamW(model.parameters(), **options)
    share = GLOBAL_BATCH // world
    for x, y in batches:
        opt.zero_grad()
        local = slice(rank * share, (rank + 1) * share)
        torch.nn.functional.mse_loss(wrapped(x[local]), y[local]).backward()
        opt.step()
    if rank == 0:
        torch.save([p.detach() for p in model.parameters()], out)
    dist.barrier()
    # Tearing down the process group, DDP's reducer or ZeRO (their destructors, when main returns) sometimes hangs
    # in a native gloo thread here, about one run in three, after the results were written: leave without it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
