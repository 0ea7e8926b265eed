"""The master a bucket keeps for its 16-bit params, the float32 value the optimizer updates (the param is its
rounding): none, an int16 remainder beside a bfloat16 param (`v0adam.master_remainder`), or a float32 copy. Each
kind says its state key and dtype and how it reads, writes and starts its slot; nothing tests which kind it is."""

from dataclasses import dataclass

import torch

from v0adam.master_remainder import REMAINDER_DTYPE, join_master, split_master


@dataclass(frozen=True)
class NoMaster:
    """The param is its own master (float32 and float64 params, and 16-bit ones without master_weights)."""

    key = None
    dtype = None
    name = "none"

    def start_(self, param: torch.Tensor, slot) -> None:
        pass

    def read(self, param: torch.Tensor, slot) -> torch.Tensor:
        return param.to(torch.float32, copy=True)

    def write_(self, param: torch.Tensor, slot, master: torch.Tensor) -> None:
        raise TypeError("a param without a master has no master to write")


@dataclass(frozen=True)
class CopyMaster:
    """A float32 copy of each param (float16 params, or master_weights="fp32")."""

    key = "master_param"
    dtype = torch.float32
    name = "float32 copy"

    def start_(self, param: torch.Tensor, slot: torch.Tensor) -> None:
        slot.copy_(param)

    def read(self, param: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return slot.clone()

    def write_(self, param: torch.Tensor, slot: torch.Tensor, master: torch.Tensor) -> None:
        """A copy leaves the param as it is."""
        slot.copy_(master)


@dataclass(frozen=True)
class RemainderMaster:
    """The low 16 bits of a bfloat16 param's float32 master; the param holds the high ones (zeros: the master is the
    param)."""

    key = "param_remainder"
    dtype = REMAINDER_DTYPE
    name = "int16 remainder"

    def start_(self, param: torch.Tensor, slot: torch.Tensor) -> None:
        pass  # the zero remainder the buffer starts with

    def read(self, param: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return join_master(param, slot)

    def write_(self, param: torch.Tensor, slot: torch.Tensor, master: torch.Tensor) -> None:
        """The remainder needs the param to be the master's rounding, so that is written too."""
        rounded, remainder = split_master(master)
        param.copy_(rounded)
        slot.copy_(remainder)


# Every kind that keeps a state, by its key: a checkpoint may hold the other kind, which loads converted.
MASTER_KEYS = (CopyMaster.key, RemainderMaster.key)
