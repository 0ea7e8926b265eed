"""The correctly rounded float32 square root, with one branch for four elements where `tl.sqrt_rn` takes one each.

ptxas expands `sqrt.rn.f32` (what `tl.sqrt_rn` emits), per element, into a reciprocal square root approximation
(MUFU.RSQ), a test of x's bits against the range [0x0d000000, 0x7f7fffff] (x from 2^-101 to the largest float32),
a branch over the call of a slow path for what lies outside it (0, subnormals and the smallest normals, infinities,
NaN, negatives), and a fast path of two multiplications and two FMAs that round the approximation correctly. A
thread that takes eight square roots runs eight such branches, each behind its convergence barrier and the wait
for its comparison, none of them overlapping the others.

`sqrt_rn` here takes four elements of a thread at a time, in PTX: each one's fast path, the very instructions
ptxas writes for it (`rsqrt.approx.ftz.f32`, `mul.ftz.f32`, `fma.rn.f32`, so the very values); one test of the four
together, through the smallest and the largest of their bits as unsigned integers (a negative's sign bit makes it
the largest); and, only where one of them lies outside the range, `sqrt.rn.f32` on all four. Each result is the
correctly rounded square root either way. tests/test_square_root.py checks, compiled for compute capabilities 7.5
to 10.0, that the fast path and its range are still ptxas's own.

The Triton interpreter runs no PTX: there it is `tl.sqrt_rn` (numpy's, correctly rounded), the same values.
"""

import triton
import triton.language as tl
from v0adam.kernels.precision import HARDWARE_ROUNDING

PACK = 4  # elements an invocation: 1 branch for 4 (8 took 4 more registers in the bfloat16 step with 8-bit states)
# x's bits where ptxas's fast path is exact: x from 2^-101 to the largest finite float32.
FAST_PATH_LOWEST_BITS = 0x0D000000
FAST_PATH_HIGHEST_BITS = 0x7F7FFFFF


def _ptx(pack: int) -> str:
    """The PTX of `pack` square roots: outputs $0..$(pack-1), inputs $pack..$(2 pack - 1)."""
    inputs = [f"${pack + i}" for i in range(pack)]
    lines = [
        "{",
        ".reg .pred outside;",
        ".reg .b32 lowest, highest;",
        f".reg .f32 rsqrt<{pack}>, root<{pack}>, half_rsqrt<{pack}>, residual<{pack}>, result<{pack}>;",
        f"min.u32 lowest, {inputs[0]}, {inputs[1]};",
        f"max.u32 highest, {inputs[0]}, {inputs[1]};",
        *(f"min.u32 lowest, lowest, {x};\nmax.u32 highest, highest, {x};" for x in inputs[2:]),
        f"setp.lt.u32 outside, lowest, {FAST_PATH_LOWEST_BITS:#x};",
        f"setp.gt.or.u32 outside, highest, {FAST_PATH_HIGHEST_BITS:#x}, outside;",
    ]
    for i, x in enumerate(inputs):
        lines += [
            f"rsqrt.approx.ftz.f32 rsqrt{i}, {x};",
            f"mul.ftz.f32 root{i}, {x}, rsqrt{i};",
            f"mul.ftz.f32 half_rsqrt{i}, rsqrt{i}, 0f3F000000;",
            f"neg.f32 residual{i}, root{i};",
            f"fma.rn.f32 residual{i}, residual{i}, root{i}, {x};",  # x - root^2, rounded once
            f"fma.rn.f32 result{i}, residual{i}, half_rsqrt{i}, root{i};",
        ]
    # The results go to the outputs only at the end: an output may share its register with an input.
    lines += ["@!outside bra FAST_PATH_TAKEN;"]
    lines += [f"sqrt.rn.f32 result{i}, {x};" for i, x in enumerate(inputs)]
    lines += ["FAST_PATH_TAKEN:"] + [f"mov.b32 ${i}, result{i};" for i in range(pack)] + ["}"]
    return "\n".join(lines)


_PACK = tl.constexpr(PACK)
_PTX = tl.constexpr(_ptx(PACK))
# 32-bit registers (.b32): both the unsigned comparisons and the float arithmetic may read them.
_CONSTRAINTS = tl.constexpr(",".join(["=r"] * PACK + ["r"] * PACK))


@triton.jit
def sqrt_rn(x):
    """The correctly rounded square root of float32 `x`, elementwise."""
    if not HARDWARE_ROUNDING:  # interpreted: no PTX
        return tl.sqrt_rn(x)
    return tl.inline_asm_elementwise(_PTX, _CONSTRAINTS, [x], dtype=tl.float32, is_pure=True, pack=_PACK)
