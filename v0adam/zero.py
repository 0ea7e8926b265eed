"""v0adam under torch.distributed.optim.ZeroRedundancyOptimizer (ZeRO-1)."""


def align_random_v0(optimizer) -> None:
    """Make this rank's random v0 the one a single process would draw, whatever the world size. `optimizer` is a
    ZeroRedundancyOptimizer built with `optimizer_class` one of v0adam's.

    ZeroRedundancyOptimizer(params, optimizer_class=V0AdamW, ...) builds on each rank a V0AdamW over that rank's
    share of the params, which numbers them from 0; the random draw depends on the param's number. This numbers
    them as the whole model's optimizer would (their order in `optimizer.param_groups`) and redraws. Call it right
    after building the ZeroRedundancyOptimizer, before the first step.
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    optimizer.optim.number_params_as(params)


def init_v0_from_data(optimizer, batches, loss_fn, **kwargs) -> int:
    """`V0Adam.init_v0_from_data` for the params of this rank's share, under a ZeroRedundancyOptimizer: every rank
    calls it on its own batches. Before each batch it zeroes every param's grad, not only the share's, since DDP
    averages them all (a grad left over in a param another rank steps would corrupt that rank's average)."""

    def loss_with_fresh_grads(batch):
        optimizer.zero_grad()
        return loss_fn(batch)

    return optimizer.optim.init_v0_from_data(batches, loss_with_fresh_grads, **kwargs)
