"""Rows, the printed table, the stamped CSV and the plot. A figure that cannot be a result (a step faster than a
copy of its bytes: its buffers sat in a cache, or it was mistimed; runs too far apart, as on a loaded machine) is
flagged, and printed in parentheses, never as a result."""

import csv
import datetime
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton

# A step moves its bytes at most as fast as an in-place update of a large buffer moves them (on a GPU about a copy's
# speed; a CPU's copy_ also reads the destination before writing it, so in place is faster there): past this margin
# over that limit, the figure measured a cache, or was mistimed.
LIMIT_MARGIN = 1.05
# Past this spread (the runs' interquartile range over their median, %), a time and its speedups are not quoted.
NOISY_SPREAD_PCT = 10.0


@dataclass
class Row:
    case: str
    variant: str
    elements: int
    tensors: int
    bytes_per_element: float  # the minimum traffic of this variant's step
    state_bytes_per_param: float  # measured on the optimizer's state tensors
    ms: float
    gbps: float
    pct_of_copy: float
    v0adam_speedup: float  # this variant's time over v0adam's on the same case (1.0 on v0adam's own row)
    spread_pct: float = float("nan")  # the runs' interquartile range over their median
    note: str = ""  # why a figure of this row is not quoted (see `flag_unquotable`)
    bandwidth_quoted: bool = True
    time_quoted: bool = True
    speedup_quoted: bool = True


def make_row(
    case, variant, bytes_per_element, ms, copy_gbps, state_bytes_per_param=float("nan"), spread_pct=float("nan")
) -> Row:
    gbps = case.numel * bytes_per_element / ms / 1e6
    return Row(
        case.name,
        variant,
        case.numel,
        len(case.shapes),
        bytes_per_element,
        state_bytes_per_param,
        ms,
        gbps,
        100 * gbps / copy_gbps,
        float("nan"),
        spread_pct,
    )


def add_speedups(rows: list[Row], limit_pct: float) -> None:
    """Each row's time over v0adam's on its case, and the figures that cannot be quoted flagged: `limit_pct` is the
    fastest a step can move its bytes, in % of copy (`physical_limit_pct`)."""
    ours = {row.case: row for row in rows if row.variant == "v0adam"}
    for row in rows:
        if row.case in ours:
            row.v0adam_speedup = row.ms / ours[row.case].ms
    for row in rows:
        notes = []
        row.time_quoted = not row.spread_pct > NOISY_SPREAD_PCT
        row.bandwidth_quoted = row.time_quoted and row.pct_of_copy <= limit_pct
        row.speedup_quoted = row.time_quoted and not (row.case in ours and ours[row.case].spread_pct > NOISY_SPREAD_PCT)
        if row.pct_of_copy > limit_pct:
            notes.append(f"above the {limit_pct:.0f}% of copy an in-place update reaches: cache-resident or mistimed")
        if not row.time_quoted:
            notes.append(f"noisy: the middle half of the runs spans {row.spread_pct:.0f}% of the median")
        elif not row.speedup_quoted:
            notes.append("speedup over a noisy v0adam row")
        row.note = "; ".join(notes)


def physical_limit_pct(copy_gbps: float, in_place_gbps: float) -> float:
    return LIMIT_MARGIN * 100 * max(copy_gbps, in_place_gbps) / copy_gbps


def shown(text: str, quotable: bool) -> str:
    """A figure as printed: in parentheses where it is not a result."""
    return text if quotable else f"({text})"


def stamp(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
    }


def format_table(rows: list[Row], copy_gbps: float, info: dict) -> str:
    lines = [
        f"{info['device']} | torch {info['torch']} | triton {info['triton']} | {info['date']}",
        f"measured copy bandwidth: {copy_gbps:.0f} GB/s (read + write)",
        "",
        "| case | variant | ms | spread % | GB/s | % of copy | v0adam speedup | B/element moved | state B/param "
        "| note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.case} | {row.variant} | {shown(f'{row.ms:.3f}', row.time_quoted)} | {row.spread_pct:.0f} | "
            f"{shown(f'{row.gbps:.0f}', row.bandwidth_quoted)} | "
            f"{shown(f'{row.pct_of_copy:.1f}', row.bandwidth_quoted)} | "
            f"{shown(f'{row.v0adam_speedup:.2f}x', row.speedup_quoted)} | {row.bytes_per_element:.3g} | "
            f"{row.state_bytes_per_param:.2f} | {row.note} |"
        )
    if any(row.note for row in rows):
        lines += ["", "(in parentheses): not a result; the note says why."]
    return "\n".join(lines)


def stamped_path(out: Path, info: dict, suffix: str) -> Path:
    """out/<device>_<date><suffix>, the folder made if needed."""
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    return out / f"{slug}_{info['date']}{suffix}"


def save_table(rows: list, info: dict, out: Path, suffix: str, plot) -> tuple[Path, Path]:
    """`rows` (dataclasses) as out/<device>_<date><suffix>.csv, each stamped with `info`, and their plot,
    `plot(rows, info, path)`, beside it as a PNG."""
    base = stamped_path(out, info, suffix)
    csv_path, png_path = base.with_suffix(".csv"), base.with_suffix(".png")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])) + list(info))
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), **info})
    plot(rows, info, png_path)
    return csv_path, png_path


def plot_per_model(rows: list, path: Path, title: str, panel_size: tuple[float, float], draw) -> None:
    """One panel per model of `rows` (their `model` field, in order of first appearance), drawn by
    `draw(axis, model, its rows)`, saved as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_names = list(dict.fromkeys(row.model for row in rows))
    width, height = panel_size
    figure, axes = plt.subplots(1, len(model_names), figsize=(width * len(model_names), height), squeeze=False)
    for axis, model in zip(axes[0], model_names):
        draw(axis, model, [row for row in rows if row.model == model])
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def save(rows: list[Row], copy_gbps: float, info: dict, out: Path) -> tuple[Path, Path]:
    base = stamped_path(out, info, "")
    csv_path, png_path = base.with_suffix(".csv"), base.with_suffix(".png")
    with open(csv_path, "w", newline="") as handle:
        fields = list(asdict(rows[0])) + ["copy_gbps"] + list(info)
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), "copy_gbps": round(copy_gbps, 1), **info})
    _plot(rows, copy_gbps, info, png_path)
    return csv_path, png_path


def _plot(rows: list[Row], copy_gbps: float, info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(row.case for row in rows))
    variants = list(dict.fromkeys(row.variant for row in rows))
    width = 0.8 / len(variants)
    figure, axes = plt.subplots(figsize=(max(8, 1.4 * len(cases)), 4.5))
    for index, variant in enumerate(variants):
        values = {row.case: row.gbps for row in rows if row.variant == variant}
        positions = [position + index * width for position in range(len(cases))]
        axes.bar(positions, [values.get(case, 0.0) for case in cases], width, label=variant)
    axes.axhline(copy_gbps, color="black", linestyle="--", linewidth=1, label="copy bandwidth")
    axes.set_xticks([position + 0.4 - width / 2 for position in range(len(cases))], cases, rotation=20, ha="right")
    axes.set_ylabel("GB/s (minimum bytes of the step)")
    axes.set_title(f"Adam step throughput, {info['device']}, torch {info['torch']}, triton {info['triton']}")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
