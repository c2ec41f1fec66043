"""Peak memory while streaming 10,000 images through ``Pipeline.map``, against collecting them.

    .venv/bin/python benchmarks/streaming_memory.py [--n 10000] [--size 64] [--model NAME|DIR|tiny]

Images come from a generator, go through the stage in batches and are dropped after use
(streaming), or are all kept in a list (what a non-streaming job holds). RSS is read from
/proc/self/status after every 5% of the images. Writes benchmarks/results/streaming_memory.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import write_report  # a sibling module

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(model: str, stage_name: str):
    from aepipe.stage import load_stage, stage_class
    from aepipe.weights import shipped_names

    if model == "tiny" or (model == stage_name and model not in shipped_names()):
        tmp = Path(tempfile.mkdtemp(prefix="aepipe-bench-"))
        stage_class(stage_name).tiny(seed=0).save_pretrained(tmp / stage_name)
        return load_stage(tmp / stage_name), f"tiny {stage_name} (seed 0; shipped weights absent)"
    return load_stage(model), model


def run(pipe, n: int, size: int, batch_size: int, keep: bool) -> dict[str, object]:
    rng = np.random.default_rng(0)

    def source():
        for _ in range(n):
            yield rng.integers(0, 256, (size, size), dtype=np.uint8)

    kept = []
    trace = []
    start_rss = rss_mb()
    t0 = time.perf_counter()
    step = max(1, n // 20)
    for i, out in enumerate(pipe.map(source(), batch_size=batch_size), 1):
        if keep:
            kept.append(out)
        if i % step == 0:
            trace.append((i, round(rss_mb(), 1)))
    seconds = time.perf_counter() - t0
    at = dict(trace)
    first = trace[1][1] if len(trace) > 1 else trace[0][1]
    return {
        "mode": "collect all results" if keep else "stream (Pipeline.map)",
        "images": n,
        "rss_start_mb": round(start_rss, 1),
        "rss_at_10pct_mb": first,
        "rss_end_mb": at[max(at)],
        "growth_10_to_100pct_mb": round(at[max(at)] - first, 1),
        "max_rss_during_mb": max(v for _, v in trace),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "images_per_s": round(n / seconds, 1),
        "trace": trace,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="square image side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="salt-pepper", help="weights name/folder, or 'tiny'")
    parser.add_argument("--stage", default="impulse-denoiser", help="stage of a tiny model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=["stream", "collect"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is None:
        return compare(args, argv)

    import torch

    from aepipe import Pipeline
    from aepipe.weights import shipped_names

    torch.set_num_threads(args.threads)
    model = args.model if args.model in shipped_names() or Path(args.model).is_dir() else "tiny"
    stage, label = load(model, args.stage)
    pipe = Pipeline([stage])
    list(pipe.map((np.zeros((args.size, args.size), np.uint8) for _ in range(8)), 8))  # warm-up
    row = run(pipe, args.n, args.size, args.batch_size, args.one == "collect")
    print(json.dumps({"model": label, "row": row}))
    return 0


def compare(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run each mode in its own fresh process, so each peak RSS is its own."""
    import subprocess

    rows = []
    label = ""
    for mode in ("stream", "collect"):
        cmd = [
            sys.executable,
            __file__,
            *(argv if argv is not None else sys.argv[1:]),
            "--one",
            mode,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(result["row"])
        label = result["model"]
    cmd = "python benchmarks/streaming_memory.py " + " ".join(argv or sys.argv[1:])
    loadavg = os.getloadavg()[0]
    lines = [
        f"# Streaming memory: {args.n:,} images of {args.size}x{args.size} through `{label}`",
        "",
        f"Command: `{cmd.strip()}`; batch size {args.batch_size}, {args.threads} torch thread(s), "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}.",
        "Each mode runs in a fresh process; RSS = resident memory of that whole process (torch "
        "included), peak = VmHWM.",
        "",
        "| mode | images | RSS at 10% (MB) | RSS at 100% (MB) | growth 10%->100% (MB) | "
        "peak RSS (MB) | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['images']:,} | {r['rss_at_10pct_mb']} | {r['rss_end_mb']} | "
            f"{r['growth_10_to_100pct_mb']} | {r['peak_rss_mb']} | {r['images_per_s']} |"
        )
    lines += [
        "",
        f"1-minute load average when the run ended: {loadavg:.1f} (other jobs share the machine).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    payload = {"command": cmd, "model": label, "rows": rows}
    write_report(RESULTS / "streaming_memory.md", text, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
