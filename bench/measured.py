"""The kernels the committed H200 rows measured, as the GPU ran them: the step kernel of revision 8e13887 compiled
by triton 3.6.0 (torch 2.11's, the lent H200's image) for sm_90, in each launch shape the benchmark and the tuning
run timed (`bench/results/nvidia-h200_2026-11-26*`). They are kept as gzipped cubins beside those results, and
`bench.static` calibrates its model on them: fitted on today's kernels, compiled by today's Triton, its constant
would be fitted on code that never ran on the GPU that measured the rows.

Rebuild them with `python -m bench.measured`, in a git checkout that holds the revision, with triton 3.6.0
installed (torch's CPU build is enough; no GPU): Triton compiles with the ptxas it ships, so the cubins are the
binaries the H200 ran, unless its image pointed Triton at another ptxas (TRITON_PTXAS_PATH; nothing says it did).
The launches are specialised as the runtime did: every argument a pointer divisible by 16. Two rebuilds give the
same bytes.
"""

import gzip
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

REVISION = "8e13887"
TRITON_VERSION = "3.6.0"
DIRECTORY = Path(__file__).parent / "results" / "nvidia-h200_2026-11-26_kernels"
# The benchmark and the tuning run timed 30 steps after 3 warm-up ones, each on a fresh optimizer: steps 4 to 33.
# Each of this kernel's power loops (beta ** step by squaring) runs once per bit of the step: 5 times in 16 of them
# (steps 16 to 31), in more than any other count, and so in the median one.
POWER_LOOP_ITERATIONS = 5
# The step kernel's launch shapes (BLOCK, num_warps) the committed rows timed, per param dtype.
SHAPES = {
    "fp32": tuple((block, num_warps) for block in (1024, 2048, 4096, 8192) for num_warps in (4, 8, 16)),
    "bf16": ((1024, 4),),
}
_SIGNATURE = {
    "segments_ptr": "*i64",
    "block_segment_ptr": "*i32",
    "hyper_ptr": "*fp64",
    "steps_ptr": "*fp32",
    "exp_avg_ptr": "*fp32",
    "exp_avg_sq_ptr": "*fp32",
    "max_exp_avg_sq_ptr": "*fp32",
    "grad_scale_ptr": "*fp32",
    "found_inf_ptr": "*fp32",
    **dict.fromkeys(("PARAM_DTYPE", "HAS_GRAD_SCALE", "HAS_FOUND_INF", "ALIGNED", "BLOCK"), "constexpr"),
}


def path(dtype: str, block: int, num_warps: int) -> Path:
    return DIRECTORY / f"step_{dtype}_block{block}_warps{num_warps}.cubin.gz"


def cubin(dtype: str, block: int, num_warps: int) -> bytes:
    """The cubin the H200 ran for the aligned step of `dtype` ("fp32" or "bf16") params in this launch shape."""
    return gzip.decompress(path(dtype, block, num_warps).read_bytes())


def _compile(kernel, dtype: str, block: int, num_warps: int) -> bytes:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    constexprs = {
        "PARAM_DTYPE": {"fp32": tl.float32, "bf16": tl.bfloat16}[dtype],
        "HAS_GRAD_SCALE": False,
        "HAS_FOUND_INF": False,
        "ALIGNED": True,
        "BLOCK": block,
    }
    pointers = [name for name, kind in _SIGNATURE.items() if kind.startswith("*")]
    attrs = {(index,): CUDABackend.parse_attr("D") for index in range(len(pointers))}
    source = triton.compiler.ASTSource(fn=kernel, signature=_SIGNATURE, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    return compiled.asm["cubin"]


def main() -> int:
    import triton

    if triton.__version__ != TRITON_VERSION:
        print(
            f"the rows measured triton {TRITON_VERSION}'s cubins; this is triton {triton.__version__}", file=sys.stderr
        )
        return 1
    show = ["git", "show", f"{REVISION}:kernels/adam.py"]
    source = subprocess.run(show, capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout
    with tempfile.TemporaryDirectory() as directory:
        module_path = Path(directory) / "measured_adam.py"  # Triton reads a jitted function's source from its file
        module_path.write_text(source)
        spec = importlib.util.spec_from_file_location("measured_adam", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        DIRECTORY.mkdir(exist_ok=True)
        for dtype, shapes in SHAPES.items():
            for block, num_warps in shapes:
                binary = _compile(module._adam_step_kernel, dtype, block, num_warps)
                path(dtype, block, num_warps).write_bytes(gzip.compress(binary, compresslevel=9, mtime=0))
                print(f"{path(dtype, block, num_warps).name}: {len(binary)} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
