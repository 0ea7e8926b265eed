"""Run by test_resume.py in fresh processes: train, save, load, continue. Usage:
python resume_worker.py BACKEND PRECISION PHASE PATH, PRECISION fp32 (with AMSGrad) or bf16-stochastic, PHASE one
of full (8 steps), first (5 steps, save), second (load, 3 steps).
"""

import sys

import torch

import v0adam

FIRST, SECOND = 5, 3


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build(backend, precision):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3)).to(DEVICE)
    if precision == "fp32":
        options = dict(amsgrad=True)
    else:
        model = model.to(torch.bfloat16)
        options = dict(stochastic_rounding=True)
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, v0="random", v0_seed=7, backend=backend, **options)
    return model, opt


def train(model, opt, steps, start):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        x, y = (torch.randn(16, size, generator=generator).to(DEVICE) for size in (6, 3))
        opt.zero_grad()
        dtype = model[0].weight.dtype
        torch.nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
        opt.step()


def main(backend, precision, phase, path):
    model, opt = build(backend, precision)
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
