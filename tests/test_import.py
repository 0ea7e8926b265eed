"""What `import v0adam` and the name `kernels` do, each in a fresh interpreter.

The repository's top-level `kernels/` folder installs as `v0adam.kernels`; from the repository root, where
`python -m pytest` and `python -c` put it first on sys.path, it must never stand in for the `kernels` package
Hugging Face publishes (transformers and bitsandbytes import it). And `import v0adam` leaves the compiler and DTensor
support to the programs that use them (`python -m bench.import_time` measures what that saves)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def import_kernels(*interpreter_flags, cwd=REPOSITORY_ROOT, pythonpath=None):
    """`import kernels` in a fresh interpreter, by default from the repository root; PYTHONPATH only as given (a
    run of the suite from a checkout on PYTHONPATH would put the folder on every path)."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    if pythonpath:
        environment["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, *interpreter_flags, "-c", "import kernels; print(kernels.__file__)"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
    )


def test_an_installed_kernels_package_wins_over_the_repository_folder(tmp_path):
    installed = tmp_path / "site" / "kernels"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("CUDAProperties = 'the installed package'\n")
    result = import_kernels(pythonpath=tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == installed / "__init__.py"


def test_without_an_installed_kernels_package_the_name_is_not_found_from_the_root():
    # -S: no site-packages, so no installed `kernels` whatever this environment holds.
    result = import_kernels("-S")
    assert result.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in result.stderr


def test_the_environment_kernels_package_is_the_one_found_from_the_root(tmp_path):
    elsewhere = import_kernels(cwd=tmp_path)
    if elsewhere.returncode != 0:
        pytest.skip("no `kernels` package is installed here (the integration extra brings one with transformers)")
    result = import_kernels()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == elsewhere.stdout.strip()


def test_import_v0adam_leaves_the_compiler_and_dtensors_to_those_who_use_them():
    heavy = ["torch._dynamo", "torch.distributed.tensor", "v0adam.traced_ops"]
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, v0adam; print([m for m in {heavy!r} if m in sys.modules])"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
