"""The instructions of PTX that read only their operands, as numpy over threads: integer and bit arithmetic, byte
permutations, comparisons, conversions, float32 and float64 arithmetic, exact by IEEE 754 and the PTX ISA but for
what `tests/ptx_machine.py` states. A register's value is its bits (uint64), a predicate's a bool array."""

import re
from fractions import Fraction

import numpy as np

FLOAT_SIGN = {32: 1 << 31, 64: 1 << 63}


def width(type_suffix: str) -> int:
    """Bits of a PTX type: b32, u8, s64, f32, pred (1), ..."""
    if type_suffix == "pred":
        return 1
    match = re.fullmatch(r"[bsuf](\d+)", type_suffix)
    return int(match.group(1)) if match else 0


def mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement values of `bits` bits as int64."""
    if bits == 64:
        return values.astype(np.uint64).view(np.int64)
    values = values.astype(np.int64) & ((1 << bits) - 1)
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values)


def floats(bits: np.ndarray, width: int) -> np.ndarray:
    """The float32 or float64 values whose bits these are, as float64."""
    if width == 32:
        return (bits & mask(32)).astype(np.uint32).view(np.float32).astype(np.float64)
    return bits.astype(np.uint64).view(np.float64)


def bits_of(values: np.ndarray, width: int) -> np.ndarray:
    """The bits of float64 `values` rounded to nearest even in `width` bits."""
    if width == 32:
        return values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return values.astype(np.float64).view(np.uint64)


def flushed(bits: np.ndarray, width: int) -> np.ndarray:
    """Subnormal float32s to zeros of their sign (.ftz)."""
    if width != 32:
        return bits
    return np.where((bits & np.uint64(0x7F800000)) == 0, bits & np.uint64(1 << 31), bits)


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, width: int) -> np.ndarray:
    """a * b + c rounded once. float32: the product is exact in float64, the sum's error is kept (TwoSum), and the
    sum is rounded to odd before it is rounded to float32, which makes the two roundings one. float64: exact
    rationals, rounded by Python's correctly rounded integer division."""
    if width == 64:
        rounded = a * b + c  # where an operand is not finite, what any rounding gives
        for index in np.flatnonzero(np.isfinite(a) & np.isfinite(b) & np.isfinite(c)):
            exact = Fraction(float(a[index])) * Fraction(float(b[index])) + Fraction(float(c[index]))
            rounded[index] = exact.numerator / exact.denominator
        return bits_of(rounded, 64)
    with np.errstate(over="ignore", invalid="ignore"):
        product = a * b
        total = product + c
        virtual = total - product
        error = (product - (total - virtual)) + (c - virtual)
    bits = total.view(np.uint64)
    inexact = (error != 0) & np.isfinite(total) & ((bits & np.uint64(1)) == 0)
    toward = np.where((error > 0) == (total > 0), np.uint64(1), np.uint64(-1 & ((1 << 64) - 1)))
    odd = np.where(inexact & (total != 0), bits + toward, bits).view(np.float64)
    return bits_of(np.where(np.isfinite(total), odd, total), 32)


def prmt(a: np.ndarray, b: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """prmt.b32 in its default mode: byte i of the result is byte (nibble i of the selector) of b:a, its sign
    replicated where the nibble's high bit is set."""
    source = (b.astype(np.uint64) << np.uint64(32)) | (a.astype(np.uint64) & mask(32))
    result = np.zeros_like(source)
    for i in range(4):
        nibble = (selector >> np.uint64(4 * i)) & np.uint64(0xF)
        byte = (source >> (np.uint64(8) * (nibble & np.uint64(7)))) & np.uint64(0xFF)
        signed = (nibble & np.uint64(8)) != 0
        byte = np.where(signed, np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        result |= byte << np.uint64(8 * i)
    return result


def to_bfloat16(bits: np.ndarray) -> np.ndarray:
    """float32 bits to bfloat16 bits, rounded to nearest even; NaN to the canonical 0x7FFF."""
    bits = bits & mask(32)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    nan = (bits & np.uint64(0x7FFFFFFF)) > np.uint64(0x7F800000)
    return np.where(nan, np.uint64(0x7FFF), rounded & mask(16))


def float_to_integer(values: np.ndarray, rounding: str, bits: int, signed: bool) -> np.ndarray:
    """cvt.rni / .rzi / .rmi / .rpi to an integer type: saturated to its range, NaN to 0."""
    rounded = {"rni": np.rint, "rzi": np.trunc, "rmi": np.floor, "rpi": np.ceil}[rounding](values)
    low, above = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)  # the range, and just past it
    inside = np.clip(np.nan_to_num(rounded, nan=0.0), low, np.nextafter(float(above), 0))
    with np.errstate(invalid="ignore"):
        integers = (inside.astype(np.int64) if signed or bits < 64 else inside.astype(np.uint64)).astype(np.uint64)
    integers = np.where(rounded >= above, np.uint64(above - 1), integers)
    return np.where(rounded < low, np.uint64(low & ((1 << 64) - 1)), integers)


def compare(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    unordered = np.isnan(a) | np.isnan(b)
    if name in ("nan", "num"):
        return unordered if name == "nan" else ~unordered
    ordered = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater}
    ordered["ge"] = np.greater_equal
    with np.errstate(invalid="ignore"):
        if name.endswith("u"):
            return ordered[name[:-1]](a, b) | unordered
        return ordered[name](a, b) & ~unordered


def evaluate(opcode: str, parts: list[str], values: list[np.ndarray]) -> np.ndarray:
    """What an instruction that reads only its operands writes: bits (a bool array for a predicate)."""
    operation, kind = parts[0], parts[-1]
    bits = width(kind)
    if operation == "mov":
        return values[0] & mask(bits) if bits > 1 else values[0]
    if operation == "selp":
        return np.where(values[2].astype(bool), values[0], values[1])
    if kind == "pred":
        logic = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}
        if operation == "not":
            return ~values[0].astype(bool)
        return logic[operation](values[0].astype(bool), values[1].astype(bool))
    if operation == "setp":
        return _set_predicate(parts, values)
    if operation == "cvt":
        return _convert(parts, values)
    if kind in ("f32", "f64"):
        return _float(parts, values, bits)
    if opcode == "prmt.b32":
        return prmt(values[0], values[1], values[2])
    return _integer(parts, values, bits)


def _integer(parts: list[str], values: list[np.ndarray], bits: int) -> np.ndarray:
    operation, kind = parts[0], parts[-1]
    ones, is_signed = mask(bits), kind.startswith("s")
    a = values[0] & ones
    if operation in ("add", "sub"):
        return (a + values[1] if operation == "add" else a - values[1]) & ones
    if operation in ("and", "or", "xor"):
        return {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[operation](a, values[1] & ones)
    if operation == "not":
        return ~a & ones
    if operation == "neg":
        return (np.uint64(0) - a) & ones
    if operation in ("min", "max"):
        x, y = (signed(a, bits), signed(values[1], bits)) if is_signed else (a, values[1] & ones)
        chosen = np.minimum(x, y) if operation == "min" else np.maximum(x, y)
        return chosen.astype(np.uint64) & ones
    if operation in ("shl", "shr"):
        shift = np.minimum(values[1] & np.uint64(0xFFFFFFFF), np.uint64(bits))
        if operation == "shl":
            return np.where(shift >= bits, np.uint64(0), a << (shift & np.uint64(63))) & ones
        if is_signed:
            shifted = signed(a, bits) >> np.minimum(shift, np.uint64(bits - 1)).astype(np.int64)
            return shifted.astype(np.uint64) & ones
        return np.where(shift >= bits, np.uint64(0), a >> (shift & np.uint64(63)))
    if operation == "shf":  # shf.l.wrap.b32 d, a, b, c: the high word of (b:a) << (c mod 32)
        assert parts[1:3] == ["l", "wrap"], parts
        wide = (values[1] & ones) << np.uint64(32) | a
        return (wide << (values[2] & np.uint64(31))) >> np.uint64(32) & ones
    if operation == "bfe":  # the field of c bits from bit b, zero- or sign-extended (from a's top bit past it)
        start, length = (values[1] & np.uint64(0xFF)).astype(np.int64), (values[2] & np.uint64(0xFF)).astype(np.int64)
        top = np.minimum(start + length - 1, bits - 1)
        field = np.zeros_like(a)
        for bit in range(bits):
            inside = (bit < length) & (start + bit < bits)
            source = np.where(inside, start + bit, top) if is_signed else start + bit
            taken = (a >> np.clip(source, 0, bits - 1).astype(np.uint64)) & np.uint64(1)
            field |= np.where(inside | (is_signed & (length > 0)), taken, np.uint64(0)) << np.uint64(bit)
        return np.where(length == 0, np.uint64(0), field)
    raise AssertionError(f"an instruction this machine does not know: {'.'.join(parts)}")


def _set_predicate(parts: list[str], values: list[np.ndarray]) -> np.ndarray:
    comparison, kind = parts[1], parts[-1]
    bits = width(kind)
    if kind.startswith("f"):
        result = compare(comparison, floats(values[0], bits), floats(values[1], bits))
    else:
        a, b = (
            (signed(values[0], bits), signed(values[1], bits))
            if kind.startswith("s")
            else (
                values[0] & mask(bits),
                values[1] & mask(bits),
            )
        )
        result = compare(comparison, a, b)
    if len(parts) == 4:  # setp.cmp.bool.type p, a, b, q
        result = {"or": np.logical_or, "and": np.logical_and, "xor": np.logical_xor}[parts[2]](
            result, values[2].astype(bool)
        )
    return result


def _convert(parts: list[str], values: list[np.ndarray]) -> np.ndarray:
    modifiers, (to, source) = parts[1:-2], parts[-2:]
    a = values[0]
    if to == "bf16x2":  # cvt.rn.bf16x2.f32 d, a, b: a to the high half, b to the low
        assert modifiers == ["rn"], parts
        return to_bfloat16(a) << np.uint64(16) | to_bfloat16(values[1])
    if to == "bf16":
        assert modifiers == ["rn"] and source == "f32", parts
        return to_bfloat16(a)
    if source == "bf16":
        a, source = (a & mask(16)) << np.uint64(16), "f32"
    to_bits, source_bits = width(to), width(source)
    if to.startswith("f") and source.startswith("f"):
        x = floats(flushed(a, source_bits) if "ftz" in modifiers else a, source_bits)
        return bits_of(x, to_bits)
    if source.startswith("f"):
        x = floats(flushed(a, source_bits) if "ftz" in modifiers else a, source_bits)
        (rounding,) = [modifier for modifier in modifiers if modifier != "ftz"]
        return float_to_integer(x, rounding, to_bits, to.startswith("s")) & mask(to_bits)
    integer = signed(a, source_bits) if source.startswith("s") else a & mask(source_bits)
    if to.startswith("f"):
        assert modifiers == ["rn"], parts
        exact = integer.astype(np.float64) if source_bits < 64 else None
        if exact is None:  # int64 to float: through Python's correctly rounded conversion
            exact = np.array([float(int(value)) for value in integer], dtype=np.float64)
        return bits_of(exact, to_bits)
    assert not modifiers, parts
    return integer.astype(np.uint64) & mask(to_bits)


def _float(parts: list[str], values: list[np.ndarray], bits: int) -> np.ndarray:
    operation = parts[0]
    flush = "ftz" in parts
    values = [flushed(value, bits) for value in values] if flush else values
    x = [floats(value, bits) for value in values]
    sign = np.uint64(FLOAT_SIGN[bits])
    with np.errstate(all="ignore"):
        if operation == "neg":
            result = values[0] ^ sign
        elif operation == "abs":
            result = values[0] & ~sign & mask(bits)
        elif operation in ("min", "max"):
            result = _min_max(operation, values, x, bits)
        elif operation == "fma" or (operation == "mad" and "rn" in parts):
            result = fma(x[0], x[1], x[2], bits)
        elif operation in ("add", "sub", "mul", "div"):
            exact = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[operation]
            if bits == 32:  # float64 has 53 >= 2 * 24 + 2 bits: the float32 result is rounded once
                result = bits_of(exact(x[0], x[1]), 32)
            else:
                result = bits_of(exact(x[0], x[1]), 64)
            assert operation != "div" or "rn" in parts, parts
        elif operation == "sqrt":
            result = bits_of(np.sqrt(x[0]), bits)
        elif operation == "rsqrt":
            result = bits_of(1 / np.sqrt(x[0]), bits)
        else:
            raise AssertionError(f"an instruction this machine does not know: {'.'.join(parts)}")
    return flushed(result, bits) if flush else result


def _min_max(operation: str, values: list[np.ndarray], x: list[np.ndarray], bits: int) -> np.ndarray:
    a, b = x
    pick = np.fmin if operation == "min" else np.fmax
    result = np.where(np.isnan(a), values[1], np.where(np.isnan(b), values[0], bits_of(pick(a, b), bits)))
    zeros = (a == 0) & (b == 0)
    signs = (values[0] | values[1]) if operation == "min" else (values[0] & values[1])
    result = np.where(zeros, signs & np.uint64(FLOAT_SIGN[bits]), result)
    canonical = np.uint64(0x7FFFFFFF if bits == 32 else 0x7FFFFFFFFFFFFFFF)
    return np.where(np.isnan(a) & np.isnan(b), canonical, result)
