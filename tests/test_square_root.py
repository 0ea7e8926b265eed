"""`v0adam.kernels.square_root.sqrt_rn`: the correctly rounded square root, bit for bit, over every class of float32
and every position in a pack of four (in the interpreter here, natively on a GPU); compiled from Turing to
Blackwell, ptxas's own fast path behind one branch for four elements; and compiled for sm_90, run without a GPU
(`tests/ptx_machine.py`), each root in its own element's place, on either path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE
from ptx_machine import Machine
from v0adam.kernels.square_root import FAST_PATH_HIGHEST_BITS, FAST_PATH_LOWEST_BITS, PACK, sqrt_rn

ROOT = Path(__file__).resolve().parents[1]


@triton.jit
def _sqrt_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    tl.store(out_ptr + offsets, sqrt_rn(tl.load(x_ptr + offsets, mask=mask)), mask=mask)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    x = x.to(DEVICE)
    out = torch.empty_like(x)
    block = min(triton.next_power_of_2(x.numel()), 1 << 20 if DEVICE == "cpu" else 1024)
    _sqrt_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), BLOCK=block)
    return out.cpu()


def _correctly_rounded(x: torch.Tensor) -> torch.Tensor:
    """float64's square root rounded to float32: one rounding of the exact root (53 >= 2 * 24 + 2 bits make the
    double rounding innocuous for a square root)."""
    return x.double().sqrt().float()


def _assert_bitwise(got: torch.Tensor, x: torch.Tensor):
    expected = _correctly_rounded(x)
    mismatch = (got.view(torch.int32) != expected.view(torch.int32)) & ~(got.isnan() & expected.isnan())
    first = mismatch.nonzero()[0].item() if mismatch.any() else None
    assert first is None, f"{int(mismatch.sum())} roots differ, first sqrt({x[first].item()!r}) = {got[first].item()!r}"


def _bits(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64).to(torch.int32).view(torch.float32)


def test_every_significand_of_two_binades_is_rounded_correctly():
    """Every float32 in [1, 4): a root's rounding depends on the significand and the exponent's parity only."""
    x = (torch.arange(1 << 24, dtype=torch.int32) + 0x3F800000).view(torch.float32)
    _assert_bitwise(_sqrt(x), x)


# Every class of float32: zeros, subnormals, the smallest normals, the edges of ptxas's fast path, the largest
# float, infinities, NaN and negatives.
SPECIAL_BITS = [
    0x00000000, 0x80000000, 0x00000001, 0x007FFFFF, 0x00800000, 0x00800001,
    FAST_PATH_LOWEST_BITS - 1, FAST_PATH_LOWEST_BITS, FAST_PATH_LOWEST_BITS + 1,
    FAST_PATH_HIGHEST_BITS - 1, FAST_PATH_HIGHEST_BITS, 0x7F800000, 0x7FC00000, 0x7F800001, 0xFFC00000,
    0xBF800000, 0x80000001, 0xFF800000,
]  # fmt: skip


@pytest.mark.parametrize("position", range(2 * PACK))
def test_a_value_outside_the_fast_path_takes_the_exact_root_wherever_it_lies_in_a_pack(position):
    """Each special value at each position among values of the fast path: the special's root and its neighbours'
    (whose pack then takes the slow path with it) are correctly rounded."""
    special = _bits(SPECIAL_BITS)
    x = torch.linspace(0.5, 3.0, 2 * PACK * len(SPECIAL_BITS)).view(len(SPECIAL_BITS), 2 * PACK)
    x[:, position] = special
    x = x.flatten()
    _assert_bitwise(_sqrt(x), x)


def test_random_bits_over_every_class_are_rounded_correctly():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-(1 << 31), 1 << 31, (1 << 20,), generator=generator).to(torch.int32).view(torch.float32)
    x[: len(SPECIAL_BITS)] = _bits(SPECIAL_BITS)
    _assert_bitwise(_sqrt(x), x)


# Compute capabilities from Turing to Blackwell: ptxas expands sqrt.rn.f32 alike for each.
CAPABILITIES = (75, 80, 86, 89, 90, 100)


def test_compiled_it_is_ptxas_own_fast_path_with_one_branch_a_pack():
    """SASS, on the main path of 8 roots a thread, for each of `CAPABILITIES`: the packed root issues ptxas's own
    fast-path instructions (MUFU.RSQ, two FMUL.FTZ and two FFMA a root) for the very range of bits ptxas gives its
    fast path, with one conditional branch for `PACK` roots where ptxas takes one each. If a ptxas changes its
    expansion, this fails."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "square_root_sass.py"), *map(str, CAPABILITIES)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads(result.stdout)
    assert sorted(map(int, reports)) == sorted(CAPABILITIES)
    for capability, report in reports.items():
        roots = report["elements_per_thread"]
        ptxas, packed = report["ptxas"]["main_path"], report["packed"]["main_path"]
        assert report["ptxas"]["fast_path_range"] == [FAST_PATH_LOWEST_BITS, FAST_PATH_HIGHEST_BITS], capability
        for opcode, per_root in (("MUFU.RSQ", 1), ("FMUL.FTZ", 2), ("FFMA", 2)):
            assert ptxas.get(opcode) == packed.get(opcode) == per_root * roots, (capability, opcode, ptxas, packed)
        assert ptxas["conditional BRA"] == roots and packed["conditional BRA"] == roots // PACK, capability
        assert "CALL" not in ptxas and "CALL" not in packed, capability  # the slow paths lie off the main path


def _compiled_roots(inline_ptx: dict, x: torch.Tensor) -> torch.Tensor:
    """The square roots of `x` (two programs' worth) by the PTX Triton compiles around `sqrt_rn` for sm_90, run on
    `tests/ptx_machine` (its reciprocal square root the correctly rounded one, not the hardware's approximation)."""
    block, threads = inline_ptx["block"], 32 * inline_ptx["num_warps"]
    assert x.numel() == 2 * block
    x_at, out_at = 1 << 12, (1 << 12) + 4 * x.numel()
    memory = np.zeros(out_at + 4 * x.numel(), dtype=np.uint8)
    memory[x_at:out_at] = x.numpy().view(np.uint8)
    Machine(2, threads, [x_at, out_at, 0, 0], memory).run(inline_ptx["ptx"]["square roots"])
    return torch.from_numpy(memory[out_at:].view(np.float32).copy())


def test_compiled_for_sm90_each_root_is_its_own_elements_on_the_fast_path(inline_ptx):
    """Every pack on the fast path (x from 2^-101 to the largest float32): root i is x[i]'s, for every i (a pack's
    elements handed to the PTX, or its results taken back, in another order would move roots between elements)."""
    generator = torch.Generator().manual_seed(0)
    size = (2 * inline_ptx["block"],)
    bits = torch.randint(FAST_PATH_LOWEST_BITS, FAST_PATH_HIGHEST_BITS + 1, size, generator=generator)
    x = bits.to(torch.int32).view(torch.float32)
    _assert_bitwise(_compiled_roots(inline_ptx, x), x)


def test_compiled_for_sm90_each_root_is_its_own_elements_on_the_slow_path(inline_ptx):
    """Every pack outside the fast path (zeros, subnormals, the smallest normals, infinities, NaN, negatives, at
    random): each element's exact root, in its place."""
    generator = torch.Generator().manual_seed(0)
    outside = torch.randint(0, FAST_PATH_LOWEST_BITS, (2 * inline_ptx["block"],), generator=generator)
    outside[::7] = torch.randint(FAST_PATH_HIGHEST_BITS + 1, 1 << 32, outside[::7].shape, generator=generator)
    x = outside.to(torch.int32).view(torch.float32)
    _assert_bitwise(_compiled_roots(inline_ptx, x), x)
