"""In-place PDF editing: everything but the cleaned pixels of a scan stays as it was."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pikepdf
import pypdfium2 as pdfium
import pytest
import torch
from pdf_factory import (
    HIDDEN_TEXT,
    LOSSLESS_1_BIT,
    add_page,
    gray_render,
    identity,
    image_info,
    image_stream,
    invert,
    page_pixels,
    ragged_words,
    render,
    scan_pdf,
    stencil_stream,
    text_of,
)
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.errors import InputImageError
from aepipe.io import read_pages
from aepipe.pdf_edit import PdfEditOptions, edit_pdf
from aepipe.runner import RunOptions


def test_ocred_bilevel_scan_keeps_text_form_metadata_and_stays_small_bilevel(tmp_path):
    src = scan_pdf(tmp_path / "in.pdf", 850, 1100)
    before = image_info(src)
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(src, out, invert)
    assert [o.status for o in outcomes] == ["edited"]
    o = outcomes[0]
    assert (o.kind, o.stored_as, o.size) == ("bilevel", "bilevel", (850, 1100))
    assert o.dpi == pytest.approx((100, 100))
    after = image_info(out)
    # Lossless 1 bit: CCITT G4 or Flate, the smaller (this page's random specks favour Flate).
    assert after["bpc"] == 1 and after["filter"] == "/" + o.codec_out
    assert after["filter"] in LOSSLESS_1_BIT
    assert after["size"] == before["size"] == (850, 1100)
    assert out.stat().st_size <= 1.5 * src.stat().st_size
    # The pixels really changed (inverted), the text layer did not.
    assert np.abs((255 - gray_render(src)) - gray_render(out)).mean() < 2
    assert HIDDEN_TEXT in text_of(src)[0]
    assert text_of(out) == text_of(src)
    with pikepdf.open(out) as pdf:
        fields = pdf.Root.AcroForm.Fields
        assert [(str(f.T), str(f.V)) for f in fields] == [("payer", "ACME Ltd")]
        assert len(pdf.pages[0].Annots) == 1
        assert str(pdf.docinfo["/Title"]) == "Scanned invoice"


def test_identity_leaves_the_scan_pixels_exactly_as_they_were(tmp_path):
    src = scan_pdf(tmp_path / "in.pdf", 400, 300, bilevel=True)
    out = tmp_path / "out.pdf"
    edit_pdf(src, out, identity)
    assert np.array_equal(gray_render(src), gray_render(out))


def test_a_scan_that_comes_back_the_same_keeps_its_bytes_and_is_reported_unchanged(tmp_path):
    pdf = pikepdf.new()
    paper = page_pixels(300, 200, seed=3, paper=230)
    images = [
        image_stream(pdf, page_pixels(400, 300), bilevel=True),
        image_stream(pdf, page_pixels(300, 200, seed=1, paper=230)),
        image_stream(pdf, page_pixels(300, 200, seed=2, paper=230)),
        # Colour without coloured ink (a bluish gray): changed, it would be stored gray.
        image_stream(pdf, np.stack([paper, paper, paper + 4], axis=-1)),
    ]
    for image in images:
        add_page(pdf, (216, 144), [(image, "216 0 0 144 0 0")])
    pdf.save(tmp_path / "in.pdf")
    out = tmp_path / "out.pdf"

    def clean_last(batch: ImageBatch) -> ImageBatch:
        return invert(batch) if batch.meta[0]["page"] == 2 else batch

    outcomes = edit_pdf(tmp_path / "in.pdf", out, clean_last)
    assert [o.status for o in outcomes] == ["unchanged", "unchanged", "edited", "unchanged"]
    assert "kept as it was" in outcomes[0].reason
    assert [o.stored_as for o in outcomes] == ["bilevel", "gray", "gray", "color"]
    assert all(o.codec_out == o.codec_in == "FlateDecode" for o in outcomes[:2])
    with pikepdf.open(tmp_path / "in.pdf") as a, pikepdf.open(out) as b:
        raw = [[i.read_raw_bytes() for i in page.get_images().values()] for page in a.pages]
        kept = [[i.read_raw_bytes() for i in page.get_images().values()] for page in b.pages]
    assert kept[:2] == raw[:2] and kept[2] != raw[2] and kept[3] == raw[3]
    # No page changed: the file itself is a copy.
    outcomes = edit_pdf(tmp_path / "in.pdf", out, identity)
    assert [o.status for o in outcomes] == ["unchanged"] * 4
    assert out.read_bytes() == (tmp_path / "in.pdf").read_bytes()


def test_a_two_colour_1_bit_scan_is_unchanged_when_its_bits_are(tmp_path):
    # 1 bit in an Indexed space: it decodes to dark blue and white, not black and white; a
    # cleaner returns gray, cut back to bits. The same bits keep the image as it was (blue).
    bits = page_pixels(160, 120) >= 128
    pdf = pikepdf.new()
    stream = pdf.make_stream(zlib.compress(np.packbits(bits, axis=1).tobytes()))
    stream.Type, stream.Subtype, stream.Filter = (
        pikepdf.Name.XObject,
        pikepdf.Name.Image,
        pikepdf.Name.FlateDecode,
    )
    stream.Width, stream.Height, stream.BitsPerComponent = 160, 120, 1
    lut = pikepdf.String(bytes([20, 20, 120, 255, 255, 255]))
    stream.ColorSpace = pikepdf.Array([pikepdf.Name.Indexed, pikepdf.Name.DeviceRGB, 1, lut])
    add_page(pdf, (160, 120), [(stream, "160 0 0 120 0 0")])
    pdf.save(tmp_path / "blue.pdf")
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(tmp_path / "blue.pdf", out, lambda b: b.gray())
    assert (outcomes[0].status, outcomes[0].kind) == ("unchanged", "bilevel")
    assert out.read_bytes() == (tmp_path / "blue.pdf").read_bytes()

    def one_speck_less(batch: ImageBatch) -> ImageBatch:
        gray = batch.gray().images.clone()
        gray[..., 0, 0] = 1.0 - gray[..., 0, 0]
        return batch.replace(gray)

    outcomes = edit_pdf(tmp_path / "blue.pdf", out, one_speck_less)
    assert (outcomes[0].status, outcomes[0].stored_as) == ("edited", "bilevel")


def test_a_dithered_bilevel_result_is_stored_as_flate_when_smaller_than_g4(tmp_path):
    # A 1-pixel checkerboard (a dithered picture) costs G4 a code per pixel; Flate almost none.
    pixels = page_pixels(320, 240)
    yy, xx = np.mgrid[:120, :240]
    pixels[60:180, 40:280] = np.where((yy + xx) % 2 == 0, 0, 255)
    pdf = pikepdf.new()
    add_page(pdf, (320, 240), [(image_stream(pdf, pixels, bilevel=True), "320 0 0 240 0 0")])
    pdf.save(tmp_path / "d.pdf")
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(tmp_path / "d.pdf", out, invert)
    assert (outcomes[0].stored_as, outcomes[0].codec_out) == ("bilevel", "FlateDecode")
    assert outcomes[0].bytes_out < 320 * 240 / 8 / 4
    with pikepdf.open(out) as pdf:
        (image,) = pdf.pages[0].get_images().values()
        shown = np.asarray(pikepdf.PdfImage(image).as_pil_image().convert("L"))
    assert np.array_equal(shown, 255 - pixels)
    # Scanned text (ragged edges) is smaller in G4.
    text = ragged_words(320, 240)
    pdf = pikepdf.new()
    add_page(pdf, (320, 240), [(image_stream(pdf, text, bilevel=True), "320 0 0 240 0 0")])
    pdf.save(tmp_path / "t.pdf")
    outcomes = edit_pdf(tmp_path / "t.pdf", out, invert)
    assert outcomes[0].codec_out == "CCITTFaxDecode"
    assert np.array_equal(gray_render(out), 255 - text)


def test_born_digital_only_file_is_copied_byte_for_byte(tmp_path):
    pdf = pikepdf.new()
    add_page(pdf, (595, 842), vector=True, text="A vector page")
    pdf.save(tmp_path / "vec.pdf")
    calls = []
    outcomes = edit_pdf(tmp_path / "vec.pdf", tmp_path / "out.pdf", lambda b: calls.append(b) or b)
    assert [o.status for o in outcomes] == ["passed"]
    assert not calls
    assert (tmp_path / "out.pdf").read_bytes() == (tmp_path / "vec.pdf").read_bytes()


def test_born_digital_page_beside_a_scan_is_unchanged(tmp_path):
    pdf = pikepdf.new()
    image = image_stream(pdf, page_pixels(300, 400), bilevel=False)
    add_page(pdf, (216, 288), [(image, "216 0 0 288 0 0")])
    # A logo-sized picture on a vector page is not a scan.
    logo = image_stream(pdf, page_pixels(40, 30), bilevel=False)
    add_page(pdf, (595, 842), [(logo, "80 0 0 60 400 700")], vector=True, text="Born digital")
    pdf.save(tmp_path / "mixed.pdf")
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(tmp_path / "mixed.pdf", out, invert)
    assert [o.status for o in outcomes] == ["edited", "passed"]
    with pikepdf.open(tmp_path / "mixed.pdf") as a, pikepdf.open(out) as b:
        pa, pb = a.pages[1], b.pages[1]
        assert pa.Contents.read_raw_bytes() == pb.Contents.read_raw_bytes()
        assert (
            pa.Resources.XObject.Im0.read_raw_bytes() == pb.Resources.XObject.Im0.read_raw_bytes()
        )
        assert sorted(pa.obj.keys()) == sorted(pb.obj.keys())
    assert np.array_equal(render(tmp_path / "mixed.pdf", 1), render(out, 1))
    assert text_of(out)[1] == text_of(tmp_path / "mixed.pdf")[1]


@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
def test_process_sees_the_page_upright_and_results_go_back_in_place(tmp_path, rotate):
    # Pages of several sizes: the image is placed turned by its matrix and/or by /Rotate.
    w, h = 120, 80
    pdf = pikepdf.new()
    image = image_stream(pdf, page_pixels(w, h), bilevel=False)
    add_page(pdf, (w, h), [(image, f"{w} 0 0 {h} 0 0")], rotate=rotate)
    turned = image_stream(pdf, page_pixels(w, h, seed=1), bilevel=False)
    # Drawn a quarter turn clockwise on a portrait page (h x w points).
    add_page(pdf, (h, w), [(turned, f"0 {-w} {h} 0 0 {w}")], rotate=rotate)
    pdf.save(tmp_path / "rot.pdf")
    seen = []

    def record(batch: ImageBatch) -> ImageBatch:
        seen.append(batch.to_numpy()[0, ..., 0].astype(np.int16))
        return invert(batch)

    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(tmp_path / "rot.pdf", out, record)
    assert [o.status for o in outcomes] == ["edited", "edited"]
    for index in range(2):
        shown = gray_render(tmp_path / "rot.pdf", index)
        assert seen[index].shape == shown.shape
        assert np.abs(seen[index] - shown).mean() < 3
        assert np.abs((255 - shown) - gray_render(out, index)).mean() < 3
        assert outcomes[index].size == (w, h)


def test_native_resolution_is_kept_and_reported(tmp_path):
    src = scan_pdf(tmp_path / "in.pdf", 1275, 1650, dpi=150, bilevel=False)
    sizes = []
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(src, out, lambda b: sizes.append((b.size, b.meta[0]["dpi"])) or b)
    assert sizes == [((1650, 1275), pytest.approx(150))]
    assert image_info(out)["size"] == (1275, 1650)
    assert outcomes[0].kind == "gray" and outcomes[0].codec_out == "FlateDecode"
    # The render fallback uses the same resolution: a Letter page at 150 DPI, no extra row.
    page = next(read_pages(src))
    assert page.meta["size"] == (1275, 1650) and page.meta["dpi"] == pytest.approx(150)
    assert next(read_pages(src, dpi=300)).meta["size"] == (2550, 3300)


def test_a_gray_image_of_only_black_and_white_is_stored_bilevel(tmp_path):
    pdf = pikepdf.new()
    add_page(pdf, (200, 100), [(image_stream(pdf, page_pixels(400, 200)), "200 0 0 100 0 0")])
    pdf.save(tmp_path / "g.pdf")
    outcomes = edit_pdf(tmp_path / "g.pdf", tmp_path / "out.pdf", invert)
    assert outcomes[0].kind == "bilevel" and "/" + outcomes[0].codec_out in LOSSLESS_1_BIT
    assert image_info(tmp_path / "out.pdf")["bpc"] == 1
    shown = gray_render(tmp_path / "out.pdf")
    assert np.abs((255 - gray_render(tmp_path / "g.pdf")) - shown).mean() < 3


def test_a_binarized_result_of_a_gray_scan_is_stored_bilevel(tmp_path):
    src = scan_pdf(tmp_path / "in.pdf", 300, 200, bilevel=False)
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(src, out, lambda b: b.replace((b.images > 0.5).float()))
    assert (outcomes[0].kind, outcomes[0].stored_as) == ("gray", "bilevel")
    assert image_info(out)["filter"] in LOSSLESS_1_BIT


def test_jpeg_source_is_stored_as_jpeg_and_gray_as_flate_without_it(tmp_path):
    pdf = pikepdf.new()
    buf = tmp_path / "p.jpg"
    Image.fromarray(page_pixels(200, 260)).save(buf, quality=60)
    jpeg = pdf.make_stream(buf.read_bytes())
    jpeg.Type, jpeg.Subtype, jpeg.Filter = (
        pikepdf.Name.XObject,
        pikepdf.Name.Image,
        pikepdf.Name.DCTDecode,
    )
    jpeg.Width, jpeg.Height, jpeg.BitsPerComponent, jpeg.ColorSpace = (
        200,
        260,
        8,
        pikepdf.Name.DeviceGray,
    )
    add_page(pdf, (144, 187.2), [(jpeg, "144 0 0 187.2 0 0")])
    pdf.save(tmp_path / "j.pdf")
    outcomes = edit_pdf(tmp_path / "j.pdf", tmp_path / "a.pdf", invert)
    # Still JPEG; Flate over it where that is smaller (here: plain paper, now black).
    assert outcomes[0].codec_out == "FlateDecode+DCTDecode"
    assert outcomes[0].bytes_out <= 1.5 * outcomes[0].bytes_in
    assert _quantization(tmp_path / "a.pdf") == _quantization(tmp_path / "j.pdf")  # same quality
    shown = gray_render(tmp_path / "a.pdf")
    assert np.abs((255 - gray_render(tmp_path / "j.pdf")) - shown).mean() < 8
    lossless = PdfEditOptions(jpeg_quality=None)
    outcomes = edit_pdf(tmp_path / "j.pdf", tmp_path / "b.pdf", invert, options=lossless)
    assert outcomes[0].codec_out == "FlateDecode"
    # Nothing changed, nothing re-encoded: the JPEG keeps its bytes.
    outcomes = edit_pdf(tmp_path / "j.pdf", tmp_path / "c.pdf", identity)
    assert outcomes[0].codec_out == "DCTDecode"
    assert outcomes[0].bytes_out == outcomes[0].bytes_in


def _quantization(path: Path) -> dict[int, list[int]]:
    """The quantisation tables of the JPEG on the first page of ``path`` (Flate over it or not)."""
    with pikepdf.open(path) as pdf:
        stream = next(iter(pdf.pages[0].get_images().values()))
        buf = io.BytesIO()
        pikepdf.PdfImage(stream).extract_to(stream=buf)
    with Image.open(io.BytesIO(buf.getvalue())) as jpeg:
        return {k: list(v) for k, v in jpeg.quantization.items()}


def test_coloured_ink_survives_a_cleaner_that_whitens_light_pixels(tmp_path):
    rgb = np.full((100, 160, 3), 255, np.uint8)
    rgb[20:30, 10:150] = (0, 0, 0)  # black text
    rgb[50:60, 10:150] = (255, 240, 0)  # yellow text: luma 0.89, "paper" to a gray cleaner
    plain = np.repeat(page_pixels(160, 100, paper=230)[..., None], 3, axis=2)
    pdf = pikepdf.new()
    add_page(pdf, (160, 100), [(image_stream(pdf, rgb), "160 0 0 100 0 0")])
    add_page(pdf, (160, 100), [(image_stream(pdf, plain), "160 0 0 100 0 0")])
    pdf.save(tmp_path / "c.pdf")

    def whiten_light(batch: ImageBatch) -> ImageBatch:
        gray = batch.gray().images
        return batch.replace((gray > 0.7).float())

    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(tmp_path / "c.pdf", out, whiten_light)
    assert [(o.kind, o.stored_as) for o in outcomes] == [("color", "color"), ("gray", "bilevel")]
    doc = pdfium.PdfDocument(str(out))
    try:
        shown = doc[0].render(scale=1.0).to_numpy()[..., 2::-1]  # BGR -> RGB
    finally:
        doc.close()
    assert tuple(shown[55, 80]) == (255, 240, 0)
    assert tuple(shown[25, 80]) == (0, 0, 0)


def test_colour_rule_keeps_stamps_and_drops_a_removed_stain_in_pdf_and_png_alike():
    """One rule (batch.with_coloured_ink) for PDFs edited in place and the stage's keep_color:
    a red stamp keeps its colour, a brownish stain the cleaner whitened goes, and a stage that
    returns colour itself (a colorizer) is stored as it returned."""
    import torch

    from aepipe.pdf_edit import _colour_rule
    from aepipe.stages.scan_denoiser import ScanDenoiser

    page = torch.full((1, 3, 4, 4), 0.92)
    page[0, :, 0, 0] = torch.tensor([0.78, 0.12, 0.12])  # red stamp: chroma 0.66
    page[0, :, 1, 1] = torch.tensor([0.65, 0.55, 0.42])  # coffee stain: chroma 0.23
    page[0, :, 2, 2] = torch.tensor([1.0, 0.94, 0.0])  # yellow highlight, luma 0.89
    page[0, :, 3, 0] = torch.tensor([0.67, 1.0, 0.67])  # pastel green highlighter: chroma 0.33
    page[0, :, 3, 1] = torch.tensor([1.0, 0.66, 0.79])  # pastel pink
    page[0, :, 3, 2] = torch.tensor([0.66, 0.82, 1.0])  # pastel blue
    page[0, :, 3, 3] = torch.tensor([0.95, 0.86, 0.68])  # a light stain's fringe: chroma 0.27
    clean = torch.ones(1, 1, 4, 4)
    clean[0, 0, 0, 0] = 0.3  # the cleaner kept the stamp as ink and whitened the rest
    out = _colour_rule(page, clean, PdfEditOptions())
    assert torch.equal(out[0, :, 0, 0], page[0, :, 0, 0])
    assert torch.equal(out[0, :, 1, 1], torch.ones(3))  # the stain is gone
    assert torch.equal(out[0, :, 2, 2], page[0, :, 2, 2])  # vivid: kept although whitened
    assert torch.equal(out[0, :, 3, :3], page[0, :, 3, :3])  # pastel highlighters kept
    assert torch.equal(out[0, :, 3, 3], torch.ones(3))  # the stain's paper-bright fringe goes
    coloured = torch.rand(1, 3, 4, 4)
    assert torch.equal(_colour_rule(page, coloured, PdfEditOptions()), coloured)
    # keep_color on a page without coloured ink gives its gray in RGB: stored gray.
    assert _colour_rule(page, clean.expand(-1, 3, -1, -1), PdfEditOptions()).shape[1] == 1
    stage = ScanDenoiser.tiny(0, keep_color=True, clean_pages="process")
    stage.clean_gray = lambda gray: clean.expand(len(gray), -1, -1, -1)  # type: ignore[method-assign]
    stage.config = stage.config.model_copy(update={"borders": "keep"})
    assert torch.equal(stage(ImageBatch(page)).images, out)


def test_an_indexed_colour_scan_stays_indexed(tmp_path):
    rgb = np.full((60, 90, 3), 235, np.uint8)
    rgb[10:20, 5:85] = (200, 30, 30)  # red ink
    rgb[30:40, 5:85] = (20, 20, 20)
    palette_image = Image.fromarray(rgb).quantize(8, dither=0)
    pdf = pikepdf.new()
    stream = pdf.make_stream(zlib.compress(palette_image.tobytes()))
    stream.Type, stream.Subtype = pikepdf.Name.XObject, pikepdf.Name.Image
    stream.Width, stream.Height, stream.BitsPerComponent = 90, 60, 8
    stream.Filter = pikepdf.Name.FlateDecode
    lut = pikepdf.String(bytes(palette_image.getpalette("RGB")[: 8 * 3]))
    stream.ColorSpace = pikepdf.Array([pikepdf.Name.Indexed, pikepdf.Name.DeviceRGB, 7, lut])
    add_page(pdf, (90, 60), [(stream, "90 0 0 60 0 0")])
    pdf.save(tmp_path / "p.pdf")
    # A gray cleaner (as the scan stage without keep_color): the colour rule restores the ink.
    outcomes = edit_pdf(tmp_path / "p.pdf", tmp_path / "out.pdf", lambda b: invert(b.gray()))
    assert (outcomes[0].kind, outcomes[0].stored_as) == ("color", "color")
    assert '"/Indexed", "/DeviceRGB"' in image_info(tmp_path / "out.pdf")["cs"]
    doc = pdfium.PdfDocument(str(tmp_path / "out.pdf"))
    try:
        shown = doc[0].render(scale=1.0).to_numpy()[..., 2::-1].astype(int)
    finally:
        doc.close()
    assert np.abs(shown[15, 40] - (200, 30, 30)).max() <= 2  # coloured ink kept as it was
    assert np.abs(shown[35, 40] - 235).max() <= 2  # black ink inverted


def tiled_pdf(path: Path, rotate: int = 0) -> Path:
    pdf = pikepdf.new()
    tiles = [
        (image_stream(pdf, page_pixels(100, 100, seed=i, paper=230)), f"100 0 0 100 {x} {y}")
        for i, (x, y) in enumerate([(0, 0), (100, 0), (0, 100), (100, 100)])
    ]
    add_page(pdf, (200, 200), tiles, text="Tiled scan text", rotate=rotate)
    stacked = [(image_stream(pdf, page_pixels(50, 50, seed=i)), "200 0 0 200 0 0") for i in (5, 6)]
    add_page(pdf, (200, 100), stacked, rotate=rotate)
    pdf.save(path)
    return path


def test_pages_that_cannot_be_edited_in_place_can_be_left_and_reported(tmp_path):
    src = tiled_pdf(tmp_path / "t.pdf")
    out = tmp_path / "out.pdf"
    report_only = PdfEditOptions(fallback="report")
    outcomes = edit_pdf(src, out, invert, options=report_only)
    assert [o.status for o in outcomes] == ["fallback", "fallback"]
    assert "tiles" in outcomes[0].reason and "stacked" in outcomes[1].reason
    assert out.read_bytes() == src.read_bytes()
    asked = PdfEditOptions(born_digital="fallback", fallback="report")
    pdf = pikepdf.new()
    add_page(pdf, (100, 100), vector=True)
    pdf.save(tmp_path / "v.pdf")
    assert edit_pdf(tmp_path / "v.pdf", out, invert, options=asked)[0].status == "fallback"


def test_a_scan_with_a_colour_key_mask_is_rendered_not_edited(tmp_path):
    # Its light paper is see-through (a colour key): cleaned colours would change what shows
    # through, and an RGB key is invalid for an image stored gray.
    pdf = pikepdf.new()
    rgb = np.repeat(page_pixels(160, 120, paper=240)[..., None], 3, axis=2)
    scan = image_stream(pdf, rgb)
    scan.Mask = pikepdf.Array([230, 255] * 3)
    add_page(pdf, (160, 120), [(scan, "160 0 0 120 0 0")], vector=True)
    pdf.save(tmp_path / "key.pdf")
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(tmp_path / "key.pdf", out, lambda b: b.replace(b.images * 0.9))
    assert outcomes[0].status == "rendered"
    assert outcomes[0].reason == "the scan has a colour-key mask"
    assert (outcomes[0].kind, outcomes[0].size) == ("color", (160, 120))
    with pikepdf.open(out) as edited:
        (image,) = edited.pages[0].get_images().values()
        assert "/Mask" not in image


@pytest.mark.parametrize("rotate", [0, 90])
def test_render_fallback_cleans_the_rendering_and_keeps_the_text_invisible(tmp_path, rotate):
    src = tiled_pdf(tmp_path / "t.pdf", rotate)
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(src, out, invert, options=PdfEditOptions(dpi=72))
    assert [o.status for o in outcomes] == ["rendered", "rendered"]
    assert outcomes[0].size == (200, 200) and outcomes[1].size in ((200, 100), (100, 200))
    assert text_of(out) == text_of(src) and "Tiled scan text" in text_of(out)[0]
    for index in range(2):
        before, after = gray_render(src, index), gray_render(out, index)
        assert before.shape == after.shape
        assert np.abs((255 - before) - after).mean() < 3
    with pikepdf.open(out) as pdf:
        assert len(pdf.pages[0].get_images()) == 1
        # Only what is drawn now stays in the page's resources (old colour spaces could be
        # ICC profiles of hundreds of KB).
        assert set(pdf.pages[0].Resources.keys()) <= {"/Font", "/XObject", "/Properties"}
    # A cleaning that changes nothing leaves the pages as they were, not renderings of them.
    outcomes = edit_pdf(src, out, identity, options=PdfEditOptions(dpi=72))
    assert [o.status for o in outcomes] == ["unchanged", "unchanged"]
    assert out.read_bytes() == src.read_bytes()


def mixed_raster_pdf(path: Path) -> Path:
    """A mixed-raster (MRC) page: a gray background at 150 DPI, then its text at 300 DPI as a
    colour foreground cut out by a stencil /Mask, and as an image mask painted dark red."""
    pdf = pikepdf.new()
    background = image_stream(pdf, page_pixels(160, 120, paper=230))
    colours = np.zeros((240, 320, 3), np.uint8)
    colours[:, :, 2] = np.linspace(0, 200, 320, dtype=np.uint8)  # blue to black ink
    foreground = image_stream(pdf, colours)
    foreground.Mask = stencil_stream(pdf, ragged_words(320, 240))
    red_text = stencil_stream(pdf, page_pixels(320, 240, seed=1)[::-1])
    add_page(pdf, (76.8, 57.6), [(background, "76.8 0 0 57.6 0 0")])
    content = pdf.pages[0].Contents.read_bytes() + b"\nq 76.8 0 0 57.6 0 0 cm /Fg Do Q"
    content += b"\nq 0.6 0 0 rg 76.8 0 0 57.6 0 0 cm /Red Do Q"
    pdf.pages[0].Contents = pdf.make_stream(content)
    pdf.pages[0].Resources.XObject.Fg = foreground
    pdf.pages[0].Resources.XObject.Red = red_text
    pdf.save(path)
    return path


def erase_top_left(batch: ImageBatch) -> ImageBatch:
    """A 'cleaning' that turns the top-left quarter of any image into white paper."""
    images = batch.images.clone()
    h, w = batch.size
    images[..., : h // 4, : w // 4] = 1.0
    return batch.replace(images)


def test_a_mixed_raster_page_is_cleaned_layer_by_layer_in_place(tmp_path):
    src = mixed_raster_pdf(tmp_path / "mrc.pdf")
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(src, out, erase_top_left)
    o = outcomes[0]
    assert o.status == "edited" and "mixed raster" in o.reason
    assert (o.kind, o.size, o.stored_as) == ("gray", (160, 120), "gray")
    # The background, then the stencils: the foreground's (ragged text: G4 is smaller) and the
    # red text's (random specks: Flate is smaller).
    assert o.codec_out == "FlateDecode, CCITTFaxDecode, FlateDecode"
    before, after = render(src, scale=2.5), render(out, scale=2.5)
    assert (before[:36, :48] < 128).mean() > 0.2  # ink there before
    assert (after[:34, :46] == 255).all()  # paper after, in every layer
    unchanged = np.ones(before.shape, bool)
    unchanged[:38, :50] = False  # (the region's edge is anti-aliased)
    assert np.array_equal(before[unchanged], after[unchanged])
    with pikepdf.open(src) as a, pikepdf.open(out) as b:
        fg_a, fg_b = a.pages[0].Resources.XObject.Fg, b.pages[0].Resources.XObject.Fg
        assert fg_a.read_raw_bytes() == fg_b.read_raw_bytes()  # foreground colours kept
        assert (int(fg_b.Mask.Width), int(fg_b.Mask.Height)) == (320, 240)
    outcomes = edit_pdf(src, out, identity)
    assert outcomes[0].status == "unchanged" and out.read_bytes() == src.read_bytes()


def test_max_pixels_refuses_before_decoding_and_writes_nothing(tmp_path):
    src = scan_pdf(tmp_path / "in.pdf", 400, 300)
    out = tmp_path / "out.pdf"
    with pytest.raises(InputImageError, match="exceeds the limit of 100,000"):
        edit_pdf(src, out, invert, options=PdfEditOptions(max_pixels=100_000))
    assert not out.exists()
    assert not list(tmp_path.glob(".aepipe-*"))


def test_a_page_too_large_for_free_memory_is_one_files_one_line_error(tmp_path, monkeypatch):
    """Instead of the kernel killing the process (a 35000 x 35000 page with --max-pixels
    raised did, at 24 GB): refused before decoding, the other files still done."""
    from typer.testing import CliRunner

    import aepipe.io
    from aepipe.cli.main import _single
    from aepipe.errors import ExitCode, TooManyPixelsError

    monkeypatch.setattr(aepipe.io, "available_memory", lambda: 200 * 300 * 28)  # 60,000 px
    (tmp_path / "in").mkdir()
    big = scan_pdf(tmp_path / "in" / "big.pdf", 400, 300)
    with pytest.raises(TooManyPixelsError, match=r"need about 0\.0 GB of memory"):
        edit_pdf(big, tmp_path / "o.pdf", invert)
    Image.fromarray(page_pixels(100, 80)).save(tmp_path / "in" / "small.png")
    res = CliRunner().invoke(
        _single("clean-scans"), [str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    )
    assert res.exit_code == ExitCode.SOME_FAILED, res.output
    lines = [line for line in res.output.splitlines() if "big.pdf" in line]
    assert len(lines) == 1 and "GB are free" in lines[0], res.output
    assert (tmp_path / "out" / "small.png").is_file() and not (
        tmp_path / "out" / "big.pdf"
    ).exists()


def test_pillow_limit_is_only_raised_while_encoding(tmp_path, recwarn):
    limit = Image.MAX_IMAGE_PIXELS
    src = scan_pdf(tmp_path / "in.pdf", 400, 300)
    edit_pdf(src, tmp_path / "out.pdf", invert, options=PdfEditOptions(max_pixels=10**9))
    assert limit == Image.MAX_IMAGE_PIXELS
    assert not [w for w in recwarn if "pikepdf" in str(w.filename) or "PIL" in str(w.filename)]


def test_unreadable_pdfs_are_one_line_input_errors(tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\nnot really")
    with pytest.raises(InputImageError, match="cannot open PDF"):
        edit_pdf(bad, tmp_path / "out.pdf", identity)
    src = scan_pdf(tmp_path / "in.pdf", 40, 30)
    with pikepdf.open(src) as pdf:
        pdf.save(tmp_path / "enc.pdf", encryption=pikepdf.Encryption(owner="o", user="u"))
    with pytest.raises(InputImageError, match="encrypted"):
        edit_pdf(tmp_path / "enc.pdf", tmp_path / "out.pdf", identity)


def test_the_shipped_scan_denoiser_cleans_a_bilevel_scan_in_place(tmp_path):
    from aepipe import load_stage

    stage = load_stage("scan-denoiser")
    src = scan_pdf(tmp_path / "in.pdf", 320, 240, dpi=100)
    out = tmp_path / "out.pdf"
    outcomes = edit_pdf(src, out, stage)
    assert outcomes[0].status == "edited" and outcomes[0].stored_as == "bilevel"
    after = image_info(out)
    assert (after["bpc"], after["size"]) == (1, (320, 240)) and after["filter"] in LOSSLESS_1_BIT
    assert text_of(out) == text_of(src)
    # Cleaning keeps the text lines and removes most isolated specks.
    before_ink = (gray_render(src) < 128).mean()
    after_ink = (gray_render(out) < 128).mean()
    assert 0.5 * before_ink < after_ink <= before_ink


CORPUS = Path(__file__).parent / "pdf_corpus"


@pytest.fixture(scope="module")
def fidelity():
    """benchmarks/pdf_fidelity.py, whose checks the corpus test reuses."""
    import importlib.util
    import sys

    path = Path(__file__).parents[1] / "benchmarks" / "pdf_fidelity.py"
    spec = importlib.util.spec_from_file_location("pdf_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.slow
@pytest.mark.skipif(not CORPUS.is_dir(), reason="run `make pdf-corpus` first")
@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.pdf")) or ["none"])
def test_corpus_pdf_keeps_everything_but_the_pixels(tmp_path, fidelity, name):
    # The benchmark's own checks (text, fields, untouched pages, resolution) through the
    # clean-scans runner, with an inverting process so that every edited page really changes.
    row = fidelity.run_file(CORPUS / name, invert, RunOptions(), tmp_path)
    if row.size_out is None:
        assert name in ("hugemono.pdf", "invalid.pdf"), row.outcome
        return
    assert row.text_kept and row.fields_kept and row.resolution_kept
    assert row.untouched_same[0] == row.untouched_same[1]


def test_a_colour_result_of_a_gray_scan_is_stored_in_colour(tmp_path):
    # A colorizer returns colour for a gray scan: that colour is the point, so it is kept
    # (a gray result in three channels is still stored gray).
    src = scan_pdf(tmp_path / "in.pdf", 120, 90, bilevel=False)

    def tint(batch: ImageBatch) -> ImageBatch:
        x = batch.images
        return batch.replace(torch.cat([x, 0.5 * x, 1.0 - x], dim=1))

    outcomes = edit_pdf(src, tmp_path / "c.pdf", tint)
    assert (outcomes[0].kind, outcomes[0].stored_as) == ("gray", "color")
    assert image_info(tmp_path / "c.pdf")["cs"] == "/DeviceRGB"
    outcomes = edit_pdf(src, tmp_path / "g.pdf", lambda b: b.replace(b.images.repeat(1, 3, 1, 1)))
    assert outcomes[0].stored_as == "gray"


def test_jpeg_2000_source_is_stored_as_jpeg_2000_at_its_own_ratio(tmp_path):
    pdf = pikepdf.new()
    buf = tmp_path / "p.jp2"
    Image.fromarray(page_pixels(240, 300)).save(buf, quality_mode="rates", quality_layers=[20])
    jpx = pdf.make_stream(buf.read_bytes())
    jpx.Type, jpx.Subtype, jpx.Filter = (
        pikepdf.Name.XObject,
        pikepdf.Name.Image,
        pikepdf.Name.JPXDecode,
    )
    jpx.Width, jpx.Height = 240, 300
    add_page(pdf, (172.8, 216), [(jpx, "172.8 0 0 216 0 0")])
    pdf.save(tmp_path / "j.pdf")
    outcomes = edit_pdf(tmp_path / "j.pdf", tmp_path / "a.pdf", invert)
    # JPEG 2000 codes a photo-like page in fewer bytes than JPEG: it stays JPEG 2000, with
    # the source's bytes per pixel (a JPEG at quality 85 was twice the size).
    assert outcomes[0].codec_out == "JPXDecode"
    assert 0.7 * outcomes[0].bytes_in <= outcomes[0].bytes_out <= 1.1 * outcomes[0].bytes_in
    shown = gray_render(tmp_path / "a.pdf")
    assert np.abs((255 - gray_render(tmp_path / "j.pdf")) - shown.astype(float)).mean() < 8


def test_a_clean_colour_chart_comes_back_the_same_through_a_gray_stage(tmp_path):
    """The shipped gray scan stage passes a clean chart through as its luma; inside a PDF that
    is no change at all: the image keeps its colours and bytes."""
    from test_clean_page import colour_chart

    from aepipe.stages.scan_denoiser import ScanDenoiser

    rgb = (colour_chart() * 255).round().astype(np.uint8)
    pdf = pikepdf.new()
    add_page(pdf, (400, 300), [(image_stream(pdf, rgb), "400 0 0 300 0 0")])
    pdf.save(tmp_path / "c.pdf")
    outcomes = edit_pdf(tmp_path / "c.pdf", tmp_path / "o.pdf", ScanDenoiser.tiny(0))
    assert outcomes[0].status == "unchanged"
    with pikepdf.open(tmp_path / "c.pdf") as a, pikepdf.open(tmp_path / "o.pdf") as b:
        before, after = (p.pages[0].Resources.XObject["/Im0"] for p in (a, b))
        assert before.read_raw_bytes() == after.read_raw_bytes()


def test_a_scan_in_unequal_strips_is_rendered_and_a_pasted_photo_is_not_a_strip(tmp_path):
    """A page drawn as a 60% and a 40% strip of one scan (same resolution) is not edited as if
    the larger strip were the whole scan (the other would stay dirty); a photo of another
    resolution pasted on a scan leaves the scan edited in place."""
    pdf = pikepdf.new()
    top = image_stream(pdf, page_pixels(200, 120, seed=1, paper=230))
    bottom = image_stream(pdf, page_pixels(200, 80, seed=2, paper=230))
    add_page(pdf, (200, 200), [(top, "200 0 0 120 0 80"), (bottom, "200 0 0 80 0 0")])
    scan = image_stream(pdf, page_pixels(200, 200, seed=3, paper=230))
    photo = image_stream(pdf, page_pixels(40, 30, seed=4, paper=120))
    add_page(pdf, (200, 200), [(scan, "200 0 0 200 0 0"), (photo, "80 0 0 60 20 20")])
    pdf.save(tmp_path / "s.pdf")
    outcomes = edit_pdf(tmp_path / "s.pdf", tmp_path / "o.pdf", invert)
    assert [o.status for o in outcomes] == ["rendered", "edited"]
    assert "strips" in outcomes[0].reason


def test_a_permissions_only_encrypted_pdf_keeps_its_encryption(tmp_path):
    """Opened with the empty user password, cleaned, saved with its encryption and permissions
    (they were dropped without a word)."""
    src = scan_pdf(tmp_path / "plain.pdf", 120, 90)
    locked = tmp_path / "locked.pdf"
    with pikepdf.open(src) as pdf:
        no_copy = pikepdf.Permissions(extract=False, modify_assembly=False)
        pdf.save(locked, encryption=pikepdf.Encryption(owner="o", user="", allow=no_copy))
    outcomes = edit_pdf(locked, tmp_path / "out.pdf", invert)
    assert [o.status for o in outcomes] == ["edited"]
    with pikepdf.open(tmp_path / "out.pdf") as out:
        assert out.is_encrypted and not out.allow.extract and not out.allow.modify_assembly
    with pikepdf.open(tmp_path / "out.pdf", password="o") as out:  # the owner's password too
        assert out.owner_password_matched


def test_an_edited_pdf_carries_the_edit_as_its_modification_date_and_stays_linearized(
    tmp_path, monkeypatch
):
    src = scan_pdf(tmp_path / "in.pdf", 400, 300)
    with pikepdf.open(src, allow_overwriting_input=True) as pdf:
        pdf.docinfo["/ModDate"] = "D:20010101000000Z"
        # XMP without the Info dictionary's title: the title must survive the edit.
        with pdf.open_metadata(set_pikepdf_as_editor=False, update_docinfo=False) as meta:
            meta["xmp:ModifyDate"] = "2001-01-01T00:00:00+00:00"
        pdf.save(src, linearize=True)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01 00:00 UTC
    out = tmp_path / "out.pdf"
    assert edit_pdf(src, out, invert)[0].status == "edited"
    with pikepdf.open(out) as pdf:
        assert pdf.is_linearized
        assert str(pdf.docinfo["/ModDate"]).startswith("D:20260101000000")
        assert pdf.open_metadata()["xmp:ModifyDate"].startswith("2026-01-01T00:00:00")
        assert str(pdf.docinfo["/Title"]) == "Scanned invoice"
    # Without XMP only the Info dictionary is dated (no metadata stream is added).
    plain = scan_pdf(tmp_path / "plain.pdf", 400, 300)
    edit_pdf(plain, out, invert)
    with pikepdf.open(out) as pdf:
        assert "/Metadata" not in pdf.Root and not pdf.is_linearized
        assert str(pdf.docinfo["/ModDate"]).startswith("D:20260101000000")


def test_an_edited_pdf_with_unreadable_xmp_is_still_written_and_dated(tmp_path):
    src = scan_pdf(tmp_path / "in.pdf", 400, 300)
    with pikepdf.open(src, allow_overwriting_input=True) as pdf:
        pdf.Root.Metadata = pdf.make_stream(b"<x:xmpmeta not xml at all")
        pdf.save(src)
    out = tmp_path / "out.pdf"
    assert edit_pdf(src, out, invert)[0].status == "edited"
    with pikepdf.open(out) as pdf:
        assert str(pdf.docinfo["/ModDate"]).startswith("D:20")
        assert str(pdf.docinfo["/Title"]) == "Scanned invoice"


def test_the_stages_own_settings_decide_a_pdfs_colour_whatever_the_front_end(tmp_path):
    """A binarizing stage stores 1-bit pages even with coloured ink, without any front end
    asking for gray (the TOML runner and the library wrote colour)."""
    from aepipe.stages.scan_denoiser import ScanDenoiser

    rgb = np.full((100, 160, 3), 235, np.uint8)
    rgb[20:30, 10:150] = (20, 20, 20)  # black text
    rgb[50:60, 10:150] = (200, 30, 30)  # red ink
    pdf = pikepdf.new()
    add_page(pdf, (160, 100), [(image_stream(pdf, rgb), "160 0 0 100 0 0")])
    pdf.save(tmp_path / "c.pdf")
    out = tmp_path / "out.pdf"
    [bilevel] = edit_pdf(tmp_path / "c.pdf", out, ScanDenoiser.tiny(binarize=True))
    assert (bilevel.kind, bilevel.stored_as) == ("color", "bilevel")
    assert image_info(out)["bpc"] == 1
