"""DTensor params (FSDP2's `fully_shard`, tensor parallelism): the optimizer steps each rank's local shard.

A DTensor param is never re-homed, its storage belongs to FSDP; its local shard is stepped through its address
like any param that lives outside the flat buffers, and its states are local slots of the flat state buffers,
shown to users (and to torch.distributed.checkpoint) as DTensors with the param's layout.
"""

import math

import torch
import torch.distributed as dist


def is_dtensor(tensor) -> bool:
    # torch.distributed.tensor is imported by whoever makes a DTensor, not here: it would add half a second to
    # `import v0adam`. Until it is imported (or in a torch without torch.distributed) no tensor is a DTensor.
    dtensor_module = getattr(torch.distributed, "tensor", None)
    return dtensor_module is not None and isinstance(tensor, dtensor_module.DTensor)


def layout_of(tensor: torch.Tensor):
    """(device mesh, placements) of a DTensor, None for any other tensor: params that share it share a bucket."""
    return (tensor.device_mesh, tuple(tensor.placements)) if is_dtensor(tensor) else None


def shard_groups(param: torch.Tensor) -> list:
    """The process groups along the mesh dims that params laid out like the DTensor `param` are sharded over: a
    partial gradient norm over this rank's shards, reduced over each of them, is the norm's partial over the whole
    params."""
    return [param.device_mesh.get_group(dim) for dim, placement in enumerate(param.placements) if placement.is_shard()]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of `tensor`: the local shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def like_param(param: torch.Tensor, local_view: torch.Tensor, shape=None) -> torch.Tensor:
    """`local_view` (this rank's values) shown with the layout of `param`: a DTensor sharing its storage when the
    param is one, else the view itself. `shape`, when given, is the whole tensor's (contiguous), for a tensor of
    another shape cut along the first dim where the param is (8-bit states' block scales, a row per param row)."""
    if not is_dtensor(param):
        return local_view
    from torch.distributed.tensor import DTensor

    stride = param.stride() if shape is None else torch.empty(shape, device="meta").stride()
    shape = param.shape if shape is None else torch.Size(shape)
    return DTensor.from_local(
        local_view, param.device_mesh, param.placements, run_check=False, shape=shape, stride=stride
    )


def _local_box(param: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offset of its first element along each dim) of a DTensor param."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return tuple(shape), tuple(offset)


def is_one_run(box: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a box of extents `box`, cut from a tensor of `shape`, is one run of its row-major flattening: the
    dims after the last cut dim are whole and those before it hold one index each (or the box is empty)."""
    cut = [dim for dim, (size, full) in enumerate(zip(box, shape)) if size != full]
    return not cut or math.prod(box) == 0 or math.prod(box[: cut[-1]]) == 1


def global_element_offset(param: torch.Tensor) -> int:
    """Index, in the row-major flattening of the whole param, of this rank's first element.

    Defined when the local shard is one contiguous run of that flattening (FSDP2's default Shard(0), replicas);
    raises ValueError otherwise, e.g. for a Shard(1) layout.
    """
    if not is_dtensor(param):
        return 0
    from torch.distributed.tensor import Replicate, Shard

    if not all(isinstance(p, (Shard, Replicate)) for p in param.placements):
        raise ValueError(f"unsupported DTensor placements {param.placements}")
    shape, offset = _local_box(param)
    if not is_one_run(shape, tuple(param.shape)):
        raise ValueError(
            f"the local shard of a DTensor param with placements {param.placements} is not a contiguous part of the "
            "param; random v0 needs shards along dim 0 (FSDP2's default)"
        )
    return sum(o * math.prod(param.shape[d + 1 :]) for d, o in enumerate(offset))


def local_part(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """This rank's part of a value shaped like `param`: for a DTensor param, the local shard of a DTensor value
    (checked to have the param's layout) or the matching slice of a whole plain tensor; for a plain param, the
    whole value (gathered from all ranks if it is a DTensor)."""
    if not is_dtensor(param):
        return value.full_tensor() if is_dtensor(value) else value
    if is_dtensor(value):
        if value.placements != param.placements or value.device_mesh != param.device_mesh:
            raise ValueError(
                f"a DTensor with placements {value.placements} cannot be loaded into a param sharded as "
                f"{param.placements}"
            )
        return value.to_local()
    shape, offset = _local_box(param)
    index = tuple(slice(o, o + s) for o, s in zip(offset, shape))
    return value[index]


def local_rows(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`local_part` of a value cut along the first dim where `param` is, whatever its other dims are (8-bit
    states' block scales, a row per param row)."""
    if not is_dtensor(param) or is_dtensor(value):
        return local_part(param, value)
    shape, offset = _local_box(param)
    return value[offset[0] : offset[0] + shape[0]]


def checked_partition_group(process_group):
    """The process group an optimizer holds one rank's share of (`V0Adam.set_partition_group`; None: the default
    group), checked."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("set_partition_group needs torch.distributed to be initialized")
    process_group = dist.group.WORLD if process_group is None else process_group
    if dist.get_rank(process_group) < 0:
        raise ValueError("set_partition_group: this rank is not a member of process_group")
    return process_group


def check_copyable(partition_group) -> None:
    if partition_group is not None:
        raise TypeError(
            "an optimizer declared one rank's share (set_partition_group) cannot be copied or pickled, since "
            "its process group cannot: copy it before, then call set_partition_group on the copy"
        )
