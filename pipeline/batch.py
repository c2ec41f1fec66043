"""ImageBatch: the one type that flows between stages, and the one numpy/PIL <-> tensor boundary.

Inside the pipeline, images are float32 tensors of shape (N, C, H, W) with values in [0, 1],
C = 1 (gray) or 3 (RGB). Every conversion from or to numpy arrays and PIL images lives here,
so stages never see uint8 and I/O never sees tensors.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aepipe.errors import ShapeError
from aepipe.models import LUMA_WEIGHTS

if TYPE_CHECKING:
    import torch
    from PIL import Image


def as_float01(array: np.ndarray) -> np.ndarray:
    """Convert an integer or float array to float32 in [0, 1]."""
    if not array.dtype.isnative:  # big-endian 16-bit (TIFF, FITS): same values, our byte order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32, copy=False)
        finite = out[np.isfinite(out)]
        outside = finite.size and (finite.min() < -1e-3 or finite.max() > 1 + 1e-3)
        if outside or finite.size < out.size:
            found = [f"range [{finite.min():.3g}, {finite.max():.3g}]"] if finite.size else []
            found += [] if finite.size == out.size else ["NaN or infinite values"]
            raise ShapeError(
                f"float images must hold finite values in [0, 1]; got {' and '.join(found)}"
            )
        return np.clip(out, 0.0, 1.0)
    raise ShapeError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")


def _to_nhwc(array: np.ndarray) -> np.ndarray:
    """Accept HW, HWC or NHWC and return NHWC."""
    if array.ndim == 2:
        return array[None, :, :, None]
    if array.ndim == 3:
        # A 3-D array is one HWC image; a stack of gray images must be passed as NHW1.
        if array.shape[-1] not in (1, 2, 3, 4):
            raise ShapeError(
                f"a 3-D array must be one HWC image with 1 to 4 channels; got shape "
                f"{array.shape}. Pass a stack of gray images as (N, H, W, 1)."
            )
        return array[None]
    if array.ndim == 4:
        return array
    raise ShapeError(f"expected an image array of 2, 3 or 4 dimensions; got shape {array.shape}")


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB images.

    Args:
        images: (N, 3, H, W) RGB, or (N, 1, H, W) already gray (returned as is).

    Returns:
        (N, 1, H, W) gray.
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    wr, wg, wb = LUMA_WEIGHTS
    return wr * r + wg * g + wb * b


# Coloured ink (stamps, signatures, highlighting, coloured type) against coloured dirt: a pixel
# of more chroma (max - min of R, G, B) than INK_CHROMA is ink where the cleaned gray kept it
# (darker than INK_KEPT), or anywhere when its colour is strong (over VIVID_CHROMA: a yellow
# highlight, light enough for a gray cleaner to take for paper), or paper-bright (its brightest
# channel over BRIGHT) in a hue that is not the yellow-brown of stains (STAIN_HUES, degrees):
# pastel highlighters (green, pink, blue: chroma 0.33-0.39) stay. Coffee and foxing stains are
# brownish (chroma 0.2-0.4), darker than paper or of its yellow-brown hue, and whitened by the
# cleaner: they go. (Thresholds set by hand on made pages: no colour set with ground truth.)
INK_CHROMA = 0.2
INK_KEPT = 0.9
VIVID_CHROMA = 0.5
BRIGHT = 0.8
STAIN_HUES = (15.0, 55.0)


def coloured_ink(rgb: torch.Tensor, clean: torch.Tensor, chroma_min: float = INK_CHROMA):
    """Which pixels of ``rgb`` are coloured ink to keep in colour over the ``clean`` gray page.

    Args:
        rgb: (N, 3, H, W) the page as it came, in [0, 1].
        clean: (N, 1, H, W) its cleaned gray.
        chroma_min: chroma above which a pixel may be coloured ink.

    Returns:
        (N, 1, H, W) bool mask.
    """
    top, low = rgb.amax(dim=1, keepdim=True), rgb.amin(dim=1, keepdim=True)
    chroma = top - low
    highlight = (top > BRIGHT) & ~_stain_hue(rgb, top, chroma)
    return (chroma > chroma_min) & ((clean < INK_KEPT) | (chroma > VIVID_CHROMA) | highlight)


def _stain_hue(rgb: torch.Tensor, top: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Whether each pixel's hue lies in STAIN_HUES (HSV hue, degrees; red 0, yellow 60)."""
    import torch

    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    safe = chroma.clamp_min(1e-6)
    hue = (
        torch.where(
            top == r,
            ((g - b) / safe) % 6,
            torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4),
        )
        * 60.0
    )
    return (hue >= STAIN_HUES[0]) & (hue <= STAIN_HUES[1])


def with_coloured_ink(rgb: torch.Tensor, clean: torch.Tensor, chroma_min: float = INK_CHROMA):
    """The ``clean`` gray page (N, 1, H, W) in RGB, coloured ink keeping its input colour."""
    ink = coloured_ink(rgb, clean, chroma_min)
    return clean.expand(-1, 3, -1, -1).where(~ink, rgb).contiguous()


def default_name(index: int) -> str:
    """The name an image gets in a batch built without names (``image_00000`` ...)."""
    return f"image_{index:05d}"


@dataclass
class ImageBatch:
    """A batch of same-sized images with names and per-image metadata.

    Attributes:
        images: float32 tensor (N, C, H, W) in [0, 1], C in {1, 3}.
        names: one name per image (the output file stem), length N.
        meta: one dict per image: ``source`` path, ``page`` index, ``dpi``, ``mode`` and
            ``size`` (W, H) of the original, and whatever stages add.
    """

    images: torch.Tensor
    names: list[str] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        if not isinstance(self.images, torch.Tensor):
            raise ShapeError(f"images must be a torch.Tensor; got {type(self.images).__name__}")
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ShapeError(
                f"images must be (N, C, H, W) with C = 1 or 3; got shape {tuple(self.images.shape)}"
            )
        if self.images.dtype != torch.float32:
            raise ShapeError(f"images must be float32; got {self.images.dtype}")
        n = self.images.shape[0]
        if not self.names:
            self.names = [default_name(i) for i in range(n)]
        if not self.meta:
            self.meta = [{} for _ in range(n)]
        if len(self.names) != n or len(self.meta) != n:
            raise ShapeError(
                f"{n} images but {len(self.names)} names and {len(self.meta)} meta entries"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every image in the batch."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def replace(self, images: torch.Tensor, **meta_updates: Any) -> ImageBatch:
        """A new batch with other pixels and the same names; ``meta_updates`` go into each meta."""
        meta = [{**m, **meta_updates} for m in self.meta]
        return ImageBatch(images, list(self.names), meta)

    def to(self, device: str | torch.device) -> ImageBatch:
        """The same batch with its tensor on ``device``."""
        return ImageBatch(self.images.to(device), self.names, self.meta)

    def gray(self) -> ImageBatch:
        """The batch converted to one channel with BT.601 luma."""
        return self if self.channels == 1 else self.replace(to_gray(self.images))

    def rgb(self) -> ImageBatch:
        """The batch with three channels (gray is replicated)."""
        return (
            self if self.channels == 3 else self.replace(self.images.expand(-1, 3, -1, -1).clone())
        )

    def split(self, size: int) -> list[ImageBatch]:
        """Cut into batches of at most ``size`` images."""
        if size < 1:
            raise ShapeError(f"split size must be at least 1; got {size}")
        return [
            ImageBatch(self.images[i : i + size], self.names[i : i + size], self.meta[i : i + size])
            for i in range(0, len(self), size)
        ]

    @staticmethod
    def concat(batches: Sequence[ImageBatch]) -> ImageBatch:
        """Join same-sized batches into one."""
        import torch

        if not batches:
            raise ShapeError("cannot concatenate zero batches")
        shapes = sorted({tuple(b.images.shape[1:]) for b in batches})
        if len(shapes) > 1:
            raise ShapeError(f"batches to join must share (C, H, W); got {shapes}")
        return ImageBatch(
            torch.cat([b.images for b in batches]),
            [n for b in batches for n in b.names],
            [m for b in batches for m in b.meta],
        )

    # ---- the numpy / PIL boundary -------------------------------------------------------

    @classmethod
    def from_numpy(
        cls,
        array: np.ndarray | Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        meta: Sequence[dict[str, Any]] | None = None,
    ) -> ImageBatch:
        """Build a batch from HW, HWC or NHWC arrays (uint8, uint16, bool or float in [0, 1]).

        An alpha channel is composited onto white, since scans and faces have no transparency
        and white is the paper colour.

        Args:
            array: one array, or a sequence of same-sized arrays.
            names: optional names, one per image.
            meta: optional metadata dicts, one per image.

        Returns:
            The batch, float32 (N, C, H, W) in [0, 1].
        """
        import torch

        if isinstance(array, np.ndarray):
            nhwc = _to_nhwc(array)
        else:
            items = [_to_nhwc(np.asarray(a)) for a in array]
            if not items:
                raise ShapeError("no images given")
            shapes = {a.shape[1:] for a in items}
            if len(shapes) != 1:
                raise ShapeError(f"images in one batch must share a shape; got {sorted(shapes)}")
            if len({a.dtype for a in items}) > 1:  # 8- and 16-bit: each scaled by its own range
                items = [as_float01(a) for a in items]
            nhwc = np.concatenate(items)
        levels = [_two_level(image) for image in nhwc]
        data = as_float01(nhwc)
        c = data.shape[-1]
        if c == 4:
            alpha = data[..., 3:4]
            data = data[..., :3] * alpha + (1.0 - alpha)
        elif c == 2:
            alpha = data[..., 1:2]
            data = data[..., :1] * alpha + (1.0 - alpha)
        elif c not in (1, 3):
            raise ShapeError(f"images must have 1-4 channels; got {c}")
        tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
        metas = [dict(m) for m in (meta or [{} for _ in levels])]
        for m, two_level in zip(metas, levels, strict=False):
            if "mode" not in m:  # a decoder's page says how it was stored; an array tells here
                m.setdefault("two_level", two_level)
        return cls(tensor, list(names or []), metas)

    @classmethod
    def from_tensor(
        cls,
        tensor: torch.Tensor,
        names: Sequence[str] | None = None,
        meta: Sequence[dict[str, Any]] | None = None,
    ) -> ImageBatch:
        """Build a batch from a torch tensor, channel-first as torch has it.

        Layouts: (H, W) one gray image, (C, H, W) one image, (N, C, H, W) a batch, with C = 1
        (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA): the channels of
        :meth:`from_numpy`, whose conversion this is (alpha onto white, the [0, 1] and
        finiteness checks). ``uint8`` is read as 0..255; any float must hold [0, 1].

        Args:
            tensor: the image(s), on any device (copied to the CPU).
            names: optional names, one per image.
            meta: optional metadata dicts, one per image.

        Returns:
            The batch, float32 (N, C, H, W) in [0, 1] on the CPU.

        Raises:
            ShapeError: another layout or dtype, naming the shape or dtype as given.
        """
        import torch

        shape = tuple(tensor.shape)
        if tensor.ndim not in (2, 3, 4) or (tensor.ndim > 2 and shape[-3] not in (1, 2, 3, 4)):
            # (H, W, C) is numpy's and PIL's layout; a tensor of it is a likely slip.
            hwc = tensor.ndim in (3, 4) and shape[-1] in (1, 2, 3, 4)
            order = "2, 0, 1" if tensor.ndim == 3 else "0, 3, 1, 2"
            hint = f"; for channels last, pass tensor.permute({order})" if hwc else ""
            raise ShapeError(
                "tensor images must be (H, W), (C, H, W) or (N, C, H, W) with C = 1 to 4; "
                f"got shape {shape}{hint}"
            )
        if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
            raise ShapeError(f"tensor images must be float in [0, 1] or uint8; got {tensor.dtype}")
        t = tensor.detach().cpu()
        t = t if t.dtype in (torch.uint8, torch.float32) else t.float()  # numpy has no bfloat16
        nchw = t.reshape(1, 1, *shape) if t.ndim == 2 else t[None] if t.ndim == 3 else t
        return cls.from_numpy(nchw.numpy().transpose(0, 2, 3, 1), names, meta)

    def to_numpy(self, dtype: type[np.generic] = np.uint8) -> np.ndarray:
        """Return (N, H, W, C) pixels as ``uint8`` (rounded), ``uint16`` or ``float32``."""
        data = self.images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
        if dtype == np.uint8:
            return np.rint(data * 255.0).astype(np.uint8)
        if dtype == np.uint16:
            return np.rint(data * 65535.0).astype(np.uint16)
        if dtype == np.float32:
            return np.ascontiguousarray(data)
        raise ShapeError(f"unsupported output dtype {dtype}")

    def to_numpy_like(self, like: np.ndarray) -> np.ndarray:
        """(N, H, W, C) pixels in the dtype and layout an input array ``like`` comes back in.

        ``uint8`` and ``uint16`` stay as they are, any other dtype comes back ``float32`` in
        [0, 1]; a gray result of a 2-D (H, W) ``like`` drops its C axis: (N, H, W).
        """
        result = self.to_numpy(result_dtype(like.dtype))
        return result[..., 0] if like.ndim == 2 and result.shape[-1] == 1 else result

    @classmethod
    def from_pil(
        cls,
        images: Image.Image | Sequence[Image.Image],
        names: Sequence[str] | None = None,
        meta: Sequence[dict[str, Any]] | None = None,
    ) -> ImageBatch:
        """Build a batch from PIL images of any mode (converted to L or RGB, alpha onto white)."""
        from PIL import Image

        seq = [images] if isinstance(images, Image.Image) else list(images)
        return cls.from_numpy([pil_to_array(im) for im in seq], names, meta)

    def to_pil(self) -> list[Image.Image]:
        """One 8-bit PIL image (mode L or RGB) per batch item."""
        from PIL import Image

        arrays = self.to_numpy(np.uint8)
        mode = "L" if self.channels == 1 else "RGB"
        return [Image.fromarray(a[..., 0] if mode == "L" else a, mode) for a in arrays]


def _two_level(image: np.ndarray) -> bool:
    """Whether one HWC array is a black-and-white page, by the rule files are read by.

    One channel without alpha holding only its dtype's black and white: ``bool``, ``uint8``
    0/255 or float 0/1, as :func:`aepipe.io.is_bilevel` tells a decoded 8-bit page; 16-bit
    pages and pages with alpha are gray, as a 16-bit or gray+alpha file is read.
    """
    if image.shape[-1] != 1 or image.dtype == np.uint16:
        return False
    if image.dtype == np.bool_:
        return True
    if image.dtype == np.uint8:
        from aepipe.io import is_bilevel

        return is_bilevel(image)
    return bool(((image == 0) | (image == 1)).all())


def result_dtype(dtype: np.dtype) -> type[np.generic]:
    """The dtype a result of an input array of ``dtype`` comes back in.

    ``uint8`` and ``uint16`` stay; anything else (float, bool) is ``float32`` in [0, 1].
    """
    return dtype.type if dtype in (np.uint8, np.uint16) else np.float32


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Decode a PIL image of any mode into an HWC array that :meth:`ImageBatch.from_numpy` takes.

    16-bit gray stays uint16 (no precision lost), 1-bit images and palettes of grays become
    uint8 gray, other palettes and CMYK become RGB, alpha is kept so it can be composited onto
    white, and colours are converted into sRGB through an embedded profile
    (:func:`pil_pixels`).
    """
    return pil_pixels(image)[0]


def pil_pixels(image: Image.Image) -> tuple[np.ndarray, bytes | None]:
    """:func:`pil_to_array`'s pixels and the ICC profile they are in (:func:`to_working_space`)."""
    image, profile = to_working_space(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16)[..., None], profile
    if mode == "I":
        arr = np.asarray(image)
        return np.clip(arr, 0, 65535).astype(np.uint16)[..., None], profile
    if mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        return np.clip(arr / (255.0 if hi > 1.0 else 1.0), 0, 1)[..., None], profile
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))[..., None], profile
    if mode == "LA":
        return np.asarray(image), profile
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        if not has_alpha and _gray_palette(image):
            # A palette of grays (a 2-colour black-and-white scan) is a gray page, as a PDF's
            # gray rendering is, not a colour one three times its size.
            return np.asarray(image.convert("L"))[..., None], None
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB")), profile
    if mode in ("RGBA", "RGBa"):
        return np.asarray(image.convert("RGBA")), profile
    return np.asarray(image.convert("RGB")), profile


def _gray_palette(image: Image.Image) -> bool:
    """Whether every colour a palette image uses is a gray."""
    palette = image.getpalette("RGB")
    used = image.getcolors(256)  # (count, index) of each index in use; a P image has <= 256
    if not palette or not used:
        return False
    rgb = np.asarray(palette, np.uint8).reshape(-1, 3)
    index = np.asarray([i for _, i in used])
    if int(index.max()) >= len(rgb):
        return False
    colours = rgb[index]
    return bool((colours == colours[:, :1]).all())


# ---- colour: sRGB is the working space ------------------------------------------------------

# The ICC colour space (profile header bytes 16-20) that fits each colour mode PIL decodes to.
_COLOUR_SPACE = {
    "RGB": "RGB",
    "RGBA": "RGB",
    "RGBX": "RGB",
    "P": "RGB",
    "PA": "RGB",
    "YCbCr": "RGB",
    "CMYK": "CMYK",
    "LAB": "LAB",
}
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def icc_space(profile: bytes | None) -> str | None:
    """The colour space an ICC profile describes (``GRAY``, ``RGB``, ``CMYK``, ``LAB`` ...).

    Read from the profile's header; None for anything that is not an ICC profile.
    """
    if not profile or len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return profile[16:20].decode("latin-1").strip().upper()


def to_working_space(image: Image.Image) -> tuple[Image.Image, bytes | None]:
    """``image`` with its colours in sRGB, the pipeline's working space, and its pixels' profile.

    Colour pixels with an embedded profile that is not sRGB (Adobe RGB, a CMYK press profile
    such as SWOP, Lab) are converted to sRGB through it, in one transform: relative
    colorimetric with black-point compensation (Photoshop's default conversion: paper white
    stays white, black ink black); the profile returned is then sRGB's. An sRGB image keeps its
    pixels and its own profile. Gray pixels are never changed: their gray profile is returned,
    for gray outputs to embed. Without a profile, or with one that does not fit the mode or
    does not parse, ``image`` comes back as it is with None (its pixels taken as sRGB).
    """
    from PIL import ImageCms

    profile = image.info.get("icc_profile")
    space = icc_space(profile)
    gray = image.mode in _GRAY_MODES
    if space is None or space != ("GRAY" if gray else _COLOUR_SPACE.get(image.mode)):
        return image, None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if gray or (space == "RGB" and _is_srgb(source)):
            return image, profile
        if image.mode in ("P", "PA", "YCbCr", "RGBX"):
            alpha = image.mode == "PA" or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        transform = ImageCms.buildTransform(
            source,
            _srgb_profile(),
            image.mode,
            out_mode,
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
        converted = transform.apply(image)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image, None  # a damaged profile: the pixels as they are, as without one
    return converted, _srgb_bytes()


@functools.cache
def _srgb_bytes() -> bytes:
    """LittleCMS's sRGB profile with a fixed creation date and no profile ID.

    LittleCMS stamps each profile it makes with the current time, so outputs carrying it
    differed from run to run (and CLI from service); the header's date (bytes 24-35) is set to
    2000-01-01 and the optional MD5 profile ID (bytes 84-99), which covers it, to zero.
    """
    import struct

    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    data[84:100] = bytes(16)
    return bytes(data)


@functools.cache
def _srgb_profile() -> Any:
    """The sRGB profile pages are converted to: the one :func:`_srgb_bytes` embeds, parsed once."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(io.BytesIO(_srgb_bytes()))


def _is_srgb(profile: Any) -> bool:
    """Whether a parsed profile is sRGB's, by its name (not e-sRGB or scRGB)."""
    import re

    name = str(profile.profile.profile_description or "")
    return re.search(r"(?<![a-z])srgb(?![a-z])", name.lower()) is not None
