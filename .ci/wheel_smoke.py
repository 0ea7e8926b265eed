"""Smoke test of an installed wheel, run from outside the clone: the package imports from site-packages, carries
its licence and version, and steps like torch's AdamW. Plain, it checks the PyTorch backend (what a CPU gets by
default); with TRITON_INTERPRET=1, the Triton kernels through the interpreter."""

import importlib.metadata
import os
from pathlib import Path

import torch

import v0adam
from v0adam import kernels

installed = Path(v0adam.__file__).resolve()
assert "site-packages" in installed.parts, f"v0adam imported from {installed}, not from the installed wheel"
assert Path(kernels.__file__).resolve().parent.parent == installed.parent, "v0adam.kernels is not the wheel's"

distribution = importlib.metadata.distribution("v0adam")
assert distribution.version == v0adam.__version__, (distribution.version, v0adam.__version__)
assert distribution.metadata["License-Expression"] == "BSD-3-Clause" or distribution.metadata["License"] == (
    "BSD-3-Clause"
), "no licence in the metadata"
assert any(file.name == "LICENSE" for file in distribution.files), "LICENSE not in the wheel"

for backend in ("auto", "triton" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    reference.load_state_dict(model.state_dict())
    opt = v0adam.V0AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, backend=backend)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        inputs, labels = torch.randn(4, 8), torch.randint(0, 3, (4,))
        for net, optimizer in ((model, opt), (reference, ref_opt)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(inputs), labels).backward()
            optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    print(f"wheel {distribution.version} from {installed.parent}: {backend} backend steps as torch.optim.AdamW")
