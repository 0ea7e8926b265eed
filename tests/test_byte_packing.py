"""The PTX that packs m's 8-bit codes (`kernels/quantization.py`, `_top_bytes`) against the PTX ISA's `prmt`: the top
byte of each of four words, in order, the first word's in the lowest byte. The interpreter runs no PTX (it shifts,
and the 8-bit tests compare its codes with the reference's); natively on a GPU those tests run the PTX itself."""

import random
import re

from v0adam.kernels.quantization import _TOP_BYTES_PTX


def _prmt(a: int, b: int, selector: int) -> int:
    """prmt.b32 in its default mode: byte i of the result is byte (nibble i of the selector) of b:a, its sign
    replicated where the nibble's high bit is set."""
    source = [(a >> 8 * i) & 0xFF for i in range(4)] + [(b >> 8 * i) & 0xFF for i in range(4)]
    result = 0
    for i in range(4):
        nibble = selector >> 4 * i & 0xF
        byte = source[nibble & 7]
        if nibble & 8:
            byte = 0xFF if byte & 0x80 else 0
        result |= byte << 8 * i
    return result


def _run(ptx: str, words: list[int]) -> int:
    registers = {f"${i + 1}": word for i, word in enumerate(words)}
    instructions = re.findall(r"prmt\.b32 (\S+), (\S+), (\S+), (0x[0-9a-fA-F]+);", ptx)
    assert len(instructions) == 3 and ptx.count(";") == len(instructions) + 1  # the register declaration
    for destination, a, b, selector in instructions:
        registers[destination] = _prmt(registers[a], registers[b], int(selector, 16))
    return registers["$0"]


def test_the_packed_codes_are_the_top_bytes_of_the_four_words_in_order():
    generator = random.Random(0)
    for _ in range(1000):
        words = [generator.getrandbits(32) for _ in range(4)]
        expected = sum((word >> 24) << 8 * i for i, word in enumerate(words))
        assert _run(_TOP_BYTES_PTX.value, words) == expected, [hex(word) for word in words]
