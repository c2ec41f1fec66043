"""The clean-page check that lets the scan stage pass clean pages through unchanged."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from factory import display_page

from aepipe.batch import ImageBatch, to_gray
from aepipe.clean_page import check_page, is_clean
from aepipe.data.synthetic_pages import make_pair
from aepipe.stages.scan_denoiser import ScanDenoiser


def gray_page(seed: int, dpi: int = 150) -> np.ndarray:
    """A clean (H, W) float page in [0, 1] with anti-aliased type, bold display type and a photo."""
    return display_page(41_000_000, seed, dpi, (480, 400))[0].astype(np.float32) / 255.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_generated_pages_are_clean(seed: int) -> None:
    page = gray_page(seed)
    assert ((page > 0.05) & (page < 0.95)).mean() > 0.01  # gray ink and a photo on the page
    assert is_clean(page)


def test_a_soft_stain_on_white_paper_is_not_clean() -> None:
    page = gray_page(0)
    yy, xx = np.mgrid[: page.shape[0], : page.shape[1]]
    stain = 0.3 * np.exp(-(((yy - 240) / 90.0) ** 2 + ((xx - 200) / 70.0) ** 2))
    assert not is_clean(np.minimum(page, 1.0 - stain).astype(np.float32))


def test_bleed_through_on_white_paper_is_not_clean() -> None:
    page = gray_page(1)
    back = gray_page(2)[:, ::-1]  # the other side of the sheet, seen through it
    seen = 1.0 - 0.25 * (1.0 - back)
    assert not is_clean(np.minimum(page, seen))


def test_speck_noise_on_white_paper_is_not_clean() -> None:
    page = gray_page(0)
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, page.shape[0], 300), rng.integers(0, page.shape[1], 300)
    specked = page.copy()
    specked[ys, xs] = 0.0
    assert check_page(page).specks < 10 < 100 < check_page(specked).specks
    assert not is_clean(specked)


def test_gray_paper_is_never_clean() -> None:
    dirty, _ = make_pair(3, 300, 260, 150)
    assert check_page(dirty / 255.0).stray == 1.0
    assert check_page(np.full((100, 100), 0.9)).stray == 1.0  # clean but gray scanned paper


def test_stage_passes_a_clean_page_through_bit_for_bit() -> None:
    torch.manual_seed(0)
    page = torch.from_numpy(gray_page(0))[None, None]
    dirty = torch.from_numpy(make_pair(3, 480, 400, 150)[0] / 255.0).float()[None, None]
    out = ScanDenoiser.tiny(0)(ImageBatch(torch.cat([page, dirty])))
    assert torch.equal(out.images[0], page[0])
    assert not torch.equal(out.images[1], dirty[0])
    assert [m["already_clean"] for m in out.meta] == [True, False]
    processed = ScanDenoiser.tiny(0, clean_pages="process")(ImageBatch(page))
    assert not torch.equal(processed.images, page)
    assert processed.meta[0]["already_clean"] is False


def test_a_clean_colour_page_keeps_its_colours() -> None:
    page = torch.from_numpy(gray_page(1))[None, None].expand(1, 3, -1, -1).clone()
    page[0, :, 20:40, 30:200] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a red bar
    out = ScanDenoiser.tiny(0, keep_color=True)(ImageBatch(page))
    assert out.meta[0]["already_clean"] is True
    assert torch.equal(out.images, page)


def colour_chart() -> np.ndarray:
    """A born-digital chart, (H, W, 3) in [0, 1]: white, black axes, anti-aliased lines in the
    saturated mid-luma colours of office charts (luma 0.45-0.66: stray gray in luma alone)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (4 * 400, 4 * 300), "white")  # drawn 4x, shrunk: anti-aliased
    draw = ImageDraw.Draw(im)
    draw.line([(160, 80), (160, 1040), (1560, 1040)], fill="black", width=8)
    rng = np.random.default_rng(0)
    for colour in [(79, 129, 189), (192, 80, 77), (155, 187, 89), (128, 100, 162)]:
        ys = rng.integers(150, 1000, 12)
        points = [(200 + 120 * i, int(y)) for i, y in enumerate(ys)]
        draw.line(points, fill=colour, width=12)
        for x, y in points:
            draw.rectangle([x - 16, y - 16, x + 16, y + 16], fill=colour)
    small = im.resize((400, 300), Image.Resampling.LANCZOS)
    return np.asarray(small, np.float32) / 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


def test_a_colour_chart_is_clean_but_not_with_a_brown_stain_or_on_yellowed_paper() -> None:
    chart = colour_chart()
    assert not is_clean(_luma(chart))  # its coloured lines are stray gray in luma
    assert is_clean(_luma(chart), chart.min(-1))
    yy, xx = np.mgrid[:300, :400]
    blot = np.exp(-(((yy - 150) / 50.0) ** 2 + ((xx - 200) / 60.0) ** 2))[..., None]
    coffee = np.float32([0.55, 0.35, 0.15])  # a brown stain, fading out at its edge
    stained = (chart * (1 - 0.6 * blot) + 0.6 * blot * coffee * chart).astype(np.float32)
    assert not is_clean(_luma(stained), stained.min(-1))
    yellowed = (chart * np.float32([0.97, 0.93, 0.80])).astype(np.float32)
    assert not is_clean(_luma(yellowed), yellowed.min(-1))


def test_stage_keeps_a_colour_chart_as_it_was() -> None:
    chart = torch.from_numpy(colour_chart()).permute(2, 0, 1)[None]
    for keep_color in (True, False):
        out = ScanDenoiser.tiny(0, keep_color=keep_color)(ImageBatch(chart))
        assert out.meta[0]["already_clean"] is True
    assert torch.equal(out.images, to_gray(chart))  # gray output: the chart's own luma
    kept = ScanDenoiser.tiny(0, keep_color=True)(ImageBatch(chart))
    assert torch.equal(kept.images, chart)


def test_clean_scans_keeps_a_clean_page_and_cleans_it_with_clean_all(tmp_path, cli_env) -> None:
    """Also: --precision and --views reach the stage (float32 here: the output is the in-process
    one)."""
    import subprocess

    from PIL import Image

    page = np.round(gray_page(2) * 255).astype(np.uint8)
    Image.fromarray(page).save(tmp_path / "page.png")
    outs = {}
    for flag in ([], ["--clean-all", "--precision", "float32", "--views", "2"]):
        out = tmp_path / ("all" if flag else "default")
        res = subprocess.run(
            ["clean-scans", str(tmp_path / "page.png"), "--out", str(out), "-q", *flag],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        outs[bool(flag)] = np.asarray(Image.open(out / "page.png").convert("L"))
    assert np.array_equal(outs[False], page)
    assert np.abs(outs[True].astype(int) - page).mean() > 1.0
    stage = ScanDenoiser.from_pretrained(
        "scan-denoiser", precision="float32", clean_pages="process", views=2
    )
    expected = stage(ImageBatch.from_numpy(page)).to_numpy()[0, ..., 0]
    assert np.abs(outs[True].astype(int) - expected.astype(int)).max() <= 1


def test_a_clean_colour_page_comes_back_as_it_was_from_every_front_end(
    tmp_path, tiny_weights
) -> None:
    """The gray stage passes a clean chart through as its luma; the file runner (CLI, TOML),
    the page core (HTTP) and Ray's file mapper then write the page itself, colours and all;
    a page the stage did clean comes back gray as before."""
    from PIL import Image
    from typer.testing import CliRunner

    from aepipe.cli.main import _single
    from aepipe.core import run_pages
    from aepipe.io import read_pages
    from aepipe.stage import load_stage

    chart = (colour_chart() * 255).round().astype(np.uint8)
    dirty = np.repeat(make_pair(3, 300, 400, 150)[0][..., None], 3, axis=2)
    dirty[..., 0] = np.maximum(dirty[..., 0], 40)  # a colour scan, not a gray one in RGB
    (tmp_path / "in").mkdir()
    Image.fromarray(chart).save(tmp_path / "in" / "chart.png")
    Image.fromarray(dirty).save(tmp_path / "in" / "dirty.png")
    weights = str(tiny_weights["scan-denoiser"])
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q", "--model", weights]
    res = CliRunner().invoke(_single("clean-scans"), args)
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "chart.png")), chart)
    assert Image.open(tmp_path / "out" / "dirty.png").mode == "L"
    stage = load_stage(weights)
    page = run_pages(stage, list(read_pages(tmp_path / "in" / "chart.png")), "chart")[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(page.png))), chart)
    pytest.importorskip("ray", reason="needs the [ray] extra")
    from aepipe.ray import StageMapper

    data = [(tmp_path / "in" / n).read_bytes() for n in ("chart.png", "dirty.png")]
    rows = StageMapper(weights, device="cpu")({"bytes": np.array(data, dtype=object)})
    np.testing.assert_array_equal(rows["image"][0], chart)
    assert rows["image"][1].ndim == 2 or rows["image"][1].shape[-1] == 1  # cleaned: gray


def test_light_type_on_a_dark_ground_is_clean_in_any_two_colours() -> None:
    page = np.round(gray_page(0)).astype(np.float32)  # bilevel: black type on white
    negative = np.where(page > 0.5, 32 / 255, 1.0).astype(np.float32)  # white type, dark ground
    assert is_clean(page) and is_clean(negative)
    stained = negative.copy()
    stained[100:300, 100:300] = np.clip(stained[100:300, 100:300] + 0.3, 0.0, 1.0)
    assert not is_clean(stained)
