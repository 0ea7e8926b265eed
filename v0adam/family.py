"""The rest of the family the v0 paper initialises (arXiv 2412.02153, Table 1): AdaBelief, RAdam and AdaBound,
each the same optimizer class, flat states, v0 strategies, precision modes and single fused launch as V0Adam, with
its own update rule (`v0adam.rules`). v0 starts the second-moment state: AdaBelief's s0, RAdam's v0 (it matters
from the first rectified step on), AdaBound's v0.
"""

from v0adam.rules.adabelief import V0AdaBelief
from v0adam.rules.adabound import V0AdaBound
from v0adam.rules.radam import V0RAdam

__all__ = ["V0AdaBelief", "V0AdaBound", "V0RAdam"]
