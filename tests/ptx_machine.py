"""Runs the PTX of a Triton kernel without a GPU: every thread of every program in lockstep, a register a numpy
array over the threads (its bits), global and shared memory as bytes. Only the instructions it knows, the integer
arithmetic of addresses, byte permutations, float32 arithmetic, loads and stores, the barrier and branches all
threads take alike: anything else, a divergent branch included, is an error, never skipped. Lockstep makes
`bar.sync` a no-op: every thread has finished the instructions before it when any thread runs the one after it.

Two instructions are modelled, not exact: `rsqrt.approx.f32` returns the correctly rounded reciprocal square root
(the hardware's approximation is within a relative 2^-22.9 of the exact one, by the PTX ISA), and `fma.rn.f32`
rounds through float64 (twice: 1 ulp off where the float64 sum lies on a float32 midpoint). Cache hints, which
change no value, are ignored."""

import re

import numpy as np

SHARED_BYTES = 1 << 16
_BITS = {"8": 8, "16": 16, "32": 32, "64": 64}


def _width(type_suffix: str) -> int:
    """Bits of a PTX type: b32, u8, s64, f32, ..."""
    return _BITS.get(type_suffix[1:], 0) if type_suffix[:1] in "bsuf" else 0


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement values of `bits` bits as int64."""
    values = values.astype(np.int64) & ((1 << bits) - 1)
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values)


def _float32(bits: np.ndarray) -> np.ndarray:
    return (bits & _mask(32)).astype(np.uint32).view(np.float32)


def _bits(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32).view(np.uint32).astype(np.uint64)


def _flushed(bits: np.ndarray) -> np.ndarray:
    subnormal = (bits & np.uint64(0x7F800000)) == 0
    return np.where(subnormal, bits & np.uint64(1 << 31), bits)


def _prmt(a: np.ndarray, b: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """prmt.b32 in its default mode: byte i of the result is byte (nibble i of the selector) of b:a, its sign
    replicated where the nibble's high bit is set."""
    source = (b.astype(np.uint64) << np.uint64(32)) | (a.astype(np.uint64) & _mask(32))
    result = np.zeros_like(source)
    for i in range(4):
        nibble = (selector >> np.uint64(4 * i)) & np.uint64(0xF)
        byte = (source >> (np.uint64(8) * (nibble & np.uint64(7)))) & np.uint64(0xFF)
        signed = (nibble & np.uint64(8)) != 0
        byte = np.where(signed, np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        result |= byte << np.uint64(8 * i)
    return result


def _float_operation(operation: str, values: list[np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        x = [_float32(value).astype(np.float64) for value in values]
        if operation == "mul":
            return _bits(x[0] * x[1])  # exact in float64: one rounding
        if operation == "neg":
            return values[0] ^ np.uint64(1 << 31)
        if operation == "fma":
            return _bits(x[0] * x[1] + x[2])
        if operation == "rsqrt":
            return _bits(1 / np.sqrt(x[0]))
        if operation == "sqrt":
            return _bits(np.sqrt(x[0]))  # 53 >= 2 * 24 + 2 bits: rounding twice is rounding once
    raise AssertionError(operation)


def statements(ptx: str) -> list[str]:
    """PTX's instructions, one a statement (a label heads the statement it marks): without comments, debug lines,
    declarations and the braces of inline assembly (whose scoped registers are then registers like the others:
    each block writes them before it reads them)."""
    lines = []
    for line in re.sub(r"//[^\n]*", "", ptx).splitlines():
        line = re.sub(r"\$L__\w+:", "", line).strip()
        line = re.sub(r"(^|;)\s*\}$", r"\1", re.sub(r"^\{\s*", "", line)).strip()  # a scope's braces
        if line and not line.startswith(".loc"):
            lines.append(line)
    found = [" ".join(statement.split()) for statement in " ".join(lines).split(";")]
    return [statement for statement in found if statement and not statement.startswith(".reg")]


def _entry(ptx: str) -> str:
    """The body of a module's one kernel."""
    body = ptx[ptx.index(".entry") :]
    return body[body.index("{") + 1 : body.index("$L__func_end")]


class Machine:
    def __init__(self, programs: int, threads: int, params: list[int], memory: np.ndarray):
        """`memory`: the global bytes, at address 0; `params`: the kernel's arguments (addresses into it)."""
        self.memory = memory
        self.params = params
        self.threads = programs * threads
        lane = np.arange(self.threads, dtype=np.uint64)
        self.special = {"%tid.x": lane % np.uint64(threads), "%ctaid.x": lane // np.uint64(threads)}
        self.shared = np.zeros((programs, SHARED_BYTES), dtype=np.uint8)
        self.program = (lane // np.uint64(threads)).astype(np.int64)
        self.registers: dict[str, np.ndarray] = {}

    def value(self, operand: str) -> np.ndarray:
        if operand in self.special:
            return self.special[operand]
        if operand == "global_smem":
            return np.zeros(self.threads, dtype=np.uint64)
        if re.fullmatch(r"0[fF][0-9a-fA-F]{8}", operand):
            return np.full(self.threads, int(operand[2:], 16), dtype=np.uint64)
        if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)U?", operand):
            return np.full(self.threads, int(operand.rstrip("U"), 0) & ((1 << 64) - 1), dtype=np.uint64)
        return self.registers[operand]

    def run(self, ptx: str):
        kernel = statements(_entry(ptx))
        labels = [re.match(r"(\w+): ", statement) for statement in kernel]
        index = 0
        while index < len(kernel):
            statement = re.sub(r"^\w+: ", "", kernel[index])
            if statement == "ret":
                return
            guard = re.match(r"@(!?)(\S+) ", statement)
            taken = np.ones(self.threads, dtype=bool)
            if guard:
                taken = self.registers[guard.group(2)].astype(bool) ^ (guard.group(1) == "!")
                statement = statement[guard.end() :]
            opcode, _, target = statement.partition(" ")
            assert opcode == "bra" or guard is None, f"a predicated instruction this machine does not know: {statement}"
            if opcode != "bra":
                self.step(statement)
            elif taken.all():  # forward to the label's next occurrence: inline assembly's labels repeat
                index = next(at for at in range(index + 1, len(kernel)) if labels[at] and labels[at][1] == target)
                continue
            else:
                assert not taken.any(), f"a branch the threads take apart: {statement}"
            index += 1
        raise AssertionError("the kernel did not return")

    def step(self, statement: str):
        opcode, _, rest = statement.partition(" ")
        parts = opcode.split(".")
        operation, bits = parts[0], _width(parts[-1])
        if operation in ("ld", "st"):
            return self._memory_access(parts, rest)
        if operation == "bar":
            return None  # lockstep
        operands = [operand.strip() for operand in rest.split(",")]
        destination, sources = operands[0], operands[1:]
        values = [self.value(source) for source in sources]
        mask = _mask(bits) if bits else None
        if operation == "mov":
            result = values[0]
        elif parts[-1] == "f32":
            flush = "ftz" in parts  # subnormal inputs and results to zero, their sign kept
            values = [_flushed(value) for value in values] if flush else values
            result = _float_operation(operation, values)
            result = _flushed(result) if flush else result
        elif operation in ("shl", "shr") and parts[1] != "s32":
            shift = values[1] & np.uint64(0xFF)
            result = values[0] << shift if operation == "shl" else (values[0] & mask) >> shift
        elif operation in ("and", "or", "xor"):
            result = {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[operation](*values)
        elif operation in ("add", "sub"):
            result = values[0] + values[1] if operation == "add" else values[0] - values[1]
        elif operation in ("min", "max") and parts[1] == "u32":
            result = (np.minimum if operation == "min" else np.maximum)(values[0] & mask, values[1] & mask)
        elif operation == "neg":
            result = np.uint64(0) - values[0]
        elif operation in ("mul", "mad") and parts[1] == "wide":
            product = _signed(values[0], bits) * _signed(values[1], bits)
            result, mask = product.astype(np.uint64) + (values[2] if operation == "mad" else np.uint64(0)), None
        elif operation == "cvt" and len(parts) == 3 and "f" not in parts[1][0] + parts[2][0]:  # integers only
            to, source_bits = parts[1], _width(parts[2])
            source = _signed(values[0], source_bits) if parts[2].startswith("s") else values[0] & _mask(source_bits)
            result, mask = source.astype(np.uint64), _mask(_width(to))
        elif opcode == "prmt.b32":
            result = _prmt(values[0], values[1], values[2])
        elif operation == "setp" and parts[-1] == "u32":
            compare = {"lt": np.less, "gt": np.greater, "le": np.less_equal, "ge": np.greater_equal}[parts[1]]
            result = compare(values[0] & mask, values[1] & mask)
            if len(parts) == 4:  # setp.cmp.bool.u32 p, a, b, q
                result = {"or": np.logical_or, "and": np.logical_and}[parts[2]](result, values[2].astype(bool))
            mask = None
        else:
            raise AssertionError(f"an instruction this machine does not know: {statement}")
        self.registers[destination] = result & mask if mask is not None else result

    def _memory_access(self, parts: list[str], rest: str):
        space, bits = parts[1], _width(parts[-1])
        vector = next((int(part[1:]) for part in parts if re.fullmatch(r"v\d", part)), 1)
        if space == "param":
            destination, source = (operand.strip() for operand in rest.split(",", 1))
            index = int(re.search(r"_param_(\d+)", source).group(1))
            self.registers[destination] = np.full(self.threads, self.params[index], dtype=np.uint64)
            return
        assert space in ("global", "shared"), f"memory space {space}"
        if parts[0] == "ld":
            registers, address = re.fullmatch(r"\{?([^}\[]*?)\}?\s*,\s*(\[.*\])", rest).groups()
        else:
            address, registers = re.fullmatch(r"(\[.*?\])\s*,\s*\{?([^}]*)\}?", rest).groups()
        registers = [register.strip() for register in registers.split(",")]
        assert len(registers) == vector, rest
        base, offset = re.fullmatch(r"\[\s*([%\w]+)\s*(?:\+\s*(-?\d+)\s*)?\]", address).groups()
        addresses = self.value(base).astype(np.int64) + int(offset or 0)
        for element, register in enumerate(registers):
            at = addresses + element * bits // 8
            if parts[0] == "ld":
                self.registers[register] = self._load(space, at, bits)
            else:
                self._store(space, at, bits, self.value(register) & _mask(bits))

    def _bytes(self, space: str, addresses: np.ndarray) -> tuple[np.ndarray, tuple]:
        return (self.memory, (addresses,)) if space == "global" else (self.shared, (self.program, addresses))

    def _load(self, space: str, addresses: np.ndarray, bits: int) -> np.ndarray:
        value = np.zeros(self.threads, dtype=np.uint64)
        for byte in range(bits // 8):
            memory, index = self._bytes(space, addresses + byte)
            value |= memory[index].astype(np.uint64) << np.uint64(8 * byte)
        return value

    def _store(self, space: str, addresses: np.ndarray, bits: int, value: np.ndarray):
        for byte in range(bits // 8):
            memory, index = self._bytes(space, addresses + byte)
            memory[index] = ((value >> np.uint64(8 * byte)) & np.uint64(0xFF)).astype(np.uint8)
