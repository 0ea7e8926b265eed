"""The benchmark runner's arithmetic, table and files, checked on any machine (no GPU needed)."""

import csv

import pytest
import torch

from bench import cases, models, report, training_memory


def test_bytes_per_element_match_the_spec_table():
    assert cases.bytes_per_element(torch.float32, torch.float32, amsgrad=False) == 28
    assert cases.bytes_per_element(torch.float32, torch.float32, amsgrad=True) == 36
    assert cases.bytes_per_element(torch.bfloat16, torch.float32, amsgrad=False) == 22
    assert cases.bytes_per_element(torch.bfloat16, torch.bfloat16, amsgrad=False) == 14
    assert cases.bytes_per_element(torch.bfloat16, torch.float32, amsgrad=False, master_weights="fp32") == 28
    assert cases.bytes_per_element(torch.float16, torch.float32, amsgrad=False, master_weights=True) == 28
    # The remainder master: the param read back, 2 bytes read and written beside it.
    assert cases.bytes_per_element(torch.bfloat16, torch.float32, amsgrad=False, master_weights=True) == 26
    # 8-bit states: a byte per element and state, plus a float32 scale per 256 elements.
    assert cases.bytes_per_element(torch.float32, torch.uint8, amsgrad=False) == pytest.approx(16 + 4 * 4 / 256)
    assert cases.bytes_per_element(torch.bfloat16, torch.uint8, amsgrad=False) == pytest.approx(10 + 4 * 4 / 256)


def test_model_shapes_have_the_published_sizes():
    assert len(cases.gpt2_small_shapes()) == 148
    assert cases.Case("gpt2", cases.gpt2_small_shapes()).numel == 124_439_808
    assert 1.2e9 < cases.Case("llama", cases.llama_1b_shapes()).numel < 1.3e9


def test_rows_speedups_table_and_csv(tmp_path):
    case = cases.Case("fp32 1M", ((2**20,),))
    rows = [
        report.make_row(case, "v0adam", 16.0625, 0.5, 1000.0, 2.03125),
        report.make_row(case, "torch fused", 28, 1.0, 1000.0, 8.0),
    ]
    report.add_speedups(rows, 105.0)
    assert rows[0].gbps == pytest.approx(2**20 * 16.0625 / 0.5 / 1e6)
    assert rows[0].pct_of_copy == pytest.approx(100 * rows[0].gbps / 1000.0)
    assert rows[1].v0adam_speedup == pytest.approx(2.0)
    info = {"device": "Test GPU", "torch": "t", "triton": "x", "date": "2026-01-01"}
    table = report.format_table(rows, 1000.0, info)
    assert "| fp32 1M | torch fused | 1.000 | nan | 29 | 2.9 | 2.00x | 28 | 8.00 |  |" in table
    assert "| fp32 1M | v0adam | 0.500 | nan | 34 | 3.4 | 1.00x | 16.1 | 2.03 |  |" in table
    assert "not a result" not in table
    csv_path, png_path = report.save(rows, 1000.0, info, tmp_path)
    assert csv_path.name == "test-gpu_2026-01-01.csv" and png_path.exists()
    with open(csv_path) as handle:
        saved = list(csv.DictReader(handle))
    assert saved[1]["variant"] == "torch fused" and saved[1]["device"] == "Test GPU"


def test_a_figure_beyond_copy_or_too_noisy_is_flagged_not_printed_as_a_result():
    """As a loaded 2-core CPU printed them: a 1M-element step at 468% of copy (its buffers sat in a cache) and a
    speedup of 0.28x from runs far apart."""
    info = {"device": "CPU", "torch": "t", "triton": "x", "date": "d"}
    small, large = cases.Case("fp32 1M", ((2**20,),)), cases.Case("fp32 64M", ((2**26,),))
    copy_gbps = 2**20 * 28 / 0.1 / 1e6 / 4.681  # a 0.1 ms step of 1M elements is then 468.1% of copy
    rows = [
        report.make_row(small, "v0adam", 28, 0.1, copy_gbps, spread_pct=3.0),
        report.make_row(large, "v0adam", 28, 400.0, copy_gbps, spread_pct=2.0),
        report.make_row(large, "torch fused", 28, 112.0, copy_gbps, spread_pct=40.0),
    ]
    report.add_speedups(rows, 105.0)
    assert rows[0].note.startswith("above the 105% of copy an in-place update reaches") and not rows[1].note
    assert rows[2].note == "noisy: the middle half of the runs spans 40% of the median"
    table = report.format_table(rows, copy_gbps, info)
    assert "| (468.1) |" in table and "| 468.1 |" not in table and "| 0.100 |" in table
    assert "| (0.28x) |" in table and "| (112.000) |" in table and "| 400.000 |" in table
    assert "(in parentheses): not a result" in table
    noisy_ours = [
        report.make_row(large, "v0adam", 28, 100.0, copy_gbps, spread_pct=30.0),
        report.make_row(large, "torch fused", 28, 200.0, copy_gbps, spread_pct=1.0),
    ]
    report.add_speedups(noisy_ours, 105.0)
    assert noisy_ours[1].note == "speedup over a noisy v0adam row"
    assert "| (2.00x) |" in report.format_table(noisy_ours, copy_gbps, info)


def test_the_physical_limit_is_an_in_place_update_of_a_large_buffer():
    assert report.physical_limit_pct(3000.0, 2950.0) == pytest.approx(105.0)  # a GPU: in place about a copy
    assert report.physical_limit_pct(25.0, 39.0) == pytest.approx(1.05 * 156)  # a CPU's copy_ reads its target first


def test_a_training_row_whose_optimizer_share_is_within_the_noise_is_not_quoted():
    from bench import training

    def row(loop, iteration_ms, optimizer_spread_pct):
        return training.TrainingRow(
            "gpt2", loop, 124_000_000, 148, "8x64", iteration_ms, 900.0, iteration_ms - 900.0, 50.0, 28, 2.0,
            optimizer_spread_pct,
        )  # fmt: skip

    info = {"device": "CPU", "torch": "t", "triton": "x", "date": "d"}
    table = training.format_table([row("torch fused", 1000.0, 4.0), row("v0adam", 950.0, 60.0)], info)
    assert "| 100.00 | 4 | (1.00x) |" not in table and "| 100.00 | 4 | 1.00x |" in table
    assert "| (50.00) | 60 | (2.00x) |" in table and "(in parentheses): not a result" in table


def test_timing_reports_the_spread_of_its_runs():
    import time

    from bench import timing

    durations = iter([0.0] * 3 + [0.001, 0.001, 0.001, 0.005])  # warmup, then three steady runs and an outlier
    timed = timing.measure(lambda: time.sleep(next(durations)), torch.device("cpu"), steps=4, warmup=3)
    assert timed.median_ms >= 1.0 and timed.spread_pct > 10


def test_training_models_have_the_counted_params_and_tensors():
    from bench import models

    for config in (models.GPT2_SMALL_NARROW, models.LLAMA_NARROW):
        model = models.build(config)
        assert sum(param.numel() for param in model.parameters()) == models.param_count(config)
    with torch.device("meta"):  # shapes only: 124M params
        gpt2 = models.build(models.GPT2_SMALL)
        llama = models.build(models.LLAMA_SIZES[-1])
    assert len(list(gpt2.parameters())) == len(list(models.build(models.GPT2_SMALL_NARROW).parameters())) == 148
    assert sum(param.numel() for param in gpt2.parameters()) == models.param_count(models.GPT2_SMALL) == 124_439_808
    assert sum(param.numel() for param in llama.parameters()) == models.param_count(models.LLAMA_SIZES[-1])
    assert 1.2e9 < models.param_count(models.LLAMA_SIZES[-1]) < 1.3e9


def test_training_benchmark_runs_and_writes_only_where_asked(tmp_path, monkeypatch):
    from bench import models, training

    # A one-layer model: the runner's own CPU models have up to 148 tensors, slow in the Triton interpreter. Width
    # 256, whose rows take 8-bit states; a narrower model has no 8-bit loop.
    tiny = models.Config("tiny", "llama", vocab=64, context=16, dim=256, layers=1, heads=2, kv_heads=1, hidden=512)
    assert "v0adam 8-bit" not in {loop.name for loop in training.loops_for(models.LLAMA_NARROW)}
    monkeypatch.setattr(training, "configs_for", lambda device, quick: [(tiny, 2, 8)])
    monkeypatch.chdir(tmp_path)  # a plain run writes nothing, here or under bench/results
    rows, info = training.run(torch.device("cpu"), quick=True, iterations=1, out=None)
    assert {row.loop for row in rows} == {loop.name for loop in training.LOOPS} and not list(tmp_path.iterdir())
    assert all(row.optimizer_ms == pytest.approx(row.iteration_ms - row.forward_backward_ms) for row in rows)
    assert {row.loop: row.bytes_per_element for row in rows} == {
        "torch fused": 40,
        "torch default": 40,
        "v0adam": 32,
        "v0adam flat_grads": 48,
        "v0adam 8-bit": pytest.approx(4 + 16 + 4 * 4 / 256),
    }
    info = {"device": "Test CPU", "torch": "t", "triton": "x", "date": "2026-01-01"}
    csv_path, png_path = training.save(rows, info, tmp_path)
    assert csv_path.name == "test-cpu_2026-01-01_training.csv" and png_path.exists()
    with open(csv_path) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)


def test_the_memory_benchmark_reads_each_part_of_the_training_state(tmp_path):
    """Measured on a small model: the parts are what each mode keeps, and the peak holds at least the state."""
    config = models.Config("tiny", "gpt2", vocab=64, context=64, dim=256, layers=1, heads=2)
    modes = {mode.name: mode for mode in training_memory.MODES}
    device = torch.device("cpu")
    fp32 = training_memory.measure(config, modes["torch AdamW fp32"], device)
    assert (fp32.params_bytes, fp32.master_bytes, fp32.grads_bytes, fp32.states_bytes) == (4, 0, 4, 8)
    lean = training_memory.measure(config, modes["v0adam bf16 master 8-bit release"], device)
    # Slots padded to whole quantization blocks; a float32 scale per 256 states.
    assert 2 <= lean.params_bytes == lean.master_bytes < 2.5 and lean.grads_bytes == 0
    assert 2 + 8 / 256 <= lean.states_bytes < 2.5
    for row in (fp32, lean):
        assert row.peak_bytes >= row.params_bytes + row.master_bytes + row.states_bytes
    assert lean.peak_mb < fp32.peak_mb
    info = report.stamp(device)
    assert "v0adam bf16 master 8-bit release" in training_memory.format_table([fp32, lean], info)
    csv_path, png_path = training_memory.save([fp32, lean], info, tmp_path)
    with open(csv_path) as handle:
        assert [row["mode"] for row in csv.DictReader(handle)] == [fp32.mode, lean.mode]
    assert png_path.stat().st_size > 0
