"""The kernel's contract: nothing a schedule changes reaches it as a compile-time value, and an odd-sized tensor
costs only itself (the compiled code of every launch: tests/test_static_model.py)."""

import pytest
import torch
from conftest import DEVICE
from helpers import MIXED_SHAPES, gradients, make_params, set_grads
from v0adam.kernels import adam as adam_kernel
from v0adam.kernels import tables
from v0adam.kernels.tables import SegmentRow

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
    from v0adam import triton_backend

    monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", True)  # as on a GPU
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
    # Each step: the aligned launch and the one over the odd-sized tails, each compiled once for all six steps.
    assert len(seen_lrs) == 6 and len(recorder.keys) == 12
    assert len(set(recorder.keys)) == 2


def _row(param_addr, grad_addr, state_offset, numel, group, step_index) -> SegmentRow:
    """A segment as the host hands it to a table, before its first block is known."""
    return SegmentRow(param_addr, grad_addr, state_offset, numel, 0, group, step_index)


def test_tables_used_while_capturing_a_cuda_graph_outlive_later_rebuilds(monkeypatch):
    """A captured graph replays its kernels on the tables they read at capture time: a later rebuild (new
    addresses) or a cache eviction must not free them."""
    from v0adam import graph_capture, triton_backend

    table = triton_backend.SegmentTable(torch.device("cpu"))
    table.update_rows([_row(4096, 8192, 0, 100, 0, 0)])
    captured = table.segments
    monkeypatch.setattr(graph_capture, "capturing", lambda device: True)
    triton_backend.hold_table_if_capturing(table)
    monkeypatch.setattr(graph_capture, "capturing", lambda device: False)
    table.update_rows([_row(12288, 16384, 0, 100, 0, 0)])
    triton_backend.hold_table_if_capturing(table)  # not capturing: nothing held
    held = [tensors[0] for tensors in graph_capture._HELD_FOR_CUDA_GRAPHS.values()]
    assert any(tensor is captured for tensor in held)
    assert not any(tensor is table.segments for tensor in held)
    assert captured[0, 0] == 4096  # the capture-time addresses, untouched


def test_an_odd_sized_tensor_costs_only_itself(monkeypatch):
    """Segments that keep the alignment promise stay in the aligned launch; an odd numel sends only its tail (from
    a multiple of 8 elements) to the unaligned launch, an unaligned address (of its param, its grad or both) only
    its own segment."""
    from v0adam import triton_backend

    monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", True)

    table = triton_backend.SegmentTable(torch.device("cpu"), torch.float32)  # float32 tails: the unaligned launch
    whole, odd = _row(4096, 8192, 0, 1000, 0, 0), _row(16384, 32768, 1024, 10, 1, 1)
    misplaced = _row(65540, 131072, 2048, 64, 0, 2)
    bucket_view = _row(262144, 524292, 2112, 20, 0, 3)  # its grad 4 bytes past a 16-byte boundary
    table.update_rows([whole, odd, misplaced, bucket_view])
    aligned_rows = [whole, _row(16384, 32768, 1024, 8, 1, 1)]
    unaligned_rows = [_row(16384 + 32, 32768 + 32, 1024 + 8, 2, 1, 1), misplaced, bucket_view]
    rows = [SegmentRow(*row)._replace(first_block=0) for row in table.segments.tolist()]
    assert rows == aligned_rows + unaligned_rows
    assert [tuple(kind) for _, *kind in table.launches] == [triton_backend.ALIGNED, triton_backend.UNALIGNED]
    blocks = [block_segment.numel() for block_segment, *_ in table.launches]
    assert blocks == [len(aligned_rows), len(unaligned_rows)]  # one block a row here
    # Block numbers restart with each launch: its first program is its block 0.
    first_blocks = [SegmentRow(*row).first_block for row in table.segments.tolist()]
    assert first_blocks == [0, 1] + [0, 1, 2]
    # Each launch's view of the block table is 16-byte aligned: Triton compiles no variant for a view that is not.
    assert [view.data_ptr() % 16 for view, *_ in table.launches] == [0, 0]
    assert table.num_blocks == 2 + 2 + 3 + 1  # each launch's programs, padded to 4 entries


def test_the_tail_of_a_16_bit_tensor_at_aligned_addresses_is_read_in_whole_vectors(monkeypatch):
    """bfloat16 params: the tail of an odd-sized tensor whose addresses keep the promise goes to the launch of
    tails (whole 16-byte vectors read, its own elements written); one whose grad breaks it, to the unaligned
    launch, the rest of its segment to the launch that reads its grads in words."""
    from v0adam import triton_backend

    monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", True)
    table = triton_backend.SegmentTable(torch.device("cpu"), torch.bfloat16)
    odd, odd_bucket_view = _row(16384, 32768, 0, 10, 0, 0), _row(65536, 131074, 64, 11, 0, 1)
    table.update_rows([odd, odd_bucket_view])
    rows = [SegmentRow(*row)._replace(first_block=0) for row in table.segments.tolist()]
    assert rows == [
        _row(16384, 32768, 0, 8, 0, 0),
        _row(65536, 131074, 64, 8, 0, 1),
        _row(16384 + 16, 32768 + 16, 8, 2, 0, 0),
        _row(65536 + 16, 131074 + 16, 72, 3, 0, 1),
    ]
    kinds = [tuple(kind) for _, *kind in table.launches]
    assert kinds == [
        triton_backend.ALIGNED,
        triton_backend.GRADS_HALFWORD_ALIGNED,
        triton_backend.TAILS,
        triton_backend.UNALIGNED,
    ]


def test_grads_alone_off_the_promise_stay_in_the_aligned_launch_where_it_reads_them_better(monkeypatch):
    """A segment whose grad alone breaks the alignment promise (DDP's bucket views) stays in the aligned launch,
    its grads read in 4-byte words where their address allows, else an element at a time: 16-bit grads in words
    (2 bytes past a 4-byte boundary, the two words either side of each pair), whatever the states; 8-bit states at
    any address; float32 grads beside float states go to the unaligned launch."""
    from v0adam import triton_backend
    from v0adam.triton_backend import ALIGNED, GRADS_HALFWORD_ALIGNED, GRADS_WORD_ALIGNED, UNALIGNED

    monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", True)
    whole = _row(4096, 8192, 0, 1024, 0, 0)
    at_words, at_halfwords = _row(16384, 32772, 1024, 256, 0, 1), _row(65536, 131074, 1280, 256, 0, 2)
    expected = {
        (torch.bfloat16, torch.float32): [ALIGNED, GRADS_WORD_ALIGNED, GRADS_HALFWORD_ALIGNED],
        (torch.bfloat16, torch.bfloat16): [ALIGNED, GRADS_WORD_ALIGNED, GRADS_HALFWORD_ALIGNED],
        (torch.bfloat16, torch.uint8): [ALIGNED, GRADS_WORD_ALIGNED, GRADS_HALFWORD_ALIGNED],
        (torch.float32, torch.float32): [ALIGNED, UNALIGNED],
        (torch.float32, torch.uint8): [ALIGNED, GRADS_WORD_ALIGNED],
    }
    for (dtype, state_dtype), kinds in expected.items():
        table = triton_backend.SegmentTable(torch.device("cpu"), dtype, state_dtype)
        table.update_rows([whole, at_words] if dtype == torch.float32 else [whole, at_words, at_halfwords])
        assert [tuple(kind) for _, *kind in table.launches] == kinds, (dtype, state_dtype)


def test_8bit_segments_are_whole_blocks_and_only_a_misplaced_one_goes_unaligned(monkeypatch):
    """8-bit tables: a segment whose param is at an unaligned address goes alone to the unaligned launch, one whose
    grad alone is (DDP's bucket views) to the aligned launch that reads its grads in words; one that is not whole
    256-element blocks, which the kernel's quantizers could not step, is refused when the table is built."""
    from v0adam import triton_backend

    monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", True)
    table = triton_backend.SegmentTable(torch.device("cpu"), torch.float32, torch.uint8)
    whole, misplaced = _row(4096, 8192, 0, 1024, 0, 0), _row(65540, 131072, 1024, 256, 0, 1)
    bucket_view = _row(262144, 524292, 1280, 512, 0, 2)  # its grad alone unaligned: aligned but for its grads
    table.update_rows([whole, misplaced, bucket_view])
    rows = [SegmentRow(*row)._replace(first_block=0) for row in table.segments.tolist()]
    assert rows == [whole, bucket_view, misplaced]
    kinds = [tuple(kind) for _, *kind in table.launches]
    assert kinds == [triton_backend.ALIGNED, triton_backend.GRADS_WORD_ALIGNED, triton_backend.UNALIGNED]
    with pytest.raises(ValueError, match="whole blocks of 256"):
        table.update_rows([whole, _row(16384, 32768, 1280, 300, 0, 1)])


@pytest.mark.parametrize(
    "dtype, options",
    [
        (torch.float32, {}),
        (torch.bfloat16, {"stochastic_rounding": True}),
    ],
    ids=["fp32", "bf16-stochastic"],
)
def test_splitting_off_the_unaligned_tails_changes_nothing(monkeypatch, dtype, options):
    """The same steps with odd-sized tensors split into an aligned bulk and a tail (as on a GPU: the tails of
    bfloat16 params read in whole vectors, of float32 ones one element an access) and stepped whole (as the
    interpreter does by default): params and every state bitwise equal. (8-bit states have no tail: they go to
    tensors of whole 256-element rows.)"""
    from v0adam import triton_backend

    runs, kinds, step_launch = [], set(), adam_kernel.adam_step

    def recording_step(*args, **kwargs):
        kinds.add((kwargs["aligned"], kwargs["grad_alignment"], kwargs["whole_vectors"]))
        return step_launch(*args, **kwargs)

    monkeypatch.setattr(adam_kernel, "adam_step", recording_step)
    for split in (True, False):
        monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", split)
        params = make_params(MIXED_SHAPES, dtype=dtype, device=DEVICE)
        opt = v0adam.V0AdamW(params, lr=0.01, backend="triton", **options)
        for step in range(3):
            opt.zero_grad()
            set_grads(params, gradients(params, step), "autograd")
            opt.step()
        runs.append((params, opt))
        if split:  # a tensor has a tail: the bf16 one in whole vectors, the fp32 one in the unaligned launch
            assert (triton_backend.TAILS in kinds) == (dtype == torch.bfloat16), kinds
    (split_params, split_opt), (whole_params, whole_opt) = runs
    for p, q in zip(split_params, whole_params):
        assert torch.equal(p, q)
        for key, value in split_opt.state[p].items():
            assert torch.equal(value, whole_opt.state[q][key]), key


EIGHT_BIT = {"state_dtype": torch.uint8, "min_8bit_size": 1}


@pytest.mark.parametrize(
    "dtype, options, first_numel, grads_kind",
    [
        (torch.bfloat16, EIGHT_BIT, 3, (True, 2)),
        (torch.bfloat16, EIGHT_BIT, 2, (True, 4)),
        (torch.float32, {**EIGHT_BIT, "amsgrad": True}, 3, (True, 4)),
        (torch.bfloat16, {**EIGHT_BIT, "weight_decay": 0.1, "maximize": True}, 2, (True, 4)),
        (torch.bfloat16, {"state_dtype": torch.bfloat16, "stochastic_rounding": True}, 2, (True, 4)),
        (torch.bfloat16, {"master_weights": "fp32"}, 2, (True, 4)),
        (torch.float16, EIGHT_BIT, 2, (True, 4)),
        (torch.bfloat16, {"state_dtype": torch.bfloat16}, 3, (True, 2)),
        (torch.bfloat16, {}, 3, (True, 2)),
        (torch.bfloat16, {"master_weights": True}, 3, (True, 2)),
        (torch.float32, {}, 3, None),
    ],
    ids=[
        "bf16-8bit-halfwords",
        "bf16-8bit-words",
        "fp32-8bit-amsgrad",
        "bf16-8bit-decay-maximize",
        "bf16-states-stochastic-words",
        "bf16-fp32-master-words",
        "fp16-8bit-words",
        "bf16-states-halfwords",
        "bf16-halfwords",
        "bf16-exact-master-halfwords",
        "fp32-unaligned-launch",
    ],
)
def test_steps_with_grads_at_unaligned_addresses_change_nothing(monkeypatch, dtype, options, first_numel, grads_kind):
    """Grads laid out as DDP's bucket views are (`gradient_as_bucket_view=True`): one buffer, each grad where the
    last one ended, so every grad after one of a size not a multiple of 8 off the alignment promise: at 4-byte
    boundaries after an even-sized one, 2-byte ones after an odd-sized bfloat16 one. Stepped by the aligned launch
    with its grads read in words (2 bytes past a 4-byte boundary, the two words either side of each pair), or an
    element at a time, where the table sends them there (`grads_kind`; None: nowhere, the unaligned launch steps
    them: float32 grads beside float32 states), as on a GPU, and by the unaligned launch alone, as the interpreter
    does by default; clipped by the inf-norm (a max, the same whatever the launches' blocks; a sum's rounding is
    not): params and every state bitwise equal. No launch, step or grad norm, is promised an alignment its grads do
    not keep (the interpreter would not notice a promise broken: it loads an element at a time whatever the kernel
    promises)."""
    from v0adam import triton_backend

    # Rows of whole 256-element blocks take 8-bit states; the last grad lands 16-byte aligned again (bfloat16).
    shapes = [(first_numel,), (2, 256), (4, 256), (6,), (3, 256)]
    runs, kinds = [], set()
    step_launch, norm_launch = adam_kernel.adam_step, triton_backend.grad_norm_partials

    def grad_addresses(segments, block_segment):
        return segments[block_segment.unique().long(), tables.GRAD_ADDR.value].tolist()

    def recording_step(segments, block_segment, *args, **kwargs):
        kind = (kwargs["aligned"], kwargs["grad_alignment"])
        kinds.add(kind)
        assert not kind[0] or all(address % kind[1] == 0 for address in grad_addresses(segments, block_segment))
        return step_launch(segments, block_segment, *args, **kwargs)

    def recording_norm(segments, block_segment, *args, **kwargs):
        alignment = tables.ALIGN_BYTES.value if kwargs["aligned"] else 1
        assert all(address % alignment == 0 for address in grad_addresses(segments, block_segment))
        return norm_launch(segments, block_segment, *args, **kwargs)

    monkeypatch.setattr(adam_kernel, "adam_step", recording_step)
    monkeypatch.setattr(triton_backend, "grad_norm_partials", recording_norm)
    for split in (True, False):
        monkeypatch.setattr(triton_backend, "SPLIT_UNALIGNED", split)
        params = make_params(shapes, dtype=dtype, device=DEVICE)
        opt = v0adam.V0AdamW(params, lr=0.01, backend="triton", **options)
        for step in range(3):
            bucket = torch.cat([grad.flatten() for grad in gradients(params, step)])
            offset = 0
            for param in params:
                param.grad = bucket[offset : offset + param.numel()].view_as(param)
                offset += param.numel()
            opt.clip_grad_norm_(1.0, norm_type=float("inf"))
            opt.step()
        runs.append((params, opt))
        if split:
            off_promise = {kind for kind in kinds if kind[0] and kind[1] < tables.ALIGN_BYTES.value}
            assert off_promise == ({grads_kind} if grads_kind else set()), kinds
    (split_params, split_opt), (whole_params, whole_opt) = runs
    for p, q in zip(split_params, whole_params):
        assert torch.equal(p, q)
        for key, value in split_opt.state[p].items():
            assert torch.equal(value, whole_opt.state[q][key]), key


@pytest.mark.parametrize("algorithm", ["adam", "radam", "adabound"])
def test_step_scalars_are_the_values_torch_computes_on_the_host(algorithm):
    """Once per step, per param: counters advanced where the mask says (not at all with found_inf), and the
    scalars of its group's step from the new count as torch's optimizers compute them in Python floats, rounded
    once to float32; at step 1e6 too (nothing the step programs do grows with the count). The PyTorch twin equal to
    the kernel bit for bit."""
    from v0adam.kernels.step_scalars import advance_steps, advance_steps_reference

    from v0adam.rules import adabound, adam, radam

    rule = {"adam": adam.RULE, "radam": radam.RULE, "adabound": adabound.RULE}[algorithm]

    groups = [
        dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, maximize=1.0, final_lr=0.1, gamma=1e-3),
        dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, maximize=0.0, final_lr=0.2, gamma=1e-2),
    ]
    hyper = torch.zeros(len(groups), tables.HYPER_FIELDS.value, dtype=torch.float64)
    for row, group in zip(hyper, groups):
        row[tables.LR.value], (row[tables.BETA1.value], row[tables.BETA2.value]) = (
            group["lr"],
            group["betas"],
        )
        row[tables.EPS.value], row[tables.WEIGHT_DECAY.value] = group["eps"], group["weight_decay"]
        row[tables.MAXIMIZE.value], row[tables.DECOUPLED.value] = group["maximize"], 1.0
        row[tables.FINAL_LR.value], row[tables.BASE_LR.value] = group["final_lr"], 1e-3
        row[tables.GAMMA.value] = group["gamma"]
    param_group = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    steps, mask = torch.tensor([0.0, 9.0, 999_999.0, 41.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    scalars = torch.zeros(4, tables.SCALAR_FIELDS.value)
    skipped = steps.clone().to(DEVICE)
    advance_steps(
        skipped,
        mask.to(DEVICE),
        torch.ones(1, device=DEVICE),
        param_group.to(DEVICE),
        hyper.to(DEVICE),
        scalars.to(DEVICE),
        rule,
    )
    assert skipped.tolist() == steps.tolist()
    twin_steps, twin_scalars = steps.clone().to(DEVICE), scalars.clone().to(DEVICE)
    steps, scalars = steps.to(DEVICE), scalars.to(DEVICE)
    advance_steps(steps, mask.to(DEVICE), None, param_group.to(DEVICE), hyper.to(DEVICE), scalars, rule)
    assert steps.tolist() == [1.0, 10.0, 1_000_000.0, 41.0]
    # Its PyTorch twin (what the suite steps through under the interpreter) agrees bit for bit.
    args = (mask.to(DEVICE), None, param_group.to(DEVICE), hyper.to(DEVICE), twin_scalars, rule)
    advance_steps_reference(twin_steps, *args)
    assert torch.equal(twin_steps, steps) and torch.equal(twin_scalars, scalars)
    for index, (step, group_index) in enumerate(zip(steps.tolist(), param_group.tolist())):
        group = groups[group_index]
        beta1, beta2 = group["betas"]
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        expected = {  # by column number: older Triton's constexpr is not hashable
            tables.STEP_SIZE.value: group["lr"] / bc1,
            tables.BIAS_CORRECTION2_SQRT.value: bc2**0.5,
            tables.BIAS_CORRECTION2_SQRT_RECIPROCAL.value: bc2**-0.5,
            tables.ONE_MINUS_BETA2.value: 1 - beta2,
            tables.DECAY_FACTOR.value: 1 - group["lr"] * group["weight_decay"],
            tables.MAXIMIZE_FLAG.value: group["maximize"],
        }
        if algorithm == "radam":
            rho_inf = 2 / (1 - beta2) - 1
            rho_t = rho_inf - 2 * step * beta2**step / bc2
            expected[tables.RECTIFIED.value] = float(rho_t > 5)
            if rho_t > 5:
                rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
                expected[tables.RECTIFICATION.value] = rect
        if algorithm == "adabound":
            final_lr = group["final_lr"] * group["lr"] / 1e-3
            expected[tables.LOWER_BOUND.value] = final_lr * (1 - 1 / (group["gamma"] * step + 1))
            expected[tables.UPPER_BOUND.value] = final_lr * (1 + 1 / (group["gamma"] * step))
        for column, value in expected.items():
            torch.testing.assert_close(
                scalars[index, column].cpu(), torch.tensor(value, dtype=torch.float32), rtol=2**-23, atol=0
            )


@pytest.mark.parametrize("aligned", [True, False])
def test_a_skipped_step_writes_nothing_two_billion_elements_into_a_segment(aligned):
    """With found_inf set, a program's count of elements is negative; 3 * 2**30 elements into a segment, narrowed
    to 32 bits without a clamp, it would wrap to a positive one and the program would step its block. The same
    table without found_inf does step it (the addresses reach real memory)."""
    block, start = 1024, 3 * 2**30  # the program's block begins `start` elements into its segment
    param = torch.randn(block, device=DEVICE)
    grad = torch.randn_like(param)
    exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    row = SegmentRow(param.data_ptr() - 4 * start, grad.data_ptr() - 4 * start, -start, start + block, 0, 0, 0)
    segments = torch.tensor([row._replace(first_block=-(start // block))], dtype=torch.int64, device=DEVICE)
    scalars = torch.zeros(1, tables.SCALAR_FIELDS.value, device=DEVICE)
    for column, value in ((tables.STEP_SIZE, 1e-3), (tables.BETA1_F32, 0.9), (tables.ONE_MINUS_BETA1, 0.1)):
        scalars[0, column.value] = value
    for column, value in ((tables.BETA2_F32, 0.999), (tables.ONE_MINUS_BETA2, 1e-3), (tables.EPS_F32, 1e-8)):
        scalars[0, column.value] = value
    for column in (tables.BIAS_CORRECTION2_SQRT, tables.BIAS_CORRECTION2_SQRT_RECIPROCAL, tables.DECAY_FACTOR):
        scalars[0, column.value] = 1.0
    before = param.clone()

    def step(found_inf: float, grad_alignment: int = tables.ALIGN_BYTES.value if aligned else 1, whole=aligned):
        adam_kernel.adam_step(
            segments,
            torch.zeros(1, dtype=torch.int32, device=DEVICE),
            scalars,
            torch.ones(1, device=DEVICE),
            exp_avg,
            exp_avg_sq,
            None,
            None,
            param_dtype=torch.float32,
            aligned=aligned,
            grad_alignment=grad_alignment,
            whole_vectors=whole,
            block=block,
            num_warps=4,
            found_inf=torch.full((1,), found_inf, device=DEVICE),
        )

    step(found_inf=1.0)
    assert torch.equal(param, before) and not exp_avg.any() and not exp_avg_sq.any()
    step(found_inf=0.0)
    assert not torch.equal(param, before) and exp_avg_sq.all()
    if aligned:  # float32 grads are never 2 bytes past a 4-byte boundary: a launch promising it is refused
        stepped = param.clone()
        with pytest.raises(ValueError, match="cannot be promised an alignment of 2 bytes"):
            step(found_inf=0.0, grad_alignment=2)
        with pytest.raises(ValueError, match="tails takes grads that keep the alignment promise"):
            step(found_inf=0.0, grad_alignment=4, whole=False)  # its grads read as words past the tail
        assert torch.equal(param, stepped)
