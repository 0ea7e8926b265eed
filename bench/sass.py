"""Reading a compiled kernel's sm_90 machine code (SASS): resources, memory-access widths and the instructions one
thread issues on its main path. Uses the cuobjdump that ships with Triton; no GPU needed."""

import collections
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton

_TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# An instruction and the two 64-bit words of its encoding (the second holds the scheduling control bits).
_INSTRUCTION = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);\s*/\*\s*0x[0-9a-f]{16}\s*\*/\s*"
    r"/\*\s*0x([0-9a-f]{16})\s*\*/"
)
NO_BARRIER = 7
_ADDRESS = re.compile(r"0x([0-9a-f]+)")


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction with the control bits the compiler set for the warp scheduler (Volta and later:
    bits 105-121 of the 128-bit encoding): `stall`, the cycles before the warp's next instruction may issue;
    `write_barrier` and `read_barrier`, the scoreboard this variable-latency instruction releases when its result
    is written or its sources read (NO_BARRIER: none); `wait_mask`, the scoreboards it waits for."""

    address: int
    predicate: str  # "" when unconditional
    opcode: str  # with modifiers: "LDG.E.128"
    operands: str
    stall: int = 1
    write_barrier: int = NO_BARRIER
    read_barrier: int = NO_BARRIER
    wait_mask: int = 0

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


@dataclass(frozen=True)
class MainPath:
    """What one thread issues from entry to exit, branches taken as laid out for the common case: a conditional
    forward branch falls through, unless what it skips calls a subroutine (the slow paths of correctly rounded
    division and square root, taken only near denormals and infinities); an unconditional one jumps; a loop runs
    once (or as often as asked), and `loop_bodies` are the instructions a further iteration of each loop adds."""

    instructions: int
    loop_bodies: tuple[int, ...]
    indices: tuple[int, ...] = ()  # the instructions issued, in order


def disassemble(cubin: bytes) -> tuple[str, str]:
    """(SASS listing, resource usage) of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        sass = subprocess.run([_TOOLS / "cuobjdump", "-sass", file.name], capture_output=True, text=True, check=True)
        usage = subprocess.run([_TOOLS / "cuobjdump", "-res-usage", file.name], capture_output=True, text=True)
    return sass.stdout, usage.stdout


def parse(sass: str) -> list[Instruction]:
    instructions = []
    for address, predicate, opcode, operands, control in _INSTRUCTION.findall(sass):
        high = int(control, 16)
        instructions.append(
            Instruction(
                int(address, 16),
                (predicate or "").strip(),
                opcode,
                operands.strip(),
                stall=(high >> 41) & 0xF,
                write_barrier=(high >> 46) & 0x7,
                read_barrier=(high >> 49) & 0x7,
                wait_mask=(high >> 52) & 0x3F,
            )
        )
    return instructions


def resources(usage: str) -> dict[str, int]:
    """REG, STACK, LOCAL and SHARED of the (one) function in a `cuobjdump -res-usage` listing."""
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", usage)}


def access_widths(instructions: list[Instruction]) -> dict[str, collections.Counter]:
    """Global loads and stores by width in bits: {"load": Counter({128: 8, 32: 3}), "store": ...}."""
    widths = {"load": collections.Counter(), "store": collections.Counter()}
    for instruction in instructions:
        kind = {"LDG": "load", "STG": "store"}.get(instruction.opcode.split(".")[0])
        if kind:
            sizes = [int(part) for part in instruction.opcode.split(".")[1:] if part.isdigit()]
            widths[kind][sizes[0] if sizes else 32] += 1
    return widths


def spill_instructions(instructions: list[Instruction]) -> int:
    """Local-memory loads and stores: register spills."""
    return sum(instruction.opcode.split(".")[0] in ("LDL", "STL") for instruction in instructions)


def main_path(instructions: list[Instruction], iterations: int = 1, switches_on: bool = True) -> MainPath:
    """The instructions issued by one thread on the main path (see `MainPath`). A loop's body runs `iterations`
    times; with `switches_on` False, a conditional forward branch over global loads (a run-time switch such as an
    older kernel's AMSGrad flag) is taken instead of falling through."""
    index_of = {instruction.address: index for index, instruction in enumerate(instructions)}
    count, loop_bodies, seen_at, returns, issued, repeated = 0, [], {}, [], [], collections.Counter()
    index = 0
    while index < len(instructions):
        instruction = instructions[index]
        opcode = instruction.opcode.split(".")[0]
        count += 1
        issued.append(index)
        seen_at.setdefault(instruction.address, count)
        target = _branch_target(instruction)
        if opcode == "EXIT" and not instruction.predicate:
            break
        if opcode == "RET" and not instruction.predicate and returns:
            index = returns.pop()
            continue
        if opcode in ("BRA", "CALL") and target is not None:
            if not instruction.predicate:
                if opcode == "CALL":
                    returns.append(index + 1)
                index = index_of[target]
                continue
            if target <= instruction.address and target in seen_at:  # a loop's back edge
                if not repeated[index]:
                    loop_bodies.append(count - seen_at[target] + 1)
                if repeated[index] < iterations - 1:
                    repeated[index] += 1
                    index = index_of[target]
                    continue
            elif target > instruction.address:
                skipped = instructions[index + 1 : index_of[target]]
                slow_path = any(skip.base == "CALL" for skip in skipped)  # the common case skips it
                switched_off = not switches_on and any(skip.base == "LDG" for skip in skipped)
                if slow_path or switched_off:
                    index = index_of[target]
                    continue
        index += 1
    return MainPath(count, tuple(loop_bodies), tuple(issued))


def _branch_target(instruction: Instruction) -> int | None:
    match = _ADDRESS.search(instruction.operands)
    return int(match.group(1), 16) if match else None
