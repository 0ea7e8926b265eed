"""Triton kernels of v0adam, each beside its launcher. Installed as the subpackage `v0adam.kernels`."""
