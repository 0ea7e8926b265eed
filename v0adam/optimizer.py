"""V0Adam and V0AdamW: drop-in replacements for torch.optim.Adam and AdamW with a fused Triton step and a
configurable initial second moment v0 (Abuduweili & Liu, arXiv 2412.02153)."""

import contextlib
import dataclasses
import hashlib
import operator
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from v0adam import data_v0, grad_norm, options, sharding, state_formats, torch_backend, triton_backend
from v0adam import v0 as v0_modes
from v0adam.buckets import CODES_SUFFIX, BucketWork, FlatBucket, ParamMoved, Precision
from v0adam.fixed_address import fixed_address
from v0adam.grad_release import GradRelease
from v0adam.kernels.adam import _TRITON_DTYPES as TRITON_DTYPES
from v0adam.sharding import is_dtensor, local_part
from v0adam.state_io import TorchLayoutStates
from v0adam.state_table import StateTable

MAX_CODES = "max_exp_avg_sq" + CODES_SUFFIX  # AMSGrad's max v as 8-bit codes

# The attributes a copy carries besides torch's: the settings, and what the steps taken so far left.
_CARRIED = (
    "backend",
    "precision",
    "skip_nonfinite",
    "flat_grads",
    "skipped_steps",
    "_step_supports_amp_scaling",
    "_step_calls",
    "_awaiting_data_v0",
    "release_grads",
)


@torch._disable_dynamo  # torch.compiler.disable, without importing torch._dynamo along with v0adam
def _eagerly(function, *args):
    """function(*args) as without torch.compile: a graph break when traced (an error under fullgraph=True)."""
    return function(*args)


def _seed_following_manual_seed(salt: str) -> int:
    """A seed that `torch.manual_seed` makes reproducible, taken from the state of torch's global generator without
    drawing from it: a draw would shift every later one (data order, dropout) in a run that swaps its optimizer.
    `salt` tells apart the seeds taken at one state (two param groups, v0 and rounding)."""
    state = bytes(torch.random.get_rng_state().tolist())  # uint8; not .numpy(): numpy is no dependency of ours
    return int.from_bytes(hashlib.blake2b(state + salt.encode(), digest_size=8).digest(), "little") % 2**62


class V0Adam(TorchLayoutStates, Optimizer):
    """Adam with a fused Triton step and a configurable initial second moment v0.

    With ``v0="zero"``, the default, this is torch.optim.Adam, step for step. Other v0 modes start ``exp_avg_sq`` at
    v0 instead of 0 (bias correction unchanged), which removes Adam's sign-descent first step and, at learning
    rates where Adam without warmup fails, lets training go without warmup (docs/v0.md, "v0: when it helps").

    Args:
        params, lr, betas, eps, weight_decay, amsgrad, maximize: as torch.optim.Adam (lr and betas may be tensors).
        v0: "zero" (default: Adam), "data" (paper eq. 10, then call ``init_v0_from_data``), "random" (paper
            eq. 11), a dict {param: tensor} or a callable ``f(param) -> tensor`` giving the initial exp_avg_sq.
            ``v0adam.v0_fade_steps`` tells for how many steps a v0 will shape the step.
        v0_scale: σ of the random and data modes (defaults 100 and 1).
        v0_seed: seed of the random mode (default: taken from the state of torch's global generator, which it
            leaves where it was, so that torch.manual_seed makes it reproducible).
        backend: "triton", "torch", or "auto" (Triton for CUDA tensors and under TRITON_INTERPRET=1, else torch).
        decoupled_weight_decay: as torch.optim.Adam's (AdamW's weight decay); always on in V0AdamW.
        skip_nonfinite: check every gradient each step (one fused pass); a step with an inf or NaN gradient
            changes nothing (params, states, step counters) and is counted in ``opt.skipped_steps``.
        master_weights: step bfloat16/float16 params from an exact float32 master, storing each param as its
            rounding to nearest. True keeps it in 2 bytes beside a bfloat16 param, as the int16 low half of its
            pattern (state key "param_remainder", `v0adam.master_remainder`), and as a float32 copy for float16
            (state key "master_param"); "fp32" keeps a copy for both. The two train bit for bit alike;
            ``master_weight(p)`` gives the float32 value. No effect on float32 params.
        stochastic_rounding: without a master copy, round updated bfloat16 params stochastically (unbiased,
            counter-based, reproducible) instead of to nearest even.
        state_dtype: dtype of exp_avg / exp_avg_sq / max_exp_avg_sq (and v0): torch.float32 (default),
            torch.bfloat16, or torch.uint8 for 8-bit states: each moment quantized in blocks of 256 elements, one
            float32 scale per block (state keys "exp_avg_scale", ...) and a byte per element, read and written
            by the same single launch (docs/8-bit-states.md). A param group's "state_dtype" overrides it.
        min_8bit_size: with 8-bit states, tensors of fewer elements keep float32 states (bitsandbytes' name and
            default), and so do tensors whose rows (the dims after the first) are not whole blocks of 256, so that
            the blocks are the whole tensor's, the same on one process and at any FSDP2 world size.
        flat_grads: keep every grad as a view of one flat grad buffer per bucket, allocated for good: autograd
            accumulates into it and ``zero_grad`` zeroes it with one memset whatever ``set_to_none`` says, so a
            param that gets no gradient is stepped with a zero one (torch's ``zero_grad(set_to_none=False)``).
            Default False: grads are read where autograd leaves them and ``zero_grad`` is torch's.
        release_grads: step each param during backward, as soon as its grad is ready (grouped, a few launches per
            backward), and free its grad at once: an iteration never holds every grad. ``step()`` then steps only
            grads assigned by hand; ``with opt.accumulate_grads():`` makes a backward accumulate instead.
            Refused with DDP, ``skip_nonfinite``, ``flat_grads``, a GradScaler and ``clip_grad_norm_``, which need
            every grad before the first update (docs/memory.md).
        fused: as torch.optim.Adam's towards a GradScaler: with True, ``scaler.step`` hands its scale and
            found_inf to the step, which unscales each grad as it reads it and skips without a host sync (the
            grads stay scaled; Lightning then refuses gradient clipping, as for torch's fused Adam). By default
            the GradScaler unscales the grads first, as for torch's default Adam. Either way the step is one
            fused launch per bucket.
        foreach, capturable: torch.optim.Adam's, accepted so that its call sites work unchanged and ignored: the
            step is always one launch per bucket, with step counters and hyperparameters on the device
            (capturable). differentiable=True is refused.

    Parameters are re-homed into flat per-(device, dtype) buffers when the optimizer is built; their grads are
    read, in the same launch, wherever autograd leaves them (or, with ``flat_grads``, kept as views of a flat
    grad buffer). ``opt.state`` holds views of the flat state buffers; what is written into ``opt.state`` itself,
    or into a group's params list, is adopted at the next step, as torch's optimizers would read it (see
    `v0adam.state_table`).
    """

    _DECOUPLED_WEIGHT_DECAY = False
    _ALGORITHM = "adam"

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        *,
        maximize=False,
        v0="zero",
        v0_scale=None,
        v0_seed=None,
        backend="auto",
        decoupled_weight_decay=False,
        skip_nonfinite=False,
        master_weights=False,
        stochastic_rounding=False,
        state_dtype=None,
        min_8bit_size=4096,
        flat_grads=False,
        release_grads=False,
        foreach=None,
        fused=None,
        capturable=False,
        differentiable=False,
    ):
        options.check_hyperparameters(lr, betas, eps, weight_decay)  # before the params, as torch's Adam does
        options.check_construction(
            differentiable=differentiable,
            backend=backend,
            state_dtype=state_dtype,
            min_8bit_size=min_8bit_size,
            release_grads=release_grads,
            flat_grads=flat_grads,
            skip_nonfinite=skip_nonfinite,
            master_weights=master_weights,
            stochastic_rounding=stochastic_rounding,
        )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay or self._DECOUPLED_WEIGHT_DECAY,
            v0=v0,
            v0_scale=v0_scale,
            v0_seed=v0_seed,
        )
        if stochastic_rounding:
            # Saved with the param groups, so that a resumed run draws the same roundings.
            defaults["rounding_seed"] = _seed_following_manual_seed("rounding")
        master_weights = master_weights if master_weights == "fp32" else bool(master_weights)
        self.precision = Precision(master_weights, stochastic_rounding, state_dtype, min_8bit_size)
        self.backend = backend
        self.skip_nonfinite = skip_nonfinite
        self.flat_grads = flat_grads
        # As torch's: with fused=True a GradScaler hands its scale and found_inf to the step, which unscales in the
        # kernel and skips without a host sync; else the GradScaler unscales the grads itself first, leaving them
        # unscaled for whatever runs before the step (Lightning refuses to clip for the former).
        self._step_supports_amp_scaling = bool(fused)
        self._partition_group = None
        self._step_calls = 0  # eager step() calls, which name each call in the step histories
        self.skipped_steps = None  # with skip_nonfinite, a device tensor counting the steps skipped
        self._start_unlaid()
        super().__init__(params, defaults)
        if isinstance(v0, Mapping):
            known = {param for group in self.param_groups for param in group["params"]}
            if any(key not in known for key in v0):
                raise ValueError("v0 dict has a key that is not a parameter of this optimizer")
        self._build_buckets()
        self._awaiting_data_v0 = any(group["v0"] == v0_modes.DATA for group in self.param_groups)
        self.release_grads = release_grads
        self._start_release()
        state_formats.log_at_construction(self)

    def _start_release(self) -> None:
        self._release = None
        if not self.release_grads:
            return
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed and not all(map(is_dtensor, self._all_params())):
            raise ValueError(
                "release_grads steps a param when autograd has its grad; under DDP that is before DDP averages it. "
                "Shard the model with FSDP2 (fully_shard), whose reduced grads are released, or drop release_grads"
            )
        # A GradScaler then hands its scale to step(), which refuses it (it cannot skip a step already taken).
        self._step_supports_amp_scaling = True
        self._release = GradRelease(self._step, self._all_params)

    def _all_params(self) -> list[torch.Tensor]:
        return [param for group in self.param_groups for param in group["params"]]

    def _start_unlaid(self) -> None:
        """The fields of an optimizer whose params are not laid out yet: at construction, and in a copy."""
        # A pending clip_grad_norm_, in a dict: torch.compile before 2.12 traces writes into an object the optimizer
        # holds, not into the optimizer's own attributes (a traced step writes none).
        self._pending_clip = {"coefficient": None, "norm": None}
        self._seed_tensors = {}
        self._buckets = []
        self._pending_v0 = {}
        self.state = self._state_table = StateTable()
        self._published = {}  # param -> the state views last published in opt.state

    def __getstate__(self):
        """torch's (defaults, state, param_groups), and v0adam's settings: what `copy.deepcopy` and pickle carry.
        The flat buffers are not carried: the copy lays its params out afresh (see `__setstate__`)."""
        if self._partition_group is not None:
            raise TypeError(
                "an optimizer declared one rank's share (set_partition_group) cannot be copied or pickled, since "
                "its process group cannot: copy it before, then call set_partition_group on the copy"
            )
        state = super().__getstate__()
        state.update({name: self.__dict__[name] for name in _CARRIED})
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._fill_group_defaults()
        if "_buckets" not in self.__dict__:  # a copy or an unpickled optimizer; torch's load passes its groups only
            self._lay_out_copy()

    def _lay_out_copy(self) -> None:
        """Lay out the params of a copy (its own, or those copied along with it), their states and the count of
        skipped steps taken from what was carried."""
        carried, skipped_steps = self.state, self.skipped_steps
        self._partition_group = None
        self._start_unlaid()
        self._state_table.update(carried)  # the params' entries are adopted as they are laid out
        self._state_table.edited = False
        self.skipped_steps = None
        self._build_buckets()
        if skipped_steps is not None:
            self.skipped_steps.copy_(skipped_steps)
        self._start_release()

    def _fill_group_defaults(self) -> None:
        for group in self.param_groups:
            # A checkpoint of an older torch may lack these (torch.optim.Adam fills them in the same way).
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            for key in ("v0_scale", "v0_seed"):
                group.setdefault(key, None)
            group.setdefault("v0", v0_modes.ZERO)
            group.setdefault("decoupled_weight_decay", self._DECOUPLED_WEIGHT_DECAY)
            if "rounding_seed" in self.defaults:
                group.setdefault("rounding_seed", self.defaults["rounding_seed"])
            if self._DECOUPLED_WEIGHT_DECAY:
                group["decoupled_weight_decay"] = True

    def add_param_group(self, param_group: dict) -> None:
        """As torch's, plus v0adam's checks; params added after construction get their own slots at once."""
        group = {key: value for key, value in param_group.items()}
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        options.check_group(group)
        mode, source = v0_modes.split_v0(group["v0"])
        params = group["params"]
        # Materialised once: a generator (model.parameters()) would be empty by the time torch's method reads it.
        group["params"] = params = [params] if isinstance(params, torch.Tensor) else list(params)
        # Named params come as (name, tensor); anything else is left for torch's own checks.
        tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
        tensors = [p for p in tensors if isinstance(p, torch.Tensor)]
        for param in tensors:
            options.check_param(param)
        pending_v0 = v0_modes.user_v0(source, tensors) if source is not None else {}
        group["v0"] = mode
        if mode == v0_modes.RANDOM and group["v0_seed"] is None:
            group["v0_seed"] = _seed_following_manual_seed(f"v0 of group {len(self.param_groups)}")
        super().add_param_group(group)
        self._pending_v0.update(pending_v0)
        if self._buckets:
            self._build_buckets()
            self._awaiting_data_v0 = self._awaiting_data_v0 or mode == v0_modes.DATA
        if getattr(self, "_release", None) is not None:
            self._release.watch()

    def _backend_for(self, device: torch.device, dtype: torch.dtype) -> str:
        if self.backend == "torch":
            return "torch"
        triton_possible = dtype in TRITON_DTYPES and (device.type == "cuda" or triton_backend.interpreter_enabled())
        if self.backend == "triton" and not triton_possible:
            raise ValueError(
                f"backend='triton' cannot step {dtype} parameters on {device}: the kernel takes float32, float16 and "
                "bfloat16 on CUDA, or on CPU with TRITON_INTERPRET=1 set before v0adam is imported"
            )
        return "triton" if triton_possible else "torch"

    def _build_buckets(self) -> None:
        """Lay every param out in flat buffers, on its current device and dtype, carrying over the values of any
        earlier layout. A param taken out of the groups leaves its last state in opt.state, as in torch (a copy,
        not a view that would keep the dropped buffers alive); a param entering with a state there (one taken out
        and put back, or given one by the user) resumes it. Checks first, then writes."""
        self._check_layout()
        if self._state_edited():
            self._adopt_state_edits()
        previous = {param: (bucket, index) for bucket in self._buckets for index, param in enumerate(bucket.params)}
        entries, param_indices = {}, {}
        for group_index, group in enumerate(self.param_groups):
            for param in group["params"]:
                if param in param_indices:
                    continue  # torch warned about the duplicate; step it once
                param_indices[param] = len(param_indices)
                key = (param.device, param.dtype, sharding.layout_of(param), self._state_dtype_of(param, group))
                entries.setdefault(key, []).append((param, group_index))
        entering = {
            param: dict(self.state[param]) for param in param_indices.keys() - previous.keys() if self.state.get(param)
        }
        entering = self._checked_states(entering)
        buckets = [
            self._lay_out(bucket_entries, device, dtype, state_dtype, previous, param_indices)
            for (device, dtype, _, state_dtype), bucket_entries in entries.items()
        ]
        self._buckets = buckets
        self._param_indices = param_indices
        for param in previous.keys() - param_indices.keys():
            state = self._published.pop(param)
            self._state_table.publish(param, {key: value.clone() for key, value in state.items()})
        if entering:
            self._write_states(entering, entering)
        self._param_lists = [list(group["params"]) for group in self.param_groups]
        # Device tables built now, not at the first step: a first step traced by torch.compile finds them and
        # later steps do not recompile.
        self._hyper_tables = {
            bucket.device: triton_backend.HyperTable(bucket.device) for bucket in buckets if bucket.backend == "triton"
        }
        for table in self._hyper_tables.values():
            table.update(self.param_groups)
        for bucket in buckets:
            if bucket.backend == "triton" and self.precision.stochastic_for(bucket.dtype):
                self._device_seed(self.param_groups[0]["rounding_seed"], bucket.device)
        self._amsgrad_flags = [group["amsgrad"] for group in self.param_groups]
        if self.skip_nonfinite:  # on the first bucket's device, which a moved model changes
            device = buckets[0].device if buckets else torch.device("cpu")
            if self.skipped_steps is None or self.skipped_steps.device != device:
                count = torch.zeros((), dtype=torch.int64) if self.skipped_steps is None else self.skipped_steps
                self.skipped_steps = fixed_address(count.to(device))
            self._hand_groups_the_count()

    def _state_dtype_of(self, param: torch.Tensor, group: dict) -> torch.dtype | None:
        """The state dtype asked for `param`: its group's, else the optimizer's; 8-bit only where the whole tensor
        takes it (`Precision.takes_8bit_states`), else float32."""
        asked = group.get("state_dtype", self.precision.state_dtype)
        if asked == torch.float32 or (asked == torch.uint8 and not self.precision.takes_8bit_states(param)):
            return None  # the default, float32 (float64 for float64 params)
        return asked

    def _lay_out(self, bucket_entries, device, dtype, state_dtype, previous: dict, param_indices: dict) -> FlatBucket:
        """One bucket of the new layout, its params' states carried over from `previous` (param -> old bucket and
        index) or started at v0, and published in opt.state."""
        # With flat grads, a param laid out again keeps a missing grad (the step now due must not step it, as torch
        # would not); the next zero_grad hands it its view. New params get theirs now.
        without_grad = [param for param, _ in bucket_entries if param in previous and param.grad is None]
        backend = self._backend_for(device, dtype)
        precision = dataclasses.replace(self.precision, state_dtype=state_dtype)
        bucket = FlatBucket(bucket_entries, device, dtype, backend, precision, self.flat_grads)
        for param in without_grad:
            param.grad = None
        if bucket.backend == "triton":
            triton_backend.prepare(bucket)
        for index, (param, group_index) in enumerate(bucket_entries):
            amsgrad = self.param_groups[group_index]["amsgrad"]
            state = bucket.state_views(index, amsgrad)
            if param in previous:
                old_bucket, old_index = previous[param]
                old_state = old_bucket.state_views(old_index, amsgrad)
                for key, value in state.items():
                    # A master copy is new after a conversion to 16 bits: the bucket took it from the param.
                    if key in old_state:
                        value.copy_(old_state[key])
                bucket.set_step_history(index, old_bucket.step_history[old_index])
            else:
                self._initialise_v0(bucket, index, param_indices[param])
            self._publish(param, state)
        return bucket

    def _check_layout(self) -> None:
        """Every param of every group can be laid out: checked before a layout writes anything."""
        for group in self.param_groups:
            for param in group["params"]:
                options.check_param(param)
                if self.precision.stochastic_rounding and param.dtype == torch.float16:
                    raise ValueError(
                        "stochastic_rounding supports bfloat16 params; use master_weights=True for float16"
                    )
                self._backend_for(param.device, param.dtype)

    def _follow_moves(self, action):
        """action(), after laying the buffers out again if it finds a param moved or converted since they were
        (`model.to(device)` after the optimizer was built, as `accelerate`'s `prepare` does): states carried."""
        try:
            return action()
        except ParamMoved:
            self._build_buckets()
            return action()

    def init_v0_from_data(
        self, batches, loss_fn, *, num_samples: int = 5000, scale=None, model=None, process_group=None
    ) -> int:
        """Paper eq. 10 for the param groups with v0="data": v0 = scale * (mean(g)^2 + B * var(g)) over mini-batch
        gradients g, B the batch size. Runs forward/backward on `batches` until `num_samples` samples were seen;
        returns how many were. See `v0adam.data_v0`.

        In a distributed job (DDP, FSDP2, ZeRO) every rank calls it on its own batches; B and the samples are counted
        over `process_group` (default: the default group), whose ranks' gradients the wrapper averages.
        """
        self._works()  # lays the buffers out again first if the model was moved since they were
        # Its backward passes only collect gradients: with release_grads they must not step.
        with self.accumulate_grads() if self._release is not None else contextlib.nullcontext():
            seen = data_v0.init_v0_from_data(
                self, batches, loss_fn, num_samples=num_samples, scale=scale, model=model, process_group=process_group
            )
        self._awaiting_data_v0 = False
        return seen

    @torch.no_grad()
    def number_params_as(self, params) -> None:
        """Number this optimizer's params by their positions in `params`, a list holding them all (and maybe more),
        and redraw the random v0 with these numbers. Before the first step, after the last `add_param_group`.

        Under ZeroRedundancyOptimizer each rank's optimizer holds a share of the model's params, numbered from 0:
        numbered as in the whole model, the random v0 no longer depends on the world size. See
        `v0adam.setup_zero`.
        """
        if self._holds_trained_state():
            raise RuntimeError("number_params_as must run before the first step(): it redraws exp_avg_sq")
        position = {param: index for index, param in enumerate(params)}
        if any(param not in position for param in self._param_indices):
            raise ValueError("number_params_as needs a list holding every param of this optimizer")
        self._param_indices = {param: position[param] for param in self._param_indices}
        for bucket in self._buckets:
            for index, param in enumerate(bucket.params):
                group_index = bucket.groups[index]
                if self.param_groups[group_index]["v0"] == v0_modes.RANDOM:
                    self._initialise_v0(bucket, index, self._param_indices[param])

    def state_formats(self) -> list[state_formats.StateFormat]:
        """Each param's state format (moments, master), why it got it (8-bit states only where the tensor fits
        them), and the bytes of state per param element it comes to; `print(*opt.state_formats(), sep="\n")`."""
        self._follow_param_lists()
        return state_formats.describe(self)

    @torch.no_grad()
    def master_weight(self, param: torch.Tensor) -> torch.Tensor:
        """The float32 value the optimizer updates for `param`, as a new tensor (a DTensor for a DTensor param):
        its master, rebuilt from the remainder where it is one, or the param widened where it has none. To save
        a float32 model: ``{name: opt.master_weight(p) for name, p in model.named_parameters()}``."""
        self._follow_param_lists()
        if any(bucket.has_moved() for bucket in self._buckets):
            self._build_buckets()  # states carried to the param's new device or dtype
        for bucket in self._buckets:
            for index, held in enumerate(bucket.params):
                if held is param:
                    return sharding.like_param(param, bucket.read_master(index))
        raise KeyError("master_weight: the param is not one of this optimizer's")

    def set_partition_group(self, process_group=None) -> None:
        """Declare this optimizer one rank's share of a model whose params are partitioned over `process_group`
        (default: the default group), as under ZeRO-1 or with a DeepSpeed-style flat partition: `clip_grad_norm_`
        and `skip_nonfinite` then take the norm over every rank's share (one all-reduce of a scalar), so every rank
        clips by the same factor and skips the same steps. Every rank of the group must then call them together,
        one without params too. Under ZeroRedundancyOptimizer, `v0adam.setup_zero` calls this.
        """
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("set_partition_group needs torch.distributed to be initialized")
        process_group = dist.group.WORLD if process_group is None else process_group
        if dist.get_rank(process_group) < 0:
            raise ValueError("set_partition_group: this rank is not a member of process_group")
        self._partition_group = process_group

    def _initialise_v0(self, bucket, index: int, param_index: int) -> None:
        """exp_avg_sq of the bucket's param `index`, which has no state yet, starts at its group's v0 ("data" waits
        for its data pass); 8-bit states get it drawn in float32 and quantized."""
        param, group = bucket.params[index], self.param_groups[bucket.groups[index]]
        exp_avg_sq = bucket.slot(bucket.exp_avg_sq, index)
        if bucket.quantized:
            exp_avg_sq = torch.empty(exp_avg_sq.shape, dtype=torch.float32, device=bucket.device)
        if param in self._pending_v0:
            exp_avg_sq.copy_(local_part(param, self._pending_v0.pop(param)))
        elif group["v0"] == v0_modes.RANDOM:
            v0_modes.draw_random_(
                exp_avg_sq,
                param.shape,
                sigma=v0_modes.resolve_scale(v0_modes.RANDOM, group["v0_scale"]),
                seed=group["v0_seed"],
                param_index=param_index,
                element_offset=sharding.global_element_offset(param),
                use_triton=bucket.backend == "triton",
            )
        else:
            exp_avg_sq.zero_()
        if bucket.quantized:
            bucket.write_moment("exp_avg_sq", index, exp_avg_sq)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's: every grad set to None (the default), so that the next backward hands each param a fresh
        gradient without accumulating into anything, or zeroed in place with `set_to_none=False`. A param without
        a grad at the next step is not stepped, and its step counter stays.

        With `flat_grads=True`, one memset per bucket instead, whatever `set_to_none` says: grads stay allocated
        as views of the flat grad buffer and autograd accumulates into them; a param frozen since the last call
        (`requires_grad_(False)`) is left without a grad, as torch's `zero_grad()` does, and is not stepped; an
        unfrozen one gets its view. A model moved or converted since the optimizer was built gets its buffers laid
        out again on its new device and dtype, states carried over."""
        self._follow_param_lists()
        self._follow_moves(lambda: self._zero_grads(set_to_none))

    def _zero_grads(self, set_to_none: bool) -> None:
        for bucket in self._buckets:
            if bucket.requires_grad_changed():
                _eagerly(bucket.follow_requires_grad)
            bucket.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step: one fused launch per (device, dtype) bucket on the Triton backend, nothing read back
        to the host. Consumes a GradScaler's `grad_scale`/`found_inf` and a pending `clip_grad_norm_`.

        torch.compile traces it whole (custom ops around the launches; a tensor lr changes without a recompile)
        when every bucket is on the Triton backend, taking autograd's grads as they come; with `flat_grads`, only
        while every grad of a plain param is the view this optimizer handed out (DTensor params take any grad).
        Otherwise the step runs eagerly: a graph break, an error under fullgraph=True.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._release is not None:
            self._step_released()
        elif torch.compiler.is_compiling() and not self._traceable():
            _eagerly(self._step)
        else:
            self._step()
        return loss

    def _step_released(self) -> None:
        """step() with release_grads: backward has stepped the params; grads assigned since are stepped now."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            raise RuntimeError(
                "release_grads cannot take a GradScaler: its step is skipped when any grad is inf or NaN, which is "
                "known only after backward has stepped the params. Train in bfloat16 without one, or drop "
                "release_grads"
            )
        self._release.watch()
        self._release.step_all()

    def accumulate_grads(self):
        """With release_grads: a context in which backward accumulates grads into the params instead of stepping
        them, for the micro-batches of gradient accumulation but the last; the first backward outside it steps,
        with the whole sums, as step() after accumulation does (the pattern of DDP's ``no_sync``)."""
        if self._release is None:
            raise RuntimeError("accumulate_grads is for an optimizer with release_grads=True")
        return self._release.accumulate()

    def _follow_param_lists(self) -> None:
        if self._param_lists_changed():
            _eagerly(self._build_buckets)

    def _param_lists_changed(self) -> bool:
        """Whether a param was put into or taken out of a group's list since the buckets were built (torch's
        optimizers step whatever the lists hold: an appended param is stepped, with fresh state)."""
        lists = self._param_lists
        return len(self.param_groups) != len(lists) or not all(
            len(group["params"]) == len(params) and all(map(operator.is_, group["params"], params))
            for group, params in zip(self.param_groups, lists)
        )

    def _traceable(self) -> bool:
        return all(bucket.backend == "triton" and bucket.grads_are_traceable() for bucket in self._buckets)

    def _works(self) -> list[tuple[FlatBucket, BucketWork]]:
        """This step's work per bucket; while torch.compile traces, the work `_traceable` vouched for."""
        if torch.compiler.is_compiling():
            return [(bucket, bucket.traced_work()) for bucket in self._buckets]
        return self._follow_moves(lambda: [(bucket, bucket.collect_work()) for bucket in self._buckets])

    def _step(self) -> None:
        if self._awaiting_data_v0:
            raise RuntimeError(
                "v0='data' needs opt.init_v0_from_data(batches, loss_fn) before the first step(); see its docstring"
            )
        self._follow_param_lists()
        if self._state_edited():
            _eagerly(self._adopt_state_edits)
        if self._count_was_assigned():
            _eagerly(self._adopt_assigned_count)
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # Every check happens here, before the first write.
        amsgrad_flags = [group["amsgrad"] for group in self.param_groups]
        if amsgrad_flags != self._amsgrad_flags:  # amsgrad switched on after construction
            self._add_max_exp_avg_sq_states()
            self._amsgrad_flags[:] = amsgrad_flags
        works = self._works()
        found_inf = self._found_nonfinite(works, found_inf)
        grad_scale = self._grad_divisor(grad_scale)
        tracing = torch.compiler.is_compiling()
        if not tracing:  # a traced step keeps no histories (see below), and an int it wrote would be guarded on
            self._step_calls += 1
        for bucket, work in works:
            if not work.stepped:
                continue
            bucket_scale = None
            if grad_scale is not None:  # the kernel reads a float32; a float64 model's norm is float64
                dtype = torch.float32 if bucket.backend == "triton" else grad_scale.dtype
                bucket_scale = grad_scale.to(bucket.device, dtype, non_blocking=True)
            bucket_found_inf = None if found_inf is None else found_inf.to(bucket.device, non_blocking=True)
            rounding_seed = None
            if self.precision.stochastic_for(bucket.dtype):
                rounding_seed = self.param_groups[0]["rounding_seed"]
            if bucket.backend == "triton":
                launcher = triton_backend.launcher()
                increment = bucket.step_increment(work.stepped)
                hyper = self._hyper_table(bucket.device)
                launcher.advance_bucket_steps(bucket, increment, bucket_found_inf, hyper, self._ALGORITHM)
                if rounding_seed is not None:
                    rounding_seed = self._device_seed(rounding_seed, bucket.device)
                launcher.step_bucket(bucket, work, bucket_scale, bucket_found_inf, rounding_seed, self._ALGORITHM)
            else:
                self._advance_steps(bucket, work.stepped, bucket_found_inf)
                torch_backend.step_bucket(
                    bucket, work, self.param_groups, bucket_scale, bucket_found_inf, rounding_seed, self._ALGORITHM
                )
            for original, contiguous in work.writebacks:
                original.copy_(contiguous)
            if not tracing:
                # A traced step steps every trainable param of a re-homed bucket, so its histories keep their
                # (in)equalities without it; DTensor buckets never merge segments.
                bucket.record_step(work.stepped, self._step_calls)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ over this optimizer's grads, fused into the next step.

        Computes the global norm in one pass (one launch per bucket for norm types 1, 2 and inf) and hands the
        clip coefficient min(1, max_norm / (norm + 1e-6)) to the next step's kernel, which multiplies each
        gradient by it as it reads it: the grads themselves are not rewritten. Returns the norm as a 0-d tensor,
        without reading it on the host. With a GradScaler, call `scaler.unscale_(opt)` first, as with torch.
        """
        if self._release is not None:
            raise RuntimeError(
                "clip_grad_norm_ needs every grad before the first update, and release_grads has stepped and freed "
                "them during backward (torch.nn.utils.clip_grad_norm_ would find none and clip nothing)"
            )
        if torch.compiler.is_compiling() and not self._traceable():
            return _eagerly(self.clip_grad_norm_, max_norm, norm_type)
        self._follow_param_lists()
        norm = grad_norm.global_grad_norm(self._works(), norm_type, self._partition_group)
        self._pending_clip.update(coefficient=torch.clamp(max_norm / (norm + 1e-6), max=1.0), norm=norm)
        return norm

    def _grad_divisor(self, grad_scale):
        """What the kernel divides each gradient by: the GradScaler's scale over the pending clip coefficient."""
        coefficient = self._pending_clip["coefficient"]
        self._pending_clip["coefficient"] = None
        if coefficient is None:
            return grad_scale
        return (1.0 if grad_scale is None else grad_scale.to(coefficient.device)) / coefficient

    def _found_nonfinite(self, works, found_inf):
        """The flag that skips this step: GradScaler's found_inf, plus with skip_nonfinite a check of every grad
        (the norm of a pending clip_grad_norm_ when there is one, else one fused pass). Counted in skipped_steps."""
        norm = self._pending_clip["norm"]
        self._pending_clip["norm"] = None
        if not self.skip_nonfinite or not (works or self._partition_group is not None):
            return found_inf
        if norm is None:
            norm = grad_norm.global_grad_norm(works, 1.0, self._partition_group)
        found = (~torch.isfinite(norm)).float()
        if found_inf is not None:
            found = found + found_inf.to(found.device)
        self.skipped_steps.add_((found != 0).to(torch.int64).to(self.skipped_steps.device))
        return found

    def _holds_trained_state(self) -> bool:
        """Whether a param has taken a step, here (compiled or not) or in a loaded checkpoint: a read on the host."""
        return any(bool(bucket.steps.any()) for bucket in self._buckets)

    def _device_seed(self, seed: int, device: torch.device) -> torch.Tensor:
        """The stochastic-rounding seed as a device tensor, uploaded once (the kernel reads it from memory)."""
        key = (seed, device)
        if key not in self._seed_tensors:
            self._seed_tensors[key] = torch.tensor([seed], dtype=torch.int64).to(device, non_blocking=True)
        return self._seed_tensors[key]

    def _hyper_table(self, device: torch.device) -> torch.Tensor:
        return self._hyper_tables[device].update(self.param_groups)

    def _advance_steps(self, bucket, stepped: list[int], found_inf) -> None:
        """steps += 1 for the params stepped now, unless found_inf; never read on the host."""
        increment = bucket.step_increment(stepped)
        if found_inf is not None:
            increment = (found_inf == 0) * increment
        bucket.steps.add_(increment)

    def _add_max_exp_avg_sq_states(self) -> None:
        for bucket in self._buckets:
            for index, param in enumerate(bucket.params):
                group = self.param_groups[bucket.groups[index]]
                published = self._published[param]
                if group["amsgrad"] and "max_exp_avg_sq" not in published and MAX_CODES not in published:
                    self._publish(param, bucket.state_views(index, amsgrad=True))


class V0AdamW(V0Adam):
    """AdamW (decoupled weight decay, default 1e-2) with a fused Triton step and a configurable v0.

    Same arguments as V0Adam; with ``v0="zero"``, the default, this is torch.optim.AdamW, step for step.
    """

    _DECOUPLED_WEIGHT_DECAY = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)
