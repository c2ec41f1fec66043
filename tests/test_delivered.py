"""What every front end delivers for a stage's result (:func:`aepipe.core.delivered_pages`): the
input itself for a page the stage kept as it was, the two-level page for black-and-white inputs,
else the result; the encoder writes exactly those pixels. And tensors into batches
(:meth:`ImageBatch.from_tensor`) in every layout the arrays' path takes."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from aepipe import ImageBatch
from aepipe.core import delivered, delivered_pages, delivered_pixels, encode_result
from aepipe.errors import ShapeError


def luma_only(batch: ImageBatch) -> ImageBatch:
    """A gray stage that cleaned nothing: it takes only the colour."""
    return batch.gray()


def darken(batch: ImageBatch) -> ImageBatch:
    """A gray stage that changed the page (mid-grays everywhere)."""
    return batch.replace(batch.gray().images * 0.6 + 0.2)


def written(out: ImageBatch, source: ImageBatch | None = None) -> tuple[str, np.ndarray]:
    """Mode and (H, W, C) uint8 pixels of image 0 as the CLI writes it."""
    image = Image.open(io.BytesIO(encode_result(out, 0, "p", source).png))
    pixels = np.asarray(image.convert("L") if image.mode == "1" else image)
    return image.mode, pixels if pixels.ndim == 3 else pixels[..., None]


def colour_page(seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.random.default_rng(seed).integers(0, top + 1, (12, 16, 3)).astype(dtype)


def test_a_page_kept_as_it_was_comes_back_as_it_came_colour_and_16_bits() -> None:
    for dtype in (np.uint8, np.uint16):
        x = colour_page(dtype=dtype)
        source = ImageBatch.from_numpy(x)
        got = delivered(luma_only(source), source)
        assert got.channels == 3
        np.testing.assert_array_equal(got.to_numpy(dtype)[0], x)  # exact, not via 8 bits
    source = ImageBatch.from_numpy(colour_page())
    mode, pixels = written(luma_only(source), source)
    assert mode == "RGB"
    np.testing.assert_array_equal(pixels, delivered_pixels(luma_only(source), 0, source))
    # A page the stage changed comes back as the stage made it, float precision kept.
    changed = darken(source)
    assert torch.equal(delivered(changed, source).images, changed.images)
    assert delivered(luma_only(source)).channels == 1  # no source: nothing to keep


def test_a_black_and_white_input_stays_two_level_as_written() -> None:
    bw = np.full((12, 16), 255, np.uint8)
    bw[3:6] = 0
    soft = lambda b: b.replace(b.images * 0.8 + 0.1)  # noqa: E731  (0.1 and 0.9: gray levels)
    for x in (bw, bw == 255):  # 0/255 in 8 bits, and a 1-bit (bool) image
        source = ImageBatch.from_numpy(x)
        got = delivered(soft(source), source)
        np.testing.assert_array_equal(got.images[0, 0].numpy(), (bw == 255).astype(np.float32))
        assert got.to_numpy(np.uint8).max() == 255  # 0/255 as uint8
        mode, pixels = written(soft(source), source)
        assert mode == "1"
        np.testing.assert_array_equal(pixels, delivered_pixels(soft(source), 0, source))
    # A decoded page's meta decides, as for the CLI: read as 8-bit gray, not two-level.
    read = ImageBatch.from_numpy(bw, meta=[{"mode": "L"}])
    assert torch.equal(delivered(soft(read), read).images, soft(read).images)
    assert written(soft(read), read)[0] == "L"
    one_bit = ImageBatch.from_numpy(bw, meta=[{"mode": "1"}])
    assert written(soft(one_bit), one_bit)[0] == "1"
    # A gray input with other levels keeps the stage's grays.
    gray = ImageBatch.from_numpy(np.where(bw == 0, 40, 230).astype(np.uint8))
    assert torch.equal(delivered(soft(gray), gray).images, soft(gray).images)


def test_arrays_are_two_level_by_the_rule_files_are_read_by(tmp_path) -> None:
    """A 16-bit or gray+alpha black-and-white page is read from a file as gray (the CLI writes
    it gray); the library made the same pages two-level: every front end now follows the file."""
    from aepipe import apply

    bw = np.full((12, 16), 255, np.uint8)
    bw[3:6] = 0
    soft = lambda b: b.replace(b.images * 0.8 + 0.1)  # noqa: E731
    arrays = {
        "l16": bw.astype(np.uint16) * 257,
        "la": np.dstack([bw, np.full_like(bw, 255)]),
        "l8": bw,
        "float": (bw / 255).astype(np.float32),
    }
    for name, x in arrays.items():
        Image.fromarray(x if name != "float" else bw).save(tmp_path / f"{name}.png")
        from_file = np.squeeze(apply(soft, tmp_path / f"{name}.png").to_numpy(np.uint8))
        from_array = np.squeeze(ImageBatch.from_numpy(apply(soft, x)).to_numpy(np.uint8))
        np.testing.assert_array_equal(from_array, from_file, err_msg=name)
        two_level = set(np.unique(from_file).tolist()) <= {0, 255}
        assert two_level == (name in ("l8", "float")), name


def test_each_image_is_delivered_alone_and_a_mixed_batch_joins_in_rgb() -> None:
    source = ImageBatch.from_numpy([colour_page(1), colour_page(2)])
    out = luma_only(source)
    out.images[1] *= 0.5  # the second page was cleaned: gray
    pages = delivered_pages(out, source)
    assert [p.channels for p in pages] == [3, 1]
    assert [p.names for p in pages] == [[n] for n in out.names]
    joined = delivered(out, source)
    assert joined.channels == 3
    assert torch.equal(joined.images[0], source.images[0])
    assert torch.equal(joined.images[1], out.images[1].expand(3, -1, -1))


def test_tensors_in_every_layout_the_arrays_take() -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    want = ImageBatch.from_numpy(rgba).images
    chw = torch.from_numpy(rgba).permute(2, 0, 1)
    assert torch.equal(ImageBatch.from_tensor(chw).images, want)  # alpha onto white
    assert torch.equal(ImageBatch.from_tensor(chw[None]).images, want)
    hw = torch.from_numpy(rgba[..., 0])
    assert torch.equal(
        ImageBatch.from_tensor(hw).images, ImageBatch.from_numpy(rgba[..., 0]).images
    )
    half = ImageBatch.from_tensor(chw[:3].to(torch.bfloat16) / 255)
    assert half.images.dtype == torch.float32 and half.channels == 3
    for shape, hint in (((64, 64, 3), r"permute\(2, 0, 1\)"), ((2, 8, 8, 3), r"0, 3, 1, 2")):
        with pytest.raises(ShapeError, match=rf"got shape {re.escape(str(shape))}.*{hint}"):
            ImageBatch.from_tensor(torch.zeros(shape, dtype=torch.uint8))
    with pytest.raises(ShapeError, match=r"got shape \(1, 1, 1, 4, 4\)$"):
        ImageBatch.from_tensor(torch.zeros(1, 1, 1, 4, 4))
    with pytest.raises(ShapeError, match="int32"):
        ImageBatch.from_tensor(torch.zeros(1, 4, 4, dtype=torch.int32))


def test_arrays_come_back_in_their_own_dtype_and_layout() -> None:
    batch = ImageBatch.from_numpy(np.zeros((4, 5), np.uint8))
    assert batch.to_numpy_like(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5)
    assert batch.to_numpy_like(np.zeros((4, 5, 1), np.uint16)).dtype == np.uint16
    assert batch.to_numpy_like(np.zeros((4, 5), bool)).dtype == np.float32
    assert batch.rgb().to_numpy_like(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5, 3)
