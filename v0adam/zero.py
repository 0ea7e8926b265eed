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
