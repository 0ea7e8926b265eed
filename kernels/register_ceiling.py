"""The register ceiling a step launch asks ptxas for (Triton's `maxnreg`), where its own choice costs an occupancy
step or a second wait for DRAM; chosen on the host with the launch, from what the static model predicts (`python -m
bench.static`)."""

import torch
from v0adam.kernels.tables import ALIGN_BYTES


def register_ceiling(
    grad_alignment: int,
    state_dtype: torch.dtype,
    master: torch.Tensor | None,
    rounding_seed: torch.Tensor | None,
    max_exp_avg_sq: torch.Tensor | None,
    algorithm: str,
) -> int | None:
    """The registers a thread of the step may take, where ptxas left to itself takes a few more than an occupancy
    step allows, or too few; None elsewhere. `grad_alignment`: the bytes the aligned launch promises of its grads'
    addresses (0 for the unaligned launch); the tensors are the launch's (None where it has none). Predicted by
    `python -m bench.static`, not measured:
    - The aligned step with bfloat16 states and stochastic rounding takes 42 (Adam), 44 (AdaBelief): 10 warps a
      scheduler. Held to 40, it spills nothing and 12 fit: 94.9% -> 95.9% of copy (AdaBelief 94.7% -> 95.9%).
    - The aligned step with 8-bit states and float32 params takes 64 (AdaBelief 58) since its square roots go four
      to a branch (`kernels/square_root.py`): 8 warps a scheduler. Held to 56, it spills nothing and 9 fit: 94.6%
      -> 95.4% of copy (AdaBelief 94.4% -> 95.2%, AdaBound 94.6% -> 95.4%). With bfloat16 params ptxas takes 56
      itself; compiled by triton 3.6 (torch 2.11's), 64 (88.6%), where 56 holds it at 90.1% (and the float32
      params' steps, 66 to 68 there, at 95.1% to 95.3%, from 93.3% to 93.5%).
    - AdaBound with an exact master (int16 remainders), its grads 2 bytes past a 4-byte boundary: at the 48
      registers ptxas takes, it puts the grads' halves together before it requests the remainders, to free
      registers for them, and waits for DRAM twice (95.5%); at up to 56 (it takes 56), once (97.4%).
    RAdam's steps would spill there or lose (8-bit: 93.8% -> 90.0%), so would AdaBound's with bf16 states and
    AMSGrad's with 8-bit states; the other steps either spill or gain at most half a point. The 8-bit steps
    aligned but for their grads take 54 to 56 registers themselves."""
    if not grad_alignment or algorithm not in ("adam", "adabelief", "adabound"):
        return None
    remainder_master = master is not None and master.dtype == torch.int16
    if grad_alignment == 2 and remainder_master and algorithm == "adabound":
        return 56
    if grad_alignment != ALIGN_BYTES.value:
        return None
    if rounding_seed is not None and state_dtype == torch.bfloat16 and algorithm != "adabound":
        return 40
    if state_dtype == torch.uint8 and max_exp_avg_sq is None:
        return 56
    return None
