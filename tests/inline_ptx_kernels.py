"""Prints, as JSON, the PTX Triton writes for sm_90 around v0adam's inline PTX, which the interpreter never runs:
`_top_bytes` (m's 8-bit codes) in the layouts a step's codes take (an element an access, 16-byte vectors, and the
rows of the 8-bit blocks reshaped to one, as `quantize_m` does), and `sqrt_rn` as the step's aligned launches take
it. Run in a process of its own (tests/test_byte_packing.py, tests/test_square_root.py, through `tests/ptx_machine`):
the kernels must be compiled, not interpreted."""

import json
import sys
from pathlib import Path

import triton
import triton.language as tl
from square_root_sass import BLOCK, NUM_WARPS, _packed_square_roots
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from v0adam.kernels.quantization import _top_bytes  # noqa: E402
from v0adam.kernels.tables import QBLOCK  # noqa: E402


@triton.jit
def _packed_top_bytes(words_ptr, codes_ptr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(codes_ptr + offsets, _top_bytes(tl.load(words_ptr + offsets)))


@triton.jit
def _packed_top_bytes_of_rows(words_ptr, codes_ptr, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK // QBLOCK)[:, None] * QBLOCK + tl.arange(0, QBLOCK)[None, :]
    words = tl.load(words_ptr + tl.program_id(0) * BLOCK + rows)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(codes_ptr + offsets, _top_bytes(tl.reshape(words, (BLOCK,))))


def ptx(kernel, signature: dict, divisible: bool) -> str:
    """`kernel`'s PTX, its two pointers divisible by 16 (as the runtime specialises them) or not."""
    attrs = {(index,): CUDABackend.parse_attr("D") for index in range(2)} if divisible else {}
    source = triton.compiler.ASTSource(
        fn=kernel, signature={**signature, "BLOCK": "constexpr"}, constexprs={"BLOCK": BLOCK}, attrs=attrs
    )
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS}).asm["ptx"]


if __name__ == "__main__":
    codes = {"words_ptr": "*i32", "codes_ptr": "*u8"}
    kernels = {
        "top bytes, an element an access": ptx(_packed_top_bytes, codes, divisible=False),
        "top bytes, 16-byte vectors": ptx(_packed_top_bytes, codes, divisible=True),
        "top bytes, rows reshaped": ptx(_packed_top_bytes_of_rows, codes, divisible=True),
        "square roots": ptx(_packed_square_roots, {"x_ptr": "*fp32", "out_ptr": "*fp32"}, divisible=True),
    }
    print(json.dumps({"block": BLOCK, "num_warps": NUM_WARPS, "ptx": kernels}))
