"""Image I/O: formats in and out, pixel limits, broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factory import empty_pdf, encrypted_pdf, gradient, pdf_pages, png_bomb, save, truncated
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.errors import InputImageError
from aepipe.io import make_grid, page_batch, read_pages, write_image, write_pages


def write(path, data):
    path.write_bytes(data)
    return path


def first(path, **kw):
    return next(read_pages(path, **kw))


@pytest.mark.parametrize(
    ("suffix", "channels"),
    [(".png", 1), (".png", 3), (".bmp", 1), (".bmp", 3), (".tif", 1), (".tif", 3), (".webp", 3)],
)
def test_lossless_round_trip(tmp_path, suffix, channels):
    arr = gradient(channels=channels)
    path = (
        write_image(arr, tmp_path / f"a{suffix}")
        if suffix in (".png", ".tif")
        else save(
            Image.fromarray(arr),
            tmp_path / f"a{suffix}",
            **({"lossless": True} if suffix == ".webp" else {}),
        )
    )
    page = first(path)
    got = page.pixels if page.pixels.ndim == 3 else page.pixels[..., None]
    assert got.shape[-1] == channels
    np.testing.assert_array_equal(got.reshape(arr.shape), arr)


def test_sixteen_bit_gray_keeps_precision(tmp_path):
    arr = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).astype(np.uint16)
    save(Image.fromarray(arr), tmp_path / "g16.png")
    page = first(tmp_path / "g16.png")
    assert page.pixels.dtype == np.uint16
    batch = page_batch(page)
    np.testing.assert_allclose(batch.images[0, 0].numpy(), arr / 65535.0, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "channels"), [("1", 1), ("P", 3), ("LA", 1), ("RGBA", 3), ("CMYK", 3), ("L", 1)]
)
def test_unusual_modes_become_gray_or_rgb(tmp_path, mode, channels):
    image = Image.fromarray(gradient(channels=3)).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    save(image, tmp_path / f"m{suffix}")
    batch = page_batch(first(tmp_path / f"m{suffix}"))
    assert batch.channels == channels
    assert batch.size == (24, 32)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png")
    batch = page_batch(first(tmp_path / "t.png"))
    assert float(batch.images.min()) == 1.0


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(gradient(10, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    save(image, tmp_path / "r.jpg", exif=exif)
    page = first(tmp_path / "r.jpg")
    assert page.pixels.shape[:2] == (30, 10)


def test_multipage_tiff_and_gif_frames(tmp_path):
    frames = [Image.fromarray(gradient(seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    assert len(list(read_pages(tmp_path / "m.tif"))) == 3
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert len(list(read_pages(tmp_path / "a.gif"))) == 1
    assert len(list(read_pages(tmp_path / "a.gif", frames="all"))) == 3


def test_pdf_pages_render_at_dpi_and_write_back_same_sizes(tmp_path):
    sizes = [(144.0, 72.0), (72.0, 108.0)]
    pdf_pages(tmp_path / "d.pdf", sizes)
    pages = list(read_pages(tmp_path / "d.pdf", dpi=100))
    assert [p.pixels.shape[:2] for p in pages] == [(100, 200), (150, 100)]
    assert [p.meta["page_size_pt"] for p in pages] == sizes
    out = write_pages(
        [p.pixels for p in pages],
        tmp_path / "o.pdf",
        page_sizes_pt=[p.meta["page_size_pt"] for p in pages],
    )
    again = list(read_pages(out, dpi=100))
    got = [v for p in again for v in p.meta["page_size_pt"]]
    assert got == pytest.approx([v for s in sizes for v in s])


def test_pdf_scan_renders_at_its_own_pixel_size(tmp_path):
    """A scan 2480 px wide at 300 DPI (A4's width: 595.2 pt, 595.2000122 in pdfium's float32)
    and one 85 px wide at 100 DPI come back at their own widths, not one pixel wider."""
    for width, dpi in ((2480, 300), (85, 100)):
        pdf = pdf_pages(tmp_path / f"s{width}.pdf", [(width * 72 / dpi, 24 * 72 / dpi)], dpi)
        [page] = read_pages(pdf)
        assert page.meta["dpi"] == pytest.approx(dpi)
        assert page.pixels.shape[:2] == (24, width)


def test_multipage_tiff_write_and_bilevel(tmp_path):
    pages = [gradient(seed=i) for i in range(2)] + [gradient() > 128]
    out = write_pages(pages, tmp_path / "o.tif", dpis=[300, 300, 300])
    read = list(read_pages(out))
    assert len(read) == 3
    assert read[0].meta["dpi"] == pytest.approx(300)


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (lambda p: write(p, b""), "empty file"),
        (lambda p: write(p, b"hello, not an image"), "not an image"),
        (lambda p: write(p, b"<html><body>404</body></html>"), "not an image"),
        (lambda p: truncated(p, Image.fromarray(gradient(64, 64)), "PNG"), "corrupt or truncated"),
        (lambda p: png_bomb(p), "exceeds the limit"),
    ],
)
def test_broken_rasters_raise_one_line_named_errors(tmp_path, maker, reason):
    path = maker(tmp_path / "bad.png")
    with pytest.raises(InputImageError) as info:
        list(read_pages(path))
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_truncated_jpeg_and_tiff(tmp_path):
    for fmt, suffix in (("JPEG", ".jpg"), ("TIFF", ".tif")):
        path = truncated(
            tmp_path / f"t{suffix}", Image.fromarray(gradient(64, 64, 3)), fmt, keep=0.3
        )
        with pytest.raises(InputImageError, match=str(path)):
            list(read_pages(path))


def test_bad_pdfs(tmp_path):
    (tmp_path / "c.pdf").write_bytes(b"%PDF-1.4\n garbage garbage")
    with pytest.raises(InputImageError, match="cannot open PDF"):
        list(read_pages(tmp_path / "c.pdf"))
    with pytest.raises(InputImageError, match=r"no pages|cannot open PDF"):
        list(read_pages(empty_pdf(tmp_path / "e.pdf")))
    with pytest.raises(InputImageError, match=r"encrypted|password|cannot open"):
        list(read_pages(encrypted_pdf(tmp_path / "x.pdf")))


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    write_image(gradient(100, 100), tmp_path / "big.png")
    with pytest.raises(InputImageError, match="exceeds the limit"):
        list(read_pages(tmp_path / "big.png", max_pixels=5_000))


def test_tiny_images(tmp_path):
    write_image(np.full((3, 3), 7, np.uint8), tmp_path / "t.png")
    assert page_batch(first(tmp_path / "t.png")).size == (3, 3)


def test_batch_numpy_pil_round_trip():
    arr = gradient(channels=3)
    batch = ImageBatch.from_numpy(arr)
    np.testing.assert_array_equal(batch.to_numpy()[0], arr)
    np.testing.assert_array_equal(np.asarray(batch.to_pil()[0]), arr)
    assert ImageBatch.from_pil(Image.fromarray(arr)).channels == 3


def test_grid_shape():
    grid = make_grid(np.zeros((5, 4, 6, 3), np.uint8), ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)


def test_decode_pages_matches_read_pages(tmp_path):
    from aepipe.io import decode_pages

    path = write_image(gradient(channels=3), tmp_path / "a.png")
    from_disk = first(path)
    from_memory = next(decode_pages(path.read_bytes(), "upload.png"))
    np.testing.assert_array_equal(from_disk.pixels, from_memory.pixels)
    assert from_memory.meta["source"] == "upload.png"
    with pytest.raises(InputImageError, match=r"^upload\.png: empty file"):
        next(decode_pages(b"", "upload.png"))


def test_count_pages_reads_headers_only(tmp_path):
    from aepipe.io import count_pages

    frames = [Image.fromarray(gradient(seed=i)) for i in range(4)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    pdf_pages(tmp_path / "d.pdf", [(72.0, 72.0)] * 3)
    assert count_pages(tmp_path / "m.tif") == 4
    assert count_pages(tmp_path / "a.gif") == 1
    assert count_pages(tmp_path / "a.gif", "all") == 4
    assert count_pages(tmp_path / "d.pdf") == 3


def test_write_encoded_pages_tiff_and_pdf(tmp_path):
    import io

    from aepipe.io import write_encoded_pages

    blobs = []
    for image in (Image.fromarray(gradient(20, 30)), Image.fromarray(gradient(40, 10) > 128)):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    tif = write_encoded_pages(blobs, tmp_path / "o.tif", dpis=[300, 300])
    pages = list(read_pages(tif))
    assert [p.pixels.shape[:2] for p in pages] == [(20, 30), (40, 10)]
    assert pages[0].meta["dpi"] == pytest.approx(300)
    pdf = write_encoded_pages(blobs, tmp_path / "o.pdf", page_sizes_pt=[(144.0, 96.0), None])
    sizes = [p.meta["page_size_pt"] for p in read_pages(pdf, dpi=72)]
    assert sizes[0] == pytest.approx((144.0, 96.0))
    # 10 px at the default 300 DPI is 2.4 pt, under PDF's 3 pt minimum: scaled up, same aspect.
    assert sizes[1] == pytest.approx((3.0, 12.0))
    with pytest.raises(ValueError, match="one page"):
        write_encoded_pages(blobs, tmp_path / "o.png")


def test_write_encoded_pages_png_keeps_the_pixels_and_sets_the_dpi(tmp_path):
    import io

    from aepipe.io import write_encoded_pages

    pixels = gradient(20, 30)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1, dpi=(72, 72))
    out = write_encoded_pages([buf.getvalue()], tmp_path / "o.png", dpis=[300])
    [page] = read_pages(out)
    assert page.meta["dpi"] == pytest.approx(300, abs=0.01)  # PNG stores pixels per metre
    np.testing.assert_array_equal(page.pixels[..., 0], pixels)
    # Without a resolution the old one is dropped, not kept stale.
    out = write_encoded_pages([buf.getvalue()], tmp_path / "n.png")
    with Image.open(out) as image:
        assert "dpi" not in image.info
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_fax_resolution_and_implausible_dpi(tmp_path: Path) -> None:
    """A fax's 204 x 98 DPI keeps the page's shape in PDF, TIFF and PNG; a DPI of 1 (a missing
    value some programs write) counts as none, so the page gets the 300-DPI default size."""
    import pikepdf

    from aepipe.io import page_resolution, png_bytes, write_encoded_pages

    page = np.full((110, 172), 255, np.uint8)
    page[10:20, 10:160] = 0
    Image.fromarray(page).save(tmp_path / "fax.tif", dpi=(204, 98))
    Image.fromarray(page).save(tmp_path / "dpi1.png", dpi=(1, 1))
    fax = next(iter(read_pages(tmp_path / "fax.tif")))
    assert page_resolution(fax.meta) == (204.0, 98.0)
    assert next(iter(read_pages(tmp_path / "dpi1.png"))).meta["dpi"] is None
    write_pages([fax.pixels], tmp_path / "o.pdf", dpis=[page_resolution(fax.meta)])
    with pikepdf.open(tmp_path / "o.pdf") as pdf:
        w, h = (float(v) for v in pdf.pages[0].MediaBox[2:])
    assert (w, h) == pytest.approx((172 * 72 / 204, 110 * 72 / 98))
    blob = png_bytes(fax.pixels)
    for name in ("o.tif", "o.png"):
        write_encoded_pages([blob], tmp_path / name, dpis=[page_resolution(fax.meta)])
        with Image.open(tmp_path / name) as out:
            assert out.info["dpi"] == pytest.approx((204, 98), abs=0.1)
