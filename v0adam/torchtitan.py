"""v0adam's optimizers in torchtitan, PyTorch's large-model trainer, whose optimizer container builds optimizers by
name from a fixed map (Adam, AdamW, DistMuon). `V0OptimizersContainer` is that container with v0adam's names added;
everything else is torchtitan's: its param groups by FQN pattern (each carrying `param_names`), its flat FQN-keyed
state dicts for torch.distributed.checkpoint, its LR schedulers.

    from torchtitan.components.optimizer import ParamGroupConfig
    from v0adam.torchtitan import V0OptimizersContainer

    optimizer = V0OptimizersContainer.Config(
        param_groups=[ParamGroupConfig(pattern=".*", optimizer_name="V0AdamW", optimizer_kwargs={"lr": 3e-4})]
    )

torchtitan creates an optimizer's state before saving or loading a checkpoint by a zero-gradient, lr-0 step when
the optimizer holds none; a v0adam optimizer holds its states from construction, v0 included, so that step never
runs and v0 stays as set. Needs torchtitan (imported here, not by `import v0adam`).
"""

from dataclasses import dataclass

from torchtitan.components.optimizer import OptimizersContainer

from v0adam.family import V0AdaBelief, V0AdaBound, V0RAdam
from v0adam.optimizer import V0Adam, V0AdamW

OPTIMIZERS = {cls.__name__: cls for cls in (V0Adam, V0AdamW, V0AdaBelief, V0RAdam, V0AdaBound)}


class V0OptimizersContainer(OptimizersContainer):
    """torchtitan's OptimizersContainer that also builds "V0Adam", "V0AdamW", "V0AdaBelief", "V0RAdam" and
    "V0AdaBound" (a ParamGroupConfig's `optimizer_name`)."""

    @dataclass(kw_only=True, slots=True)
    class Config(OptimizersContainer.Config):
        pass  # its own class, so that build() makes this container

    @staticmethod
    def _resolve_optimizer_factory(name: str):
        if name in OPTIMIZERS:
            return OPTIMIZERS[name]
        return OptimizersContainer._resolve_optimizer_factory(name)
