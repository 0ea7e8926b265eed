"""python -m bench.huge_step: one V0AdamW step on a single parameter of more than 2^31 elements, checked against
the float64 reference on slices at both ends (where 32-bit index arithmetic would have wrapped). Needs a GPU
with about 60 GB free; says so and exits 0 otherwise."""

import sys

import torch

import v0adam
from v0adam.reference import adam_step_reference

NUMEL = 2**31 + 2**20 + 3
SLICE = 2**16


def main() -> int:
    if not torch.cuda.is_available():
        print("huge step: no GPU, skipped")
        return 0
    free, _ = torch.cuda.mem_get_info()
    needed = NUMEL * 4 * 7  # param, grad, two states, and the flat copies made while re-homing
    if free < needed:
        print(f"huge step: {free / 1e9:.0f} GB free, {needed / 1e9:.0f} GB needed, skipped")
        return 0
    generator = torch.Generator(device="cuda").manual_seed(0)
    param = torch.nn.Parameter(torch.randn(NUMEL, device="cuda", generator=generator))
    opt = v0adam.V0AdamW([param], lr=1e-2, v0="zero")
    param.grad.normal_(generator=generator)
    slices = [slice(0, SLICE), slice(2**31 - SLICE, 2**31 + SLICE), slice(NUMEL - SLICE, NUMEL)]
    expected = [(param.detach()[s].double(), param.grad[s].double()) for s in slices]
    opt.step()
    torch.cuda.synchronize()
    worst = 0.0
    for s, (value, grad) in zip(slices, expected):
        exp_avg, exp_avg_sq = torch.zeros_like(value), torch.zeros_like(value)
        adam_step_reference(
            value,
            grad,
            exp_avg,
            exp_avg_sq,
            None,
            1,
            lr=1e-2,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=1e-2,
            decoupled_weight_decay=True,
            amsgrad=False,
            maximize=False,
        )
        torch.testing.assert_close(param.detach()[s].double(), value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[param]["exp_avg_sq"][s].double(), exp_avg_sq, rtol=1e-5, atol=1e-12)
        worst = max(worst, float((param.detach()[s].double() - value).abs().max()))
    print(
        f"huge step: {NUMEL:,} elements, slices at both ends and across 2^31 match the reference "
        f"(max |error| {worst:.2e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
