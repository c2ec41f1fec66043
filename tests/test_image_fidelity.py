"""What an archive keeps from an image file: colour profiles, metadata, pages, bits, resolution.

Small images are made on the fly, ICC profiles too (a minimal ICC v2 writer below), so nothing
depends on the profiles a system happens to have installed.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, TiffImagePlugin

from aepipe import core
from aepipe.batch import ImageBatch
from aepipe.io import read_pages

# ---- a minimal ICC v2 writer ---------------------------------------------------------------


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)


def _curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def _profile(space: bytes, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 profile of ``space`` holding ``tags`` (signature -> body), 4-byte aligned."""
    tags = {b"wtpt": _xyz(0.9642, 1.0, 0.8249), b"cprt": b"text\0\0\0\0free\0", **tags}
    pcs, cls = (b"Lab ", b"prtr") if space == b"CMYK" else (b"XYZ ", b"mntr")
    table, body, start = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, data in tags.items():
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", start + len(body), len(data))
        body += data
    header = struct.pack(">I4sI4s4s4s", start + len(body), bytes(4), 0x02100000, cls, space, pcs)
    header += bytes(12) + b"acsp" + bytes(32) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + body


def wide_rgb_profile() -> bytes:
    """Adobe RGB (1998)'s primaries (D50) and gamma 2.2: greens far outside sRGB's."""
    trc = _curve(2.2)
    return _profile(
        b"RGB ",
        {
            b"desc": _desc("Wide RGB test"),
            b"rXYZ": _xyz(0.6097, 0.3111, 0.0195),
            b"gXYZ": _xyz(0.2053, 0.6257, 0.0609),
            b"bXYZ": _xyz(0.1492, 0.0632, 0.7446),
            b"rTRC": trc,
            b"gTRC": trc,
            b"bTRC": trc,
        },
    )


def gray_profile(gamma: float = 1.8) -> bytes:
    return _profile(b"GRAY", {b"desc": _desc("Gray test"), b"kTRC": _curve(gamma)})


def cmyk_profile() -> bytes:
    """A press-like CMYK profile (lut8, 2-point grid): impure inks, black ink not 0."""
    corners = []
    for c, m, y, k in np.ndindex(2, 2, 2, 2):  # the first channel varies slowest, as ICC's
        r = (1 - 0.9 * c) * (1 - 0.15 * m)
        g = (1 - 0.4 * c) * (1 - 0.9 * m) * (1 - 0.1 * y)
        b = (1 - 0.2 * c) * (1 - 0.5 * m) * (1 - 0.95 * y)
        corners.append(np.array([r, g, b]) * 255 * (1 - 0.92 * k))
    srgb = Image.fromarray(np.uint8(np.round(corners)).reshape(1, 16, 3))
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = np.asarray(ImageCms.applyTransform(srgb, to_lab)).astype(np.int16)
    lab[..., 1:] = (lab[..., 1:] + 128) % 256  # PIL gives a*, b* as signed bytes; ICC: + 128
    ramp, identity = bytes(range(256)), b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + identity
    lut += ramp * 4 + lab.astype(np.uint8).tobytes() + ramp * 3
    return _profile(b"CMYK", {b"desc": _desc("CMYK test"), b"A2B0": lut})


def to_srgb(image: Image.Image, profile: bytes) -> np.ndarray:
    """What ``image`` tagged with ``profile`` looks like, in sRGB (relative, black point comp.)."""
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        image.mode,
        "RGB",
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )
    return np.asarray(ImageCms.applyTransform(image, transform))


def colour_chart() -> np.ndarray:
    """White paper, black ink and six saturated patches (a page's colour chart)."""
    page = np.full((12, 48, 3), 255, np.uint8)
    page[:4] = 0
    for i, rgb in enumerate([(200, 30, 30), (30, 160, 30), (30, 30, 200), (230, 200, 40)]):
        page[4:, 12 * i : 12 * i + 12] = rgb
    return page


def passed_through(src: Path, out: Path) -> Image.Image:
    """``src`` read, passed through unchanged (a clean page), written to ``out``, reopened."""
    pages = core.run_pages(lambda batch: batch, list(read_pages(src)), src.stem)
    core.write_document(pages, [out])
    return Image.open(out)


def icc_of(image: Image.Image) -> bytes | None:
    return image.info.get("icc_profile")


# ---- 1. colour profiles --------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "suffix"), [("RGB", ".png"), ("CMYK", ".jpg"), ("CMYK", ".tif")])
@pytest.mark.parametrize("out_suffix", [".png", ".tif"])
def test_colour_pages_are_converted_to_srgb_through_their_profile(
    tmp_path: Path, mode: str, suffix: str, out_suffix: str
) -> None:
    """An Adobe-RGB page or a CMYK one with its press profile passed through unchanged shows
    the colours it showed: converted to sRGB through its own profile, and tagged sRGB."""
    profile = wide_rgb_profile() if mode == "RGB" else cmyk_profile()
    src = Image.fromarray(colour_chart()).convert(mode)  # CMYK: PIL's ink amounts, 255 - RGB
    src.save(tmp_path / f"in{suffix}", icc_profile=profile, quality=100)
    with Image.open(tmp_path / f"in{suffix}") as stored:
        shown = to_srgb(stored, profile)  # what the input looks like
        naive = np.asarray(stored.convert("RGB")).astype(int)
    with passed_through(tmp_path / f"in{suffix}", tmp_path / f"out{out_suffix}") as out:
        assert out.mode == "RGB"
        got = np.asarray(out).astype(int)
        assert np.abs(got - shown).max() <= 1
        assert np.abs(naive - shown).max() > 25  # (what it was before: far off)
        assert ImageCms.getProfileDescription(
            ImageCms.ImageCmsProfile(io.BytesIO(icc_of(out)))
        ).startswith("sRGB")


def test_gray_pages_keep_pixels_and_gray_profile_in_every_format(tmp_path: Path) -> None:
    page = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (6, 1))
    Image.fromarray(page).save(tmp_path / "g.png", icc_profile=gray_profile())
    [read] = read_pages(tmp_path / "g.png")
    np.testing.assert_array_equal(read.pixels[..., 0], page)
    for suffix in (".png", ".tif", ".jpg"):
        with passed_through(tmp_path / "g.png", tmp_path / f"out{suffix}") as out:
            assert out.mode == "L" and icc_of(out) == gray_profile()
            if suffix != ".jpg":
                np.testing.assert_array_equal(np.asarray(out), page)


def test_srgb_pages_keep_their_pixels_and_untagged_pages_stay_untagged(tmp_path: Path) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    chart = colour_chart()
    Image.fromarray(chart).save(tmp_path / "s.png", icc_profile=srgb)
    Image.fromarray(chart).save(tmp_path / "n.png")
    Image.fromarray(chart).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    with passed_through(tmp_path / "s.png", tmp_path / "s_out.png") as out:
        np.testing.assert_array_equal(np.asarray(out), chart)
        assert icc_of(out) == srgb
    with passed_through(tmp_path / "n.png", tmp_path / "n_out.png") as out:
        np.testing.assert_array_equal(np.asarray(out), chart)
        assert icc_of(out) is None
    [cmyk] = read_pages(tmp_path / "c.jpg")  # no profile: converted as before
    with Image.open(tmp_path / "c.jpg") as stored:
        np.testing.assert_array_equal(cmyk.pixels, np.asarray(stored.convert("RGB")))
    assert "icc_profile" not in cmyk.meta


def test_a_colour_result_of_a_gray_page_gets_no_gray_profile(tmp_path: Path) -> None:
    """A colorizer's RGB result of a gray page tagged with a gray profile: no profile fits."""
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(
        tmp_path / "g.png", icc_profile=gray_profile()
    )

    def colour(batch: ImageBatch) -> ImageBatch:
        return batch.rgb()

    pages = core.run_pages(colour, list(read_pages(tmp_path / "g.png")), "g")
    with Image.open(io.BytesIO(pages[0].png)) as out:
        assert out.mode == "RGB" and icc_of(out) is None


def test_a_damaged_profile_is_ignored(tmp_path: Path) -> None:
    chart = colour_chart()
    damaged = wide_rgb_profile()[:200]  # header intact, tags cut off
    Image.fromarray(chart).save(tmp_path / "d.png", icc_profile=damaged)
    [page] = read_pages(tmp_path / "d.png")
    np.testing.assert_array_equal(page.pixels, chart)
    assert "icc_profile" not in page.meta


def test_a_damaged_gray_profile_is_not_carried(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(
        tmp_path / "g.png", icc_profile=gray_profile()[:150]
    )
    [page] = read_pages(tmp_path / "g.png")
    assert "icc_profile" not in page.meta


# ---- 2. descriptive metadata ---------------------------------------------------------------


def camera_exif(width: int, height: int) -> bytes:
    """A phone's EXIF: orientation 6, make, Exif IFD (date, pixel size, colour space), and a
    thumbnail directory (IFD1) after IFD0."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "Phone"
    exif[ExifTags.Base.Artist] = "Müller".encode()  # UTF-8, as phones write it
    exif.get_ifd(ExifTags.IFD.Exif).update(
        {
            ExifTags.Base.DateTimeOriginal: "2020:01:02 03:04:05",
            ExifTags.Base.ExifImageWidth: width,
            ExifTags.Base.ExifImageHeight: height,
        }
    )
    block = bytearray(exif.tobytes())  # b"Exif\0\0", a TIFF header, IFD0 at 8
    order = "<" if block[6:8] == b"II" else ">"
    count = struct.unpack_from(order + "H", block, 6 + 8)[0]
    struct.pack_into(order + "I", block, 6 + 8 + 2 + 12 * count, len(block) - 6)  # -> IFD1
    block += struct.pack(order + "HHHIHHI", 1, 259, 3, 1, 6, 0, 0)  # IFD1: Compression 6
    return bytes(block)


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-'
    b'rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"><dc:identifier>'
    b"ARCH-0001</dc:identifier><tiff:ImageWidth>40</tiff:ImageWidth></rdf:Description>"
    b"</rdf:RDF></x:xmpmeta>"
)


@pytest.mark.parametrize("out_suffix", [".png", ".jpg"])
def test_jpeg_exif_and_xmp_are_carried_without_what_the_reading_changed(
    tmp_path: Path, out_suffix: str
) -> None:
    """A phone's JPEG (turned by EXIF orientation 6) keeps its EXIF and XMP (dc:identifier)
    in PNG and JPEG outputs; the orientation is 1 (and gone from XMP), the pixel size is the
    page's, the thumbnail is gone, and "Müller" is still "Müller"."""
    stored = Image.fromarray(np.full((20, 40, 3), 200, np.uint8))  # 40 x 20, shown 20 x 40
    stored.save(tmp_path / "phone.jpg", exif=camera_exif(40, 20), xmp=XMP, quality=95)
    with passed_through(tmp_path / "phone.jpg", tmp_path / f"out{out_suffix}") as out:
        assert out.size == (20, 40)
        exif = out.getexif()
        assert exif.get(ExifTags.Base.Orientation, 1) == 1
        assert exif[ExifTags.Base.Make] == "Phone"
        assert _raw_tag(exif, ExifTags.Base.Artist) == "Müller".encode()
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        assert sub[ExifTags.Base.DateTimeOriginal] == "2020:01:02 03:04:05"
        assert (sub[ExifTags.Base.ExifImageWidth], sub[ExifTags.Base.ExifImageHeight]) == (20, 40)
        assert not exif.get_ifd(ExifTags.IFD.IFD1)
        xmp = out.info["xmp"]
        assert b"<dc:identifier>ARCH-0001</dc:identifier>" in xmp
        assert b"Orientation" not in xmp and b"ImageWidth" not in xmp


def _raw_tag(exif: Image.Exif, tag: int) -> bytes:
    value = exif[tag]
    return value.encode("latin-1") if isinstance(value, str) else value


DESCRIPTIVE = {
    ExifTags.Base.Artist: "Stadtarchiv Müller".encode(),
    ExifTags.Base.Copyright: b"(c) Stadtarchiv",
    ExifTags.Base.ImageDescription: b"Akte 17/3, Blatt 4",
    ExifTags.Base.DocumentName: b"Bestand 12",
}
# The file's change date, software and host describe the file aepipe replaces: not carried.
FILE_HISTORY = {ExifTags.Base.DateTime: b"2021:03:04 10:00:00", ExifTags.Base.Software: b"Scan 1.0"}


@pytest.mark.parametrize("out_suffix", [".tif", ".png", ".jpg"])
def test_tiff_descriptive_tags_are_carried(tmp_path: Path, out_suffix: str) -> None:
    page = Image.fromarray(np.full((30, 20), 128, np.uint8))
    page.save(tmp_path / "scan.tif", tiffinfo={**DESCRIPTIVE, **FILE_HISTORY}, dpi=(300, 300))
    with passed_through(tmp_path / "scan.tif", tmp_path / f"out{out_suffix}") as out:
        exif = out.getexif()
        assert {tag: _raw_tag(exif, tag) for tag in DESCRIPTIVE} == DESCRIPTIVE
        assert not set(FILE_HISTORY) & set(exif)
        assert (exif.get(256, 20), exif.get(257, 30)) == (20, 30)  # no stale sizes


@pytest.mark.parametrize("out_suffix", [".png", ".tif", ".jpg"])
def test_png_text_and_xmp_are_carried(tmp_path: Path, out_suffix: str) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Akte 17")
    info.add_text("Author", "Stadtarchiv")
    info.add_itxt("Comment", "Blatt 4 – Rückseite", "de", "Kommentar")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    Image.fromarray(np.full((8, 12), 128, np.uint8)).save(tmp_path / "p.png", pnginfo=info)
    with passed_through(tmp_path / "p.png", tmp_path / f"out{out_suffix}") as out:
        assert b"<dc:identifier>ARCH-0001</dc:identifier>" in out.info["xmp"]
        if out_suffix == ".png":
            assert out.text["Title"] == "Akte 17" and out.text["Author"] == "Stadtarchiv"
            assert out.text["Comment"] == "Blatt 4 – Rückseite"
            assert out.text["Comment"].lang == "de"
        else:  # into the TIFF/EXIF tags that say the same
            exif = out.getexif()
            assert exif[ExifTags.Base.DocumentName] == "Akte 17"
            assert exif[ExifTags.Base.Artist] == "Stadtarchiv"


def test_metadata_stays_with_its_page_of_a_multipage_tiff(tmp_path: Path) -> None:
    first = Image.fromarray(np.full((8, 8), 10, np.uint8))
    second = Image.fromarray(np.full((8, 8), 20, np.uint8))
    with (tmp_path / "two.tif").open("w+b") as fh, TiffImagePlugin.AppendingTiffWriter(fh) as tf:
        first.save(tf, format="TIFF", tiffinfo={ExifTags.Base.PageName: b"Seite 1"})
        tf.newFrame()
        second.save(tf, format="TIFF")
        tf.newFrame()
    pages = list(read_pages(tmp_path / "two.tif"))
    assert [p.meta.get("exif") is not None for p in pages] == [True, False]


# ---- 3. TIFF thumbnails and pyramid levels -------------------------------------------------


def test_reduced_resolution_subfiles_are_not_pages(tmp_path: Path) -> None:
    """A TIFF of two pages, each followed by its thumbnail (NewSubfileType 1), and a pyramid
    level in the old SubfileType form, reads and counts as two pages."""
    from aepipe.io import count_pages

    path = tmp_path / "scan.tif"
    full = [Image.fromarray(np.full((40, 30), v, np.uint8)) for v in (10, 20)]
    thumb = Image.fromarray(np.full((8, 6), 99, np.uint8))
    with path.open("w+b") as fh, TiffImagePlugin.AppendingTiffWriter(fh) as tf:
        for page, reduced in ((full[0], None), (thumb, {254: 1}), (full[1], None)):
            page.save(tf, format="TIFF", tiffinfo=reduced or {})
            tf.newFrame()
        thumb.save(tf, format="TIFF", tiffinfo={255: 2})
        tf.newFrame()
    pages = list(read_pages(path))
    assert [int(p.pixels[0, 0, 0]) for p in pages] == [10, 20]
    assert [(p.meta["page"], p.meta["pages"]) for p in pages] == [(0, 2), (1, 2)]
    assert count_pages(path) == 2


# ---- 6. resolution of turned pages ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_a_quarter_turn_swaps_unequal_resolutions(tmp_path: Path, suffix: str) -> None:
    """Stored 40 x 20 at 200 x 100 DPI (0.2 x 0.2 in) and turned by EXIF orientation 6: the
    page is 20 x 40 at 100 x 200 DPI, still 0.2 x 0.2 in; each page of a TIFF is turned."""
    from aepipe.io import page_resolution

    stored = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    kwargs = {"exif": exif, "dpi": (200, 100)}
    if suffix == ".tif":
        kwargs.update(save_all=True, append_images=[stored])  # (both pages orientation 6)
    stored.save(tmp_path / f"s{suffix}", **kwargs)
    pages = list(read_pages(tmp_path / f"s{suffix}"))
    for page in pages:
        assert page.pixels.shape[:2] == (40, 20)
        assert page_resolution(page.meta) == pytest.approx((100, 200))
    out_suffix = ".tif" if suffix == ".tif" else ".png"
    with passed_through(tmp_path / f"s{suffix}", tmp_path / f"out{out_suffix}") as out:
        assert out.info["dpi"] == pytest.approx((100, 200), abs=0.01)


# ---- 9. PIL's process-wide limit -----------------------------------------------------------


def test_reading_and_writing_leave_pils_limit_as_they_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    """A page over PIL's own limit (here 500 px) but under ours is read and written without
    PIL's bomb warning, and PIL's limit is what it was afterwards (it stayed raised)."""
    import warnings

    from aepipe.io import read_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's own
    read_image(_page_png(tmp_path))  # (asks for 120,000,000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    warnings.simplefilter("always")
    pages = core.run_pages(lambda b: b, list(read_pages(_page_png(tmp_path), max_pixels=2000)), "p")
    assert Image.MAX_IMAGE_PIXELS == 500
    for suffix in (".tif", ".jpg", ".pdf"):
        core.write_document(pages, [tmp_path / f"out{suffix}"])
        assert Image.MAX_IMAGE_PIXELS == 500
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def _page_png(tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    Image.fromarray(np.full((30, 40), 200, np.uint8)).save(path)
    return path


def test_pil_limit_blocks_in_threads_restore_the_limit_and_keep_it_raised_inside() -> None:
    import random
    import threading

    from aepipe.io import pil_pixel_limit

    before, errors = Image.MAX_IMAGE_PIXELS, []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            want = rng.choice([10**8, 2 * 10**8, 3 * 10**8])
            with pil_pixel_limit(want), pil_pixel_limit(want // 2):
                if want > Image.MAX_IMAGE_PIXELS:
                    errors.append(Image.MAX_IMAGE_PIXELS)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and before == Image.MAX_IMAGE_PIXELS


# ---- 8. JPEG suffixes ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".JFIF"])
def test_jfif_and_jpe_files_are_images(tmp_path: Path, suffix: str) -> None:
    from aepipe.io import is_image_path
    from aepipe.runner import RunOptions, run_files

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "in" / f"a{suffix}", "JPEG")
    assert is_image_path(tmp_path / "in" / f"a{suffix}")
    summary = run_files([tmp_path / "in"], lambda b: b, RunOptions(out_dir=tmp_path / "out"))
    assert summary.exit_code == 0 and (tmp_path / "out" / "a.png").is_file()


# ---- 7. a PDF is known by its content ------------------------------------------------------


def test_misnamed_rasters_and_pdfs_are_read_as_what_they_are(tmp_path: Path) -> None:
    """A PNG named .pdf was opened as a PDF and failed as "corrupt PDF"; a PDF named .png is
    a PDF (edited in place and written as .pdf), and so is one with bytes before its header."""
    from factory import pdf_pages

    from aepipe.io import count_pages, decode_pages
    from aepipe.runner import RunOptions, run_files

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((8, 12), 200, np.uint8)).save(src / "scan.pdf", "PNG")
    pdf_pages(tmp_path / "doc.pdf", [(72.0, 72.0), (72.0, 72.0)])
    (src / "doc.png").write_bytes((tmp_path / "doc.pdf").read_bytes())
    assert core.output_format(src / "scan.pdf", "same") == "png"
    assert not core.edits_in_place(src / "scan.pdf", "same")
    assert core.edits_in_place(src / "doc.png", "same")
    assert count_pages(src / "doc.png") == 2 and count_pages(src / "scan.pdf") == 1
    summary = run_files([src], lambda b: b, RunOptions(out_dir=tmp_path / "out"))
    assert summary.exit_code == 0, summary.records
    assert sorted(p.name for p in (tmp_path / "out").glob("[!.]*")) == ["doc.pdf", "scan.png"]
    junk = b"\0" * 100 + (tmp_path / "doc.pdf").read_bytes()
    assert len(list(decode_pages(junk, "mail.pdf", dpi=72))) == 2


# ---- 5. bilevel pages stored in 8 bits -----------------------------------------------------


def soften(batch: ImageBatch) -> ImageBatch:
    """A stage whose result is gray even for a black-and-white page (a cleaner's edges)."""
    return batch.gray().replace(batch.gray().images * 0.8 + 0.1)


@pytest.mark.parametrize("mode", ["1", "L", "P"])
@pytest.mark.parametrize("out_suffix", [".png", ".tif"])
def test_black_and_white_pages_stay_1_bit_however_stored(
    tmp_path: Path, mode: str, out_suffix: str
) -> None:
    """A black-and-white page stored 8-bit or as a 2-colour palette comes back 1-bit (cut at
    mid-gray), as one stored 1-bit does; an 8-bit gray page stays 8-bit."""
    ink = np.where(np.add.outer(np.arange(30), np.arange(40)) % 7 < 3, 0, 255).astype(np.uint8)
    Image.fromarray(ink).convert(mode).save(tmp_path / "bw.png")
    pages = core.run_pages(soften, list(read_pages(tmp_path / "bw.png")), "bw")
    core.write_document(pages, [tmp_path / f"out{out_suffix}"])
    with Image.open(tmp_path / f"out{out_suffix}") as out:
        assert out.mode == "1"
        np.testing.assert_array_equal(np.asarray(out), ink > 128)
    Image.fromarray(ink // 2 + 60).convert(mode if mode != "1" else "L").save(tmp_path / "g.png")
    pages = core.run_pages(soften, list(read_pages(tmp_path / "g.png")), "g")
    assert Image.open(io.BytesIO(pages[0].png)).mode == "L"


def test_a_palette_of_grays_is_read_gray_and_one_of_colours_in_colour(tmp_path: Path) -> None:
    grays = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1)))
    grays.convert("P").save(tmp_path / "g.png")
    Image.fromarray(colour_chart()).convert("P").save(tmp_path / "c.png")
    [gray] = read_pages(tmp_path / "g.png")
    [colour] = read_pages(tmp_path / "c.png")
    assert gray.pixels.shape[-1] == 1 and colour.pixels.shape[-1] == 3
    np.testing.assert_array_equal(gray.pixels[..., 0], np.asarray(grays))


# ---- 4. memory guard -----------------------------------------------------------------------


def test_the_memory_guard_counts_colour_pages_at_nearly_twice_gray_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aepipe.io
    from aepipe.errors import TooManyPixelsError

    monkeypatch.setattr(aepipe.io, "available_memory", lambda: 100 * 100 * 40)
    Image.fromarray(np.full((100, 100), 200, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(tmp_path / "colour.png")
    assert len(list(read_pages(tmp_path / "gray.png"))) == 1  # 28 bytes a pixel
    with pytest.raises(TooManyPixelsError, match="need about"):  # 52
        list(read_pages(tmp_path / "colour.png"))


def _cgroup(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


@pytest.mark.parametrize("version", [1, 2])
def test_available_memory_is_the_cgroup_limit_where_tighter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """A container limited to 1 GB on a machine with 20 GB free has about 1 GB less its use,
    the page cache the kernel can drop not counted as used; a parent cgroup's tighter limit
    counts too (v2)."""
    import aepipe.io

    gb = 10**9
    root, stat = tmp_path / "cgroup", f"anon 1\ninactive_file {gb // 10}\n"
    if version == 2:  # the parent's limit (1 GB) is the tighter: 1 - 0.5 + 0.1 GB free
        proc = "0::/box/app\n"
        _cgroup(root / "box", memory_max=str(gb), memory_current=str(gb // 2), memory_stat=stat)
        _cgroup(
            root / "box" / "app",
            memory_max=str(2 * gb),
            memory_current=str(gb // 2),
            memory_stat=stat,
        )
    else:  # v1: the hierarchy's limit (1 GB) is in memory.stat
        proc = "4:memory:/box\n3:cpu:/\n"
        _cgroup(
            root / "memory" / "box",
            memory_limit_in_bytes=str(2 * gb),
            memory_usage_in_bytes=str(gb // 2),
            memory_stat=f"hierarchical_memory_limit {gb}\ntotal_inactive_file {gb // 10}\n",
        )
    (tmp_path / "proc").write_text(proc)
    monkeypatch.setattr(aepipe.io, "_CGROUP_ROOT", root)
    monkeypatch.setattr(aepipe.io, "_PROC_CGROUP", tmp_path / "proc")
    monkeypatch.setattr(aepipe.io, "_meminfo_available", lambda: 20 * gb)
    assert aepipe.io.available_memory() == gb - gb // 2 + gb // 10
    monkeypatch.setattr(aepipe.io, "_PROC_CGROUP", tmp_path / "none")
    assert aepipe.io.available_memory() == 20 * gb


def _exif_with_thumbnail_and_date(tb: bytes) -> bytes:
    """A little-endian EXIF block: IFD0 (120 x 90, orientation 1, DateTime 2001) -> IFD1 (a
    JPEG thumbnail)."""
    import struct

    date = b"2001:01:01 10:00:00\0"
    ifd0, n0 = 8, 4
    ifd1 = ifd0 + 2 + 12 * n0 + 4
    n1 = 2
    date_at = ifd1 + 2 + 12 * n1 + 4
    thumb_at = date_at + len(date)
    d = b"II*\x00" + struct.pack("<I", ifd0) + struct.pack("<H", n0)
    d += struct.pack("<HHII", 256, 4, 1, 120) + struct.pack("<HHII", 257, 4, 1, 90)
    d += struct.pack("<HHIHH", 274, 3, 1, 1, 0) + struct.pack("<HHII", 306, 2, 20, date_at)
    d += struct.pack("<I", ifd1) + struct.pack("<H", n1)
    d += struct.pack("<HHII", 513, 4, 1, thumb_at) + struct.pack("<HHII", 514, 4, 1, len(tb))
    d += struct.pack("<I", 0) + date + tb
    return b"Exif\0\0" + d


def test_outputs_drop_the_old_thumbnail_date_and_sizes_of_the_exif(tmp_path: Path) -> None:
    """The thumbnail's bytes (a preview of the original page) go, not only its link; the file
    date (DateTime) becomes the write's; pixel sizes are the written page's, also when a stage
    resized it."""
    import io

    from aepipe.core import encode_page
    from aepipe.io import read_pages

    thumb = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), (255, 0, 0), np.uint8)).save(thumb, "JPEG")
    page = np.full((90, 120, 3), 200, np.uint8)
    exif = _exif_with_thumbnail_and_date(thumb.getvalue())
    Image.fromarray(page).save(tmp_path / "in.jpg", exif=exif, quality=95)
    [read] = list(read_pages(tmp_path / "in.jpg"))
    smaller = np.full((32, 48, 1), 128, np.uint8)  # as a stage that resizes would return
    out = Image.open(io.BytesIO(encode_page(smaller, read.meta)))
    block = out.info["exif"]
    assert b"\xff\xd8\xff" not in block and len(block) < len(exif)
    tags = out.getexif()
    assert tags.get(306, "").startswith(str(__import__("datetime").date.today().year))
    assert (tags.get(256), tags.get(257)) == (48, 32)


def test_a_damaged_thumbnail_pointer_blanks_no_other_tag() -> None:
    import struct

    from aepipe.io import exif_for_size

    good = _exif_with_thumbnail_and_date(b"\xff\xd8\xff" + bytes(20))
    # The same block with the thumbnail's offset pointing into IFD0 (a damaged pointer).
    at = good.index(struct.pack("<HHI", 513, 4, 1)) + 8
    bad = good[:at] + struct.pack("<I", 10) + good[at + 4 :]
    out = exif_for_size(bad, (48, 32))
    assert out is not None and len(out) == len(bad)
    tags = Image.Exif()
    tags.load(out)
    assert (tags.get(256), tags.get(257), tags.get(274)) == (48, 32, 1)  # IFD0 not blanked
    assert tags.get(306, "").startswith(("19", "20"))


def test_exif_dates_follow_source_date_epoch_and_a_damaged_ifd1_keeps_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import struct

    from aepipe.io import exif_for_size

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01 00:00 UTC
    good = _exif_with_thumbnail_and_date(b"\xff\xd8\xff" + bytes(20))
    tags = Image.Exif()
    tags.load(exif_for_size(good, (48, 32)))
    assert tags.get(306) == "2026:01:01 00:00:00"
    # IFD1 cut off by the block's end (a damaged pointer): the block stays, IFD1 unlinked.
    bad = bytearray(good)
    struct.pack_into("<I", bad, 6 + 8 + 2 + 12 * 4, len(good) - 6 - 3)  # IFD0's next pointer
    tags = Image.Exif()
    tags.load(exif_for_size(bytes(bad), (48, 32)))
    assert (tags.get(256), tags.get(257), tags.get(306)) == (48, 32, "2026:01:01 00:00:00")


def test_the_srgb_profile_of_converted_pages_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    """LittleCMS stamps a new profile with the time: outputs differed run to run."""
    import time

    from PIL import ImageCms

    from aepipe.batch import to_working_space

    image = Image.fromarray(np.full((4, 4, 3), (30, 160, 30), np.uint8))
    image.info["icc_profile"] = wide_rgb_profile()
    _, first = to_working_space(image)
    time.sleep(1.1)
    _, second = to_working_space(image)
    assert first == second
    parsed = ImageCms.ImageCmsProfile(__import__("io").BytesIO(first))
    assert "sRGB" in str(parsed.profile.profile_description)
