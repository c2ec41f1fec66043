"""Build test images and broken files on the fly (nothing binary is committed)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(h: int = 24, w: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    noise = rng.integers(0, 30, (h, w)).astype(np.float32)
    gray = np.clip(base + noise, 0, 255).astype(np.uint8)
    if channels == 1:
        return gray
    return np.stack([gray, 255 - gray, np.roll(gray, 3, 1)], -1)


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims an enormous size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated(path: Path, image: Image.Image, fmt: str, keep: float = 0.5) -> Path:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    data = buf.getvalue()
    path.write_bytes(data[: max(16, int(len(data) * keep))])
    return path


def pdf_pages(path: Path, sizes_pt: list[tuple[float, float]], dpi: int = 72) -> Path:
    """A PDF with one gray gradient page per entry of ``sizes_pt``."""
    import img2pdf

    blobs = []
    for i, (w, h) in enumerate(sizes_pt):
        arr = gradient(max(8, int(h * dpi / 72)), max(8, int(w * dpi / 72)), seed=i)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    sizes = iter(sizes_pt)

    def layout(*_: object) -> tuple[float, float, float, float]:
        w, h = next(sizes)
        return w, h, w, h

    path.write_bytes(img2pdf.convert(blobs, layout_fun=layout))
    return path


def encrypted_pdf(path: Path) -> Path:
    import pikepdf

    src = pdf_pages(path.with_suffix(".plain.pdf"), [(100, 100)])
    with pikepdf.open(src) as pdf:
        pdf.save(path, encryption=pikepdf.Encryption(owner="o", user="secret"))
    src.unlink()
    return path


def empty_pdf(path: Path) -> Path:
    import pikepdf

    pdf = pikepdf.new()
    pdf.save(path)
    return path
