"""What limits a kernel's issue on sm_90, from its SASS: a one-scheduler simulation of the warps resident on one
SM sub-partition running the main path over and over (each program is short; a finished one is replaced at once).

Every instruction takes the scheduler's one issue slot per cycle and its pipe for a number of cycles, waits for
the scoreboards its control bits name and holds the warp for its stall count (both set by the compiler,
`bench.sass.Instruction`); a variable-latency instruction releases its scoreboard after an assumed latency. The
pipes and their rates per sub-partition (H100/H200: 16 lanes for each of fmaheavy, fmalite and alu, 4 for the
MUFU, a warp-wide LSU port every 4 cycles) and the latencies are assumptions, stated below; the memory latencies
are calibrated on the committed H200 measurements (`bench.static`). Nothing here ran on a GPU.
"""

from dataclasses import dataclass

from bench.sass import NO_BARRIER, Instruction

# Cycles a pipe is busy with one warp-instruction (32 threads over its lanes per sub-partition).
PIPE_CYCLES = {"fmaheavy": 2, "fmalite": 2, "alu": 2, "xu": 8, "lsu": 4, "cbu": 2, "uniform": 1, "any": 1}
# float32 arithmetic runs on either FMA pipe; integer multiply-add on the heavy one only.
FP32 = {"FFMA", "FMUL", "FADD", "FFMA32I", "FMUL32I", "FADD32I", "FSWZADD", "HFMA2", "HADD2", "HMUL2", "VIADD"}
HEAVY = {"IMAD", "IMUL", "IDP", "IMAD32I", "IMUL32I"}
ALU = {
    "IADD3", "LOP3", "SHF", "PRMT", "ISETP", "VIMNMX", "VIMNMX3", "IMNMX", "SEL", "FSEL", "LEA", "FSETP", "FMNMX",
    "FCHK", "PLOP3", "P2R", "R2P", "SGXT", "BMSK", "IABS", "F2FP", "I2FP", "REDUX", "LOP32I", "IADD32I", "ISCADD",
}  # fmt: skip
XU = {"MUFU", "POPC", "FLO", "BREV", "F2F", "F2I", "I2F", "FRND"}
LSU = {"LDG", "STG", "LDS", "STS", "LD", "ST", "ATOM", "ATOMG", "ATOMS", "RED", "LDL", "STL", "SHFL", "LDSM", "MATCH"}
CBU = {"BRA", "BRX", "JMP", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "WARPSYNC", "BAR", "YIELD", "BMOV", "NOP"}
CBU |= {"S2R", "S2UR", "R2UR", "LDC", "CS2R", "DEPBAR", "MEMBAR", "ERRBAR", "CCTL"}

# Latencies, in cycles, of the variable-latency instructions (those that release a scoreboard). Global loads are
# of two kinds: the launch tables a program reads first (unpredicated, at most 64 bits: L2 hits, as many programs
# read the same rows) and the data (predicated by the element mask, or 128-bit), which come from DRAM.
L2_HIT_CYCLES = 260
LATENCY = {"LDS": 30, "STS": 30, "SHFL": 30, "LDC": 30, "S2R": 20, "S2UR": 20, "REDUX": 30, "BAR": 20}
OTHER_LATENCY = 20  # MUFU, conversions and anything else that uses a scoreboard
READ_CYCLES = 10  # until a store (or another instruction with a read scoreboard) has read its sources


def pipe_of(instruction: Instruction) -> str:
    base = instruction.base
    if base in FP32:
        return "fp32"
    if base in HEAVY:
        return "fmaheavy"
    if base in ALU:
        return "alu"
    if base in XU:
        return "xu"
    if base in LSU:
        return "lsu"
    if base in CBU:
        return "cbu"
    if base.startswith("U"):
        return "uniform"
    return "any"  # MOV and the like: one issue slot, no pipe the others wait for


def is_data_load(instruction: Instruction) -> bool:
    return instruction.base == "LDG" and (bool(instruction.predicate) or ".128" in instruction.opcode)


def latency_of(instruction: Instruction, dram_cycles: int) -> int:
    if instruction.base == "LDG":
        return dram_cycles if is_data_load(instruction) else L2_HIT_CYCLES
    return LATENCY.get(instruction.base, OTHER_LATENCY)


@dataclass(frozen=True)
class Issue:
    """One scheduler's steady state: warp-programs finished per cycle, the share of cycles it issued, and the
    busiest pipe's share of cycles."""

    programs_per_cycle: float
    issue_pct: float
    busiest_pipe: str
    busiest_pipe_pct: float


def dram_round_trips(path: list[Instruction]) -> int:
    """How many DRAM latencies one warp's program waits out in a row: 1 when every data load is issued before the
    first instruction that waits for one; each wait for a data load issued after the previous such wait adds one
    (whatever shares its scoreboard: the compiler lets table loads and data loads share one, and an address
    computed from a table value then waits for the data too)."""
    trips = 0
    issued_during = {}  # scoreboard -> the round trip during which its last data load was issued
    for instruction in path:
        waited = [barrier for barrier in issued_during if instruction.wait_mask >> barrier & 1]
        if any(issued_during[barrier] == trips for barrier in waited):
            trips += 1
        for barrier in waited:
            del issued_during[barrier]
        if is_data_load(instruction) and instruction.write_barrier != NO_BARRIER:
            issued_during[instruction.write_barrier] = trips
    return trips


def pipe_demand(path: list[Instruction]) -> dict[str, int]:
    """Cycles of each pipe one pass of the path takes (float32 arithmetic split over the two FMA pipes)."""
    demand = dict.fromkeys(PIPE_CYCLES, 0)
    for instruction in path:
        pipe = pipe_of(instruction)
        if pipe == "fp32":
            demand["fmaheavy"] += PIPE_CYCLES["fmaheavy"] / 2
            demand["fmalite"] += PIPE_CYCLES["fmalite"] / 2
        else:
            demand[pipe] += PIPE_CYCLES[pipe]
    return demand


def simulate(path: list[Instruction], warps: int, dram_cycles: int, program_warps: int = 1, passes: int = 6) -> Issue:
    """`warps` warps each run the path `passes` times on one scheduler that issues one instruction a cycle, the
    oldest ready warp first; the rate is taken over the passes after the first. Warps come in programs of
    `program_warps` on this scheduler (a program's warps are spread over the SM's four): a program's warps start
    again together, as a new program, once the last of them has finished."""
    pipes = [pipe_of(instruction) for instruction in path]
    latencies = [latency_of(instruction, dram_cycles) for instruction in path]
    pipe_free = dict.fromkeys(PIPE_CYCLES, 0)
    position = [0] * warps
    ready_at = [0] * warps  # the stall of the warp's last instruction
    scoreboards = [[0] * 8 for _ in range(warps)]  # when each of its scoreboards is released (index 7: none)
    finished, first_round_at, cycle, issued, busy = 0, None, 0, 0, dict.fromkeys(PIPE_CYCLES, 0)

    def earliest(warp: int) -> tuple[int, str]:
        index = position[warp]
        instruction = path[index]
        start = ready_at[warp]
        mask = instruction.wait_mask
        board = scoreboards[warp]
        for barrier in range(6):
            if mask >> barrier & 1 and board[barrier] > start:
                start = board[barrier]
        pipe = pipes[index]
        if pipe == "fp32":
            pipe = "fmaheavy" if pipe_free["fmaheavy"] <= pipe_free["fmalite"] else "fmalite"
        return max(start, pipe_free[pipe]), pipe

    total = warps * passes
    while True:
        candidates = [(earliest(warp), warp) for warp in range(warps) if position[warp] >= 0]
        if not candidates:
            break
        (start, pipe), warp = min(candidates)  # the oldest among the first ready: lowest warp number on ties
        cycle = max(cycle, start)
        index = position[warp]
        instruction = path[index]
        ready_at[warp] = cycle + max(instruction.stall, 1)
        pipe_free[pipe] = cycle + PIPE_CYCLES[pipe]
        busy[pipe] += PIPE_CYCLES[pipe]
        # A scoreboard counts what is outstanding on it: it is released when the last of them completes, not the
        # last issued (a table load sharing one with data loads does not release them).
        board = scoreboards[warp]
        if instruction.write_barrier != NO_BARRIER:
            board[instruction.write_barrier] = max(board[instruction.write_barrier], cycle + latencies[index])
        if instruction.read_barrier != NO_BARRIER:
            board[instruction.read_barrier] = max(board[instruction.read_barrier], cycle + READ_CYCLES)
        issued += 1
        cycle += 1
        position[warp] = index + 1
        if position[warp] == len(path):
            finished += 1
            position[warp] = -1
            scoreboards[warp] = [0] * 8
            program = range(warp - warp % program_warps, warp - warp % program_warps + program_warps)
            if all(position[other] == -1 for other in program) and finished + warps <= total:
                for other in program:  # the next program takes the slots
                    position[other], ready_at[other] = 0, cycle
            if finished == warps:
                first_round_at, issued_before, busy_before = cycle, issued, dict(busy)
    cycles = cycle - first_round_at
    busiest = max(busy, key=lambda pipe: busy[pipe] - busy_before[pipe])
    return Issue(
        programs_per_cycle=(finished - warps) / cycles,
        issue_pct=100.0 * (issued - issued_before) / cycles,
        busiest_pipe=busiest,
        busiest_pipe_pct=100.0 * (busy[busiest] - busy_before[busiest]) / cycles,
    )
