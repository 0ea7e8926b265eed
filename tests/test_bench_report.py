"""The benchmark runner's arithmetic, table and files, checked on any machine (no GPU needed)."""

import csv

import pytest
import torch

from bench import cases, report


def test_bytes_per_element_match_the_spec_table():
    assert cases.bytes_per_element(torch.float32, torch.float32, amsgrad=False) == 28
    assert cases.bytes_per_element(torch.float32, torch.float32, amsgrad=True) == 36
    assert cases.bytes_per_element(torch.bfloat16, torch.float32, amsgrad=False) == 22
    assert cases.bytes_per_element(torch.bfloat16, torch.bfloat16, amsgrad=False) == 14
    assert cases.bytes_per_element(torch.bfloat16, torch.float32, amsgrad=False, master=True) == 28


def test_model_shapes_have_the_published_sizes():
    assert len(cases.gpt2_small_shapes()) == 148
    assert cases.Case("gpt2", cases.gpt2_small_shapes()).numel == 124_439_808
    assert 1.2e9 < cases.Case("llama", cases.llama_1b_shapes()).numel < 1.3e9


def test_rows_speedups_table_and_csv(tmp_path):
    case = cases.Case("fp32 1M", ((2**20,),))
    rows = [report.make_row(case, "v0adam", 28, 0.5, 1000.0), report.make_row(case, "torch fused", 28, 1.0, 1000.0)]
    report.add_speedups(rows)
    assert rows[0].gbps == pytest.approx(2**20 * 28 / 0.5 / 1e6)
    assert rows[0].pct_of_copy == pytest.approx(100 * rows[0].gbps / 1000.0)
    assert rows[1].v0adam_speedup == pytest.approx(2.0)
    info = {"device": "Test GPU", "torch": "t", "triton": "x", "date": "2026-01-01"}
    table = report.format_table(rows, 1000.0, info)
    assert "| fp32 1M | torch fused | 1.000 | 29 | 2.9 | 2.00x |" in table
    csv_path, png_path = report.save(rows, 1000.0, info, tmp_path)
    assert csv_path.name == "test-gpu_2026-01-01.csv" and png_path.exists()
    with open(csv_path) as handle:
        saved = list(csv.DictReader(handle))
    assert saved[1]["variant"] == "torch fused" and saved[1]["device"] == "Test GPU"
