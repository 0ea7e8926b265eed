"""python -m bench.tune: time v0adam's kernel for each block size and warp count on the cases that set them.

The winning configuration goes into v0adam/triton_backend.py (BLOCK, NUM_WARPS) with the numbers behind it.
"""

import itertools

import torch

from bench import cases, timing, variants
from v0adam import triton_backend

BLOCKS = (1024, 2048, 4096, 8192)
WARPS = (4, 8, 16)


def main() -> None:
    device = torch.device("cuda")
    tuned = [cases.Case("fp32 64M", ((64 * cases.M,),)), cases.Case("GPT-2 small fp32", cases.gpt2_small_shapes())]
    copy_gbps = timing.copy_bandwidth_gbps(device)
    print(f"{torch.cuda.get_device_name(device)}: copy bandwidth {copy_gbps:.0f} GB/s")
    print("| BLOCK | warps | " + " | ".join(f"{case.name} ms (% copy)" for case in tuned) + " |")
    for block, warps in itertools.product(BLOCKS, WARPS):
        triton_backend.BLOCK, triton_backend.NUM_WARPS = block, warps
        cells = []
        for case in tuned:
            step, per_element, _ = variants.build_v0adam(case, device)
            ms = timing.median_ms(step, device, steps=30, warmup=3)
            gbps = case.numel * per_element / ms / 1e6
            cells.append(f"{ms:.3f} ({100 * gbps / copy_gbps:.1f}%)")
            del step
            torch.cuda.empty_cache()
        print(f"| {block} | {warps} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
