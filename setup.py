from setuptools import setup

setup(
    name="v0adam",
    version="0.7.0",
    description="Fused Triton Adam/AdamW for PyTorch with a non-zero initial second moment v0 (arXiv 2412.02153)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    python_requires=">=3.11",  # the only Python the suite has run on
    # The kernels live in kernels/ but install as v0adam.kernels: a top-level `kernels` package exists on PyPI.
    packages=["v0adam", "v0adam.rules", "v0adam.kernels"],
    package_dir={"v0adam": "v0adam", "v0adam.kernels": "kernels"},
    # The oldest releases the whole suite passed on (README, "Install"): torch 2.9.1 with triton 3.5.1.
    install_requires=["torch>=2.9", "triton>=3.5", "tqdm"],
    extras_require={
        "test": ["pytest", "expecttest", "hypothesis", "numpy", "matplotlib"],
        # The frameworks tests/test_frameworks.py trains under (on the CPU, against torch.optim.AdamW).
        "integration": ["transformers>=4.40,<6", "accelerate>=0.26,<2", "lightning>=2.2,<3"],
        "bench": ["pytest-benchmark", "matplotlib"],
        # The 8-bit optimizers the benchmark and examples/eight_bit_quality.py compare with, where they run.
        "compare": ["torchao>=0.10", "bitsandbytes>=0.45"],
        "dev": ["ruff"],
    },
)
