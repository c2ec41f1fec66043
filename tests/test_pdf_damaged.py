"""A damaged scan inside a PDF fails its file with a one-line reason naming the page, as the same
damage in an image file does, whether the PDF is edited in place or rendered (--format png);
pdfium alone would decode it without a word (gray or black) and the file would pass."""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from pathlib import Path

import img2pdf
import numpy as np
import pikepdf
import pytest
from pdf_factory import add_page, identity, image_stream, page_pixels, stencil_stream
from PIL import Image

from aepipe.errors import InputImageError
from aepipe.io import read_pages
from aepipe.pdf_edit import _flate_png, check_image, edit_pdf
from aepipe.runner import RunOptions, run_files

SIZE = 64


def jpeg(seed: int, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(
        page_pixels(SIZE, SIZE, seed=seed, paper=230) + rng.normal(0, 15, (SIZE, SIZE)), 0, 255
    )
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def three_pages(path: Path, damage: Callable[[pikepdf.Stream], None]) -> Path:
    """Three tiny JPEG scan pages (img2pdf, as a scanner app writes them); page 2 ``damage``d."""
    raw = img2pdf.convert([jpeg(s) for s in range(3)])
    with pikepdf.open(io.BytesIO(raw)) as pdf:
        damage(next(iter(pdf.pages[1].get_images().values())))
        # Streams as made (qpdf would otherwise inflate and recompress Flate, predictor undone).
        pdf.save(path, stream_decode_level=pikepdf.StreamDecodeLevel.none, compress_streams=False)
    return path


def cut_jpeg(image: pikepdf.Stream) -> None:
    data = image.read_raw_bytes()
    image.write(data[: len(data) // 3], filter=pikepdf.Name.DCTDecode)


def cut_jpeg_under_flate(image: pikepdf.Stream) -> None:
    data = image.read_raw_bytes()
    chain = pikepdf.Array([pikepdf.Name.FlateDecode, pikepdf.Name.DCTDecode])
    image.write(zlib.compress(data[: len(data) // 3]), filter=chain, type_check=False)


def cut_jpeg_header(image: pikepdf.Stream) -> None:
    image.write(image.read_raw_bytes()[:100], filter=pikepdf.Name.DCTDecode)


def garbage_flate(image: pikepdf.Stream) -> None:
    image.write(b"\x78\x9c" + b"garbage" * 50, filter=pikepdf.Name.FlateDecode)


def cut_flate(image: pikepdf.Stream) -> None:
    # Valid Flate data of a third of the rows: it inflates, but to too few bytes.
    image.write(zlib.compress(bytes(SIZE * SIZE // 3)), filter=pikepdf.Name.FlateDecode)


def cut_predicted_flate(image: pikepdf.Stream) -> None:
    # PNG-predicted rows (a tag byte each), a third of them; the parameters in an array.
    rows = b"".join(b"\x00" + bytes(SIZE) for _ in range(SIZE // 3))
    parms = pikepdf.Dictionary(Predictor=15, Colors=1, BitsPerComponent=8, Columns=SIZE)
    image.write(zlib.compress(rows), filter=pikepdf.Name.FlateDecode)
    # (Set after writing: pikepdf's write turns arrays of one into their item.)
    image.Filter = pikepdf.Array([pikepdf.Name.FlateDecode])
    image.DecodeParms = pikepdf.Array([parms])


def unknown_filter(image: pikepdf.Stream) -> None:
    image.write(b"abc" * 100, filter=pikepdf.Name("/FooDecode"), type_check=False)


def cut_jpeg_2000(image: pikepdf.Stream) -> None:
    buf = io.BytesIO()
    Image.open(io.BytesIO(image.read_raw_bytes())).save(buf, "JPEG2000")
    image.write(buf.getvalue()[:-40], filter=pikepdf.Name.JPXDecode)


DAMAGE = {
    "cut JPEG": (cut_jpeg, "is damaged (truncated JPEG data)"),
    "cut JPEG under Flate": (cut_jpeg_under_flate, "is damaged (truncated JPEG data)"),
    "JPEG cut in its header": (cut_jpeg_header, "is damaged (truncated JPEG data)"),
    "bad Flate": (garbage_flate, "is damaged (corrupt Flate data: "),
    "short Flate": (cut_flate, f"is damaged (truncated Flate data: 1365 of {SIZE * SIZE} bytes)"),
    "short predicted Flate": (
        cut_predicted_flate,
        f"is damaged (truncated Flate data: {SIZE // 3 * (SIZE + 1)} of {SIZE * (SIZE + 1)} bytes)",
    ),
    "unknown filter": (unknown_filter, "cannot be decoded (unknown filter /FooDecode)"),
    "cut JPEG 2000": (cut_jpeg_2000, "is damaged (truncated JPEG 2000 data)"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_scan_fails_the_edit_and_the_rendering_naming_its_page(tmp_path, name):
    damage, words = DAMAGE[name]
    src = three_pages(tmp_path / "in.pdf", damage)
    expected = f"{src} page 2: its scan image {words}"
    out = tmp_path / "out.pdf"
    # identity: a page that "came back the same" is kept as it was; that must not hide it.
    with pytest.raises(InputImageError) as edited:
        edit_pdf(src, out, identity)
    assert str(edited.value).startswith(expected) and "\n" not in str(edited.value)
    assert str(edited.value).endswith("; nothing written for this file")
    assert not out.exists()
    with pytest.raises(InputImageError) as rendered:
        list(read_pages(src))
    assert str(rendered.value) == str(edited.value)


@pytest.mark.parametrize("fmt", ["same", "png"])
def test_the_runner_fails_such_a_file_like_a_cut_image_file_and_writes_nothing(tmp_path, fmt):
    docs = tmp_path / "in"
    docs.mkdir()
    three_pages(docs / "cut.pdf", cut_jpeg)
    (docs / "cut.jpg").write_bytes(jpeg(1)[: len(jpeg(1)) // 3])
    three_pages(docs / "fine.pdf", lambda image: None)
    out = tmp_path / "out"
    summary = run_files(
        [docs], lambda b: b.replace(b.images * 0.5), RunOptions(out_dir=out, fmt=fmt)
    )
    records = {Path(r.path).name: r for r in summary.records}
    assert (records["cut.jpg"].status, records["fine.pdf"].status) == ("failed", "ok")
    assert "truncated" in records["cut.jpg"].reason
    assert records["cut.pdf"].status == "failed"
    assert records["cut.pdf"].reason == (
        f"{docs / 'cut.pdf'} page 2: its scan image is damaged (truncated JPEG data); "
        "nothing written for this file"
    )
    assert not [p for p in out.rglob("cut*") if p.is_file()]


def sound_images(pdf: pikepdf.Pdf) -> dict[str, pikepdf.Stream]:
    """Whole images of every layout the check computes a size for, and every codec it reads."""
    gray = page_pixels(48, 40, paper=200)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    cmyk = pdf.make_stream(
        bytes(48 * 40 * 4), Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image, Width=48,
        Height=40, ColorSpace=pikepdf.Name.DeviceCMYK, BitsPerComponent=8,
    )  # fmt: skip
    icc = pdf.make_stream(b"", N=3)
    iccbased = pdf.make_stream(
        zlib.compress(rgb.tobytes()), Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image,
        Width=48, Height=40, ColorSpace=pikepdf.Array([pikepdf.Name.ICCBased, icc]),
        BitsPerComponent=8, Filter=pikepdf.Name.FlateDecode,
    )  # fmt: skip
    png, colors = _flate_png(Image.fromarray(rgb))
    predicted = pdf.make_stream(
        png, Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image, Width=48, Height=40,
        ColorSpace=pikepdf.Name.DeviceRGB, BitsPerComponent=8, Filter=pikepdf.Name.FlateDecode,
        DecodeParms=pikepdf.Dictionary(Predictor=15, Colors=colors, BitsPerComponent=8, Columns=48),
    )  # fmt: skip
    images = {
        "1 bit": image_stream(pdf, gray, bilevel=True),
        "gray": image_stream(pdf, gray),
        "rgb": image_stream(pdf, rgb),
        "stencil": stencil_stream(pdf, gray),
        "cmyk": cmyk,
        "icc": iccbased,
        "png predictor": predicted,
    }
    chain = pikepdf.Array([pikepdf.Name.FlateDecode, pikepdf.Name.DCTDecode])
    for name, data, filters, cs in (
        ("jpeg", jpeg(0, "RGB"), pikepdf.Name.DCTDecode, pikepdf.Name.DeviceRGB),
        ("jpeg under flate", zlib.compress(jpeg(0)), chain, pikepdf.Name.DeviceGray),
    ):
        images[name] = pdf.make_stream(
            data, Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image, Width=SIZE, Height=SIZE,
            ColorSpace=cs, BitsPerComponent=8, Filter=filters,
        )  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG2000")
    images["jpeg 2000"] = pdf.make_stream(
        buf.getvalue(), Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image, Width=48,
        Height=40, Filter=pikepdf.Name.JPXDecode,
    )  # fmt: skip
    return images


def test_whole_images_of_every_layout_and_codec_pass_the_check(tmp_path):
    pdf = pikepdf.new()
    for name, image in sound_images(pdf).items():
        check_image(name, image)  # raises if taken for damaged
    # And a whole PDF of them goes through both paths.
    pdf = pikepdf.new()
    for image in sound_images(pdf).values():
        add_page(pdf, (48, 40), [(image, "48 0 0 40 0 0")])
    pdf.save(tmp_path / "all.pdf")
    assert len(list(read_pages(tmp_path / "all.pdf"))) == len(pdf.pages)
    assert len(edit_pdf(tmp_path / "all.pdf", tmp_path / "out.pdf", identity)) == len(pdf.pages)


def test_a_small_damaged_picture_on_a_born_digital_page_is_not_a_scan(tmp_path):
    """Only images that make up a scanned page are checked: a born-digital page passes as before."""
    pdf = pikepdf.new()
    logo = image_stream(pdf, page_pixels(40, 30))
    garbage_flate(logo)
    add_page(pdf, (144, 144), [(logo, "30 0 0 20 100 110")], vector=True, text="Born digital")
    pdf.save(tmp_path / "b.pdf")
    assert [o.status for o in edit_pdf(tmp_path / "b.pdf", tmp_path / "o.pdf", identity)] == [
        "passed"
    ]
    assert len(list(read_pages(tmp_path / "b.pdf", dpi=36))) == 1


def test_a_damaged_scan_drawn_inside_a_form_is_found_too(tmp_path):
    pdf = pikepdf.new()
    scan = pdf.make_stream(
        jpeg(0)[:300], Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image, Width=SIZE,
        Height=SIZE, ColorSpace=pikepdf.Name.DeviceGray, BitsPerComponent=8,
        Filter=pikepdf.Name.DCTDecode,
    )  # fmt: skip
    form = pdf.make_stream(
        b"q 1 0 0 1 0 0 cm /Im0 Do Q", Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Form,
        BBox=[0, 0, 1, 1], Matrix=[144, 0, 0, 144, 0, 0],
        Resources=pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=scan)),
    )  # fmt: skip
    add_page(pdf, (144, 144), [(form, "1 0 0 1 0 0")])
    pdf.save(tmp_path / "f.pdf")
    for read in (
        lambda: edit_pdf(tmp_path / "f.pdf", tmp_path / "o.pdf", identity),
        lambda: list(read_pages(tmp_path / "f.pdf")),
    ):
        with pytest.raises(InputImageError, match="page 1: its scan image is damaged"):
            read()


def test_an_image_drawn_on_every_page_is_checked_once(tmp_path, monkeypatch):
    import aepipe.pdf_edit as pdf_edit

    calls = []
    damage = pdf_edit._damage
    monkeypatch.setattr(pdf_edit, "_damage", lambda obj: calls.append(obj.objgen) or damage(obj))
    pdf = pikepdf.new()
    scan = image_stream(pdf, page_pixels(48, 40, paper=200))
    for _ in range(3):
        add_page(pdf, (48, 40), [(scan, "48 0 0 40 0 0")])
    pdf.save(tmp_path / "s.pdf")
    assert len(list(read_pages(tmp_path / "s.pdf"))) == 3
    assert len(edit_pdf(tmp_path / "s.pdf", tmp_path / "o.pdf", identity)) == 3
    assert len(calls) == 2 and len(set(calls)) == 1  # once for each path
