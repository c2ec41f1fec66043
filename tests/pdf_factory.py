"""Small synthetic PDFs for the PDF tests: scans (bilevel, gray, colour) with a text layer and a
form field, born-digital pages, rotations; and readers of what a PDF shows (text, pixels)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pikepdf
import pypdfium2 as pdfium

from aepipe.batch import ImageBatch

HIDDEN_TEXT = "Invoice 4711 paid in full"
# A 1-bit result is stored as the smaller of CCITT G4 and Flate (both lossless).
LOSSLESS_1_BIT = ("/CCITTFaxDecode", "/FlateDecode")


def identity(batch: ImageBatch) -> ImageBatch:
    return batch


def invert(batch: ImageBatch) -> ImageBatch:
    return batch.replace(1.0 - batch.images)


def page_pixels(w: int, h: int, seed: int = 0, paper: int = 255) -> np.ndarray:
    """A page: paper, a few black 'text lines', a marker block at its top left, specks."""
    rng = np.random.default_rng(seed)
    page = np.full((h, w), paper, np.uint8)
    for y in range(h // 5, h - h // 8, max(h // 12, 4)):
        page[y : y + max(h // 60, 2), w // 8 : w - w // 8] = 0
    page[: h // 6, : w // 6] = 0  # orientation marker, top left as stored
    specks = rng.random((h, w)) < 0.002
    page[specks] = 0
    return page


def ragged_words(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A bilevel text-like page as a scanner makes it: 'words' whose edges jitter row by row
    (what CCITT G4 codes cheaply and Flate does not)."""
    rng = np.random.default_rng(seed)
    page = np.full((h, w), 255, np.uint8)
    for y0 in range(h // 12, h - h // 12 - 9, 16):
        x = w // 16
        while x < w - w // 8:
            width = int(rng.integers(8, 30))
            for y in range(y0, y0 + 9):
                left, right = rng.integers(-1, 2, size=2)
                page[y, x + left : x + width + right] = 0
            x += width + 6
    return page


def image_stream(pdf: pikepdf.Pdf, pixels: np.ndarray, bilevel: bool = False) -> pikepdf.Stream:
    """An image XObject: 1-bit or 8-bit gray, or RGB, stored Flate."""
    h, w = pixels.shape[:2]
    if bilevel:
        data = np.packbits(pixels >= 128, axis=1).tobytes()  # 1 = white in DeviceGray
        bpc, cs = 1, pikepdf.Name.DeviceGray
    else:
        data = np.ascontiguousarray(pixels).tobytes()
        bpc = 8
        cs = pikepdf.Name.DeviceRGB if pixels.ndim == 3 else pikepdf.Name.DeviceGray
    stream = pdf.make_stream(zlib.compress(data, 9))
    stream.Type, stream.Subtype = pikepdf.Name.XObject, pikepdf.Name.Image
    stream.Width, stream.Height, stream.BitsPerComponent, stream.ColorSpace = w, h, bpc, cs
    stream.Filter = pikepdf.Name.FlateDecode
    return stream


def stencil_stream(pdf: pikepdf.Pdf, pixels: np.ndarray) -> pikepdf.Stream:
    """A 1-bit image mask (stencil) of gray ``pixels``: their dark pixels are the painted ones."""
    h, w = pixels.shape
    stream = pdf.make_stream(zlib.compress(np.packbits(pixels >= 128, axis=1).tobytes()))
    stream.Type, stream.Subtype = pikepdf.Name.XObject, pikepdf.Name.Image
    stream.Width, stream.Height, stream.ImageMask = w, h, True
    stream.Filter = pikepdf.Name.FlateDecode
    return stream


def add_page(
    pdf: pikepdf.Pdf,
    size_pt: tuple[float, float],
    images: list[tuple[pikepdf.Stream, str]] = (),
    *,
    text: str | None = None,
    vector: bool = False,
    rotate: int = 0,
) -> pikepdf.Page:
    """A page drawing ``images`` (each with its ``cm`` placement), invisible text, vector art."""
    ops, xobjects = [], pikepdf.Dictionary()
    for i, (stream, cm) in enumerate(images):
        xobjects[f"/Im{i}"] = stream
        ops.append(f"q {cm} cm /Im{i} Do Q")
    if vector:
        ops.append("q 0.9 0.1 0.1 rg 50 50 120 80 re f 0 0 1 RG 4 w 60 200 m 300 260 l S Q")
    if text:
        ops.append(f"BT /F1 14 Tf 3 Tr 40 40 Td ({text}) Tj ET")
    font = pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1)
    font.BaseFont = pikepdf.Name.Helvetica
    resources = pikepdf.Dictionary(XObject=xobjects, Font=pikepdf.Dictionary(F1=font))
    page = pikepdf.Page(
        pikepdf.Dictionary(
            Type=pikepdf.Name.Page,
            MediaBox=[0, 0, *size_pt],
            Resources=resources,
            Contents=pdf.make_stream("\n".join(ops).encode()),
        )
    )
    if rotate:
        page.obj.Rotate = rotate
    pdf.pages.append(page)
    return pdf.pages[-1]


def scan_pdf(path: Path, w: int, h: int, dpi: float = 100, bilevel: bool = True) -> Path:
    """One scanned page (OCRed: invisible text over the image) with a form field."""
    pdf = pikepdf.new()
    size = (w * 72 / dpi, h * 72 / dpi)
    # A gray scan has gray paper: one of only black and white would count as bilevel.
    image = image_stream(pdf, page_pixels(w, h, paper=255 if bilevel else 230), bilevel=bilevel)
    page = add_page(pdf, size, [(image, f"{size[0]} 0 0 {size[1]} 0 0")], text=HIDDEN_TEXT)
    field = pdf.make_indirect(
        pikepdf.Dictionary(
            Type=pikepdf.Name.Annot,
            Subtype=pikepdf.Name.Widget,
            FT=pikepdf.Name.Tx,
            T=pikepdf.String("payer"),
            V=pikepdf.String("ACME Ltd"),
            Rect=[20, 20, 120, 40],
            P=page.obj,
        )
    )
    page.obj.Annots = pdf.make_indirect(pikepdf.Array([field]))
    pdf.Root.AcroForm = pikepdf.Dictionary(Fields=pikepdf.Array([field]))
    pdf.docinfo["/Title"] = "Scanned invoice"
    pdf.save(path)
    return path


def text_of(path: Path) -> list[str]:
    doc = pdfium.PdfDocument(str(path))
    try:
        return [doc[i].get_textpage().get_text_range() for i in range(len(doc))]
    finally:
        doc.close()


def render(path: Path, index: int = 0, scale: float = 1.0) -> np.ndarray:
    doc = pdfium.PdfDocument(str(path))
    try:
        bitmap = doc[index].render(scale=scale * (1 - 1e-9), grayscale=True)
        return np.array(bitmap.to_numpy(), copy=True).astype(np.int16)
    finally:
        doc.close()


def gray_render(path: Path, index: int = 0, scale: float = 1.0) -> np.ndarray:
    arr = render(path, index, scale)
    return arr if arr.ndim == 2 else arr[..., 0]


def snapshot(obj: pikepdf.Stream) -> dict:
    return {
        "filter": str(obj.get("/Filter")),
        "bpc": int(obj.BitsPerComponent),
        "size": (int(obj.Width), int(obj.Height)),
        "cs": str(obj.get("/ColorSpace")),
        "bytes": len(obj.read_raw_bytes()),
    }


def image_info(path: Path, index: int = 0) -> dict:
    with pikepdf.open(path) as pdf:
        images = list(pdf.pages[index].get_images().values())
        assert len(images) == 1
        return snapshot(images[0])
