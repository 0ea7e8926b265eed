"""v0adam: a fused Triton Adam/AdamW for PyTorch with a non-zero initial second moment v0."""

from v0adam.family import V0AdaBelief, V0AdaBound, V0RAdam
from v0adam.optimizer import V0Adam, V0AdamW
from v0adam.state_io import dequantized_state_dict
from v0adam.v0_fade import v0_fade_steps
from v0adam.zero import setup_zero

__all__ = [
    "V0Adam",
    "V0AdamW",
    "V0AdaBelief",
    "V0RAdam",
    "V0AdaBound",
    "setup_zero",
    "v0_fade_steps",
    "dequantized_state_dict",
]
__version__ = "0.7.0"
