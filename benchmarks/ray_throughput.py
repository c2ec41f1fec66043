"""Throughput of the scan-denoiser in Ray Data at concurrency 1 and 2, against one process.

    .venv/bin/python benchmarks/ray_throughput.py [--pages 48] [--model scan-denoiser|DIR|tiny]
        [--concurrency 1 2] [--data FOLDER]

Pages are synthetic 540x420 scans (aepipe.data.synthetic_pages) written as PNG to a temporary
folder, unless --data gives a folder. Each configuration runs the same job end to end: read the
files, decode, clean, encode PNG, bring the bytes back to the driver (actor start-up and model
loading included, as a batch job pays them). "one process" is the same StageMapper called in a
plain loop with one torch thread. Writes benchmarks/results/ray_throughput.md and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from report import write_report  # a sibling module
from scan_weights import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def make_pages(folder: Path, n: int, height: int, width: int) -> list[Path]:
    from PIL import Image

    from aepipe.data.synthetic_pages import make_pair

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        dirty, _ = make_pair(i, height=height, width=width)
        path = folder / f"page_{i:04d}.png"
        Image.fromarray(dirty).save(path)
        paths.append(path)
    return paths


def steady_rate(arrivals: list[tuple[float, int]]) -> float:
    """Pages per second after the first result arrived (start-up and model loading excluded)."""
    if len(arrivals) < 2:
        return float("nan")
    pages = sum(n for _, n in arrivals[1:])
    return pages / max(arrivals[-1][0] - arrivals[0][0], 1e-9)


def one_process(paths: list[Path], model: str, batch_size: int) -> tuple[float, float]:
    import numpy as np
    import torch

    from aepipe.ray import StageMapper

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    mapper = StageMapper(weights=model, device="cpu", encode="png", keep_image=False)
    arrivals = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        batch = {
            "bytes": np.array([p.read_bytes() for p in chunk], dtype=object),
            "path": np.array([str(p) for p in chunk], dtype=object),
        }
        out = mapper(batch)
        assert not any(out["error"])
        arrivals.append((time.perf_counter(), len(out["png"])))
    return time.perf_counter() - t0, steady_rate(arrivals)


def with_ray(
    paths: list[Path], model: str, concurrency: int, batch_size: int
) -> tuple[float, float]:
    import ray

    from aepipe.ray import StageMapper

    t0 = time.perf_counter()
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True, num_cpus=0)
    ds = ds.map_batches(
        StageMapper,
        fn_constructor_kwargs=dict(weights=model, encode="png", keep_image=False, threads=1),
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    arrivals = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        arrivals.append((time.perf_counter(), len(batch["png"])))
    pages = sum(n for _, n in arrivals)
    assert pages == len(paths), pages
    return time.perf_counter() - t0, steady_rate(arrivals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=48)
    parser.add_argument("--height", type=int, default=420)
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument(
        "--model", default="scan-denoiser", help="weights name/folder, 'tiny' or 'default-size'"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4, help="files per actor call")
    parser.add_argument("--data", type=Path, default=None, help="folder of pages instead")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration (best kept)")
    args = parser.parse_args(argv)

    import ray

    model, label = resolve_model(args.model)
    if args.data:
        from aepipe.io import is_image_path

        paths = sorted(p for p in args.data.iterdir() if is_image_path(p))[: args.pages]
        source = str(args.data)
    else:
        paths = make_pages(
            Path(tempfile.mkdtemp(prefix="aepipe-pages-")), args.pages, args.height, args.width
        )
        source = f"synthetic {args.width}x{args.height} pages"
    rows = []
    best, steady = min(one_process(paths, model, args.batch_size) for _ in range(args.repeat))
    rows.append(
        {"config": "one process, no Ray (1 thread)", "concurrency": 1, "seconds": best,
         "steady": steady}
    )  # fmt: skip
    ray.init(num_cpus=max(args.concurrency), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for c in args.concurrency:
            best, steady = min(
                with_ray(paths, model, c, args.batch_size) for _ in range(args.repeat)
            )
            rows.append(
                {
                    "config": f"Ray Data, {c} actor(s) x 1 CPU",
                    "concurrency": c,
                    "seconds": best,
                    "steady": steady,
                }
            )
    finally:
        ray.shutdown()
    base = rows[0]["seconds"]
    for r in rows:
        r["pages_per_s"] = round(len(paths) / r["seconds"], 2)
        r["speedup"] = round(base / r["seconds"], 2)
        r["seconds"] = round(r["seconds"], 2)
        r["steady_pages_per_s"] = round(r.pop("steady"), 2)
    cmd = "python benchmarks/ray_throughput.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    loadavg = os.getloadavg()[0]
    lines = [
        f"# Ray Data throughput: {len(paths)} pages ({source}), `{label}`",
        "",
        f"Command: `{cmd.strip()}`; {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}, best of {args.repeat} runs, end to end "
        "(read, decode, clean, PNG encode, results to the driver; actor start-up included).",
        "",
        "| configuration | seconds | pages/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['config']} | {r['seconds']} | {r['pages_per_s']} | {r['speedup']} |" for r in rows
    ]
    lines += [
        "",
        f"1-minute load average when the run ended: {loadavg:.1f} (other jobs share the machine).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    payload = {"command": cmd, "model": label, "pages": len(paths), "rows": rows}
    write_report(RESULTS / "ray_throughput.md", text, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
