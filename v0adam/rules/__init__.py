"""The update rules: Adam and the members of the family the v0 paper initialises (arXiv 2412.02153, Table 1).

A member is one file here (its optimizer class and its `UpdateRule`: kernel id, extra hyperparameters, step-scalar
formulas, PyTorch update, reference) plus its branch of the kernels (`v0adam.kernels.adam`'s ALGORITHM switch and
`v0adam.kernels.step_scalars`). Everything else (flat states, v0, precision modes, the single fused launch) is
shared through V0Adam.
"""
