"""Soak test of ``aepipe serve`` under hostile clients (loopback only; bounded in time and count).

    .venv/bin/python benchmarks/serve_soak.py [--seconds 120] [--good-clients 3]
        [--hostile-clients 2] [--hostile-rate 5] [--model scan-denoiser|DIR|tiny]
        [--max-requests 20000]

Starts ``aepipe serve`` on 127.0.0.1 (a free port) with an API key from a temporary key file and
small limits, then alternates two kinds of phase (``--rounds`` of each, ``--seconds`` in all, so
both see the same background load on a shared machine) against the same server:

1. **quiet**: ``--good-clients`` threads POST a 320x240 synthetic page to /v1/clean-scan with
   the key, back to back;
2. **hostile**: the same good clients, plus ``--hostile-clients`` processes cycling through
   hostile requests: no or wrong key, oversize chunked body without Content-Length, slow body,
   slow headers (ten at once), malformed multipart, wrong content type, a 1200-page PDF, a
   200x200-inch PDF page, a PNG header claiming 10^10 pixels, disconnects mid-upload and
   mid-response, and a burst over the per-client limit.

Reports requests served, status codes by kind, p50/p99 of the good requests in both phases,
server RSS (``/proc/PID/status``) after warm-up and at the end, and the 5xx answers that are not
the documented 503 (busy). Writes benchmarks/results/serve_soak.md and .json.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_weights import resolve_model
from serve_load import BIN, RESULTS, free_port, page_png

KEY_GOOD = "soak-good-client-key-0001"
KEY_HOSTILE = "soak-hostile-client-key-0002"
LIMIT_MB = 1.0
SERVER_OPTS = [
    "--concurrency", "2", "--queue", "32", "--threads", "1", "--max-upload-mb", str(LIMIT_MB),
    "--max-pages", "5", "--max-pixels", "4000000", "--request-timeout", "30",
    "--body-timeout", "2", "--header-timeout", "2", "--per-client", "4", "--dpi", "72",
]  # fmt: skip


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def good_client(url: str, body: bytes, stop: float, cap: int, out: list[tuple[float, int]]) -> None:
    """POST ``body`` with the good key until ``stop`` (monotonic) or ``cap`` requests."""
    import httpx

    headers = {"Authorization": f"Bearer {KEY_GOOD}"}
    with httpx.Client(timeout=60, headers=headers) as client:
        while time.monotonic() < stop and len(out) < cap:
            t0 = time.perf_counter()
            try:
                code = client.post(url, files={"file": ("p.png", body, "image/png")}).status_code
            except httpx.HTTPError:
                code = 0  # transport failure: counted, never expected
            out.append((time.perf_counter() - t0, code))


# ---- hostile requests (each returns an outcome label: a status code or what happened) --------


def _raw(port: int, head: str, body: bytes = b"", timeout: float = 15) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head.replace("\n", "\r\n").encode() + body)
    return sock


def _status(sock: socket.socket) -> str:
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, TimeoutError, OSError):
        return "reset"
    finally:
        sock.close()
    return data.split()[1].decode() if data.startswith(b"HTTP/1.1") else "closed"


def _head(ctype: str, extra: str = "", key: str = KEY_HOSTILE) -> str:
    return (
        f"POST /v1/clean-scan HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n"
        f"Content-Type: {ctype}\n{extra}\n"
    )


_CLIENTS: list[Any] = []  # one httpx client per hostile process (building one costs ~10 ms CPU)


def _post(port: int, data: bytes, name: str, key: str | None = KEY_HOSTILE, ctype: str = "") -> str:
    import httpx

    if not _CLIENTS:
        _CLIENTS.append(httpx.Client(timeout=30, limits=httpx.Limits(max_connections=8)))
    client = _CLIENTS[0]
    url = f"http://127.0.0.1:{port}/v1/clean-scan"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        if ctype:
            resp = client.post(url, content=data, headers={**headers, "content-type": ctype})
        else:
            resp = client.post(url, files={"file": (name, data)}, headers=headers)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(resp.status_code)


def oversize_chunked(port: int) -> str:
    """Chunked body, no Content-Length, offering 64 MB; the server must stop it."""
    sock = _raw(port, _head("application/octet-stream", "Transfer-Encoding: chunked\n"))
    chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
    sent = 0
    try:
        while sent < 64 * 2**20 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += 65536
    except OSError:
        pass
    status = _status(sock)
    return status if sent < LIMIT_MB * 2**20 + 16 * 2**20 else f"{status}-not-cut"


def slow_body(port: int) -> str:
    return _status(_raw(port, _head("image/png", "Content-Length: 50000\n"), b"\x89PNG"))


def slow_headers_x10(port: int) -> str:
    socks = [_raw(port, "POST /v1/clean-scan HTTP/1.1\nHost: x\nX-Slow: ") for _ in range(10)]
    return Counter(_status(s) for s in socks).most_common(1)[0][0]


def disconnect_upload(port: int) -> str:
    _raw(port, _head("image/png", "Content-Length: 50000\n"), b"\x89PNG" * 100).close()
    return "dropped"


def disconnect_response(port: int, page: bytes) -> str:
    extra = f"Content-Length: {len(page)}\n"
    _raw(port, _head("image/png", extra, KEY_GOOD[:-1] + "x"), page).close()
    _raw(port, _head("image/png", extra), page).close()
    return "dropped"


def burst(port: int, page: bytes) -> str:
    """Eight requests at once from one client (limit 4): some must get 429."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _post(port, page, "p.png"), range(8)))
    return "429-seen" if "429" in codes else "no-429:" + ",".join(sorted(set(codes)))


def _pdf(sizes: list[tuple[float, float]]) -> bytes:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    for w, h in sizes:
        doc.new_page(w, h)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def _png_bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile_kinds(page: bytes) -> dict[str, Any]:
    """Kind -> a function of the port doing one hostile request and returning its outcome."""
    many, huge, bomb = _pdf([(20.0, 20.0)] * 1200), _pdf([(14_400.0, 14_400.0)]), _png_bomb()
    tiny = page_png(32, 32)  # the burst's accepted requests are real work: keep it small
    return {
        "no_key": lambda p: _post(p, page, "p.png", key=None),
        "wrong_key": lambda p: _post(p, page, "p.png", key="not-the-right-key-at-all"),
        "oversize_chunked": oversize_chunked,
        "slow_body": slow_body,
        "slow_headers_x10": slow_headers_x10,
        "malformed_multipart": lambda p: _post(
            p, b"--zzz\r\nContent-Disp", "", ctype="multipart/form-data; boundary=zzz"
        ),
        "wrong_type": lambda p: _post(p, page, "", ctype="application/json"),
        "pdf_1200_pages": lambda p: _post(p, many, "many.pdf"),
        "pdf_huge_page": lambda p: _post(p, huge, "huge.pdf"),
        "png_bomb": lambda p: _post(p, bomb, "bomb.png"),
        "disconnect_upload": disconnect_upload,
        "disconnect_response": lambda p: disconnect_response(p, page),
        "burst_over_per_client": lambda p: burst(p, tiny),
    }


def hostile_process(
    port: int, seconds: float, rate: float, seed: int, ready: Any, go: Any, queue: Any
) -> None:
    """Build the payloads, then cycle through the hostile kinds for ``seconds`` after ``go``,
    starting one every ``1 / rate`` s (or back to back when they take longer)."""
    page = page_png(240, 320)
    kinds = hostile_kinds(page)
    names = list(kinds)
    np.random.default_rng(seed).shuffle(names)
    outcomes: dict[str, Counter[str]] = {k: Counter() for k in kinds}
    ready.set()
    go.wait()
    start = time.monotonic()
    stop = start + seconds
    cpu0 = time.process_time()
    i = 0
    while time.monotonic() < stop:
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        kind = names[i % len(names)]
        try:
            outcomes[kind][kinds[kind](port)] += 1
        except Exception as exc:  # a client-side failure is an outcome too
            outcomes[kind][f"client-{type(exc).__name__}"] += 1
        i += 1
    queue.put(({k: dict(v) for k, v in outcomes.items()}, time.process_time() - cpu0))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(
    port: int, body: bytes, seconds: float, good: int, hostile: int, cap: int, **kw: Any
) -> dict[str, Any]:
    """One phase: ``good`` client threads (and ``hostile`` processes) for ``seconds``."""
    url = f"http://127.0.0.1:{port}/v1/clean-scan"
    ctx = mp.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    readies = [ctx.Event() for _ in range(hostile)]
    procs = [
        ctx.Process(
            target=hostile_process,
            args=(port, seconds, kw["rate"], i, readies[i], go, queue),
        )
        for i in range(hostile)
    ]
    for proc in procs:
        proc.start()
    for ready in readies:  # start-up and payload building stay out of the timed phase
        ready.wait(120)
    server_cpu = cpu_s(kw["server_pid"])
    go.set()
    stop = time.monotonic() + seconds
    results: list[list[tuple[float, int]]] = [[] for _ in range(good)]
    threads = [
        threading.Thread(target=good_client, args=(url, body, stop, cap // good, results[i]))
        for i in range(good)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server_cpu = cpu_s(kw["server_pid"]) - server_cpu
    hostile_out: dict[str, Counter[str]] = {}
    hostile_cpu = 0.0
    for _ in procs:
        outcomes, used = queue.get(timeout=seconds + 120)
        hostile_cpu += used
        for kind, counts in outcomes.items():
            hostile_out.setdefault(kind, Counter()).update(counts)
    for proc in procs:
        proc.join(30)
    return {
        "seconds": seconds,
        "good": [r for rs in results for r in rs],
        "hostile": hostile_out,
        "server_cpu_s": server_cpu,
        "hostile_client_cpu_s": hostile_cpu,
    }


def summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one kind of phase merged: counts, good latency percentiles, CPU seconds."""
    good = [r for part in parts for r in part["good"]]
    hostile: Counter[tuple[str, str]] = Counter()
    for part in parts:
        for kind, counts in part["hostile"].items():
            hostile.update({(kind, outcome): n for outcome, n in counts.items()})
    ms = np.array([dt for dt, code in good if code == 200]) * 1e3
    kinds = sorted({kind for kind, _ in hostile})
    return {
        "seconds": sum(part["seconds"] for part in parts),
        "good_requests": len(good),
        "good_codes": dict(Counter(str(code) for _, code in good)),
        "good_p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "good_p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "hostile": {k: {o: n for (kk, o), n in hostile.items() if kk == k} for k in kinds},
        "server_cpu_s": round(sum(part["server_cpu_s"] for part in parts), 1),
        "hostile_client_cpu_s": round(sum(part["hostile_client_cpu_s"] for part in parts), 1),
    }


def start_server(model: str, port: int, keys: Path, log: Path) -> subprocess.Popen[bytes]:
    """``aepipe serve`` on 127.0.0.1 (only) with the soak's limits; waits for /healthz."""
    import httpx

    cmd = [
        str(BIN / "aepipe"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--scan-model", model, "--denoise-model", "none", "--colorize-model", "none",
        "--faces-model", "none", "--device", "cpu", "--api-key-file", str(keys),
        "--log-level", "warning", *SERVER_OPTS,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "AEPIPE_API_KEYS"}
    with log.open("w") as fh:
        server = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"server did not start: see {log}")
        time.sleep(0.2)


def unexpected_5xx(run: dict[str, Any]) -> int:
    """5xx answers other than the documented 503 (busy), good and hostile together."""
    codes = Counter(run["good_codes"])
    for counts in run["hostile"].values():
        codes.update(counts)
    return sum(n for code, n in codes.items() if code.startswith("5") and code != "503")


def report(args: argparse.Namespace, label: str, runs: dict[str, Any], rss: list[float]) -> str:
    quiet, hostile = runs["quiet"], runs["hostile"]
    ratio = (hostile["good_p99_ms"] or 0) / (quiet["good_p99_ms"] or 1)
    bad = unexpected_5xx(quiet) + unexpected_5xx(hostile)
    shown = " ".join(sys.argv[1:])
    lines = [
        f"# Soak: `aepipe serve` under hostile clients ({label})",
        "",
        f"Command: `python benchmarks/serve_soak.py {shown}`",
        f"Server: 127.0.0.1, {' '.join(SERVER_OPTS)}; good page 320x240 PNG, "
        f"{args.good_clients} good clients; {args.hostile_clients} hostile processes in the "
        f"hostile phase, each starting {args.hostile_rate:g} hostile requests/s. Machine: "
        f"{os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f} at the end "
        "(shared with other jobs).",
        "",
        "| phase | seconds | good requests | good codes | p50 ms | p99 ms | server CPU s | "
        "hostile clients' CPU s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['seconds']:.0f} | {r['good_requests']} | {r['good_codes']} | "
            f"{r['good_p50_ms']} | {r['good_p99_ms']} | {r['server_cpu_s']} | "
            f"{r['hostile_client_cpu_s']} |"
        )
    lines += ["", "| hostile kind | outcomes (status or what happened: count) |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in hostile["hostile"].items()]
    served = sum(sum(v.values()) for v in hostile["hostile"].values())
    lines += [
        "",
        f"- hostile requests made: {served}; good requests served in all: "
        f"{quiet['good_requests'] + hostile['good_requests']}",
        f"- good p99 hostile / quiet: {ratio:.2f} (target <= 2)",
        f"- server RSS: {rss[0]:.0f} MB after warm-up, {rss[1]:.0f} MB at the end "
        f"(growth {rss[1] - rss[0]:+.0f} MB; target < 50)",
        f"- unexpected 5xx (not 503): {bad} (target 0)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="both phases together")
    parser.add_argument("--good-clients", type=int, default=3)
    parser.add_argument("--hostile-clients", type=int, default=2)
    parser.add_argument(
        "--hostile-rate", type=float, default=5, help="hostile requests/s per hostile process"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="quiet/hostile phase pairs, alternating"
    )
    parser.add_argument("--model", default="scan-denoiser", help="weights, 'tiny' or folder")
    parser.add_argument("--max-requests", type=int, default=20_000, help="good requests cap")
    args = parser.parse_args(argv)
    if not 10 <= args.seconds <= 600:
        parser.error("--seconds must be between 10 and 600 (a bounded soak)")
    import httpx

    model, label = resolve_model(args.model)
    body = page_png(240, 320)
    tmp = Path(tempfile.mkdtemp(prefix="aepipe-soak-"))
    keys = tmp / "keys"
    keys.write_text(f"{KEY_GOOD}\n{KEY_HOSTILE}\n")
    port = free_port()
    server = start_server(model, port, keys, tmp / "server.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/clean-scan"
        for _ in range(3):  # warm-up
            httpx.post(
                url,
                files={"file": ("p.png", body)},
                headers={"Authorization": f"Bearer {KEY_GOOD}"},
                timeout=60,
            )
        rss = [rss_mb(server.pid)]
        # Quiet and hostile phases alternate, so both see the same background load.
        step = args.seconds / (2 * args.rounds)
        cap = args.max_requests // (2 * args.rounds)
        kw = {"rate": args.hostile_rate, "server_pid": server.pid}
        parts: dict[str, list[dict[str, Any]]] = {"quiet": [], "hostile": []}
        for _ in range(args.rounds):
            parts["quiet"].append(phase(port, body, step, args.good_clients, 0, cap, **kw))
            parts["hostile"].append(
                phase(port, body, step, args.good_clients, args.hostile_clients, cap, **kw)
            )
        runs = {name: summary(p) for name, p in parts.items()}
        rss.append(rss_mb(server.pid))
        alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = (
        report(args, label, runs, rss)
        + f"- /healthz after the run: {'200' if alive else 'FAILED'}\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_soak.md").write_text(text)
    (RESULTS / "serve_soak.json").write_text(
        json.dumps({"runs": runs, "rss_mb": rss}, indent=2) + "\n"
    )
    return 0 if unexpected_5xx(runs["quiet"]) + unexpected_5xx(runs["hostile"]) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
