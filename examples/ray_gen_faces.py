"""Generate (and colorize) N faces with Ray Data, in parallel blocks.

    python examples/ray_gen_faces.py 256 faces_out/ --seed 0 --block-size 32 --concurrency 2

The N faces are cut into blocks of ``--block-size``; each block draws its own stretch of the
seed's sequence (see ``aepipe.ray.face_blocks``), so the faces are those of ``gen-faces --n N
--seed S --colorize``, whatever the block size and however many actors run it. Each actor loads the
face generator and the colorizer once (``aepipe.ray.FaceBlockMapper``); the driver writes
``face_00000.png`` ... and, with ``--grid``, one contact sheet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def run(
    n: int,
    output_dir: str | Path,
    *,
    seed: int = 0,
    block_size: int = 64,
    concurrency: int = 1,
    generator: str = "face-vae",
    colorizer: str | None = "colorizer",
    temperature: float | None = None,
    grid: str | Path | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> dict[str, Any]:
    """Generate ``n`` faces into ``output_dir`` on the current Ray cluster.

    Returns:
        ``{"written": [...], "seconds": s}``.
    """
    import numpy as np
    import ray

    from aepipe.io import make_grid, write_image
    from aepipe.ray import FaceBlockMapper, face_blocks

    start = time.perf_counter()
    blocks = face_blocks(n, seed=seed, block_size=block_size)
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
    ds = ds.map_batches(
        FaceBlockMapper,
        fn_constructor_kwargs=dict(
            generator=generator, colorizer=colorizer, temperature=temperature
        ),
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        batch_size=1,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    out = Path(output_dir)
    written: dict[str, np.ndarray] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name, image in zip(batch["name"], batch["image"], strict=True):
            write_image(np.asarray(image), out / f"{name}.png")
            written[str(name)] = np.asarray(image) if grid else np.empty(0)
    if grid:
        tiles = [written[k] for k in sorted(written)]
        tiles = [t if t.shape[-1] == 3 else np.repeat(t, 3, -1) for t in tiles]
        write_image(make_grid(np.stack(tiles)), grid)
    return {
        "written": sorted(str(out / f"{k}.png") for k in written),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="number of faces")
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--block-size", type=int, default=64, help="faces per block (one seed each)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="actors (model copies)")
    parser.add_argument("--generator", default="face-vae", help="weights name or folder")
    parser.add_argument(
        "--colorizer", default="colorizer", help="weights, or 'none' for gray faces"
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="default: the weights' (1.2 for face-vae)"
    )
    parser.add_argument("--grid", default=None, help="also write a contact sheet here")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    args = parser.parse_args(argv)

    import ray

    ray.init(address=args.address, log_to_driver=False)
    try:
        result = run(
            args.n,
            args.output_dir,
            seed=args.seed,
            block_size=args.block_size,
            concurrency=args.concurrency,
            generator=args.generator,
            colorizer=None if args.colorizer.lower() == "none" else args.colorizer,
            temperature=args.temperature,
            grid=args.grid,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
        )
    finally:
        ray.shutdown()
    print(
        f"{len(result['written'])} faces written to {args.output_dir} in {result['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
