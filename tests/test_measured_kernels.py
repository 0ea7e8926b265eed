"""The binaries the committed H200 rows measured (`bench.measured`), which the static model is calibrated on, and
the main path it reads from them: a loop run as often as at the timed step, a run-time switch off."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import measured, sass  # noqa: E402
from bench.sass import Instruction  # noqa: E402


def at(index: int, opcode: str, operands: str = "", predicate: str = "") -> Instruction:
    return Instruction(16 * index, predicate, opcode, operands)


# A loop of 3 instructions, a branch over a 128-bit load and its store, a branch over a slow-path call.
LISTING = [
    at(0, "MOV"),
    at(1, "FMUL"),  # loop body: 1-3
    at(2, "IADD3"),
    at(3, "BRA", "0x10", "@P0"),
    at(4, "BRA", "0x70", "@!P1"),
    at(5, "LDG.E.128", "", "@!P2"),
    at(6, "STG.E.128", "", "@!P2"),
    at(7, "BRA", "0x90", "@!P3"),
    at(8, "CALL.REL.NOINC", "0xb0"),
    at(9, "EXIT"),
    at(10, "BRA", "0xa0"),
    at(11, "RET.REL.NODEC", "R2 0x0"),
]


def test_a_loop_runs_as_often_as_asked_and_its_body_is_counted_once():
    once, five = sass.main_path(LISTING), sass.main_path(LISTING, iterations=5)
    assert once.loop_bodies == five.loop_bodies == (3,)
    assert five.instructions == once.instructions + 4 * 3
    assert five.indices[:14] == (0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1)


def test_a_switch_over_loads_falls_through_when_on_and_is_taken_when_off():
    """The common case skips the slow-path call either way; the branch over the load and store is taken only when
    the switch is off (an AMSGrad flag a row did not set)."""
    on, off = sass.main_path(LISTING), sass.main_path(LISTING, switches_on=False)
    assert on.indices == (0, 1, 2, 3, 4, 5, 6, 7, 9)
    assert off.indices == (0, 1, 2, 3, 4, 7, 9)


def test_every_committed_row_has_the_binary_it_measured():
    from bench import static

    rows = static.measured_rows()
    shapes = {(row.dtype, row.block, row.num_warps) for row in rows}
    assert shapes == {(dtype, *shape) for dtype, listed in measured.SHAPES.items() for shape in listed}
    for dtype, block, num_warps in shapes:
        binary = measured.cubin(dtype, block, num_warps)
        assert binary.startswith(b"\x7fELF") and b"_adam_step_kernel" in binary and b"sm_90" in binary


def test_the_measured_kernel_runs_its_power_loops_and_its_amsgrad_switch():
    """The kernel of 2026-11-26 computed beta1 ** step and beta2 ** step by squaring in every program (two loops of
    5 iterations at the timed steps), and read max v after the update where a group had AMSGrad: 2 data loads and
    2 stores a thread more, after the first wait for data (a second DRAM round trip)."""
    from bench import issue, static

    plain = static.analyse_measured("fp32", 1024, 4, False)
    amsgrad = static.analyse_measured("fp32", 1024, 4, True)
    assert len(plain["path"].loop_bodies) == 2
    once = static.read_cubin(measured.cubin("fp32", 1024, 4), switches_on=False)["path"]
    assert plain["path"].instructions == once.instructions + (measured.POWER_LOOP_ITERATIONS - 1) * sum(
        once.loop_bodies
    )

    def data_loads(result):
        return sum(issue.is_data_load(instruction) for instruction in result["issued"])

    def stores(result):
        return sum(instruction.base == "STG" for instruction in result["issued"])

    assert data_loads(amsgrad) == data_loads(plain) + 2 and stores(amsgrad) == stores(plain) + 2
    assert issue.dram_round_trips(plain["issued"]) == 1 and issue.dram_round_trips(amsgrad["issued"]) == 2


def test_rebuilding_them_takes_the_triton_they_were_compiled_with():
    import triton

    if triton.__version__ == measured.TRITON_VERSION:
        pytest.skip("this Triton is the one they were compiled with: the rebuild would run")
    before = {path: path.stat().st_mtime_ns for path in measured.DIRECTORY.iterdir()}
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.measured"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 1 and f"triton {measured.TRITON_VERSION}" in result.stderr
    assert {path: path.stat().st_mtime_ns for path in measured.DIRECTORY.iterdir()} == before
