"""Prints, as JSON, what ptxas makes of `tl.sqrt_rn` and of `v0adam.kernels.square_root.sqrt_rn` for each compute
capability given (`python tests/square_root_sass.py 80 90`): the instructions one thread issues on its main path,
by opcode, and the range of bits ptxas's own fast path takes. Run in a process of its own
(tests/test_square_root.py): the kernels must be compiled, not interpreted."""

import collections
import json
import re
import sys
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from v0adam.kernels.square_root import sqrt_rn  # noqa: E402

from bench import sass  # noqa: E402

BLOCK, NUM_WARPS = 1024, 4  # 8 elements a thread, as the step's aligned launches


@triton.jit
def _ptxas_square_roots(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, tl.sqrt_rn(tl.load(x_ptr + offsets)))


@triton.jit
def _packed_square_roots(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, sqrt_rn(tl.load(x_ptr + offsets)))


def _instructions(kernel, capability: int) -> list[sass.Instruction]:
    source = triton.compiler.ASTSource(
        fn=kernel, signature={"x_ptr": "*fp32", "out_ptr": "*fp32"}, constexprs={"BLOCK": BLOCK}
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": NUM_WARPS})
    return sass.parse(sass.disassemble(compiled.asm["cubin"])[0])


def _main_path(instructions: list[sass.Instruction]) -> dict:
    path = [instructions[index] for index in sass.main_path(instructions).indices]
    opcodes = collections.Counter(instruction.opcode for instruction in path)
    opcodes["conditional BRA"] = sum(instruction.base == "BRA" and bool(instruction.predicate) for instruction in path)
    return dict(opcodes)


def _fast_path_range(instructions: list[sass.Instruction]) -> list[int]:
    """[lowest, highest] bits of x for which ptxas's expansion takes its fast path: it adds the negated lowest to x's
    bits and compares the difference, unsigned, with highest - lowest (the same two constants for every element)."""
    ranges = set()
    for index, check in enumerate(instructions):
        if not check.opcode.startswith("ISETP.GT.U32"):
            continue
        difference, limit = check.operands.split(", ")[2:4]
        offset = next(
            earlier
            for earlier in reversed(instructions[:index])
            if earlier.base in ("VIADD", "IADD3") and earlier.operands.startswith(f"{difference},")
        )
        lowest = -int(re.search(r"(-?0x[0-9a-f]+)", offset.operands).group(1), 16) & 0xFFFFFFFF
        ranges.add((lowest, lowest + int(limit, 16)))
    (fast_path_range,) = ranges
    return list(fast_path_range)


def report(capability: int) -> dict:
    ptxas = _instructions(_ptxas_square_roots, capability)
    return {
        "elements_per_thread": BLOCK // (32 * NUM_WARPS),
        "ptxas": {"main_path": _main_path(ptxas), "fast_path_range": _fast_path_range(ptxas)},
        "packed": {"main_path": _main_path(_instructions(_packed_square_roots, capability))},
    }


if __name__ == "__main__":
    print(json.dumps({capability: report(int(capability)) for capability in sys.argv[1:]}))
