"""Build test images and broken files on the fly (nothing binary is committed)."""

from __future__ import annotations

import io
import signal
import struct
import subprocess
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
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
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


def exif_rotated_jpeg(path: Path, h: int = 10, w: int = 30) -> Path:
    """A JPEG stored w x h whose EXIF says "rotate 90 CW": it displays (and reads) h x w."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(Image.fromarray(gradient(h, w)), path, exif=exif)


def unusual_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Valid but unusual files in ``folder``: name -> (W, H) of their (first) page as read."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(gradient(24, 32, 3))
    save(Image.fromarray(gradient(24, 32).astype(np.uint16) * 257), folder / "gray16.png")
    save(rgb.convert("1"), folder / "bilevel.png")
    save(rgb.convert("P"), folder / "palette.png")
    save(rgb.convert("LA"), folder / "gray_alpha.png")
    save(rgb.convert("RGBA"), folder / "rgba.png")
    save(rgb.convert("CMYK"), folder / "cmyk.jpg")
    exif_rotated_jpeg(folder / "rotated.jpg")
    frames = [Image.fromarray(gradient(seed=i)) for i in range(3)]
    frames[0].save(folder / "multi.tif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    save(Image.fromarray(np.full((3, 3), 9, np.uint8)), folder / "tiny.png")
    save(rgb, folder / "photo.webp", lossless=True)
    save(rgb, folder / "old.bmp")
    return {
        "gray16.png": (32, 24),
        "bilevel.png": (32, 24),
        "palette.png": (32, 24),
        "gray_alpha.png": (32, 24),
        "rgba.png": (32, 24),
        "cmyk.jpg": (32, 24),
        "rotated.jpg": (10, 30),
        "multi.tif": (32, 24),
        "anim.gif": (32, 24),
        "tiny.png": (3, 3),
        "photo.webp": (32, 24),
        "old.bmp": (32, 24),
    }


def bad_files(folder: Path) -> dict[str, str]:
    """Broken files of every kind in ``folder``: name -> a phrase their error message holds."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(gradient(64, 64, 3))
    (folder / "empty.png").write_bytes(b"")
    truncated(folder / "cut.png", image, "PNG")
    truncated(folder / "cut.jpg", image, "JPEG", keep=0.3)
    truncated(folder / "cut.tif", image, "TIFF", keep=0.3)
    (folder / "text.png").write_text("just some text, not an image\n")
    (folder / "page.jpg").write_text("<!doctype html><html><body>404 Not Found</body></html>")
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage\n%%EOF")
    encrypted_pdf(folder / "locked.pdf")
    empty_pdf(folder / "nopages.pdf")
    png_bomb(folder / "bomb.png")
    return {
        "empty.png": "empty file",
        "cut.png": "truncated",
        "cut.jpg": "truncated",
        "cut.tif": "truncated",
        "text.png": "not an image",
        "page.jpg": "not an image",
        "corrupt.pdf": "cannot open PDF",
        "locked.pdf": "encrypted",
        "nopages.pdf": "no pages",
        "bomb.png": "exceeds the limit",
    }


def random_image(rng: np.random.Generator, mode: str, w: int, h: int) -> Image.Image:
    """A random PIL image of ``mode`` (1, L, I;16, P, LA, RGB, RGBA, CMYK) and size."""
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([np.asarray(rgb), alpha], -1), "RGBA")
    return rgb.convert(mode)


FACE_FILE = Path(__file__).resolve().parents[1] / "sample_inputs" / "faces" / "vae_face_3.png"
FACE_AT = (120, 50, 192)
"""Where :func:`face_photo` pastes the face: top-left corner x, y and side (the 64x64 face 3x)."""


def face_photo(face: Path | None = FACE_FILE, at: tuple[int, int, int] = FACE_AT) -> np.ndarray:
    """A 300x400 colour photo (tinted noise) with a gray face crop pasted at ``at`` (x, y, side).

    ``face=None`` gives the background alone. Returns (300, 400, 3) uint8.
    """
    rng = np.random.default_rng(0)
    tint = np.array([0.3, 0.5, 0.7], np.float32)
    bg = tint + rng.normal(0, 0.02, (300, 400, 3)).astype(np.float32)
    if face is not None:
        x0, y0, side = at
        img = Image.open(face).convert("L").resize((side, side), Image.Resampling.BICUBIC)
        bg[y0 : y0 + side, x0 : x0 + side] = np.asarray(img, np.float32)[..., None] / 255
    return (bg.clip(0, 1) * 255).round().astype(np.uint8)


def display_page(
    key: int, seed: int, dpi: int, size: tuple[int, int], bilevel: bool = False
) -> tuple[np.ndarray, tuple | None]:
    """A clean generated page with body text, display type and shapes, as (H, W) uint8.

    Gray pages also get a photo (its (y, x, h, w) box is returned); ``bilevel`` pages are cut
    to pure black and white. ``key`` keeps each test file's pages its own.
    """
    from aepipe.data.synthetic_pages import add_display_content, render_clean_page

    rng = np.random.default_rng(np.random.SeedSequence([key, seed, dpi]))
    page = render_clean_page(rng, *size, dpi)
    page, box = add_display_content(page, rng, dpi, photo=not bilevel)
    if bilevel:
        page = np.where(page < 128, 0, 255).astype(np.uint8)
    return page, box


def _sigint_default() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never turns it into
    # KeyboardInterrupt; a test suite run in the background would see the job ignore Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    """Start a command with text pipes and Ctrl-C at its default (for signal tests)."""
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
        **kw,  # type: ignore[arg-type]
    )


def clean_colour_page(h: int = 60, w: int = 80) -> np.ndarray:
    """A clean colour page (black rules, a red box on white): the scan stage keeps it."""
    page = np.full((h, w, 3), 255, np.uint8)
    for y in range(20, h - 6, 12):
        page[y : y + 4, 6 : w - 6] = 0
    page[4:14, 6:30] = (200, 30, 30)
    return page
