"""The kernel's contract: nothing a schedule changes reaches it as a compile-time value, and aligned launches
compile to 128-bit memory accesses."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import DEVICE
from helpers import MIXED_SHAPES, gradients, make_params, set_grads
from v0adam.kernels import adam as adam_kernel

import v0adam


class LaunchRecorder:
    """Stands in for the jitted kernel and records what each launch would specialise on."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.keys = []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            assert all(isinstance(arg, torch.Tensor) for arg in args), "a launch argument is not in device memory"
            self.keys.append(
                (tuple((a.dtype, a.data_ptr() % 16 == 0) for a in args), tuple(sorted(kwargs.items(), key=str)))
            )
            return launch(*args, **kwargs)

        return run


@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_lr_schedule_never_changes_the_compiled_kernel(monkeypatch, lr_kind):
    recorder = LaunchRecorder(adam_kernel._adam_step_kernel)
    monkeypatch.setattr(adam_kernel, "_adam_step_kernel", recorder)
    params = make_params(MIXED_SHAPES, device=DEVICE)
    lr = torch.tensor(0.01) if lr_kind == "tensor" else 0.01
    opt = v0adam.V0AdamW(params, lr=lr, betas=(0.9, 0.99), v0="zero", backend="triton")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
    seen_lrs = set()
    for step in range(6):
        opt.zero_grad()
        set_grads(params, gradients(params, step), "autograd")
        opt.step()
        schedule.step()
        seen_lrs.add(float(opt.param_groups[0]["lr"]))
    assert len(seen_lrs) == 6 and len(recorder.keys) == 6
    assert len(set(recorder.keys)) == 1


# Compiled in one fresh interpreter (under TRITON_INTERPRET=1 the kernels in this process are not compilable): every
# variant of the step named on the command line as dtype:mode:aligned, the family's rules for each aligned one, and
# the other kernels once per dtype. Prints one JSON object: variant -> 128-bit loads in its PTX, or the error.
AOT_SCRIPT = """
import json, sys, traceback, torch, triton
from triton.backends.compiler import GPUTarget
from v0adam.kernels import adam, grad_norm, v0_init

def compile_for_h100(kernel, signature, constexprs):
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

def compile_step(dtype, mode, aligned):
    state = {"rounding": "*bf16", "8bit": "*u8"}.get(mode, "*fp32")
    signature = dict(segments_ptr="*i64", block_segment_ptr="*i32", hyper_ptr="*fp64", steps_ptr="*fp32",
                     exp_avg_ptr=state, exp_avg_sq_ptr=state, max_exp_avg_sq_ptr=state, master_ptr="*fp32",
                     grad_scale_ptr="*fp32", found_inf_ptr="*fp32", rounding_seed_ptr="*i64",
                     exp_avg_scales_ptr="*fp32", exp_avg_sq_scales_ptr="*fp32", max_exp_avg_sq_scales_ptr="*fp32",
                     code_table_ptr="*fp32")
    constexprs = dict(PARAM_DTYPE=dtype, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True, HAS_MASTER=mode == "master",
                      STOCHASTIC_ROUNDING=mode == "rounding", ALIGNED=aligned, QUANTIZED=mode == "8bit", BLOCK=1024)
    ptx = compile_for_h100(adam._adam_step_kernel, signature, {**constexprs, "ALGORITHM": adam.ADAM.value})
    if aligned:
        for algorithm in (adam.ADABELIEF, adam.RADAM, adam.ADABOUND):
            compile_for_h100(adam._adam_step_kernel, signature, {**constexprs, "ALGORITHM": algorithm.value})
    return ptx.count("ld.global.v4")

def compile_others(dtype):
    compile_for_h100(v0_init._random_v0_kernel, dict(out_ptr="*fp32", numel="i32", scale="fp32", seed="i64",
                     param_index="i32", element_offset="i64"), dict(BLOCK=1024))
    table = dict(segments_ptr="*i64", block_segment_ptr="*i32")
    compile_for_h100(v0_init._accumulate_moments_kernel, {**table, "sum_ptr": "*fp32", "sum_sq_ptr": "*fp32"},
                     dict(PARAM_DTYPE=dtype, BLOCK=1024))
    for norm_type in (0, 1, 2):
        compile_for_h100(grad_norm._grad_norm_partials_kernel, {**table, "partials_ptr": "*fp32"},
                         dict(PARAM_DTYPE=dtype, NORM_TYPE=norm_type, BLOCK=1024))
    return 0

results = {}
for variant in sys.argv[1:]:
    dtype, mode, aligned = variant.split(":")
    try:
        dtype = adam._TRITON_DTYPES[getattr(torch, dtype)]
        results[variant] = compile_others(dtype) if mode == "others" else compile_step(dtype, mode, aligned == "True")
    except Exception:
        results[variant] = traceback.format_exc()[-2000:]
print(json.dumps(results))
"""
STEP_VARIANTS = [
    ("float32", "plain"),
    ("bfloat16", "plain"),
    ("bfloat16", "master"),
    ("bfloat16", "rounding"),
    ("float32", "8bit"),
]
AOT_VARIANTS = [f"{dtype}:{mode}:{aligned}" for dtype, mode in STEP_VARIANTS for aligned in (True, False)]
AOT_VARIANTS += ["float32:others:True", "bfloat16:others:True"]


@pytest.fixture(scope="module")
def compiled_for_h100():
    """variant -> 128-bit loads in its PTX, or the error that stopped its compilation (one fresh process)."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT, *AOT_VARIANTS], env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("variant", AOT_VARIANTS)
def test_kernels_compile_for_h100_and_aligned_steps_use_vector_accesses(compiled_for_h100, variant):
    """Ahead-of-time compilation for sm_90, no GPU needed: every kernel compiles (the interpreter accepts code the
    compiler rejects): the step in each precision mode (bf16 "rounding" with bf16 states), aligned and not, the
    family's rules in each mode, and the other kernels; the aligned Adam step uses 128-bit loads (ld.global.v4),
    the unaligned one none."""
    vector_loads = compiled_for_h100[variant]
    assert isinstance(vector_loads, int), vector_loads
    if ":others:" not in variant:
        assert (vector_loads > 0) == variant.endswith("True")


def test_tables_used_while_capturing_a_cuda_graph_outlive_later_rebuilds(monkeypatch):
    """A captured graph replays its kernels on the tables they read at capture time: a later rebuild (new
    addresses) or a cache eviction must not free them."""
    from v0adam import graph_capture, triton_backend

    table = triton_backend.SegmentTable(torch.device("cpu"))
    table.update_rows([(4096, 8192, 0, 100, 0, 0)])
    captured = table.segments
    monkeypatch.setattr(graph_capture, "capturing", lambda device: True)
    triton_backend.hold_table_if_capturing(table)
    monkeypatch.setattr(graph_capture, "capturing", lambda device: False)
    table.update_rows([(12288, 16384, 0, 100, 0, 0)])
    triton_backend.hold_table_if_capturing(table)  # not capturing: nothing held
    held = [tensors[0] for tensors in graph_capture._HELD_FOR_CUDA_GRAPHS.values()]
    assert any(tensor is captured for tensor in held)
    assert not any(tensor is table.segments for tensor in held)
    assert captured[0, 0] == 4096  # the capture-time addresses, untouched
