"""What the stroke-edge correction (``ScanUNet(refine=R)``) costs on a 300-DPI A4 page.

Times the shipped stage setup (channels-last, 512-px tiles) with the shipped network's shape
and correction widths ``--widths``, interleaved over ``--repeat`` rounds so that a noisy
machine slows them alike; reports the best wall time and the best process CPU time (less
sensitive to other jobs). Weights are random: the time does not depend on their values.

Run::

    .venv/bin/python benchmarks/scan_refine_cost.py --widths 0 16 24 32
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[0, 16, 24, 32])
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from aepipe.batch import ImageBatch
    from aepipe.models.scan_unet import ScanUNet
    from aepipe.stages.scan_denoiser import ScanDenoiser

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    page = ImageBatch(torch.rand(1, 1, 3508, 2480, generator=torch.Generator().manual_seed(0)))
    stages = {}
    for width in args.widths:
        stage = ScanDenoiser(ScanUNet(base=16, output="clamp", refine=width).eval())
        stage(ImageBatch(torch.rand(1, 1, 600, 600)))  # warm-up
        stages[width] = stage
    wall: dict[int, list[float]] = {w: [] for w in stages}
    cpu: dict[int, list[float]] = {w: [] for w in stages}
    for _ in range(args.repeat):
        for width, stage in stages.items():
            t, c = time.perf_counter(), time.process_time()
            stage(page)
            wall[width].append(time.perf_counter() - t)
            cpu[width].append(time.process_time() - c)
    base = min(cpu[args.widths[0]])
    print(f"A4 page (2480 x 3508), {args.threads} threads, best of {args.repeat} interleaved")
    print(f"| refine | wall s | CPU s | CPU vs refine={args.widths[0]} |")
    print("|---:|---:|---:|---:|")
    for width in stages:
        print(
            f"| {width} | {min(wall[width]):.2f} | {min(cpu[width]):.2f} | "
            f"{min(cpu[width]) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
