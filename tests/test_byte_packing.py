"""The PTX that packs m's 8-bit codes (`kernels/quantization.py`, `_top_bytes`) against the PTX ISA's `prmt`: the top
byte of each of four words, in order, the first word's in the lowest byte; and the kernels Triton compiles around it
for sm_90, run without a GPU (`tests/ptx_machine.py`): each element's code lands where that element's word was read
from, whatever order Triton hands a pack of four elements to the PTX in. The interpreter runs no PTX (it shifts, and
the 8-bit tests compare its codes with the reference's); natively on a GPU those tests run the PTX itself."""

import numpy as np
import pytest
from ptx_machine import Machine, statements
from v0adam.kernels.quantization import _TOP_BYTES_PTX

LAYOUTS = ["an element an access", "16-byte vectors", "rows reshaped"]


def test_the_packed_codes_are_the_top_bytes_of_the_four_words_in_order():
    """The PTX alone, its operands $1 to $4 set: byte i of $0 is the top byte of $(i + 1)."""
    words = np.random.default_rng(0).integers(0, 1 << 32, (1000, 4), dtype=np.uint64)
    machine = Machine(programs=1, threads=len(words), params=[], memory=np.zeros(0, dtype=np.uint8))
    machine.registers |= {f"${i + 1}": words[:, i] for i in range(4)}
    for statement in statements(_TOP_BYTES_PTX.value):
        machine.step(statement)
    expected = sum((words[:, i] >> np.uint64(24)) << np.uint64(8 * i) for i in range(4))
    wrong = np.flatnonzero(machine.registers["$0"] != expected)
    assert wrong.size == 0, [hex(word) for word in words[wrong[0]]]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_for_sm90_each_code_is_the_top_byte_of_its_own_elements_word(inline_ptx, layout):
    """Two programs of the compiled kernel over random words: code i is the top byte of word i, for every i (a
    pack's elements handed to the PTX, or its bytes taken back, in another order would move codes between elements,
    in every pack)."""
    programs, block, threads = 2, inline_ptx["block"], 32 * inline_ptx["num_warps"]
    words = np.random.default_rng(0).integers(0, 1 << 32, programs * block, dtype=np.uint64).astype(np.uint32)
    words_at, codes_at = 1 << 12, (1 << 12) + 4 * words.size
    memory = np.zeros(codes_at + words.size + (1 << 12), dtype=np.uint8)
    memory[words_at:codes_at] = words.view(np.uint8)
    Machine(programs, threads, [words_at, codes_at, 0, 0], memory).run(inline_ptx["ptx"][f"top bytes, {layout}"])
    codes = memory[codes_at : codes_at + words.size]
    wrong = np.flatnonzero(codes != words >> 24)
    assert wrong.size == 0, f"{wrong.size} codes wrong, first at element {wrong[:1]}"
