"""The shape the package keeps (docs/design.md, "How one step flows"): small files with one job, the backend
chosen in one place, and whether torch.compile traces asked at the step's entry points only."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = sorted([*(ROOT / "v0adam").rglob("*.py"), *(ROOT / "kernels").glob("*.py")])


def _code(path: Path) -> str:
    """The file without its comments and strings' contents (docstrings name things they do not do)."""
    text = re.sub(r'"""(.|\n)*?"""', '""""""', path.read_text())
    return re.sub(r"#.*", "", text)


def test_no_file_of_the_package_is_over_450_lines_and_the_optimizer_class_over_400():
    lengths = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in PACKAGE}
    assert lengths["v0adam/optimizer.py"] <= 400
    assert {name: length for name, length in lengths.items() if length > 450} == {}


def test_a_backend_name_is_compared_in_one_place():
    """`Backends.for_bucket` reads the backend asked for; everything else asks the bucket's backend."""
    comparing = re.compile(r"""[=!]=\s*["'](?:triton|torch|auto)["']|["'](?:triton|torch|auto)["']\s*[=!]=""")
    places = [path.relative_to(ROOT).as_posix() for path in PACKAGE if comparing.search(_code(path))]
    assert places == ["v0adam/backends.py"]


def test_whether_torch_compile_traces_is_asked_at_the_entry_points_only():
    """step, clip_grad_norm_ and zero_grad ask once and tell everything they call."""
    calls = {
        path.relative_to(ROOT).as_posix(): _code(path).count("is_compiling(")
        for path in PACKAGE
        if "is_compiling(" in _code(path)
    }
    assert calls == {"v0adam/optimizer.py": 2, "v0adam/torch_contract.py": 1}
