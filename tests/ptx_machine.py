"""Runs the PTX of a Triton kernel without a GPU: all threads of all programs at once, a register a numpy array over
the threads (its bits), memory as bytes. Threads that branch apart go on one instruction at a time, the ones
furthest behind first (each thread's own order is kept; they meet again where their paths join), and a barrier or
a warp-wide instruction checks that every thread it waits for is there.

It knows the instructions v0adam's kernels compile to (integer and address arithmetic, byte permutations, float32
and float64 arithmetic, conversions, loads and stores, warp shuffles, reductions and matrix stores, barriers,
branches) and refuses anything else. Exact, by IEEE 754 and the PTX ISA, but for what is stated here:
- `rsqrt.approx` and `sqrt.approx` return the correctly rounded result (the hardware's approximations are within a
  few ulps of it, by the PTX ISA);
- `mul` and `add` without a rounding modifier are rounded each, as written: ptxas may fuse such a pair into one
  FMA (the PTX ISA allows it), which this machine never does;
- `min`/`max` of float zeros of either sign return +0 for max and -0 for min, and NaN for NaN only if both are.
Cache and eviction hints change no value and are ignored."""

import functools
import re

import numpy as np
import ptx_arithmetic as arithmetic

_WARP = 32


def statements(ptx: str) -> list[str]:
    """PTX's instructions, one a statement (labels head the statement they mark): without comments, debug lines,
    declarations, pragmas and the braces of inline assembly (whose scoped registers are then registers like the
    others: each block writes them before it reads them; its scoped labels may repeat)."""
    lines = []
    for line in re.sub(r"//[^\n]*", "", ptx).splitlines():
        line = re.sub(r"(^|;)\s*\}$", r"\1", re.sub(r"^\{\s*", "", line.strip())).strip()  # a scope's braces
        if line and not line.startswith((".loc", ".pragma")):
            lines.append(line)
    found, pending = [], ""
    for statement in " ".join(lines).split(";"):
        heads, body = re.fullmatch(r"((?:[\w$]+:\s*)*)(.*)", " ".join(statement.split())).groups()
        if not body or body.startswith((".reg", ".local")):  # a label there marks what follows
            pending += heads
        else:
            found.append(" ".join((pending + heads + body).split()))
            pending = ""
    return found  # labels left at the function's end: nothing branches there


def _entry(ptx: str) -> str:
    """The body of a module's one kernel."""
    body = ptx[ptx.index(".entry") :]
    return body[body.index("{") + 1 : body.index("$L__func_end")]


def _local_bytes(ptx: str) -> int:
    return sum(int(size) for size in re.findall(r"\.local \.align \d+ \.b8 \w+\[(\d+)\]", ptx)) or 16


class FlatMemory:
    """Global memory as one byte array, at address 0."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def read(self, addresses: np.ndarray) -> np.ndarray:
        return self.data[addresses]

    def write(self, addresses: np.ndarray, values: np.ndarray):
        self.data[addresses] = values


class Machine:
    def __init__(self, programs: int, threads: int, params: list[int], memory, shared_bytes: int = 1 << 16):
        """`memory`: global memory (a `FlatMemory`, a numpy byte array at address 0, or anything with `read` and
        `write` of byte addresses); `params`: the kernel's arguments, as the integers of their bits."""
        self.shared_bytes = shared_bytes
        self.memory = FlatMemory(memory) if isinstance(memory, np.ndarray) else memory
        self.params = params
        self.programs, self.program_threads = programs, threads
        self.threads = programs * threads
        lane = np.arange(self.threads, dtype=np.uint64)
        self.program = (lane // np.uint64(threads)).astype(np.int64)
        zeros = np.zeros(self.threads, dtype=np.uint64)
        self.special = {"%tid.x": lane % np.uint64(threads), "%ctaid.x": self.program.astype(np.uint64)}
        self.special |= {name: zeros for name in ("%tid.y", "%tid.z", "%ctaid.y", "%ctaid.z")}
        self.special["%nctaid.x"] = np.full(self.threads, programs, dtype=np.uint64)
        self.registers: dict[str, np.ndarray] = {}
        self.shared = self.local = None
        self.carry = zeros
        self.active = np.ones(self.threads, dtype=bool)

    # operands

    def value(self, operand: str) -> np.ndarray:
        if operand in self.registers:
            return self.registers[operand]
        if operand in self.special:
            return self.special[operand]
        if operand in ("global_smem", "__local_depot0"):
            return np.zeros(self.threads, dtype=np.uint64)
        if re.fullmatch(r"0[fF][0-9a-fA-F]{8}", operand):
            return np.full(self.threads, int(operand[2:], 16), dtype=np.uint64)
        if re.fullmatch(r"0[dD][0-9a-fA-F]{16}", operand):
            return np.full(self.threads, int(operand[2:], 16), dtype=np.uint64)
        if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)U?", operand):
            return np.full(self.threads, int(operand.rstrip("U"), 0) & ((1 << 64) - 1), dtype=np.uint64)
        if re.fullmatch(r"%?[A-Za-z_]\w*", operand):  # a register no thread here has written yet
            return np.zeros(self.threads, dtype=np.uint64)
        raise AssertionError(f"an operand this machine does not know: {operand}")

    def write(self, register: str, value: np.ndarray):
        if self.active.all() or register not in self.registers:
            self.registers[register] = value
        else:
            self.registers[register] = np.where(self.active, value, self.registers[register])

    # running

    def run(self, ptx: str):
        self.shared = np.zeros((self.programs, max(self.shared_bytes, 16)), dtype=np.uint8)
        self.local = np.zeros((self.threads, _local_bytes(ptx)), dtype=np.uint8)
        kernel = [re.match(r"((?:[\w$]+: )*)(.*)", statement).groups() for statement in statements(_entry(ptx))]
        labels = tuple(frozenset(re.findall(r"([\w$]+): ", heads)) for heads, _ in kernel)
        position = np.zeros(self.threads, dtype=np.int64)
        finished = len(kernel)
        while True:
            running = position < finished
            if not running.any():
                return
            index = position[running].min()
            self.active = running & (position == index)
            statement = kernel[index][1]
            guard = re.match(r"@(!?)(%?\w+) ", statement)
            taken = self.active
            if guard:
                predicate = self.registers.get(guard.group(2), np.zeros(self.threads, dtype=bool)).astype(bool)
                taken = self.active & (predicate ^ (guard.group(1) == "!"))
                statement = statement[guard.end() :]
            opcode, _, operands = statement.partition(" ")
            following = np.where(self.active, index + 1, position)
            if opcode in ("ret", "exit"):
                position = np.where(taken, finished, following)
                continue
            if opcode.startswith("bra"):
                target = self._label(labels, index, operands.strip())
                position = np.where(taken, target, following)
                continue
            position = following
            if guard and not taken.any():
                continue
            if guard:
                self.active = taken
            self.step(statement)

    @staticmethod
    @functools.cache
    def _label(labels: tuple, index: int, name: str) -> int:
        """The statement a branch goes to: the label's next occurrence (inline assembly's labels repeat, each in
        its scope), or its only one."""
        after = [at for at in range(index + 1, len(labels)) if name in labels[at]]
        if after:
            return after[0]
        (only,) = [at for at in range(len(labels)) if name in labels[at]]
        return only

    def _warps_whole(self, what: str):
        lanes = self.active.reshape(-1, _WARP)
        assert (lanes.all(axis=1) | ~lanes.any(axis=1)).all(), f"{what} with part of a warp"

    # instructions

    def step(self, statement: str):
        opcode, _, rest = statement.partition(" ")
        parts = opcode.split(".")
        operation = parts[0]
        if operation in ("ld", "st"):
            return self._memory_access(parts, rest)
        if operation == "bar":
            running = self.active.reshape(self.programs, -1)
            assert (running.all(axis=1) | ~running.any(axis=1)).all(), "a barrier some threads do not reach"
            return None
        if operation == "stmatrix":
            return self._store_matrices(parts, rest)
        operands = [operand.strip() for operand in re.split(r",(?![^{]*\})", rest)]
        destination, sources = operands[0], operands[1:]
        if operation == "mov" and (destination.startswith("{") or sources[0].startswith("{")):
            return self._move_vector(parts, destination, sources[0])
        values = [self.value(source) for source in sources]
        if operation in ("mul", "mad", "madc") and not parts[-1].startswith("f"):
            result = self._multiply(parts, values, arithmetic.width(parts[-1]))
        elif operation == "redux":
            result = self._warp_reduce(parts, values)
        elif operation == "shfl":
            result = self._shuffle(parts, values)
        else:
            result = arithmetic.evaluate(opcode, parts, values)
        if "|" in destination:
            raise AssertionError(f"two destinations: {statement}")
        self.write(destination, result)

    def _multiply(self, parts: list[str], values: list[np.ndarray], bits: int) -> np.ndarray:
        """mul / mad .lo, .hi or .wide, and madc; the carry flag of .cc. Products of 32-bit operands are exact in
        64 bits; of 64-bit ones only the low half (.lo) is taken, which wraps alike."""
        signed, half = parts[-1].startswith("s"), parts[1]
        assert bits == 64 and half == "lo" or bits <= 32, parts
        if signed:
            product = (arithmetic.signed(values[0], bits) * arithmetic.signed(values[1], bits)).astype(np.uint64)
        else:
            product = (values[0] & arithmetic.mask(bits)) * (values[1] & arithmetic.mask(bits))
        if half == "hi":
            product = (
                product >> np.uint64(bits) if not signed else (arithmetic.signed(product, 64) >> bits).astype(np.uint64)
            )
        width = 2 * bits if half == "wide" else bits
        result = product & arithmetic.mask(width)
        if parts[0] == "mul":
            return result
        total = result + values[2]
        if parts[0] == "madc":  # with the carry in
            total = total + self.carry
        if "cc" in parts:  # with the carry out
            self.carry = np.where(self.active, (total >> np.uint64(width)) & np.uint64(1), self.carry)
        return total & arithmetic.mask(width)

    def _warp_reduce(self, parts: list[str], values: list[np.ndarray]) -> np.ndarray:
        assert parts[1] == "sync" and parts[2] == "max" and parts[3] == "s32", parts
        assert ((values[1] & arithmetic.mask(32)) == np.uint64(0xFFFFFFFF)).all(), "a reduction over part of a warp"
        self._warps_whole("redux")
        lanes = arithmetic.signed(values[0], 32).reshape(-1, _WARP)
        return np.repeat(lanes.max(axis=1), _WARP).astype(np.uint64) & arithmetic.mask(32)

    def _shuffle(self, parts: list[str], values: list[np.ndarray]) -> np.ndarray:
        assert parts[1:3] == ["sync", "bfly"], parts
        whole_warp = (values[3] & arithmetic.mask(32)) == np.uint64(0xFFFFFFFF)
        assert (values[2] == np.uint64(0x1F)).all() and whole_warp.all(), "a shuffle mode"
        self._warps_whole("shfl")
        lane = np.arange(self.threads) % _WARP
        source = np.arange(self.threads) - lane + (lane ^ (values[1].astype(np.int64) & 31))
        return values[0][source]

    def _move_vector(self, parts: list[str], destination: str, source: str):
        """mov.b64 {lo, hi}, d (unpack) or mov.b64 d, {lo, hi} (pack), and the same of two halves of a b32."""
        bits = arithmetic.width(parts[-1])
        if destination.startswith("{"):
            pieces = [piece.strip() for piece in destination.strip("{}").split(",")]
            width = bits // len(pieces)
            whole = self.value(source)
            for index, piece in enumerate(pieces):
                if piece != "_":
                    self.write(piece, (whole >> np.uint64(width * index)) & arithmetic.mask(width))
            return
        pieces = [piece.strip() for piece in source.strip("{}").split(",")]
        width = bits // len(pieces)
        whole = np.zeros(self.threads, dtype=np.uint64)
        for index, piece in enumerate(pieces):
            whole |= (self.value(piece) & arithmetic.mask(width)) << np.uint64(width * index)
        self.write(destination, whole)

    # memory

    def _addresses(self, address: str) -> np.ndarray:
        base, offset = re.fullmatch(r"\[\s*([%\w]+)\s*(?:\+\s*(-?\d+)\s*)?\]", address).groups()
        return (self.value(base).astype(np.int64) + int(offset or 0)).astype(np.int64)

    def _bytes_read(self, space: str, addresses: np.ndarray, threads: np.ndarray) -> np.ndarray:
        if space == "global":
            return self.memory.read(addresses)
        store = self.shared if space == "shared" else self.local
        row = self.program[threads] if space == "shared" else threads
        return store[row, addresses]

    def _bytes_written(self, space: str, addresses: np.ndarray, threads: np.ndarray, values: np.ndarray):
        if space == "global":
            self.memory.write(addresses, values)
            return
        store = self.shared if space == "shared" else self.local
        row = self.program[threads] if space == "shared" else threads
        store[row, addresses] = values

    def _memory_access(self, parts: list[str], rest: str):
        space = parts[1] if parts[1] in ("global", "shared", "local", "param") else parts[2]
        kind = parts[-1]
        bits = arithmetic.width(kind)
        vector = next((int(part[1:]) for part in parts if re.fullmatch(r"v\d", part)), 1)
        if space == "param":
            destination, source = (operand.strip() for operand in rest.split(",", 1))
            index = int(re.search(r"_param_(\d+)", source).group(1))
            self.write(
                destination, np.full(self.threads, self.params[index] & int(arithmetic.mask(bits)), dtype=np.uint64)
            )
            return
        if parts[0] == "ld":
            registers, address = re.fullmatch(r"\{?([^}\[]*?)\}?\s*,\s*(\[.*\])", rest).groups()
        else:
            address, registers = re.fullmatch(r"(\[.*?\])\s*,\s*\{?([^}]*)\}?", rest).groups()
        registers = [register.strip() for register in registers.split(",")]
        assert len(registers) == vector, rest
        threads = np.flatnonzero(self.active)
        addresses = self._addresses(address)[threads]
        for element, register in enumerate(registers):
            at = addresses + element * bits // 8
            if parts[0] == "ld":
                value = np.zeros(len(threads), dtype=np.uint64)
                for byte in range(bits // 8):
                    value |= self._bytes_read(space, at + byte, threads).astype(np.uint64) << np.uint64(8 * byte)
                if kind.startswith("s"):
                    value = arithmetic.signed(value, bits).astype(np.uint64)
                whole = self.registers.get(register, np.zeros(self.threads, dtype=np.uint64)).copy()
                whole[threads] = value
                self.registers[register] = whole
            else:
                value = self.value(register)[threads]
                for byte in range(bits // 8):
                    piece = ((value >> np.uint64(8 * byte)) & np.uint64(0xFF)).astype(np.uint8)
                    self._bytes_written(space, at + byte, threads, piece)

    def _store_matrices(self, parts: list[str], rest: str):
        """stmatrix.sync.aligned.m8n8.x4.shared.b16 [p], {r0, r1, r2, r3}: row r of matrix i goes to the address
        lane 8 i + r gives; its 4 words are register i of lanes 4 r to 4 r + 3."""
        assert parts[1:4] == ["sync", "aligned", "m8n8"] and parts[-2:] == ["shared", "b16"], parts
        count = int(parts[4][1:])
        self._warps_whole("stmatrix")
        address, registers = re.fullmatch(r"(\[.*?\])\s*,\s*\{([^}]*)\}", rest).groups()
        registers = [register.strip() for register in registers.split(",")]
        assert len(registers) == count and "trans" not in parts, parts
        addresses = self._addresses(address)
        firsts = np.flatnonzero(self.active.reshape(-1, _WARP).any(axis=1)) * _WARP
        for matrix in range(count):
            words = self.value(registers[matrix])
            for row in range(8):
                for word in range(4):
                    at = addresses[firsts + 8 * matrix + row] + 4 * word
                    value = words[firsts + 4 * row + word]
                    for byte in range(4):
                        piece = ((value >> np.uint64(8 * byte)) & np.uint64(0xFF)).astype(np.uint8)
                        self._bytes_written("shared", at + byte, firsts, piece)
