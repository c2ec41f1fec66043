"""The service under hostile clients, over real HTTP: auth, limits and faults.

One uvicorn server (the exact config ``aepipe serve`` runs, :func:`aepipe.serve.uvicorn_config`)
serves tiny seeded stages on a free 127.0.0.1 port from a thread of the test process, with small
limits so every fault is quick to provoke. After each fault a healthy request must still get 200.
"""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="needs the [serve] extra")
uvicorn = pytest.importorskip("uvicorn", reason="needs the [serve] extra")
pytest.importorskip("fastapi", reason="needs the [serve] extra")

pytestmark = [pytest.mark.serve, pytest.mark.timeout(180)]

KEY_A = "a" * 20 + "-test-key"
KEY_B = "b" * 20 + "-test-key"
LIMIT = 200_000  # bytes per body
SLOW_ROWS = 99  # an image this many rows high makes the slow stage sleep
SLOW_S = 4.0
REQUEST_TIMEOUT = 2.0
BODY_TIMEOUT = 1.5
HEADER_TIMEOUT = 1.0


class SlowStage:
    """A real stage that sleeps first on images ``SLOW_ROWS`` high (a model call that hangs)."""

    def __init__(self, stage: Any) -> None:
        self._stage = stage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)

    def __call__(self, batch: Any) -> Any:
        if batch.images.shape[-2] == SLOW_ROWS:
            time.sleep(SLOW_S)
        return self._stage(batch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_weights: dict[str, Path]) -> Iterator[tuple[str, int]]:
    from aepipe.serve import ServeSettings, create_app, uvicorn_config
    from aepipe.stage import load_stage

    settings = ServeSettings(
        device="cpu",
        concurrency=2,
        queue=8,
        threads=1,
        max_upload_bytes=LIMIT,
        max_pixels=400_000,
        max_pages=3,
        dpi=72,
        api_keys=(KEY_A, KEY_B),
        request_timeout=REQUEST_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        header_timeout=HEADER_TIMEOUT,
        per_client=2,
    )
    stages = {
        "clean-scan": load_stage(tiny_weights["scan-denoiser"], device="cpu"),
        "denoise": SlowStage(load_stage(tiny_weights["impulse-denoiser"], device="cpu")),
    }
    port = free_port()
    app = create_app(settings, stages)  # type: ignore[arg-type]
    srv = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    srv.should_exit = True
    thread.join(15)


def png(rows: int = 40, cols: int = 50, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (rows, cols), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(url: str, data: bytes, name: str = "p.png", key: str = KEY_A, **kw: Any) -> Any:
    return httpx.post(url, files={"file": (name, data)}, headers=auth(key), timeout=30, **kw)


def assert_error(resp: Any, status: int) -> dict[str, str]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] and body["detail"], body
    return body


def assert_healthy(base: str) -> None:
    """A normal request right after a fault still gets its 200."""
    resp = upload(f"{base}/v1/clean-scan", png())
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"


def raw(port: int, head: str, body: bytes = b"") -> socket.socket:
    """A socket that sent ``head`` (request line + headers, CRLF-joined) and ``body``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode() + body)
    return sock


def read_status(sock: socket.socket) -> int | None:
    """The status code the server answered on ``sock``, ``None`` when it just closed."""
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, TimeoutError):
        return None
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1") else None


def test_auth_required_with_json_401(server: tuple[str, int]) -> None:
    base, _ = server
    url = f"{base}/v1/clean-scan"
    for headers in ({}, auth("wrong-key-of-some-length"), {"Authorization": f"Basic {KEY_A}"}):
        resp = httpx.post(url, files={"file": ("p.png", png())}, headers=headers, timeout=10)
        assert_error(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{base}/openapi.json", timeout=10), 401)
    health = httpx.get(f"{base}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert KEY_A not in health.text and "weights" not in health.text
    assert upload(url, png(), key=KEY_B).status_code == 200
    assert_healthy(base)


def test_keys_from_file_or_env_never_argv(tmp_path: Path) -> None:
    from aepipe.errors import ConfigError
    from aepipe.serve_guard import Auth, load_api_keys

    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\n{KEY_A}\n\n  {KEY_B}  \n")
    assert load_api_keys(keys, {}) == [KEY_A, KEY_B]
    assert load_api_keys(None, {"AEPIPE_API_KEYS": f"{KEY_A}, {KEY_B},"}) == [KEY_A, KEY_B]
    assert load_api_keys(None, {}) == []
    keys.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_api_keys(keys, {})
    gate = Auth(None, [KEY_A, KEY_B])
    assert gate.allowed(KEY_B) and not gate.allowed(KEY_A[:-1]) and not gate.allowed(None)


def test_refuses_public_bind_without_keys() -> None:
    aepipe = str(Path(sys.executable).parent / "aepipe")
    env = {k: v for k, v in os.environ.items() if k != "AEPIPE_API_KEYS"}
    cmd = [aepipe, "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2, res.stderr
    assert "without API keys" in res.stderr and "--insecure-no-auth" in res.stderr


def test_oversize_body_without_content_length_is_cut_off(server: tuple[str, int]) -> None:
    base, port = server
    head = (
        f"POST /v1/clean-scan HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY_A}\n"
        "Content-Type: application/octet-stream\nTransfer-Encoding: chunked\n\n"
    )
    sock = raw(port, head)
    chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
    sent, status = 0, None
    try:
        while sent < 200 * LIMIT:  # offers 40 MB; the server must stop it long before
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(chunk)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    status = read_status(sock)
    sock.close()
    assert status in (413, None), status
    assert sent < LIMIT + 16 * 2**20, sent  # stopped after the limit (plus socket buffers)
    # A Content-Length that is too large is refused before any body is read.
    big = httpx.post(
        f"{base}/v1/clean-scan",
        content=b"\0" * (LIMIT + 1),
        headers={**auth(), "content-type": "application/octet-stream"},
        timeout=10,
    )
    assert_error(big, 413)
    assert_healthy(base)


def test_slow_senders_are_dropped(server: tuple[str, int]) -> None:
    base, port = server
    t0 = time.monotonic()
    # Body trickle: headers promise 10 kB, 100 bytes come, then nothing.
    head = (
        f"POST /v1/clean-scan HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY_A}\n"
        "Content-Type: application/octet-stream\nContent-Length: 10000\n\n"
    )
    body_sock = raw(port, head, b"\0" * 100)
    # Header trickle: a request line and half a header, never finished.
    head_sock = raw(port, "POST /v1/clean-scan HTTP/1.1\nHost: x\nX-Slow: ")
    head_sock.settimeout(10)
    assert read_status(body_sock) == 408
    assert read_status(head_sock) is None  # closed without an answer
    assert time.monotonic() - t0 < BODY_TIMEOUT + HEADER_TIMEOUT + 5
    body_sock.close()
    head_sock.close()
    assert_healthy(base)


def test_malformed_multipart_and_wrong_content_type(server: tuple[str, int]) -> None:
    base, _ = server
    url = f"{base}/v1/clean-scan"
    for ctype, body in (
        ("multipart/form-data", b"--x\r\nnot a part"),  # no boundary parameter
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-da"),
        ("multipart/form-data; boundary=zzz", b"\0garbage" * 100),
    ):
        resp = httpx.post(url, content=body, headers={**auth(), "content-type": ctype}, timeout=10)
        assert resp.status_code in (400, 422), (ctype, resp.status_code, resp.text)
        assert_error(resp, resp.status_code)
    for ctype in ("application/json", "text/plain", "video/mp4"):
        resp = httpx.post(url, content=png(), headers={**auth(), "content-type": ctype}, timeout=10)
        assert_error(resp, 415)
    assert_healthy(base)


def test_pdf_and_image_bombs(server: tuple[str, int], tmp_path: Path) -> None:
    import pypdfium2 as pdfium
    from factory import png_bomb

    base, _ = server
    url = f"{base}/v1/clean-scan"

    def pdf(sizes: list[tuple[float, float]]) -> bytes:
        doc = pdfium.PdfDocument.new()
        for w, h in sizes:
            doc.new_page(w, h)
        buf = io.BytesIO()
        doc.save(buf)
        doc.close()
        return buf.getvalue()

    many = pdf([(20.0, 20.0)] * 1200)  # over a thousand pages in ~150 kB
    assert len(many) < LIMIT
    body = assert_error(upload(url, many, "many.pdf"), 413)
    assert "page" in body["detail"]
    huge = pdf([(14_400.0, 14_400.0)])  # 200 x 200 inch: 207 Mpixel at 72 dpi
    # Edited in place, a page without a scan is never rendered: it comes back as it was.
    kept = upload(url, huge, "huge.pdf")
    assert kept.status_code == 200 and kept.content == huge
    # Asked for rendered pages, the huge page box is refused before rendering.
    assert_error(upload(f"{url}?format=png", huge, "huge.pdf"), 413)
    assert_error(upload(url, png_bomb(tmp_path / "bomb.png").read_bytes()), 413)
    assert_healthy(base)


def test_per_client_limit_429_with_retry_after(server: tuple[str, int]) -> None:
    base, port = server
    head = (
        f"POST /v1/clean-scan HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY_B}\n"
        "Content-Type: application/octet-stream\nContent-Length: 1000\n\n"
    )
    held = [raw(port, head, b"\0" * 10) for _ in range(2)]  # KEY_B's 2 slots, busy uploading
    time.sleep(0.3)
    resp = upload(f"{base}/v1/clean-scan", png(), key=KEY_B)
    assert_error(resp, 429)
    assert int(resp.headers["retry-after"]) >= 1
    # Refused uploads still being sent get the JSON answer, not a connection reset.
    from concurrent.futures import ThreadPoolExecutor

    def refused(_: int) -> int:
        return upload(f"{base}/v1/clean-scan", b"\1" * 190_000, "x.bin", key=KEY_B).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(refused, range(12))) == [429] * 12
    assert_healthy(base)  # another client (KEY_A) is not affected
    for sock in held:
        assert read_status(sock) == 408
        sock.close()
    assert upload(f"{base}/v1/clean-scan", png(), key=KEY_B).status_code == 200


def test_request_timeout_504_and_server_recovers(server: tuple[str, int]) -> None:
    base, _ = server
    t0 = time.monotonic()
    resp = upload(f"{base}/v1/denoise", png(rows=SLOW_ROWS, cols=30))
    elapsed = time.monotonic() - t0
    body = assert_error(resp, 504)
    assert "limit" in body["detail"]
    assert REQUEST_TIMEOUT - 0.1 < elapsed < SLOW_S, elapsed  # answered before the model ended
    assert_healthy(base)
    assert upload(f"{base}/v1/denoise", png(rows=30, cols=30)).status_code == 200


def test_client_disconnects_mid_upload_and_mid_response(server: tuple[str, int]) -> None:
    base, port = server
    head = (
        f"POST /v1/clean-scan HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY_A}\n"
        "Content-Type: application/octet-stream\nContent-Length: 50000\n\n"
    )
    raw(port, head, b"\0" * 1000).close()  # gone mid-upload
    data = png(200, 300)
    head = (
        f"POST /v1/clean-scan HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY_A}\n"
        f"Content-Type: image/png\nContent-Length: {len(data)}\n\n"
    )
    raw(port, head, data).close()  # gone before the response
    time.sleep(0.5)
    assert_healthy(base)
    health = httpx.get(f"{base}/healthz", timeout=10).json()
    assert health["status"] == "ok"


def test_client_identity_is_the_key_only_when_keys_are_checked() -> None:
    from aepipe.serve_guard import ClientLimit

    scope = {"client": ("10.0.0.7", 5000), "headers": [(b"authorization", b"Bearer made-up")]}
    assert ClientLimit(None, 1, by_key=False).client_key(scope) == "ip:10.0.0.7"
    assert ClientLimit(None, 1, by_key=True).client_key(scope).startswith("key:")


def test_cli_reads_keys_from_file_and_env(tiny_weights: dict[str, Path], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_A}\n")
    aepipe = str(Path(sys.executable).parent / "aepipe")
    servers = {}
    # Both servers start side by side (each start is mostly an interpreter importing torch).
    for source, env_keys in (("file", ""), ("env", KEY_B)):
        port = free_port()
        cmd = [aepipe, "serve", "--port", str(port), "--device", "cpu", "--threads", "1"]
        cmd += ["--scan-model", str(tiny_weights["scan-denoiser"]), "--log-level", "warning"]
        cmd += ["--denoise-model", "none", "--colorize-model", "none", "--faces-model", "none"]
        if source == "file":
            cmd += ["--api-key-file", str(keys)]
        env = dict(os.environ, AEPIPE_API_KEYS=env_keys, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        servers[source] = (proc, f"http://127.0.0.1:{port}")
    try:
        for source, (proc, url) in servers.items():
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            key = KEY_A if source == "file" else KEY_B
            assert_error(upload(f"{url}/v1/clean-scan", png(), key="x" * 20), 401)
            assert upload(f"{url}/v1/clean-scan", png(), key=key).status_code == 200
    finally:
        stderrs = {}
        for source, (proc, _) in servers.items():
            proc.terminate()
            stderrs[source] = proc.communicate(timeout=30)[1]
    for source, key in (("file", KEY_A), ("env", KEY_B)):
        stderr = stderrs[source]
        assert "API keys: 1 loaded" in stderr and key not in stderr, stderr


def test_a_refusal_does_not_invite_an_expect_continue_upload() -> None:
    """Draining the body would make the server send 100 Continue; a client that asked for it
    gets its refusal without uploading."""
    import asyncio

    from aepipe.serve_guard import drain

    async def never() -> dict[str, object]:
        raise AssertionError("the body was read")

    scope = {"headers": [(b"expect", b"100-continue")]}
    asyncio.run(drain(scope, never))
