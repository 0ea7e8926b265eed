"""The one-scheduler issue simulation of the static model (`bench.issue`), on hand-made instruction streams: what
it says a pipe, the issue slot, a stall count and a scoreboard cost."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.issue import dram_round_trips, simulate  # noqa: E402
from bench.sass import Instruction  # noqa: E402


def stream(opcode: str, count: int, stall: int = 1, **control) -> list[Instruction]:
    return [Instruction(16 * index, "", opcode, "", stall=stall, **control) for index in range(count)]


def test_integer_logic_instructions_issue_at_half_a_warp_instruction_per_cycle():
    result = simulate(stream("LOP3.LUT", 400), warps=8, dram_cycles=500)
    assert result.issue_pct == pytest.approx(50, rel=0.02)
    assert result.busiest_pipe == "alu" and result.busiest_pipe_pct == pytest.approx(100, rel=0.02)


def test_float32_arithmetic_uses_both_fma_pipes_and_issues_every_cycle():
    result = simulate(stream("FFMA", 400), warps=8, dram_cycles=500)
    assert result.issue_pct == pytest.approx(100, rel=0.02)


def test_one_warp_waits_out_its_stall_counts_and_more_warps_hide_them():
    alone = simulate(stream("FFMA", 400, stall=4), warps=1, dram_cycles=500)
    assert alone.issue_pct == pytest.approx(25, rel=0.02)
    four = simulate(stream("FFMA", 400, stall=4), warps=4, dram_cycles=500)
    assert four.issue_pct == pytest.approx(100, rel=0.02)


def test_a_data_load_holds_the_instruction_that_waits_for_its_scoreboard():
    load = Instruction(0, "@!P0", "LDG.E.128", "", stall=1, write_barrier=0)
    use = Instruction(16, "", "FFMA", "", stall=1, wait_mask=0b1)
    path = [load, use]
    slow, fast = (simulate(path, warps=1, dram_cycles=cycles) for cycles in (1000, 200))
    # One program at a time: a pass takes the load's latency, whatever the few instructions around it.
    assert 1 / slow.programs_per_cycle == pytest.approx(1000, rel=0.01)
    assert 1 / fast.programs_per_cycle == pytest.approx(200, rel=0.05)


def test_a_scoreboard_is_released_by_the_last_of_its_instructions_to_complete():
    """The compiler lets a table load (an L2 hit) share a scoreboard with data loads (from DRAM): what waits for it
    waits for them all. The short load issued last must not release the scoreboard before the data arrives."""
    data = Instruction(0, "@!P0", "LDG.E.128", "", stall=1, write_barrier=0)
    table = Instruction(16, "", "LDG.E", "", stall=1, write_barrier=0)
    use = Instruction(32, "", "FFMA", "", stall=1, wait_mask=0b1)
    result = simulate([data, table, use], warps=1, dram_cycles=1000)
    assert 1 / result.programs_per_cycle == pytest.approx(1000, rel=0.01)


def test_dram_round_trips_count_the_data_waits_in_a_row():
    """Loads issued together are one round trip however they are waited for; a load issued after a wait for data
    is another, also when what waits for it only shares its scoreboard (a table value sharing one with data)."""

    def data(barrier):
        return Instruction(0, "@!P0", "LDG.E.128", "", write_barrier=barrier)

    def wait(mask):
        return Instruction(0, "", "FFMA", "", wait_mask=mask)

    table = Instruction(0, "", "LDG.E", "", write_barrier=1)
    assert dram_round_trips([data(0), data(1), wait(0b1), wait(0b10)]) == 1
    assert dram_round_trips([data(0), wait(0b1), data(1), wait(0b10)]) == 2
    assert dram_round_trips([data(0), table, wait(0b10), data(2), wait(0b100)]) == 1
    assert dram_round_trips([data(1), table, wait(0b10), data(2), wait(0b100)]) == 2
    assert dram_round_trips([table, wait(0b10)]) == 0
