"""``aepipe serve`` over real HTTP: a uvicorn server on 127.0.0.1 started by the test.

The server runs tiny seeded weights in a subprocess (``aepipe serve``) on a free loopback port;
every request has a timeout, and the server is stopped at the end of the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="needs the [serve] extra")
pytest.importorskip("fastapi", reason="needs the [serve] extra")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")

from aepipe import apply  # noqa: E402
from aepipe.stage import load_stage  # noqa: E402

pytestmark = [pytest.mark.serve, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent
MAX_UPLOAD = 300_000  # bytes
MAX_PIXELS = 400_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_cli(args: list[str], log: Path, **env: str) -> Iterator[str]:
    """Run ``aepipe serve ARGS`` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    cmd = [str(BIN / "aepipe"), "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, **env)
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(
    tiny_weights: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    args = [
        "--scan-model", str(tiny_weights["scan-denoiser"]),
        "--denoise-model", str(tiny_weights["impulse-denoiser"]),
        "--colorize-model", str(tiny_weights["colorizer"]),
        "--faces-model", str(tiny_weights["face-generator"]),
        "--device", "cpu", "--concurrency", "2", "--threads", "1",
        "--max-upload-mb", str(MAX_UPLOAD / 1024 / 1024), "--max-pixels", str(MAX_PIXELS),
        "--max-pages", "3", "--max-faces", "32", "--dpi", "72", "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serve_cli(args, log, OMP_NUM_THREADS="1") as url:
        yield url


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def page(h: int = 42, w: int = 54, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def post(url: str, data: bytes, name: str = "page.png", **params: object) -> httpx.Response:
    return httpx.post(url, files={"file": (name, data)}, params=params, timeout=30)


def decode(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def assert_json_error(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"] and body["detail"], body
    return body


def test_healthz_and_docs(server: str) -> None:
    # Starlette's own refusals come in the documented {error, detail} shape too.
    missing = assert_json_error(httpx.get(f"{server}/v1/nowhere", timeout=10), 404)
    assert missing["error"] == "not_found"
    wrong = assert_json_error(httpx.get(f"{server}/v1/clean-scan", timeout=10), 405)
    assert wrong["error"] == "method_not_allowed"
    health = httpx.get(f"{server}/healthz", timeout=10).json()
    assert health["status"] == "ok"
    assert health["stages"] == {
        "clean-scan": "scan-denoiser",
        "denoise": "impulse-denoiser",
        "colorize": "colorizer",
        "faces": "face-generator",
        "faces-vqvae": "face-vqvae",
    }
    schema = httpx.get(f"{server}/openapi.json", timeout=10).json()
    for path in ("/v1/clean-scan", "/v1/denoise", "/v1/colorize", "/v1/faces", "/healthz"):
        assert path in schema["paths"], path
    assert (
        "multipart/form-data" in schema["paths"]["/v1/clean-scan"]["post"]["requestBody"]["content"]
    )
    assert httpx.get(f"{server}/docs", timeout=10).status_code == 200


def test_clean_scan_png_equals_library(server: str, tiny_weights: dict[str, Path]) -> None:
    x = page()
    out = decode(post(f"{server}/v1/clean-scan", png(x)))
    want = apply(load_stage(tiny_weights["scan-denoiser"]), x)
    np.testing.assert_array_equal(out, want)
    # The raw file as the body works too.
    raw = httpx.post(f"{server}/v1/clean-scan", content=png(x), timeout=30)
    np.testing.assert_array_equal(decode(raw), want)
    # Per-request config: binarize gives a bilevel page.
    bilevel = post(f"{server}/v1/clean-scan", png(x), binarize="true")
    assert bilevel.status_code == 200 and Image.open(io.BytesIO(bilevel.content)).mode == "1"
    assert_json_error(post(f"{server}/v1/clean-scan", png(x), format="gif"), 422)
    # views: the stage's own option, range-checked like the CLI's --views.
    two = decode(post(f"{server}/v1/clean-scan", png(x), views="2"))
    np.testing.assert_array_equal(two, apply(load_stage(tiny_weights["scan-denoiser"], views=2), x))
    assert_json_error(post(f"{server}/v1/clean-scan", png(x), views="9"), 422)
    # A file name outside Latin-1 (headers are Latin-1): the answer still comes, with the name
    # in RFC 6266's UTF-8 form beside an ASCII fallback.
    named = post(f"{server}/v1/clean-scan", png(x), "日本.png")
    assert named.status_code == 200
    np.testing.assert_array_equal(decode(named), want)
    assert named.headers["content-disposition"] == (
        "inline; filename=\"__.png\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.png"
    )
    # A clean page (white paper, black type) comes back as it was unless clean_all.
    clean = np.full((48, 64), 255, np.uint8)
    clean[10:14, 8:40] = 0
    kept = decode(post(f"{server}/v1/clean-scan", png(clean)))  # bilevel: a 1-bit PNG
    np.testing.assert_array_equal(np.where(kept, 255, 0).astype(np.uint8), clean)
    # Forced through the net: compared with the library on a gray page (a black-and-white one
    # comes back 1-bit, as 1-bit inputs do).
    gray = np.where(clean == 0, 40, 255).astype(np.uint8)
    forced = decode(post(f"{server}/v1/clean-scan", png(gray), clean_all="true"))
    want = apply(load_stage(tiny_weights["scan-denoiser"], clean_pages="process"), gray)
    np.testing.assert_array_equal(forced, want)
    assert not np.array_equal(forced, gray)


def test_clean_scan_pdf_in_pdf_or_zip_out(server: str, tmp_path: Path) -> None:
    import pypdfium2 as pdfium
    from factory import pdf_pages

    src = pdf_pages(tmp_path / "doc.pdf", [(60, 40), (40, 60)], dpi=72)
    resp = post(f"{server}/v1/clean-scan", src.read_bytes(), "doc.pdf")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/pdf"
    pdf = pdfium.PdfDocument(resp.content)
    assert [tuple(round(v) for v in pdf[i].get_size()) for i in range(len(pdf))] == [
        (60, 40),
        (40, 60),
    ]
    pdf.close()
    zipped = post(f"{server}/v1/clean-scan", src.read_bytes(), "doc.pdf", format="png")
    assert zipped.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert names == ["doc-p001.png", "doc-p002.png"]


def test_denoise_colorize_faces(server: str, tiny_weights: dict[str, Path]) -> None:
    x = page(30, 30, seed=1)
    out = decode(post(f"{server}/v1/denoise", png(x)))
    np.testing.assert_array_equal(out, apply(load_stage(tiny_weights["impulse-denoiser"]), x))
    colour = decode(post(f"{server}/v1/colorize", png(np.stack([x] * 3, -1))))
    assert colour.ndim == 3 and colour.shape[-1] == 3
    # Every page of a multi-page upload, as the CLI gives them (only the first came back).
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="TIFF", save_all=True, append_images=[Image.fromarray(x.T)])
    pages = post(f"{server}/v1/denoise", buf.getvalue(), "two.tif")
    assert pages.headers["content-type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(pages.content)).namelist() == ["two-p001.png", "two-p002.png"]
    # A query parameter the route does not take is refused, not ignored.
    body = assert_json_error(post(f"{server}/v1/colorize", png(x), saturation=3), 422)
    assert "saturation" in body["detail"]
    assert_json_error(post(f"{server}/v1/clean-scan", png(x), binarise="true"), 422)

    grid1 = httpx.get(f"{server}/v1/faces", params={"n": 4, "seed": 3}, timeout=30)
    grid2 = httpx.get(f"{server}/v1/faces", params={"n": 4, "seed": 3}, timeout=30)
    grid3 = httpx.get(f"{server}/v1/faces", params={"n": 4, "seed": 4}, timeout=30)
    assert grid1.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode(grid1), decode(grid2))
    assert not np.array_equal(decode(grid1), decode(grid3))
    zipped = httpx.get(
        f"{server}/v1/faces", params={"n": 3, "colorize": "true", "format": "zip"}, timeout=30
    )
    zf = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert zf.namelist() == ["face_00000.png", "face_00001.png", "face_00002.png"]
    assert Image.open(zf.open("face_00000.png")).mode == "RGB"
    assert httpx.get(f"{server}/v1/faces", params={"n": 33}, timeout=10).status_code == 422


def test_bad_uploads_get_json_errors_and_server_keeps_serving(server: str, tmp_path: Path) -> None:
    from factory import png_bomb, truncated

    url = f"{server}/v1/clean-scan"
    assert_json_error(post(url, b"hello, not an image", "note.txt"), 415)
    broken = truncated(tmp_path / "t.png", Image.fromarray(page(200, 200)), "PNG", keep=0.3)
    assert_json_error(post(url, broken.read_bytes()), 422)
    assert_json_error(post(url, b""), 422)
    body = assert_json_error(post(url, png_bomb(tmp_path / "bomb.png").read_bytes()), 413)
    assert "pixels" in body["detail"]
    assert_json_error(post(url, png(np.zeros((700, 700), np.uint8))), 413)  # over MAX_PIXELS
    noise = np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)  # ~160 kB raw
    big = png(np.concatenate([noise, noise]))  # incompressible: over MAX_UPLOAD
    assert len(big) > MAX_UPLOAD
    assert_json_error(post(url, big), 413)
    no_file = httpx.post(url, files={"other": ("a.png", png(page()))}, timeout=10)
    assert_json_error(no_file, 422)
    from factory import pdf_pages

    many = pdf_pages(tmp_path / "many.pdf", [(20, 20)] * 4)
    assert_json_error(post(url, many.read_bytes(), "many.pdf"), 413)
    # Still serving, correctly.
    assert httpx.get(f"{server}/healthz", timeout=10).json()["status"] == "ok"
    assert post(url, png(page())).status_code == 200


def test_concurrent_requests_equal_sequential(server: str) -> None:
    inputs = [page(40 + 4 * (i % 3), 50, seed=10 + i) for i in range(12)]
    url = f"{server}/v1/clean-scan"
    sequential = [decode(post(url, png(x))) for x in inputs]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(lambda x: decode(post(url, png(x))), inputs))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a, b)


def test_small_load_test_reports_rate_and_latency(server: str) -> None:
    body = png(page(420, 540, seed=7))  # a 540x420 page
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> int:
        t0 = time.perf_counter()
        code = post(f"{server}/v1/clean-scan", body).status_code
        with lock:
            latencies.append(time.perf_counter() - t0)
        return code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(20)))
    wall = time.perf_counter() - t0
    assert codes == [200] * 20
    p50, p95 = np.percentile(latencies, [50, 95])
    print(
        f"\n20 requests, 4 clients: {20 / wall:.1f} req/s, "
        f"p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms"
    )


def test_limiter_refuses_when_queue_full() -> None:
    from aepipe.serve import ApiError, Limiter

    async def scenario() -> None:
        limiter = Limiter(concurrency=1, queue=1)
        release = threading.Event()
        first = asyncio.create_task(limiter.run(release.wait, 10))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(limiter.run(lambda: "queued"))
        await asyncio.sleep(0.05)
        assert limiter.running == 1 and limiter.waiting == 1
        with pytest.raises(ApiError) as exc:
            await limiter.run(lambda: "refused")
        assert exc.value.status == 503
        release.set()
        assert await first is True
        assert await second == "queued"
        limiter.pool.shutdown()

    asyncio.run(scenario())


def test_serve_refuses_unloadable_model(tmp_path: Path) -> None:
    cmd = [str(BIN / "aepipe"), "serve", "--port", str(free_port())]
    cmd += ["--scan-model", str(tmp_path / "no")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 4 and "no weights folder" in res.stderr, res.stderr


def test_serve_refuses_a_taken_port_before_loading(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [str(BIN / "aepipe"), "serve", "--port", str(port), "--scan-model", str(tmp_path)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    # Exit 2 and why, before the (here unloadable: exit 4) weights were touched.
    assert res.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in res.stderr, res.stderr


def test_sigterm_stops_the_server_cleanly(tiny_weights: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    off = [f"--model={route}=none" for route in ("clean-scan", "colorize", "faces")]
    cmd = [str(BIN / "aepipe"), "serve", "--port", str(port), *off]
    cmd += ["--denoise-model", str(tiny_weights["impulse-denoiser"]), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()  # what systemd and docker stop send
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "server stopped" in stderr, stderr
    assert "interrupted" not in stderr


def test_settings_reject_unknown_keys() -> None:
    from pydantic import ValidationError

    from aepipe.serve import ServeSettings

    with pytest.raises(ValidationError):
        ServeSettings(concurency=2)  # type: ignore[call-arg]
    assert json.loads(ServeSettings().model_dump_json())["max_pixels"] == 25_000_000


def test_limiter_keeps_the_slot_of_a_timed_out_call_until_its_thread_ends() -> None:
    from aepipe.serve import Limiter

    async def scenario() -> None:
        limiter = Limiter(concurrency=1, queue=0)
        release = threading.Event()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(limiter.run(release.wait, 10), 0.05)
        # The request gave up, the model call did not: its thread still holds the only slot.
        assert limiter.running == 1
        release.set()
        for _ in range(100):
            if limiter.running == 0:
                break
            await asyncio.sleep(0.01)
        assert limiter.running == 0 and limiter.served == 1
        assert await limiter.run(lambda: "next") == "next"
        limiter.pool.shutdown()

    asyncio.run(scenario())


def test_settings_hide_api_keys() -> None:
    from aepipe.serve import ServeSettings

    key = "k" * 24
    settings = ServeSettings(api_keys=(key,), request_timeout=5)
    assert key not in repr(settings) and key not in settings.model_dump_json()
    assert settings.api_keys == (key,)


def test_limiter_skips_work_of_a_client_that_hung_up_while_queued() -> None:
    from aepipe.serve import ApiError, Limiter

    async def scenario() -> None:
        limiter = Limiter(concurrency=1, queue=4)
        ran: list[int] = []

        async def gone() -> bool:
            return True

        with pytest.raises(ApiError) as exc:
            await limiter.run(ran.append, 1, gone=gone)
        assert exc.value.status == 400 and ran == [] and limiter.served == 0
        assert await limiter.run(lambda: "slot free again") == "slot free again"
        limiter.pool.shutdown()

    asyncio.run(scenario())


def test_content_disposition_is_latin1_safe() -> None:
    from aepipe.serve import content_disposition

    assert content_disposition("page.png") == 'inline; filename="page.png"'
    header = content_disposition('a"b\\c\nd é.png')
    assert header.startswith("inline; filename=\"a_b_c_d _.png\"; filename*=UTF-8''a%22b%5Cc%0Ad")
    header.encode("latin-1")  # what Starlette does with it


def test_pdf_pages_are_decoded_at_their_scans_resolution_as_clean_scans_does() -> None:
    """The service's default ``dpi`` is the CLI's: each page's scan's own (was 150 for all)."""
    from aepipe.io import read_pages
    from aepipe.serve import ServeSettings, decode_upload

    pdf = Path(__file__).resolve().parents[1] / "sample_inputs" / "scans" / "two_pages_100dpi.pdf"
    pages = decode_upload(pdf.read_bytes(), pdf.name, ServeSettings())
    cli = list(read_pages(pdf))  # clean-scans' default: dpi None
    assert [p.pixels.shape for p in pages] == [p.pixels.shape for p in cli]
    assert [p.meta["dpi"] for p in pages] == pytest.approx([100, 100])
