"""The job core: page naming, bilevel encoding, formats, the PDF step and error classes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from factory import gradient, pdf_pages
from PIL import Image

from pipeline import core
from pipeline.errors import (
    ConfigError,
    InputImageError,
    ShapeError,
    TooManyPagesError,
    TooManyPixelsError,
    UnsupportedInputError,
    WeightsError,
)
from pipeline.io import decode_pages, read_pages
from pipeline.runner import RunOptions, run_files


def invert(batch):
    return batch.replace(1.0 - batch.images)


def test_page_name_numbers_pages_of_many_only() -> None:
    assert core.page_name("scan", {"page": 0, "pages": 1}) == "scan"
    assert core.page_name("report", {"page": 1, "pages": 3}) == "report-p002"
    assert core.page_name("a/b", {}) == "a/b"


@pytest.mark.parametrize(
    ("source", "fmt", "keep_tiff", "want"),
    [
        ("a.pdf", "same", True, "pdf"),
        ("a.TIF", "same", True, "tiff"),
        ("a.tiff", "same", False, "png"),
        ("a.jpg", "same", True, "png"),
        ("pdf", "same", False, "pdf"),  # a decoded page's format
        ("a.pdf", "png", True, "png"),
    ],
)
def test_output_format(source: str, fmt: str, keep_tiff: bool, want: str) -> None:
    assert core.output_format(source, fmt, keep_tiff) == want


def test_bilevel_pages_are_encoded_1_bit_and_others_are_not() -> None:
    ink = np.where(np.arange(64).reshape(8, 8, 1) % 3 == 0, 255, 0).astype(np.uint8)
    one_bit = Image.open(io.BytesIO(core.encode_page(ink)))
    assert one_bit.mode == "1"
    np.testing.assert_array_equal(np.asarray(one_bit.convert("L"))[..., None], ink)
    gray = gradient(8, 8)[..., None]
    assert Image.open(io.BytesIO(core.encode_page(gray))).mode == "L"
    marked = Image.open(io.BytesIO(core.encode_page(gray, {"bilevel": True})))
    assert marked.mode == "1"
    rgb = np.repeat(ink, 3, -1)
    assert Image.open(io.BytesIO(core.encode_page(rgb))).mode == "RGB"


def test_run_pages_names_and_encodes_every_page(tmp_path: Path) -> None:
    src = pdf_pages(tmp_path / "doc.pdf", [(40, 30), (30, 40)], dpi=72)
    pages = list(read_pages(src, dpi=72))
    done = core.run_pages(invert, pages, "doc")
    assert [p.name for p in done] == ["doc-p001", "doc-p002"]
    for page, out in zip(pages, done, strict=True):
        got = np.asarray(Image.open(io.BytesIO(out.png)))
        np.testing.assert_array_equal(got, 255 - page.pixels[..., 0])
        assert out.meta["page_size_pt"] == page.meta["page_size_pt"]
    files = core.encode_document(done, "png", "doc")
    assert [name for name, _ in files] == ["doc-p001.png", "doc-p002.png"]
    ((name, pdf),) = core.encode_document(done, "pdf", "doc", source=src)
    assert name == "doc.pdf" and pdf.startswith(b"%PDF-")
    assert len(list(decode_pages(pdf, "doc.pdf", dpi=72))) == 2


def test_every_pdf_output_goes_through_write_pdf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one PDF step (where an in-place PDF editor plugs in) sees each document's source."""
    (tmp_path / "in").mkdir()
    src = pdf_pages(tmp_path / "in" / "doc.pdf", [(40, 30), (30, 40)], dpi=72)
    seen: list[tuple[int, object]] = []
    real = core.write_pdf

    def spy(pages, fh, source=None):
        seen.append((len(pages), source))
        real(pages, fh, source)

    monkeypatch.setattr(core, "write_pdf", spy)
    summary = run_files([src.parent], invert, RunOptions(out_dir=tmp_path / "out", dpi=72))
    assert summary.count("ok") == 1
    assert seen == [(2, src)]
    assert (tmp_path / "out" / "doc.pdf").read_bytes().startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (TooManyPixelsError("x: big"), (413, "too_many_pixels")),
        (TooManyPagesError("x: long"), (413, "too_many_pages")),
        (UnsupportedInputError("x: text"), (415, "unsupported")),
        (InputImageError("x: exceeds the limit"), (422, "corrupt")),  # class, not message
        (ShapeError("x"), (422, "bad_image")),
        (ConfigError("x"), (422, "invalid")),
        (WeightsError("x"), (503, "weights")),
    ],
)
def test_http_status_comes_from_the_error_class(error: Exception, status: tuple) -> None:
    assert core.http_status(error) == status
    assert core.http_status(RuntimeError("boom")) is None


def test_io_raises_limit_classes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    frames = [Image.fromarray(gradient(16, 16, seed=i)) for i in range(3)]
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(TooManyPagesError, match="3 pages exceeds the limit of 2"):
        list(decode_pages(buf.getvalue(), "t.tif", max_pages=2))
    assert len(list(decode_pages(buf.getvalue(), "t.tif", max_pages=3))) == 3
    with pytest.raises(TooManyPixelsError):
        list(decode_pages(buf.getvalue(), "t.tif", max_pixels=100))
    with pytest.raises(UnsupportedInputError):
        list(decode_pages(b"hello, not an image", "note.txt"))
    pdf = pdf_pages(tmp_path / "d.pdf", [(40, 30)] * 3, dpi=72).read_bytes()
    with pytest.raises(TooManyPagesError):
        list(decode_pages(pdf, "d.pdf", max_pages=2, dpi=72))


def test_http_maps_a_page_limit_to_413(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    from fastapi.testclient import TestClient

    from pipeline.serve import ServeSettings, create_app
    from pipeline.stage import stage_class

    weights = stage_class("impulse-denoiser").tiny(seed=0).save_pretrained(tmp_path / "d")
    settings = ServeSettings(models={"denoise": str(weights)}, device="cpu", max_pages=2)
    pdf = pdf_pages(tmp_path / "d.pdf", [(40, 30)] * 3, dpi=72).read_bytes()
    with TestClient(create_app(settings)) as client:
        resp = client.post("/v1/denoise", files={"file": ("d.pdf", pdf)})
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "too_many_pages"
        text = client.post("/v1/denoise", files={"file": ("a.txt", b"plain text")})
        assert text.status_code == 415 and text.json()["error"] == "unsupported"
        off = client.post("/v1/colorize", files={"file": ("a.png", b"x")})
        assert off.status_code == 503


def test_ray_file_rows_encode_bilevel_pages_1_bit(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="needs the [ray] extra")
    from pipeline.ray import StageMapper
    from pipeline.stage import stage_class

    weights = stage_class("impulse-denoiser").tiny(seed=0).save_pretrained(tmp_path / "d")
    mapper = StageMapper(weights=weights, device="cpu", encode="png")
    mapper.pipeline.stages = [invert]  # a stage whose result is pure black and white
    page = np.where(np.arange(100).reshape(10, 10) % 2 == 0, 255, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, format="PNG")
    out = mapper({"bytes": np.array([buf.getvalue()], dtype=object), "path": ["p.png"]})
    encoded = Image.open(io.BytesIO(out["png"][0]))
    assert encoded.mode == "1" and list(out["name"]) == ["p"]
    np.testing.assert_array_equal(np.asarray(encoded.convert("L")), 255 - page)
