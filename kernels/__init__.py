"""Triton kernels of v0adam, each beside its launcher. Installed as the subpackage `v0adam.kernels`.

From the repository root (where `python -m pytest` and `python -c` put the current directory first on `sys.path`),
this folder would also be found as the top-level package `kernels`, a name Hugging Face's package owns on PyPI
(transformers and bitsandbytes import it). It must never stand in for that package: imported under that name, it
hands the import on to whatever `kernels` the rest of `sys.path` holds, or fails as if it were not there.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _repository_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _repository_root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None:
        del sys.modules["kernels"]
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    # The import statement returns what sys.modules holds once this file has run: the installed package.
    sys.modules["kernels"] = _module
    try:
        _spec.loader.exec_module(_module)
    except BaseException:
        del sys.modules["kernels"]
        raise
