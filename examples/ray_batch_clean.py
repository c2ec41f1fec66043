"""Clean a folder of scanned pages with Ray Data, keeping every page's name.

    python examples/ray_batch_clean.py INPUT_DIR OUTPUT_DIR [--concurrency 2] [--num-gpus 0]
    python examples/ray_batch_clean.py s3://bucket/scans out/ --address auto   # on a cluster

Files are read as raw bytes (``ray.data.read_binary_files``), so pages of any size and format
(PNG, JPEG, TIFF, PDF ...) mix freely and keep their names. Each Ray actor loads the
scan-denoiser once (``aepipe.ray.StageMapper``), decodes and cleans its files exactly as
``aepipe clean-scans`` does, and sends back PNG bytes; the driver writes ``<name>.png``
(``<name>-p001.png`` ... for multi-page files) under OUTPUT_DIR, so the output folder only needs
to exist where this script runs.

A worker that dies mid-job (killed, out of memory, node lost) is restarted by Ray Data and its
unfinished batches are retried (``max_restarts``/``max_task_retries`` default to -1 for map
actors); each page is written once, atomically (``aepipe.io.atomic_write``), so the output
folder never holds a half-written or duplicated page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def list_inputs(input_dir: Path) -> list[Path]:
    """Image and PDF files directly inside ``input_dir`` (hidden files skipped), sorted."""
    from aepipe.io import is_image_path

    return sorted(
        p
        for p in input_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_image_path(p)
    )


def run(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    model: str = "scan-denoiser",
    concurrency: int = 1,
    batch_size: int = 4,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    dpi: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Clean every page under ``input_dir`` into ``output_dir`` on the current Ray cluster.

    Args:
        input_dir: folder of scans (on a cluster: a path every node can read, or s3://...).
        output_dir: where the driver writes the PNGs.
        model: weights name or folder of a scan-denoiser (every node must be able to load it).
        concurrency: number of actors (model copies) working in parallel.
        batch_size: files per ``map_batches`` call.
        num_cpus: CPUs reserved per actor (its torch threads).
        num_gpus: GPUs per actor; > 0 runs the model on the GPU Ray assigns.
        dpi: resolution at which PDF pages are rendered (default: each scan's own, as the CLI).
        overrides: scan-denoiser config overrides, e.g. ``{"binarize": True}``.

    Returns:
        ``{"written": [...], "failed": [(path, reason)], "pages": n, "seconds": s}``.
    """
    import ray

    from aepipe.io import atomic_write
    from aepipe.ray import StageMapper

    start = time.perf_counter()
    src = str(input_dir)
    paths = src if "://" in src else [str(p) for p in list_inputs(Path(src))]
    if not paths:
        raise SystemExit(f"no image or PDF files in {input_dir}")
    # Reading bytes is I/O, not compute: the read tasks ask for no CPU, so actors holding every
    # CPU of a small cluster cannot starve them (which would stall the job).
    ds = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0, concurrency=4)
    ds = ds.map_batches(
        StageMapper,
        fn_constructor_kwargs=dict(
            weights=model, encode="png", keep_image=False, dpi=dpi, **(overrides or {})
        ),
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    out = Path(output_dir)
    written: list[str] = []
    seen: set[str] = set()
    failed: list[tuple[str, str]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name, png, error, path in zip(
            batch["name"], batch["png"], batch["error"], batch["path"], strict=True
        ):
            if error:
                failed.append((str(path), str(error)))
                continue
            if name in seen:  # a retried task (its worker died) may deliver a page again
                continue
            seen.add(name)
            blob = bytes(png)
            written.append(str(atomic_write(out / f"{name}.png", lambda fh, b=blob: fh.write(b))))
    return {
        "written": sorted(written),
        "failed": failed,
        "pages": len(written),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--model", default="scan-denoiser", help="weights name or folder")
    parser.add_argument("--concurrency", type=int, default=2, help="actors (model copies)")
    parser.add_argument("--batch-size", type=int, default=4, help="files per actor call")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    parser.add_argument(
        "--dpi", type=int, default=None, help="PDF rendering resolution (default: the scan's own)"
    )
    parser.add_argument("--binarize", action="store_true", help="bilevel pages")
    parser.add_argument(
        "--address", default=None, help="Ray cluster: 'auto', ray://host:10001 (default: local)"
    )
    args = parser.parse_args(argv)

    import ray

    ray.init(address=args.address, log_to_driver=False)
    try:
        result = run(
            args.input_dir,
            args.output_dir,
            model=args.model,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            dpi=args.dpi,
            overrides={"binarize": True} if args.binarize else None,
        )
    finally:
        ray.shutdown()
    for _path, reason in result["failed"]:
        print(f"failed: {reason}", file=sys.stderr)
    rate = result["pages"] / result["seconds"] if result["seconds"] else 0.0
    print(
        f"{result['pages']} pages written to {args.output_dir}, {len(result['failed'])} files "
        f"failed, {result['seconds']:.1f} s ({rate:.2f} pages/s)",
        file=sys.stderr,
    )
    return 1 if result["failed"] else (0 if result["pages"] else 3)


if __name__ == "__main__":
    sys.exit(main())
