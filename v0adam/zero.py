"""v0adam under torch.distributed.optim.ZeroRedundancyOptimizer (ZeRO-1)."""


def setup_zero(optimizer) -> None:
    """Make this rank's optimizer behave as the whole model's would. `optimizer` is a ZeroRedundancyOptimizer built
    with `optimizer_class` one of v0adam's; call this right after building it, before the first step.

    ZeroRedundancyOptimizer(params, optimizer_class=V0AdamW, ...) builds on each rank a V0AdamW over that rank's
    share of the params (`optimizer.optim`). This
    - numbers the share's params as the whole model's optimizer would (their order in `optimizer.param_groups`)
      and redraws the random v0, which depends on a param's number: v0 no longer depends on the world size;
    - makes `optimizer.optim.clip_grad_norm_` and `skip_nonfinite` take the norm over every rank's share, so all
      ranks clip by the same factor and skip the same steps (else each sees only its own share).
    """
    local_optimizer = getattr(optimizer, "optim", None)
    if local_optimizer is None:
        raise ValueError(
            "setup_zero takes a ZeroRedundancyOptimizer whose local optimizer exists (with overlap_with_ddp=True it is "
            "built only after the first steps)"
        )
    params = [param for group in optimizer.param_groups for param in group["params"]]
    local_optimizer.number_params_as(params)
    local_optimizer.set_partition_group(optimizer.process_group)


def init_v0_from_data(optimizer, batches, loss_fn, **kwargs) -> int:
    """`V0Adam.init_v0_from_data` for the params of this rank's share, under a ZeroRedundancyOptimizer: every rank
    calls it on its own batches. Before each batch it zeroes every param's grad, not only the share's, since DDP
    averages them all (a grad left over in a param another rank steps would corrupt that rank's average)."""

    def loss_with_fresh_grads(batch):
        optimizer.zero_grad()
        return loss_fn(batch)

    return optimizer.optim.init_v0_from_data(batches, loss_with_fresh_grads, **kwargs)
