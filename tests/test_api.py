"""The library API: apply / Pipeline on every input kind, streaming, threads, pipeline files
through the CLI, and the README's python examples run as written."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from factory import clean_colour_page
from PIL import Image

from aepipe import ImageBatch, Pipeline, apply, load_stage
from aepipe.errors import ConfigError, ShapeError, WeightsError
from aepipe.pipeline import read_pipeline_file
from aepipe.stage import Stage

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@pytest.fixture(scope="module")
def gray_stage(tiny_weights: dict[str, Path]) -> Stage:
    return load_stage(tiny_weights["impulse-denoiser"])


@pytest.fixture(scope="module")
def any_stage(tiny_weights: dict[str, Path]) -> Stage:
    """A stage that takes gray and colour images alike."""
    stage = load_stage(tiny_weights["scan-denoiser"])
    assert 1 in stage.input_channels
    return stage


def page(h: int = 40, w: int = 48, c: int = 0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 0 else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def reference(stage: Stage, array: np.ndarray) -> np.ndarray:
    """The stage's uint8 NHWC result computed by hand through ImageBatch."""
    return stage(ImageBatch.from_numpy(array)).to_numpy(np.uint8)


# ---- apply: every input kind comes back in its own kind ---------------------------------------


def test_apply_numpy_layouts_and_dtypes(gray_stage: Stage) -> None:
    x = page()
    ref = reference(gray_stage, x)[0, ..., 0]
    out = apply(gray_stage, x)
    assert out.shape == x.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)

    hwc = apply(gray_stage, x[..., None])
    assert hwc.shape == (*x.shape, 1)
    np.testing.assert_array_equal(hwc[..., 0], ref)

    nhwc = np.stack([x, page(seed=1)])[..., None]
    batch_out = apply(gray_stage, nhwc)
    assert batch_out.shape == nhwc.shape and batch_out.dtype == np.uint8
    # Another batch size may move a pixel by one rounding step.
    np.testing.assert_allclose(batch_out[0, ..., 0], ref, atol=1)

    f32 = apply(gray_stage, x.astype(np.float32) / 255)
    assert f32.dtype == np.float32 and f32.shape == x.shape
    assert f32.min() >= 0.0 and f32.max() <= 1.0
    assert np.abs(f32 * 255 - ref).max() <= 1.0

    f64 = apply(gray_stage, x.astype(np.float64) / 255)
    assert f64.dtype == np.float32

    u16 = apply(gray_stage, x.astype(np.uint16) * 257)
    assert u16.dtype == np.uint16
    assert np.abs(u16.astype(np.int64) // 257 - ref).max() <= 1


def test_batches_of_mixed_dtypes_and_byte_orders_keep_each_images_scale() -> None:
    white = [
        np.full((4, 4), 255, np.uint8),
        np.full((4, 4), 65535, np.uint16),
        np.ones((4, 4), bool),
    ]
    batch = ImageBatch.from_numpy(white)
    assert torch.equal(batch.images, torch.ones(3, 1, 4, 4))  # not 255/65535 for the 8-bit one
    big = np.full((4, 4), 32768, ">u2")  # big-endian 16-bit, as TIFF and FITS store it
    assert ImageBatch.from_numpy(big).images.flatten()[0].item() == pytest.approx(32768 / 65535)
    pil = ImageBatch.from_pil([Image.new("L", (4, 4), 255), Image.new("I;16", (4, 4), 65535)])
    assert torch.equal(pil.images, torch.ones(2, 1, 4, 4))


def test_map_keeps_large_images_out_of_one_call(gray_stage: Stage) -> None:
    """Pipeline.map (and so Ray) caps a model call at batch_pixels, as the file runner does."""
    calls = []

    def spy(batch: ImageBatch) -> ImageBatch:
        calls.append(len(batch))
        return gray_stage(batch)

    pages = [page(seed=i) for i in range(3)]
    list(Pipeline([spy]).map(pages, batch_size=8))
    pixels = pages[0].shape[0] * pages[0].shape[1]
    list(Pipeline([spy]).map(pages, batch_size=8, batch_pixels=2 * pixels))
    assert calls == [3, 2, 1]


def test_joining_and_cutting_batches_checks_shapes_and_sizes() -> None:
    gray, rgb = ImageBatch.from_numpy(page()), ImageBatch.from_numpy(page(c=3))
    with pytest.raises(ShapeError, match="must share"):
        ImageBatch.concat([gray, rgb])
    with pytest.raises(ShapeError, match="at least 1"):
        gray.split(0)
    assert len(ImageBatch.concat([gray, gray]).split(1)) == 2


def test_devices_and_helper_weights_are_refused_with_typed_errors(tmp_path: Path) -> None:
    from aepipe.stage import resolve_device

    for device in ("gpu", "CPU", "mps", "cuda:x"):
        with pytest.raises(ConfigError, match="device must be"):
            resolve_device(device)
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"stage 0 is a str.*load_stage"):
        Pipeline(["salt-pepper"])
    # The face aligner ships beside the stages but is no stage of its own.
    with pytest.raises(WeightsError, match="'face-aligner' model, used inside"):
        load_stage("face-aligner")


def test_apply_colour_numpy(any_stage: Stage) -> None:
    x = page(c=3)
    out = apply(any_stage, x)
    assert out.dtype == np.uint8 and out.shape[:2] == x.shape[:2] and out.ndim == 3
    np.testing.assert_array_equal(out, reference(any_stage, x)[0])


def test_apply_pil(gray_stage: Stage) -> None:
    x = page()
    out = apply(gray_stage, Image.fromarray(x))
    assert isinstance(out, Image.Image) and out.mode == "L" and out.size == (x.shape[1], x.shape[0])
    np.testing.assert_array_equal(np.asarray(out), apply(gray_stage, x))


def test_apply_tensors_keep_layout_dtype_device(gray_stage: Stage) -> None:
    x = page()
    ref = apply(gray_stage, x)
    chw = torch.from_numpy(x)[None].float() / 255
    out = apply(gray_stage, chw)
    assert out.shape == chw.shape and out.dtype == torch.float32
    assert (out[0].numpy() * 255 - ref).__abs__().max() <= 1.0
    nchw = chw[None].double()
    out4 = apply(gray_stage, nchw)
    assert out4.shape == nchw.shape and out4.dtype == torch.float64
    u8 = apply(gray_stage, torch.from_numpy(x)[None])
    assert u8.dtype == torch.uint8
    np.testing.assert_array_equal(u8[0].numpy(), ref)
    with pytest.raises(ShapeError, match="uint8"):
        apply(gray_stage, torch.zeros(1, 8, 8, dtype=torch.int32))
    # Float tensors are held to [0, 1] as float arrays are (0..255 floats, NaN, inf refused).
    for bad, found in ((chw * 255, r"range \[0, 255\]"), (chw * torch.nan, "NaN or infinite")):
        with pytest.raises(ShapeError, match=found):
            apply(gray_stage, bad)
    with pytest.raises(ShapeError, match="NaN or infinite"):
        apply(gray_stage, np.full((8, 8), np.inf, np.float32))


def test_apply_path_list_batch_and_errors(gray_stage: Stage, tmp_path: Path) -> None:
    x = page()
    Image.fromarray(x).save(tmp_path / "a.png")
    res = apply(gray_stage, tmp_path / "a.png")
    assert isinstance(res, ImageBatch) and res.names == ["a"]
    np.testing.assert_array_equal(res.to_numpy()[0, ..., 0], apply(gray_stage, x))
    assert isinstance(apply(gray_stage, str(tmp_path / "a.png")), ImageBatch)

    both = apply(gray_stage, [x, Image.fromarray(x)])
    assert isinstance(both, list) and isinstance(both[1], Image.Image)
    batch = ImageBatch.from_numpy(x)
    assert isinstance(apply(gray_stage, batch), ImageBatch)
    with pytest.raises(TypeError, match="cannot apply"):
        apply(gray_stage, {"image": x})
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        apply(gray_stage, x.astype(np.float32))  # 0..255 floats are a mistake, not an image


def test_pipeline_call_chains_and_accepts_plain_inputs(gray_stage: Stage) -> None:
    x = page()
    pipe = Pipeline([gray_stage, gray_stage])
    # The chain stays in float between stages: compare with the float round trip.
    twice = apply(gray_stage, apply(gray_stage, x.astype(np.float32) / 255))
    assert np.abs(pipe(x).astype(np.float32) - twice * 255).max() <= 0.51
    assert isinstance(pipe(ImageBatch.from_numpy(x)), ImageBatch)
    with pytest.raises(ConfigError):
        Pipeline([])


def test_every_input_kind_gets_the_pixels_the_cli_writes(any_stage: Stage, tmp_path: Path) -> None:
    """A page the stage kept as it was comes back as it came, colour and 16 bits included (the
    library used to return its luma), and a black-and-white page two-level (it used to return
    the stage's grays), as the CLI's page core writes them."""
    from aepipe.core import run_pages
    from aepipe.io import read_pages

    colour = clean_colour_page()
    Image.fromarray(colour).save(tmp_path / "page.png")
    written = Image.open(
        io.BytesIO(run_pages(any_stage, list(read_pages(tmp_path / "page.png")), "p")[0].png)
    )
    np.testing.assert_array_equal(np.asarray(written), colour)
    np.testing.assert_array_equal(apply(any_stage, colour), colour)
    wide = colour.astype(np.uint16) * 257
    np.testing.assert_array_equal(apply(any_stage, wide), wide)
    np.testing.assert_array_equal(np.asarray(apply(any_stage, Image.fromarray(colour))), colour)
    chw = torch.from_numpy(colour).permute(2, 0, 1)
    assert torch.equal(apply(any_stage, chw), chw)
    by_path = apply(any_stage, tmp_path / "page.png")
    np.testing.assert_array_equal(by_path.to_numpy()[0], colour)
    gray = np.random.default_rng(3).integers(0, 256, colour.shape[:2], dtype=np.uint8)
    mapped = list(Pipeline([any_stage]).map([colour, colour, gray]))
    np.testing.assert_array_equal(mapped[0], colour)
    np.testing.assert_array_equal(mapped[1], colour)
    np.testing.assert_array_equal(mapped[2], apply(any_stage, gray))

    bw = np.full((40, 60), 255, np.uint8)
    bw[10:14, 5:50] = 0
    bw[20:30:3, 5:50] = 0
    Image.fromarray(bw).convert("1").save(tmp_path / "bw.png")
    png = run_pages(any_stage, list(read_pages(tmp_path / "bw.png")), "bw")[0].png
    one_bit = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert Image.open(io.BytesIO(png)).mode == "1"
    np.testing.assert_array_equal(
        apply(any_stage, tmp_path / "bw.png").to_numpy()[0, ..., 0], one_bit
    )
    np.testing.assert_array_equal(apply(any_stage, bw), one_bit)
    as_bool = apply(any_stage, bw == 255)
    assert as_bool.dtype == np.float32
    np.testing.assert_array_equal(as_bool, one_bit / 255.0)


def test_tensors_in_the_layouts_arrays_take(any_stage: Stage, gray_stage: Stage) -> None:
    """(H, W) and RGBA (4, H, W) tensors are taken as the arrays are; a channels-last tensor is
    refused naming the shape passed (it named a (1, ...) shape the user never gave)."""
    x = page()
    hw = apply(gray_stage, torch.from_numpy(x))
    assert hw.shape == x.shape and hw.dtype == torch.uint8
    np.testing.assert_array_equal(hw.numpy(), apply(gray_stage, x))
    rgba = np.dstack([page(c=3, seed=1), np.full(x.shape, 200, np.uint8)])
    out = apply(any_stage, torch.from_numpy(rgba).permute(2, 0, 1))
    want = apply(any_stage, rgba)
    np.testing.assert_array_equal(
        out.numpy(), np.moveaxis(want if want.ndim == 3 else want[..., None], -1, 0)
    )
    with pytest.raises(ShapeError, match=r"got shape \(64, 64, 3\).*permute\(2, 0, 1\)"):
        apply(gray_stage, torch.zeros(64, 64, 3, dtype=torch.uint8))


# ---- Pipeline.map: batching, order, laziness -----------------------------------------------


def test_map_matches_apply_for_mixed_items(gray_stage: Stage) -> None:
    pipe = Pipeline([gray_stage])
    items = [
        page(seed=0),
        page(seed=1),
        page(seed=2).astype(np.float32) / 255,  # same shape, other dtype: its own group
        page(30, 20, seed=3),
        Image.fromarray(page(seed=4)),
        Image.fromarray(page(seed=5)),
        torch.from_numpy(page(seed=6))[None].float() / 255,
        torch.from_numpy(page(seed=7))[None].float() / 255,
        ImageBatch.from_numpy(page(seed=8)),
        page(seed=9)[..., None],
        page(seed=10)[..., None],
    ]
    got = list(pipe.map(items, batch_size=3))
    assert len(got) == len(items)
    for item, out in zip(items, got, strict=True):
        want = apply(pipe, item)
        assert type(out) is type(want)
        if isinstance(want, np.ndarray):
            assert out.dtype == want.dtype and out.shape == want.shape
            np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), atol=1.01)
        elif isinstance(want, Image.Image):
            diff = np.abs(np.asarray(out, np.int16) - np.asarray(want, np.int16))
            assert diff.max() <= 1
        elif isinstance(want, torch.Tensor):
            torch.testing.assert_close(out, want, atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(out.images, want.images, atol=1e-4, rtol=0)


def test_map_groups_2d_arrays_into_one_call(gray_stage: Stage) -> None:
    calls: list[int] = []

    def counting(batch: ImageBatch) -> ImageBatch:
        calls.append(len(batch))
        return gray_stage(batch)

    arrays = [page(seed=i) for i in range(5)]
    got = list(Pipeline([counting]).map(arrays, batch_size=4))
    assert calls == [4, 1]
    for x, out in zip(arrays, got, strict=True):
        assert out.shape == x.shape
        assert np.abs(out.astype(int) - apply(gray_stage, x).astype(int)).max() <= 1
    with pytest.raises(ConfigError):
        list(Pipeline([counting]).map(arrays, batch_size=0))


def test_map_is_lazy(gray_stage: Stage) -> None:
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield page(16, 16, seed=i)

    results = Pipeline([gray_stage]).map(source(), batch_size=8)
    assert pulled == 0
    first = next(results)
    assert first.shape == (16, 16)
    assert pulled <= 9  # one batch (and the item that closed it), not the whole source


def test_streaming_10000_images_keeps_memory_flat() -> None:
    # A cheap stage keeps this fast; benchmarks/streaming_memory.py runs a real model.
    pipe = Pipeline([lambda b: b.replace(1.0 - b.images)])
    rng = np.random.default_rng(0)
    samples: dict[int, float] = {}

    def source():
        for _ in range(10_000):
            yield rng.integers(0, 256, (64, 64), dtype=np.uint8)

    count = 0
    for count, out in enumerate(pipe.map(source(), batch_size=64), 1):
        assert out.shape == (64, 64)
        if count in (2_000, 10_000):
            samples[count] = rss_mb()
    assert count == 10_000
    growth = samples[10_000] - samples[2_000]
    print(
        f"\nRSS after 2,000 images {samples[2_000]:.1f} MB, after 10,000 {samples[10_000]:.1f} MB"
    )
    # Keeping the 8,000 further 64x64 results would add 33 MB; streaming adds ~nothing.
    assert growth < 12, f"RSS grew {growth:.1f} MB between image 2,000 and 10,000"


# ---- thread safety ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["impulse-denoiser", "scan-denoiser"])
def test_concurrent_threads_equal_sequential(name: str, tiny_weights: dict[str, Path]) -> None:
    stage = load_stage(tiny_weights[name])
    inputs = [page(40 + 8 * (i % 3), 48, seed=i) for i in range(16)]
    sequential = [apply(stage, x) for x in inputs]
    barrier = threading.Barrier(4)

    def work(i: int) -> np.ndarray:
        if i < 4:
            barrier.wait(timeout=10)  # start the first calls together
        return apply(stage, inputs[i])

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(work, range(len(inputs))))
    for a, b in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- pipeline files through the CLI -------------------------------------------------------


def aepipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "aepipe"), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def folder_toml(inputs: Path, out: Path, weights: Path, extra: str = "", stage: str = "") -> str:
    return f"""
[source]
type = "folder"
inputs = ["{inputs}"]
{extra}
[[stages]]
weights = "{weights}"
{stage}
[sink]
out = "{out}"
format = "png"
"""


def test_run_renders_pdf_pages_at_their_own_resolution_as_clean_scans(
    tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    from factory import pdf_pages

    (tmp_path / "in").mkdir()
    pdf_pages(tmp_path / "in" / "doc.pdf", [(40, 30)], dpi=100)  # a 56 x 42 px scan
    weights = tiny_weights["impulse-denoiser"]
    for name, extra in (("native", ""), ("asked", "dpi = 200")):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(folder_toml(tmp_path / "in", tmp_path / name, weights, extra))
        res = aepipe("run", str(cfg))
        assert res.returncode == 0, res.stderr
    cli = [str(BIN / "aepipe"), "denoise", str(tmp_path / "in"), "--out", str(tmp_path / "cli")]
    res = subprocess.run([*cli, "--model", str(weights), "--format", "png", "-q"], text=True)
    assert res.returncode == 0
    native = Image.open(tmp_path / "native" / "doc.png").size
    assert native == Image.open(tmp_path / "cli" / "doc.png").size
    assert native[0] in (55, 56) and native[1] in (41, 42)  # the scan's own 55 x 41 px
    assert Image.open(tmp_path / "asked" / "doc.png").size == (112, 84)  # 40 x 30 pt at 200


def test_run_on_an_empty_folder_says_so_as_clean_scans(
    tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    (tmp_path / "in").mkdir()
    cfg = tmp_path / "p.toml"
    weights = tiny_weights["impulse-denoiser"]
    cfg.write_text(folder_toml(tmp_path / "in", tmp_path / "out", weights))
    res = aepipe("run", str(cfg))
    assert res.returncode == 3 and "no image files found in" in res.stderr, res.stderr


BAD_CONFIGS = {
    "source.dpi": ("dpi = 5", ""),
    "source.folder.recursiv": ("recursiv = true", ""),
    "stages.0.config.no_such_option": ("", "[stages.config]\nno_such_option = 1"),
    "stages.0.device": ("", 'device = "tpu"'),
}


@pytest.mark.parametrize("field", sorted(BAD_CONFIGS))
def test_run_rejects_invalid_configs_naming_the_field(
    field: str, tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(page()).save(tmp_path / "in" / "a.png")
    extra, stage = BAD_CONFIGS[field]
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        folder_toml(
            tmp_path / "in", tmp_path / "out", tiny_weights["impulse-denoiser"], extra, stage
        )
    )
    res = aepipe("run", str(cfg))
    assert res.returncode == 2, res.stderr
    key = field.split(".")[-1]
    assert key in res.stderr and str(cfg) in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()  # failed before any work


def test_run_rejects_missing_weights_and_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cfg = tmp_path / "p.toml"
    cfg.write_text(folder_toml(tmp_path / "in", tmp_path / "out", tmp_path / "nope"))
    res = aepipe("run", str(cfg))
    # The exit code of `--model nope` (4: weights not loadable), the table named.
    assert res.returncode == 4 and "stages.0.weights" in res.stderr, res.stderr
    cfg.write_text("[source\n")
    res = aepipe("run", str(cfg))
    assert res.returncode == 2 and "not valid TOML" in res.stderr, res.stderr
    res = aepipe("run", str(tmp_path / "absent.toml"))
    assert res.returncode == 2 and "no such pipeline file" in res.stderr
    cfg.write_text('[source]\ntype = "folder"\ninputs = ["x"]\n')
    res = aepipe("run", str(cfg))
    assert res.returncode == 2 and "sink" in res.stderr, res.stderr
    # A source without its kind names the key and the kinds (not pydantic's "discriminator").
    cfg.write_text('[source]\ninputs = ["x"]\n[sink]\nout = "o"\n')
    with pytest.raises(
        ConfigError, match=r"source\.type: missing.*'folder', 'faces', 'interpolate'"
    ):
        read_pipeline_file(cfg)
    # Sink keys the source's kind would ignore are refused, not dropped.
    cfg.write_text('[source]\ntype = "faces"\n[sink]\nout = "o"\nformat = "pdf"\n')
    with pytest.raises(ConfigError, match=r"sink\.format: only for folder sources"):
        read_pipeline_file(cfg)
    cfg.write_text('[source]\ntype = "folder"\ninputs = ["x"]\n[sink]\nout = "o"\ngrid = "g.png"\n')
    with pytest.raises(ConfigError, match=r"sink\.grid: only for faces and interpolate sources"):
        read_pipeline_file(cfg)
    # A grid the writer could not write is refused before any face is made.
    cfg.write_text('[source]\ntype = "faces"\n[sink]\nout = "o"\ngrid = "o_grid"\n')
    with pytest.raises(ConfigError, match=r"sink\.grid o_grid: cannot write this format"):
        read_pipeline_file(cfg)


def test_example_clean_scans_toml_runs(tmp_path: Path, tiny_weights: dict[str, Path]) -> None:
    (tmp_path / "in").mkdir()
    x = page(60, 50, seed=3)
    Image.fromarray(x).save(tmp_path / "in" / "scan.png")
    text = (ROOT / "examples" / "clean-scans.toml").read_text()
    text = text.replace('"scan-denoiser"', f'"{tiny_weights["scan-denoiser"]}"')
    text = text.replace('"sample_inputs/scans"', f'"{tmp_path / "in"}"')
    text = text.replace('"demo_out/', f'"{tmp_path}/')
    cfg = tmp_path / "clean.toml"
    cfg.write_text(text)
    res = aepipe("run", str(cfg), "--quiet")
    assert res.returncode == 0, res.stderr
    out = np.asarray(Image.open(tmp_path / "pipeline_scans" / "scan.png"))
    stage = load_stage(tiny_weights["scan-denoiser"])
    np.testing.assert_array_equal(out, apply(stage, x))
    assert (tmp_path / "pipeline_scans_report.json").is_file()


def test_example_faces_toml_runs(tmp_path: Path, tiny_weights: dict[str, Path]) -> None:
    text = (ROOT / "examples" / "faces.toml").read_text()
    text = text.replace('"face-vae"', f'"{tiny_weights["face-generator"]}"')
    text = text.replace('weights = "colorizer"', f'weights = "{tiny_weights["colorizer"]}"')
    text = text.replace('"demo_out/', f'"{tmp_path}/')
    cfg = tmp_path / "faces.toml"
    cfg.write_text(text)
    res = aepipe("run", str(cfg), "--quiet")
    assert res.returncode == 0, res.stderr
    faces = sorted((tmp_path / "pipeline_faces").glob("*.png"))
    assert [f.name for f in faces] == [f"face_{i:05d}.png" for i in range(16)]
    assert Image.open(faces[0]).mode == "RGB"  # colorized
    grid = tmp_path / "pipeline_faces_grid.png"
    assert (
        grid.is_file()
        and f"wrote 16 files to {tmp_path / 'pipeline_faces'} and the grid" in res.stderr
    )
    # Re-run with another seed and overwrite = false: faces and grid are kept, and said so.
    before = [f.read_bytes() for f in (*faces, grid)]
    cfg.write_text(
        text.replace("seed = 0", "seed = 1").replace("overwrite = true", "overwrite = false")
    )
    res = aepipe("run", str(cfg), "--quiet")
    assert res.returncode == 0 and "wrote 0 files" in res.stderr and "kept 16" in res.stderr
    assert "the 16 kept files differ from what this run made" in res.stderr
    assert [f.read_bytes() for f in (*faces, grid)] == before


def test_example_faces_toml_is_valid(tmp_path: Path) -> None:
    from aepipe.pipeline import FacesSource, PipelineSpec, read_pipeline_file

    path = ROOT / "examples" / "faces.toml"
    try:
        spec = read_pipeline_file(path)
    except ConfigError as exc:
        if "no weights folder" not in str(exc):
            raise
        import tomllib

        spec = PipelineSpec(**tomllib.loads(path.read_text()))  # shipped weights not built yet
    assert isinstance(spec.source, FacesSource) and spec.sink.grid


# ---- the README's python examples, run as written -------------------------------------------

WEIGHT_CALLS = ("load_stage", "from_pretrained", "StageMapper", "FaceBlockMapper")
WEIGHT_KEYS = ("weights", "generator", "colorizer")


def python_blocks(path: Path) -> list[tuple[str, str]]:
    """Every ```python block of a markdown file not starting with ``# not-tested``."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        code = match.group(1)
        if code.lstrip().startswith("# not-tested"):
            continue
        line = text[: match.start()].count("\n") + 1
        blocks.append((f"{path.name}:{line}", code))
    return blocks


def needed_weights(code: str) -> set[str]:
    """Weights names a block loads: ``load_stage("x")``, ``weights="x"``, ``{"weights": "x"}``."""
    import ast

    names: set[str] = set()

    def literal(node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)

    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in WEIGHT_CALLS and node.args:
                literal(node.args[0])
            for kw in node.keywords:
                if kw.arg in WEIGHT_KEYS:
                    literal(kw.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value in WEIGHT_KEYS:
                    literal(value)
    return names


def _params() -> list[object]:
    params: list[object] = []
    for where, code in python_blocks(ROOT / "README.md"):
        marks = [pytest.mark.ray] if re.search(r"^\s*import ray\b", code, re.M) else []
        params.append(pytest.param(code, id=where, marks=marks))
    return params or [pytest.param(None, id="no-python-blocks")]


def run_block(code: str, cwd: Path) -> None:
    """Run one block in ``cwd``, which sees the repository's inputs under their usual names."""
    from aepipe.weights import resolve

    missing = []
    for name in sorted(needed_weights(code)):
        try:
            resolve(cwd / name if (cwd / name).exists() else name)
        except WeightsError:
            missing.append(name)
    if missing:
        pytest.skip(f"shipped weights needed by this block are absent: {', '.join(missing)}")
    for name in ("sample_inputs", "examples", "weights"):
        if (ROOT / name).exists() and not (cwd / name).exists():
            (cwd / name).symlink_to(ROOT / name)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(old)


@pytest.mark.parametrize("code", _params())
def test_readme_python_blocks_run(code: str | None, tmp_path: Path) -> None:
    if code is None:
        pytest.skip("README.md has no python blocks")
    run_block(code, tmp_path)


def test_needed_weights_finds_names() -> None:
    code = (
        'a = load_stage("salt-pepper")\nb = Stage.from_pretrained("x-y", device="cpu")\n'
        'c = dict(weights="w1")\nd = {"weights": "w2", "config": {}}\n'
        'e = StageMapper("w3")\nf = f(colorizer="w4")\n'
    )
    assert needed_weights(code) == {"salt-pepper", "x-y", "w1", "w2", "w3", "w4"}


def test_pipeline_faces_find_your_own_concepts_as_the_cli_does(tmp_path: Path) -> None:
    """A concept made with ``aepipe faces concept`` (in ``concepts/``, or ``--concepts-dir``) is
    found by a pipeline or Ray ``faces`` table too (it only searched the shipped ones)."""
    from aepipe.pipeline import StageSpec, check_stage_spec
    from aepipe.stages.face_generator import save_concept

    stage = load_stage("face-vae")
    save_concept(tmp_path / "mine", "blink", torch.ones(stage.latent_dim))
    spec = StageSpec(
        weights="face-vae", faces={"concepts": ["blink:1"], "concepts_dir": tmp_path / "mine"}
    )
    check_stage_spec(spec, "stages.0")
    assert StageSpec(weights="face-vae", faces={}).faces.concepts_dir == Path("concepts")
    with pytest.raises(ConfigError, match=r"stages\.0\.faces\.concepts: concept 'blink' not found"):
        check_stage_spec(StageSpec(weights="face-vae", faces={"concepts": ["blink:1"]}), "stages.0")
