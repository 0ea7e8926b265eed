"""bench.counters, the GPU's hardware counters beside the static model (issue #32, item 3): what can be checked
without a GPU, its reading of Nsight Compute's CSV and the names it joins on."""

import re
from pathlib import Path

from bench import counters, launches
from bench.cases import gpu_cases

COLUMNS = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
COLUMNS += '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'


def _row(launch_id: int, kernel: str, metric: str, value: str) -> str:
    fields = [str(launch_id), "7", "python3", "host", kernel, "1", "7", "(128, 1, 1)", "(9000, 1, 1)", "0", "9.0"]
    return ",".join(f'"{field}"' for field in [*fields, "Command line profiler metrics", metric, "", value])


def test_each_launch_of_the_step_is_read_with_every_metric(tmp_path):
    values = dict.fromkeys(counters.METRICS, "1,234.5")
    values["launch__grid_size"] = "9,000"
    lines = ["==PROF== Connected to process 7", '==PROF== Profiling "_adam_step_kernel": 0%....50%....100%', COLUMNS]
    lines += [_row(0, "_adam_step_kernel", metric, value) for metric, value in values.items()]
    lines += [_row(1, "_advance_steps_kernel", metric, "5") for metric in counters.METRICS]  # another kernel
    lines += [_row(2, "_adam_step_kernel", counters.METRICS[0], "80")]  # a launch missing metrics
    lines.append("==PROF== Disconnected from process 7")
    path = tmp_path / "GPT-2_bf16_8-bit.csv"
    path.write_text("\n".join(lines) + "\n")
    (read,) = counters.launches(path)
    assert read["launch__grid_size"] == 9000.0 and read[counters.METRICS[0]] == 1234.5


def test_a_log_without_counters_reads_as_no_launch(tmp_path):
    path = tmp_path / "GPT-2_small_fp32.csv"
    path.write_text("==ERROR== Failed to initialize the profiler\n")
    assert counters.launches(path) == []


def test_every_profiled_case_is_a_benchmark_case_and_a_variant_of_the_static_model():
    names = {case.name for case in gpu_cases(quick=False)}
    configurations = {configuration.name for configuration in launches.CONFIGURATIONS}
    for case, variant in counters.PREDICTED_AS.items():
        assert case in names
        configuration, kernel = variant.split(" / ")
        assert configuration in configurations and kernel in ("step aligned", "step 8-bit aligned")


def test_the_table_puts_each_cases_largest_launch_beside_its_prediction(tmp_path):
    static_csv = tmp_path / "static_model.csv"
    static_csv.write_text("variant,pct_of_copy,issue_pct\nbf16 8-bit / step 8-bit aligned,84.46,89.1\n")
    measured = {"gpu__time_duration.sum": "100,000", "dram__bytes.sum": "400,000,000", "launch__grid_size": "90,000"}
    measured |= {"launch__registers_per_thread": "56", counters.METRICS[0]: "91.3", counters.METRICS[1]: "80.2"}
    small = dict(measured, launch__grid_size="30")  # a launch of the tails
    lines = [COLUMNS] + [_row(0, "_adam_step_kernel", metric, value) for metric, value in measured.items()]
    lines += [_row(1, "_adam_step_kernel", metric, value) for metric, value in small.items()]
    profiled = tmp_path / "GPT-2_bf16_8-bit.csv"
    profiled.write_text("\n".join(lines) + "\n")
    missing = tmp_path / "GPT-2_small_fp32.csv"
    missing.write_text("==ERROR== LibraryNotLoaded\n")
    rows = counters.table(static_csv, [profiled, missing], copy_gbps=4000.0)
    assert rows[2] == "| GPT-2 bf16 8-bit | 90000 programs, 56 registers | 100, 4000 (100.0%), 80.2, 91 | 84.5, 89 |"
    assert rows[3] == "| GPT-2 small fp32 | no counters read (see GPT-2_small_fp32.csv) | | |"


def test_device_check_profiles_each_case_into_a_file_the_report_reads_back_as_that_case():
    script = (Path(__file__).parent.parent / "bench" / "device_check.sh").read_text()
    loop = re.search(r"for case in ((?:\"[^\"]+\" ?)+); do\n\s+profiled\+=\(\"([^\"]+)\"\)", script)
    assert loop, "device_check.sh's ncu loop"
    profiled = re.findall(r"\"([^\"]+)\"", loop.group(1))
    assert sorted(profiled) == sorted(counters.PREDICTED_AS)
    for case in profiled:
        path = Path(loop.group(2).replace("${case// /_}", case.replace(" ", "_")))
        assert counters.case_of(path) == case
