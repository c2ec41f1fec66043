"""What each 1-bit scan of the PDF corpus costs in every lossless coding aepipe can write.

For every 1-bit image drawn by a page of the corpus (``make pdf-corpus``): its own coding (and,
for JBIG2, its segments: symbol dictionary in ``/JBIG2Globals``, text or generic region), then
the same pixels (decoded by pdfium, as :mod:`aepipe.pdf_edit` does) coded as CCITT G4 and as
Flate of the packed rows, the two codings :mod:`aepipe.pdf_edit` chooses between. No cleaning:
this measures the codecs, not the denoiser.

Run::

    make pdf-corpus
    .venv/bin/python benchmarks/pdf_bilevel_codecs.py
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path
from typing import Any

# JBIG2 segment types (ITU T.88 7.3) that the corpus uses.
_SEGMENTS = {0: "symbol dictionary", 6: "text region", 38: "generic region", 48: "page info"}


def jbig2_segments(data: bytes) -> list[tuple[str, int]]:
    """(segment type, data length) of each segment of embedded JBIG2 ``data`` (T.88 7.2)."""
    out, pos = [], 0
    while pos + 11 <= len(data):
        number, flags = struct.unpack(">IB", data[pos : pos + 5])
        pos += 5
        count = data[pos] >> 5
        if count == 7:
            count = struct.unpack(">I", data[pos : pos + 4])[0] & 0x1FFFFFFF
            pos += 4 + (count + 8) // 8
        else:
            pos += 1
        pos += count * (1 if number <= 256 else 2 if number <= 65536 else 4)
        pos += 4 if flags & 0x40 else 1
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        pos += 4 + length
        out.append((_SEGMENTS.get(flags & 0x3F, f"type {flags & 0x3F}"), length))
    return out


def rows_for(path: Path, max_pixels: int) -> list[str]:
    import pikepdf
    from PIL import Image

    from aepipe.pdf_edit import _decode, _filters, _g4

    rows = []
    with pikepdf.open(path) as pdf:
        seen: set[tuple[int, int]] = set()
        for index, page in enumerate(pdf.pages):
            for name, image in page.get_images().items():
                bilevel = int(image.get("/BitsPerComponent", 8)) == 1
                if not bilevel or image.objgen in seen:
                    continue
                seen.add(image.objgen)
                w, h = int(image.Width), int(image.Height)
                if w * h > max_pixels:
                    continue
                codec = "+".join(_filters(image))
                parts, raw = describe(image, codec)
                gray = _decode(image, w, h)[..., 0]  # a 1-bit image decodes to 2 levels
                bits = Image.fromarray(gray).point(lambda v: 255 if v >= 128 else 0, mode="1")
                g4, flate = len(_g4(bits)), len(zlib.compress(bits.tobytes(), 9))
                rows.append(
                    f"| {path.name} p{index + 1} {name} | {w}x{h} | {codec} {parts} | {kb(raw)} "
                    f"| {kb(g4)} | {kb(flate)} |"
                )
    return rows


def describe(image: Any, codec: str) -> tuple[str, int]:
    """A JBIG2 image's segments (global ones first) in words, and its bytes as stored.

    The bytes are its stream's and, for JBIG2, its global segments' stream's.
    """
    raw = len(image.read_raw_bytes())
    if codec != "JBIG2Decode":
        return "", raw
    parms = image.get("/DecodeParms")
    glob = parms.get("/JBIG2Globals") if parms is not None else None
    segments = jbig2_segments(image.read_raw_bytes())
    if glob is not None:
        segments = [(f"global {k}", n) for k, n in jbig2_segments(glob.read_bytes())] + segments
        raw += len(glob.read_raw_bytes())
    words = [f"{kind} {kb(n)}" for kind, n in segments if kind != "page info"]
    return "(" + ", ".join(words) + ")", raw


def kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("tests/pdf_corpus"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pdf_bilevel_codecs.md"))
    ap.add_argument("--max-pixels", type=int, default=120_000_000)
    args = ap.parse_args()

    from aepipe.io import atomic_write

    lines = [
        "# 1-bit scans of the PDF corpus: their own coding against G4 and Flate",
        "",
        "Command: `python benchmarks/pdf_bilevel_codecs.py` (corpus: `make pdf-corpus`).",
        "Sizes in KB as stored: the image stream, with its global segments' stream for JBIG2",
        "(the segments' data sizes in brackets). G4 and Flate code the decoded pixels as they",
        "are (not cleaned): the two lossless codings aepipe writes for 1 bit, keeping the",
        "smaller. Images over 120 Mpx are left out.",
        "",
        "| image | size | own coding | own KB | G4 KB | Flate KB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for path in sorted(args.corpus.glob("*.pdf")):
        try:
            lines += rows_for(path, args.max_pixels)
        except Exception as exc:  # a corrupt file of the corpus: listed, not fatal
            lines.append(f"| {path.name} | - | not read ({type(exc).__name__}) | - | - | - |")
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda fh: fh.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
