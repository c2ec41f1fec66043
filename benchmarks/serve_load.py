"""A small, bounded load test of ``aepipe serve``: POST /v1/clean-scan with a 540x420 page.

    .venv/bin/python benchmarks/serve_load.py [--requests 60] [--clients 1 4]
        [--model scan-denoiser|DIR|tiny] [--server-concurrency 1] [--threads 1]

Starts ``aepipe serve`` on 127.0.0.1 (a free port; loopback only), waits for /healthz, sends a
few warm-up requests, then for each number of clients sends --requests requests from that many
client threads and reports requests per second and latency percentiles. The page is a synthetic
540x420 scan (aepipe.data.synthetic_pages). Writes benchmarks/results/serve_load.md and .json.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from report import write_report  # a sibling module
from scan_weights import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_png(height: int, width: int) -> bytes:
    from PIL import Image

    from aepipe.data.synthetic_pages import make_pair

    dirty, _ = make_pair(0, height=height, width=width)
    buf = io.BytesIO()
    Image.fromarray(dirty).save(buf, format="PNG")
    return buf.getvalue()


def load(url: str, body: bytes, requests: int, clients: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients))

    def one(_: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        resp = client.post(url, files={"file": ("page.png", body, "image/png")})
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)
            errors += resp.status_code != 200

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    client.close()
    ms = np.array(latencies) * 1e3
    return {
        "clients": clients,
        "requests": requests,
        "errors": errors,
        "req_per_s": round(requests / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per client setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--model", default="scan-denoiser", help="weights name/folder, 'tiny' or 'default-size'"
    )
    parser.add_argument("--server-concurrency", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--height", type=int, default=420)
    parser.add_argument("--width", type=int, default=540)
    args = parser.parse_args(argv)
    if args.requests > 2000:
        parser.error("--requests is capped at 2000 to keep the test bounded")

    import httpx

    model, label = resolve_model(args.model)
    body = page_png(args.height, args.width)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(BIN / "aepipe"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--scan-model", model, "--denoise-model", "none", "--colorize-model", "none",
        "--faces-model", "none", "--device", "cpu", "--threads", str(args.threads),
        "--concurrency", str(args.server_concurrency), "--log-level", "warning",
    ]  # fmt: skip
    log = Path(tempfile.mkdtemp(prefix="aepipe-serve-")) / "server.log"
    with log.open("w") as fh:
        server = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
    rows = []
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: see {log}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server did not start: see {log}")
            time.sleep(0.2)
        load(f"{url}/v1/clean-scan", body, 3, 1)  # warm-up
        rows = [load(f"{url}/v1/clean-scan", body, args.requests, c) for c in args.clients]
    finally:
        server.terminate()
        server.wait(timeout=30)
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"python benchmarks/serve_load.py {shown}".strip()
    loadavg = os.getloadavg()[0]
    lines = [
        f"# HTTP load test: POST /v1/clean-scan, {args.width}x{args.height} PNG page "
        f"({len(body) / 1024:.0f} kB), `{label}`",
        "",
        f"Command: `{command}`; server on 127.0.0.1 with --concurrency "
        f"{args.server_concurrency} and {args.threads} torch thread(s); clients on the same "
        f"machine ({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}).",
        "",
        "| clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['req_per_s']} | {r['p50_ms']} | "
        f"{r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        for r in rows
    ]
    lines += [
        "",
        f"1-minute load average when the run ended: {loadavg:.1f} (other jobs share the machine).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    payload = {"command": command, "model": label, "rows": rows}
    write_report(RESULTS / "serve_load.md", text, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
