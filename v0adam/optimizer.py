"""V0Adam and V0AdamW: drop-in replacements for torch.optim.Adam and AdamW with a fused Triton step and a
configurable initial second moment v0 (Abuduweili & Liu, arXiv 2412.02153).

V0Adam takes its options and orchestrates a step: the work of each bucket (`v0adam.work`), the guards on the
gradients (`v0adam.guards`: GradScaler, clipping, non-finite skips) and each bucket's backend (`v0adam.backends`),
which applies the update rule (`v0adam.rules`). torch's optimizer contract over its flat states (param groups,
opt.state, zero_grad, state_dict, copies) is its base class's (`v0adam.torch_contract`), the layout of its states
`v0adam.layout`'s.
"""

from collections.abc import Mapping

import torch

from v0adam import checkpoint, data_v0, grad_release, options, sharding, state_formats
from v0adam import v0 as v0_modes
from v0adam.backends import StepInputs
from v0adam.precision import Precision
from v0adam.rules import adam
from v0adam.torch_contract import FlatStateOptimizer, eagerly


class V0Adam(FlatStateOptimizer):
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
        master_weights: step bfloat16/float16 params from an exact float32 master, each param its rounding to
            nearest: True keeps it as an int16 remainder beside a bfloat16 param (state "param_remainder") and a
            float32 copy for float16 (state "master_param"), "fp32" a copy for both; the two train bit for bit
            alike. ``master_weight(p)`` gives the float32 value (docs/mixed-precision.md).
        stochastic_rounding: without a master, round updated bfloat16 params stochastically (unbiased,
            counter-based, reproducible) instead of to nearest even.
        state_dtype: dtype of the moments (and v0): torch.float32 (default), torch.bfloat16, or torch.uint8 for
            8-bit states, blocks of 256 elements with a float32 scale each (states "exp_avg_code",
            "exp_avg_scale", ...; docs/8-bit-states.md). A param group's "state_dtype" overrides it.
        min_8bit_size: with 8-bit states, tensors of fewer elements keep float32 states (bitsandbytes' name and
            default), and so do tensors whose rows (the dims after the first) are not whole blocks of 256.
        flat_grads: keep params and grads in flat buffers per bucket (Megatron's param-and-grad buffer; `p.data`
            becomes a view of it): autograd accumulates into the grads and ``zero_grad`` zeroes them with one
            memset whatever ``set_to_none`` says. Default False: params and grads stay where they are.
        release_grads: step each param during backward, as soon as its grad is ready, and free its grad at once
            (``with opt.accumulate_grads():`` accumulates instead). Refused with DDP, ``skip_nonfinite``,
            ``flat_grads``, a GradScaler and ``clip_grad_norm_`` (docs/memory.md).
        fused: as torch.optim.Adam's towards a GradScaler: with True, ``scaler.step`` hands its scale and
            found_inf to the step, which unscales each grad as it reads it and skips without a host sync; by
            default the GradScaler unscales the grads first. Either way one fused launch per bucket.
        foreach, capturable: accepted and ignored, so that torch.optim.Adam's call sites work unchanged: the step
            is always one launch per bucket, counters and hyperparameters on the device (capturable).
            differentiable=True is refused.

    The optimizer owns its states only, in flat per-(device, dtype) buffers; params and grads are read and written
    where the model and autograd keep them, in the same launch (with ``flat_grads``, params and grads move into
    flat buffers instead). ``opt.state`` holds views of the flat state buffers; what is written into ``opt.state``
    itself, or into a group's params list, is adopted at the next step, as torch's optimizers would read it (see
    `v0adam.state_table`).
    """

    _DECOUPLED_WEIGHT_DECAY = False
    _RULE = adam.RULE  # the update rule; each member of the family has its own (`v0adam.rules`)

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
            defaults["rounding_seed"] = options.seed_following_manual_seed("rounding")
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
        self._release = grad_release.start(self)
        state_formats.log_at_construction(self)

    def init_v0_from_data(
        self, batches, loss_fn, *, num_samples: int = 5000, scale=None, model=None, process_group=None
    ) -> int:
        """Paper eq. 10 for the param groups with v0="data": v0 = scale * (mean(g)^2 + B * var(g)) over mini-batch
        gradients g, B the batch size. Runs forward/backward on `batches` until `num_samples` samples were seen;
        returns how many were. See `v0adam.data_v0`.

        In a distributed job (DDP, FSDP2, ZeRO) every rank calls it on its own batches; B and the samples are counted
        over `process_group` (default: the default group), whose ranks' gradients the wrapper averages.
        """
        self._works(tracing=False)  # lays the buffers out again first if the model was moved since they were
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
        if self._layout.holds_trained_state():
            raise RuntimeError("number_params_as must run before the first step(): it redraws exp_avg_sq")
        self._layout.renumber(params, self.param_groups)

    def set_partition_group(self, process_group=None) -> None:
        """Declare this optimizer one rank's share of a model whose params are partitioned over `process_group`
        (default: the default group), as under ZeRO-1 or with a DeepSpeed-style flat partition: `clip_grad_norm_`
        and `skip_nonfinite` then take the norm over every rank's share (one all-reduce of a scalar), so every rank
        clips by the same factor and skips the same steps. Every rank of the group must then call them together,
        one without params too. Under ZeroRedundancyOptimizer, `v0adam.setup_zero` calls this.
        """
        self._partition_group = sharding.checked_partition_group(process_group)

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
        tracing = torch.compiler.is_compiling()  # asked once: everything below is told
        if self._release is not None:
            self._release.step_assigned(getattr(self, "grad_scale", None), getattr(self, "found_inf", None))
        elif tracing and not self._traceable():
            eagerly(self._step)
        else:
            self._step(tracing)
        return loss

    def accumulate_grads(self):
        """With release_grads: a context in which backward accumulates grads into the params instead of stepping
        them, for the micro-batches of gradient accumulation but the last; the first backward outside it steps,
        with the whole sums, as step() after accumulation does (the pattern of DDP's ``no_sync``)."""
        if self._release is None:
            raise RuntimeError("accumulate_grads is for an optimizer with release_grads=True")
        return self._release.accumulate()

    def _traceable(self) -> bool:
        return all(bucket.backend.traceable and bucket.grads_are_traceable() for bucket in self._buckets)

    def _works(self, tracing: bool) -> list:
        """This step's work per bucket, as (bucket, `v0adam.work.BucketWork`); while torch.compile traces, the work
        `_traceable` vouched for."""
        if tracing:
            return [(bucket, bucket.work.traced()) for bucket in self._buckets]
        return self._follow_moves(lambda: [(bucket, bucket.work.collect()) for bucket in self._buckets])

    def _step(self, tracing: bool = False) -> None:
        if self._awaiting_data_v0:
            raise RuntimeError(
                "v0='data' needs opt.init_v0_from_data(batches, loss_fn) before the first step(); see its docstring"
            )
        self._follow_param_lists()
        if self._layout.edited(self.state):
            eagerly(self._adopt_state_edits)
        if self.skip_nonfinite and checkpoint.count_was_assigned(self.param_groups, self.skipped_steps):
            eagerly(checkpoint.adopt_assigned_count, self.param_groups, self.skipped_steps)
        # Every check happens here, before the first write.
        amsgrad_flags = [group["amsgrad"] for group in self.param_groups]
        if amsgrad_flags != self._amsgrad_flags:  # amsgrad switched on after construction
            self._layout.add_max_exp_avg_sq_states(self.param_groups, tracing)
            self._amsgrad_flags[:] = amsgrad_flags
        works = self._works(tracing)
        found_inf = self._guards.found_nonfinite(
            works, getattr(self, "found_inf", None), self.skipped_steps, self._partition_group, tracing
        )
        grad_scale = self._guards.grad_divisor(getattr(self, "grad_scale", None))
        if not tracing:  # a traced step keeps no histories (see below), and an int it wrote would be guarded on
            self._step_calls += 1
        inputs = StepInputs(self.param_groups, self._RULE, grad_scale, found_inf, tracing)
        for bucket, work in works:
            if not work.stepped:
                continue
            rounding_seed = None
            if self.precision.stochastic_for(bucket.dtype):
                rounding_seed = self.param_groups[0]["rounding_seed"]
            bucket.backend.step(bucket, work, inputs, rounding_seed)
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
        tracing = torch.compiler.is_compiling()
        if tracing and not self._traceable():
            return eagerly(self.clip_grad_norm_, max_norm, norm_type)
        self._follow_param_lists()
        return self._guards.clip(self._works(tracing), max_norm, norm_type, self._partition_group, tracing)


class V0AdamW(V0Adam):
    """AdamW (decoupled weight decay, default 1e-2) with a fused Triton step and a configurable v0.

    Same arguments as V0Adam; with ``v0="zero"``, the default, this is torch.optim.AdamW, step for step.
    """

    _DECOUPLED_WEIGHT_DECAY = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)
