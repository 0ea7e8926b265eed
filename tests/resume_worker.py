"""Run by test_resume.py in fresh processes: train, save, load, continue. Usage:
python resume_worker.py BACKEND PHASE PATH, PHASE one of full (8 steps), first (5 steps, save), second (load, 3 steps).
"""

import sys

import torch

import v0adam

FIRST, SECOND = 5, 3


def build(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, amsgrad=True, v0="random", v0_seed=7, backend=backend)
    return model, opt


def train(model, opt, steps, start):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def main(backend, phase, path):
    model, opt = build(backend)
    if phase == "second":
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        train(model, opt, SECOND, start=FIRST)
    else:
        train(model, opt, FIRST + SECOND if phase == "full" else FIRST, start=0)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)


if __name__ == "__main__":
    main(*sys.argv[1:])
