"""``POST /v1/faces/edit|reconstruct|interpolate`` over real HTTP (``aepipe serve``, shipped VAE).

The server runs in a subprocess on a free loopback port with an API key; the answer must be
what the library call (:func:`aepipe.core.edit_face_photo`) gives for the same photo.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from factory import FACE_AT, face_photo
from PIL import Image

httpx = pytest.importorskip("httpx", reason="needs the [serve] extra")
pytest.importorskip("fastapi", reason="needs the [serve] extra")
pytest.importorskip("uvicorn", reason="needs the [serve] extra")

from test_serve import assert_json_error, png, serve_cli  # noqa: E402

pytestmark = [pytest.mark.serve, pytest.mark.timeout(180)]

KEY = "face-edit-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [
        "--faces-model", "face-vae", "--scan-model", "none", "--denoise-model", "none",
        "--colorize-model", "none", "--model", "faces-vqvae=none",
        "--device", "cpu", "--threads", "1", "--max-pixels", "200000", "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("serve_faces") / "server.log"
    with serve_cli(args, log, OMP_NUM_THREADS="1", AEPIPE_API_KEYS=KEY) as url:
        yield url


def edit(url: str, data: bytes, auth: bool = True, **params: object) -> httpx.Response:
    headers = AUTH if auth else {}
    return httpx.post(
        f"{url}/v1/faces/edit",
        files={"file": ("photo.png", data)},
        params=params,
        headers=headers,
        timeout=60,
    )


def test_edit_returns_whole_photo_equal_to_library(server: str, one_torch_thread: None) -> None:
    from aepipe.batch import ImageBatch
    from aepipe.core import edit_face_photo, face_concepts
    from aepipe.stage import load_stage
    from aepipe.stages.face_generator import default_concept_dirs

    photo = face_photo()
    resp = edit(server, png(photo), concept=["smile:+2", "eyeglasses:1"], face="largest")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    # The first line is the face; rejected detector candidates are summed up after it.
    assert resp.headers["x-aepipe-faces"].split("; ")[0].endswith(": edited")
    out = np.asarray(Image.open(io.BytesIO(resp.content)))
    assert out.shape == photo.shape  # full size, colour kept
    changed = (out != photo).any(-1)
    rows, cols = np.nonzero(changed)
    x0, y0, side = FACE_AT
    assert changed.sum() > 1000
    assert rows.min() >= y0 - 16 and rows.max() < y0 + side + 16
    assert cols.min() >= x0 - 16 and cols.max() < x0 + side + 16
    # The same call in the library gives the same pixels (one core function behind both).
    vectors = face_concepts(["smile:+2", "eyeglasses:1"], default_concept_dirs())
    batch = ImageBatch.from_numpy(photo, ["photo"])
    want = edit_face_photo(load_stage("face-vae"), batch, vectors, face="largest", align="photo")
    np.testing.assert_array_equal(out, want.batch.to_numpy(np.uint8)[0])


def test_edit_needs_key_and_reports_errors_as_json(server: str) -> None:
    photo = png(face_photo())
    assert_json_error(edit(server, photo, auth=False, concept="smile:1"), 401)
    body = assert_json_error(edit(server, png(face_photo(None)), concept="smile:1"), 422)
    assert body["error"] == "no_face" and "no face found" in body["detail"]
    body = assert_json_error(edit(server, photo, concept="smile:1", face="3"), 422)
    assert body["error"] == "no_face" and "index 3" in body["detail"]
    for bad in ("../../etc/passwd:1", "/tmp/x.json:1", "no-such-concept:1"):
        body = assert_json_error(edit(server, photo, concept=bad), 422)
        assert body["error"] == "invalid"
        # The server's folders stay private; the known concept names are said.
        assert str(Path.cwd()) not in body["detail"] and "/weights/" not in body["detail"]
    assert "smile" in body["detail"]
    assert_json_error(edit(server, photo), 422)  # no concept
    assert_json_error(edit(server, photo, concept="smile:1", face="everyone"), 422)
    big = np.zeros((500, 500, 3), np.uint8)  # 250,000 px > --max-pixels 200,000
    assert assert_json_error(edit(server, png(big), concept="smile:1"), 413)["error"]
    assert httpx.get(f"{server}/healthz", timeout=10).json()["status"] == "ok"


def test_reconstruct_and_interpolate_over_http(server: str) -> None:
    from aepipe.batch import ImageBatch
    from aepipe.core import edit_face_photo
    from aepipe.stage import load_stage

    photo = face_photo()
    resp = httpx.post(
        f"{server}/v1/faces/reconstruct", content=png(photo), headers=AUTH, timeout=60
    )
    assert resp.status_code == 200, resp.text
    batch = ImageBatch.from_numpy(photo, ["photo"])
    want = edit_face_photo(load_stage("face-vae"), batch, None, align="photo")
    got = np.asarray(Image.open(io.BytesIO(resp.content)))
    np.testing.assert_array_equal(got, want.batch.to_numpy(np.uint8)[0])
    files = {"a": ("a.png", png(photo)), "b": ("b.png", png(photo))}
    url = f"{server}/v1/faces/interpolate"
    resp = httpx.post(url, files=files, params={"steps": 4}, headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    strip = np.asarray(Image.open(io.BytesIO(resp.content)))
    assert strip.shape[:2] == (68, 4 * 66 + 2)
    # The same face at both ends: every step is the same decode.
    tiles = [strip[2:66, 2 + 66 * i : 66 + 66 * i] for i in range(4)]
    assert all(np.array_equal(t, tiles[0]) for t in tiles) and tiles[0].std() > 10
    assert_json_error(httpx.post(url, files=files, timeout=10), 401)
    # --face's own check (as the CLI and TOML): one face only here, so "all" is refused.
    refused = httpx.post(url, files=files, params={"face": "all"}, headers=AUTH, timeout=10)
    assert "largest or a face index" in assert_json_error(refused, 422)["detail"]


def test_openapi_lists_the_routes(server: str) -> None:
    schema = httpx.get(f"{server}/openapi.json", headers=AUTH, timeout=10).json()
    post = schema["paths"]["/v1/faces/edit"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {p["name"] for p in post["parameters"]} == {"concept", "face"}
    post = schema["paths"]["/v1/faces/reconstruct"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"face"}
    post = schema["paths"]["/v1/faces/interpolate"]["post"]
    assert post["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["a", "b"]
    assert {p["name"] for p in post["parameters"]} == {"steps", "method", "face"}


def test_public_detail_hides_server_paths_urls_and_folders_with_spaces(tmp_path: Path) -> None:
    from aepipe.serve import public_detail
    from aepipe.weights import shipped_weights_dir

    spaced = Path.cwd() / "my scans" / "box 1" / "page.png"
    for message in (
        f"concept 'x' not found (looked in {shipped_weights_dir()}/face-vae/concepts)",
        f"cannot read file://{tmp_path}/x.png",
        f"No such file or directory: '{spaced}'",
    ):
        shown = public_detail(message)
        assert str(Path.cwd()) not in shown and str(tmp_path) not in shown, shown
        assert "file://" not in shown and "..." in shown
    assert public_detail("ratio 1/2; see https://example.org/a/b") == (
        "ratio 1/2; see https://example.org/a/b"
    )
