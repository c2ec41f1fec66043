"""The job core: page naming, bilevel encoding, formats, the PDF step and error classes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from factory import gradient, pdf_pages, save
from PIL import Image

from aepipe import core
from aepipe.errors import (
    ConfigError,
    InputImageError,
    ShapeError,
    TooManyPagesError,
    TooManyPixelsError,
    UnsupportedInputError,
    WeightsError,
)
from aepipe.io import decode_pages, read_pages
from aepipe.runner import RunOptions, run_files


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


def test_pdf_outputs_are_edited_in_place_for_pdfs_and_built_by_write_pdf_for_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PDF input written as PDF goes through the editor (its text and forms are kept); only
    image inputs written as PDF go through write_pdf, the one place that builds a new PDF."""
    import aepipe.pdf_edit as pdf_edit

    (tmp_path / "in").mkdir()
    src = pdf_pages(tmp_path / "in" / "doc.pdf", [(40, 30), (30, 40)], dpi=72)
    save(Image.fromarray(gradient(20, 30)), tmp_path / "in" / "page.png")
    built: list[tuple[int, object]] = []
    edited: list[object] = []
    real_write, real_edit = core.write_pdf, pdf_edit.edit_pdf

    def spy_write(pages, fh, source=None):
        built.append((len(pages), source))
        real_write(pages, fh, source)

    def spy_edit(path, dst, process, *, options=None):
        edited.append(path)
        return real_edit(path, dst, process, options=options)

    monkeypatch.setattr(core, "write_pdf", spy_write)
    monkeypatch.setattr(pdf_edit, "edit_pdf", spy_edit)
    options = RunOptions(out_dir=tmp_path / "out", fmt="pdf")
    summary = run_files([src.parent], invert, options)
    assert summary.count("ok") == 2
    assert edited == [src]
    assert built == [(1, tmp_path / "in" / "page.png")]
    assert core.edits_in_place(src, "same") and core.edits_in_place("pdf", "pdf")
    assert not core.edits_in_place(src, "png") and not core.edits_in_place("a.png", "pdf")
    for name in ("doc.pdf", "page.pdf"):
        assert (tmp_path / "out" / name).read_bytes().startswith(b"%PDF-")


def test_own_pages_are_written_under_pillows_limit_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    """A rendered PDF page passed --max-pixels but never Pillow's own (smaller) limit: the
    writers that reopen it through Pillow must neither warn nor refuse."""
    import warnings

    from PIL import Image

    src = pdf_pages(tmp_path / "d.pdf", [(40, 30)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    pages = core.run_pages(invert, list(read_pages(src)), "d")
    warnings.simplefilter("always")
    for suffix in (".tif", ".pdf", ".jpg"):
        core.write_document(pages, [tmp_path / f"out{suffix}"])
    core.encode_document(pages, "pdf", "d")
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]
    assert Image.MAX_IMAGE_PIXELS == 500  # put back after writing


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

    from aepipe.serve import ServeSettings, create_app
    from aepipe.stage import stage_class

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
    from aepipe.ray import StageMapper
    from aepipe.stage import stage_class

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


@pytest.mark.parametrize("shape", [(1, 1, 2100, 2048), (2, 3, 40, 30)])
def test_page_uint8_rounds_as_torch_did_in_strips(shape) -> None:
    import torch

    rng = np.random.default_rng(0)
    images = rng.uniform(-0.5, 1.5, shape).astype(np.float32)
    flat = images.reshape(-1)
    levels = np.arange(256, dtype=np.float32)
    flat[:512] = np.concatenate([(levels + 0.5) / 255, levels / 255])  # ties and exact levels
    flat[600:606] = [np.nan, np.inf, -np.inf, -0.0, 0.99999994, 254.5 / 255]
    tensor = torch.from_numpy(images.copy())
    for k in range(shape[0]):
        # The conversion as it was written with torch ops (half to even, NaN to 0).
        ref = torch.nan_to_num(tensor[k], nan=0.0).clamp(0, 1).mul(255.0).round()
        expected = ref.to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(core.page_uint8(tensor, k), expected)
    np.testing.assert_array_equal(tensor.numpy(), images)  # the stage's output is not touched


def test_encode_page_is_lossless_and_small_on_a_mostly_white_page() -> None:
    rng = np.random.default_rng(0)
    page = np.full((300, 200, 1), 255, np.uint8)
    page[rng.integers(0, 300, 2000), rng.integers(0, 200, 2000), 0] = rng.integers(0, 200, 2000)
    png = core.encode_page(page)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), page[..., 0])
    plain = io.BytesIO()
    Image.fromarray(page[..., 0]).save(plain, format="PNG", compress_level=1)
    assert len(png) <= len(plain.getvalue())  # run-length matching suits paper
