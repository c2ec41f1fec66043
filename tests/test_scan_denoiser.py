"""Scan-denoiser area: ScanUNet, tiled stage (sizes, tiling, seams), DDD reader split, training."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.data.ddd import load_pairs, split_by_group
from aepipe.models.scan_unet import ScanUNet
from aepipe.stages.scan_denoiser import ScanDenoiser, blend_ramp, tile_starts

ROOT = Path(__file__).resolve().parent.parent
DDD = ROOT.parent / "shared" / "data" / "ddd"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_page(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) smooth shading in [0.2, 0.9]: tiling artefacts would show on it at once."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, 4, 4), generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return 0.2 + 0.7 * (x - x.min()) / (x.max() - x.min() + 1e-6)


@pytest.mark.parametrize("size", [(3, 3), (37, 53), (1, 70), (130, 7)])
def test_output_size_equals_input(size: tuple[int, int]) -> None:
    stage = ScanDenoiser.tiny(0, tile=32, overlap=8)
    x = torch.rand((2, 1, *size), generator=torch.Generator().manual_seed(1))
    out = stage(ImageBatch(x))
    assert out.images.shape == (2, 1, *size)
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0


def test_model_any_size_and_hparams_rebuild() -> None:
    model = ScanUNet(base=4, levels=3, convs=1)
    y = model(torch.rand(1, 1, 37, 53))
    assert y.shape == (1, 1, 37, 53)
    assert ScanUNet(**model.hparams).hparams == model.hparams


def saved_source(folder: Path, output: str = "sigmoid") -> ScanUNet:
    """A tiny seeded ScanUNet saved to ``folder``, for ``--init`` tests."""
    torch.manual_seed(0)
    net = ScanUNet(base=4, levels=2, convs=1, output=output)
    # A trained-looking head: the zero-initialised one would hide weights left uncopied.
    torch.nn.init.normal_(net.head.weight, std=0.3)
    ScanDenoiser(net).save_pretrained(folder)
    return net


def test_init_copies_weights_and_refuses_another_network(tmp_path: Path) -> None:
    from aepipe.train.scan_denoiser import TrainConfig, build_model

    plain = saved_source(tmp_path / "plain")
    cfg = TrainConfig(base=4, levels=2, convs=1, init=tmp_path / "plain")
    x = torch.rand(2, 1, 29, 35, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(build_model(cfg).eval()(x), plain.eval()(x))
    clamped = build_model(cfg.model_copy(update=dict(output="clamp")))
    assert clamped.output == "clamp" and torch.equal(clamped.head.weight, plain.head.weight)
    with pytest.raises(ValueError, match="does not match"):
        build_model(TrainConfig(base=8, levels=2, convs=1, init=tmp_path / "plain"))
    with pytest.raises(ValueError, match="margin"):
        TrainConfig(margin=0.1)  # a sigmoid net: the margin would be silently ignored


def test_refine_starts_as_its_source_then_learns(tmp_path: Path) -> None:
    """--init into a --refine net: same output at first, the new layers train, rebuilds."""
    from aepipe.train.scan_denoiser import TrainConfig, build_model

    plain = saved_source(tmp_path / "plain", output="clamp")
    cfg = TrainConfig(base=4, levels=2, convs=1, output="clamp", refine=3, init=tmp_path / "plain")
    refined = build_model(cfg)
    assert refined.hparams["refine"] == 3
    x = torch.rand(2, 1, 29, 35, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(refined.eval()(x), plain.eval()(x))
    # One optimiser step moves the correction (its last layer starts at zero, not frozen).
    refined.train()
    opt = torch.optim.SGD(refined.parameters(), lr=0.1)
    (refined.unclamped(x) - 0.3).pow(2).mean().backward()
    opt.step()
    assert float(refined.refine_out.weight.detach().abs().sum()) > 0.0
    with torch.inference_mode():
        assert not torch.equal(refined.eval()(x), plain.eval()(x))
    ScanDenoiser(refined).save_pretrained(tmp_path / "refined")
    loaded = ScanDenoiser.from_pretrained(tmp_path / "refined").model
    with torch.inference_mode():
        assert torch.equal(loaded(x), refined(x))
    # Only the correction may be new: a refine net cannot seed a plain one, nor another width.
    with pytest.raises(ValueError, match="does not match"):
        build_model(TrainConfig(base=4, levels=2, convs=1, init=tmp_path / "refined"))
    with pytest.raises(ValueError, match="does not match"):
        build_model(cfg.model_copy(update=dict(base=8)))


def test_clamp_output_range_and_straight_through_gradient() -> None:
    torch.manual_seed(0)
    model = ScanUNet(base=4, levels=2, convs=1, output="clamp")
    assert model.hparams["output"] == "clamp"
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    # Pure black ink in, the untrained contrast stretch overshoots below 0 and is clamped.
    x[..., :4, :] = 0.0
    y = model(x)
    assert float(y.detach().min()) == 0.0 and float(y.detach().max()) <= 1.0
    # A target above a clamped pixel still pulls it up: the gradient is not cut at the clamp.
    loss = (y[..., :4, :] - 1.0).pow(2).mean()
    loss.backward()
    assert float(model.skip_gain.grad) != 0.0
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), y.detach())
    # The unclamped output is what the clamp cuts: equal inside [0, 1], beyond it outside.
    with torch.inference_mode():
        lin = model.unclamped(x)
    assert torch.equal(lin.clamp(0.0, 1.0), y.detach()) and float(lin.min()) < 0.0
    with pytest.raises(ValueError, match="output"):
        ScanUNet(output="tanh")
    with pytest.raises(ValueError, match="clamp"):
        ScanUNet(base=4, levels=2, convs=1).unclamped(x)


def test_tiling_matches_untiled_on_smooth_page() -> None:
    x = smooth_page(150, 170)
    whole = ScanDenoiser.tiny(3, tile=512)(ImageBatch(x)).images
    tiled = ScanDenoiser.tiny(3, tile=64, overlap=32, batch_size=3)(ImageBatch(x)).images
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().max()) < 0.02
    assert float((tiled - whole).abs().mean()) < 0.002


def test_no_seams_on_noise() -> None:
    """Column-to-column jumps at tile overlaps are no larger than anywhere else."""
    x = torch.rand((1, 1, 96, 200), generator=torch.Generator().manual_seed(2))
    stage = ScanDenoiser.tiny(4, tile=64, overlap=24)
    whole = ScanDenoiser.tiny(4, tile=512)(ImageBatch(x)).images[0, 0]
    tiled = stage(ImageBatch(x)).images[0, 0]
    err = (tiled - whole).abs().mean(0)  # per column
    starts = tile_starts(200, 64, 24)
    assert len(starts) > 2
    # The error stays small everywhere, also at the tile borders of the inner tiles.
    assert float(err.max()) < 0.02
    jumps = (tiled[:, 1:] - tiled[:, :-1]).abs().mean(0)
    ref = (whole[:, 1:] - whole[:, :-1]).abs().mean(0)
    assert float((jumps - ref).abs().max()) < 0.01


def test_batch_equals_single_pages() -> None:
    stage = ScanDenoiser.tiny(5, tile=48, overlap=16, batch_size=5)
    x = torch.rand((3, 1, 70, 90), generator=torch.Generator().manual_seed(3))
    both = stage(ImageBatch(x)).images
    for i in range(3):
        one = stage(ImageBatch(x[i : i + 1])).images
        torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=0)


def test_precision_bfloat16_stays_close_to_float32() -> None:
    """bfloat16 convolutions (the "auto" choice on AMX CPUs) move outputs by a gray level or so."""
    from aepipe.stage import fast_bfloat16

    x = smooth_page(200, 180, seed=4)
    x[..., 60:70, 20:160] = 0.05  # a stroke: edges are where rounding shows first
    outs = {}
    for precision in ("float32", "bfloat16"):
        # "process": a smooth page with no paper is what the photograph check keeps as it is.
        stage = ScanDenoiser.tiny(
            6, tile=96, overlap=32, precision=precision, clean_pages="process"
        )
        outs[precision] = stage(ImageBatch(x)).images
        assert outs[precision].dtype == torch.float32 and outs[precision].shape == x.shape
    diff = (outs["bfloat16"] - outs["float32"]).abs()
    assert 0 < float(diff.max()) < 0.005 and float(diff.mean()) < 0.001
    assert fast_bfloat16("cuda") is False  # "auto" means bfloat16 only on a capable CPU
    with pytest.raises(ValueError, match="precision"):
        ScanDenoiser.tiny(0, precision="half")


def test_views_average_shifted_and_mirrored_pages() -> None:
    """``views=k`` is the mean of the stage's own output on the first k views, each mapped
    back: the page, the page shifted one pixel down and right, mirrored left-right, up-down."""
    pad = torch.nn.functional.pad
    x = torch.rand((2, 1, 70, 90), generator=torch.Generator().manual_seed(7))

    def run(page: torch.Tensor, **cfg) -> torch.Tensor:
        stage = ScanDenoiser.tiny(8, tile=48, overlap=16, clean_pages="process", **cfg)
        return stage(ImageBatch(page)).images

    views = [
        run(x),
        run(pad(x, (1, 0, 1, 0), mode="replicate"))[..., 1:, 1:],
        run(x.flip(-1)).flip(-1),
        run(x.flip(-2)).flip(-2),
    ]
    assert torch.equal(run(x, views=1), views[0])
    for k in (2, 3, 4):
        want = torch.stack(views[:k]).mean(0)
        torch.testing.assert_close(run(x, views=k), want, atol=1e-5, rtol=0)
    # The views differ (else more views would buy nothing), and the output keeps the page size.
    assert float((views[1] - views[0]).abs().mean()) > 1e-3
    assert run(x[..., :37, :53], views=8).shape == (2, 1, 37, 53)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="views"):
            ScanDenoiser.tiny(0, views=bad)


def test_color_binarize_and_keep_color() -> None:
    x = torch.rand((1, 3, 40, 50), generator=torch.Generator().manual_seed(4))
    gray = ScanDenoiser.tiny(0)(ImageBatch(x)).images
    assert gray.shape == (1, 1, 40, 50)
    bilevel = ScanDenoiser.tiny(0, binarize=True)(ImageBatch(x)).images
    assert set(torch.unique(bilevel).tolist()) <= {0.0, 1.0}
    color = ScanDenoiser.tiny(0, keep_color=True)(ImageBatch(x)).images
    assert color.shape == (1, 3, 40, 50)
    # Where the page is cleaned to white, colour output is white too.
    white = gray[0, 0] > 0.999
    if bool(white.any()):
        assert float(color[0][:, white].min()) > 0.99
    # Both at once would let one silently win: refused, in the stage's own words.
    from aepipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^scan-denoiser: binarize and keep_color exclude"):
        ScanDenoiser.tiny(0, binarize=True, keep_color=True)


def test_tile_starts_cover_with_overlap() -> None:
    for length, tile, overlap in [(1000, 256, 32), (257, 256, 64), (100, 256, 8), (513, 128, 0)]:
        starts = tile_starts(length, tile, overlap)
        t = min(tile, length)
        assert starts[0] == 0 and starts[-1] + t == length
        for a, b in itertools.pairwise(starts):
            assert a + t - b >= overlap
    w = blend_ramp(64, 16, True, False)
    assert w[0] < 0.01 and w[-1] == 1.0 and torch.all(w[1:16] >= w[:15])


def test_scale_prob_zero_keeps_native_pixels() -> None:
    """--scale-prob 0: patches are crops of the page (no interpolated values); 1: resampled."""
    from aepipe.train.scan_denoiser import TrainConfig, _crop_pair

    rng = np.random.default_rng(0)
    dirty = rng.integers(0, 256, (200, 240), dtype=np.uint8)
    clean = np.where(rng.random((200, 240)) < 0.3, 0, 255).astype(np.uint8)

    def on_grid(a: np.ndarray) -> bool:
        return bool(np.allclose(a * 255.0, np.round(a * 255.0), atol=1e-3))

    native = TrainConfig(patch=64, scale_lo=1.3, scale_hi=1.5, scale_prob=0.0, level_aug=0.0)
    for _ in range(5):
        d, c = _crop_pair(dirty, clean, rng, native)
        assert d.shape == c.shape == (64, 64) and on_grid(d) and on_grid(c)
    resampled = native.model_copy(update=dict(scale_prob=1.0))
    d, c = _crop_pair(dirty, clean, rng, resampled)
    assert d.shape == (64, 64) and not on_grid(d) and not on_grid(c)


def test_ddd_split_keeps_page_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    (tmp_path / "train_cleaned").mkdir()
    for page in range(6):
        clean = (rng.random((20, 30)) > 0.1).astype(np.uint8) * 255
        for version in range(4):
            name = f"{page * 4 + version + 1}.png"
            dirty = np.clip(clean.astype(int) - rng.integers(0, 80, clean.shape), 0, 255)
            Image.fromarray(dirty.astype(np.uint8)).save(tmp_path / "train" / name)
            Image.fromarray(clean).save(tmp_path / "train_cleaned" / name)
    pairs = load_pairs(tmp_path)
    assert len(pairs) == 24 and len({p.group for p in pairs}) == 6
    train, val = split_by_group(pairs, 2, seed=0)
    assert len(val) == 8 and len(train) == 16
    assert not {p.group for p in train} & {p.group for p in val}
    assert split_by_group(pairs, 2, seed=0)[1] == val


def test_train_tiny_run_writes_loadable_weights(
    tmp_path: Path, one_synthetic_val_page: None
) -> None:
    from aepipe.train.scan_denoiser import TrainConfig, model_card, train

    cfg = TrainConfig(
        ddd=None,
        base=4,
        levels=2,
        convs=1,
        synthetic_pool=1,
        patch=32,
        batch_size=2,
        max_steps=2,
        val_every=2,
        warmup=0,
    )
    out = train(cfg, tmp_path / "w")
    # Fine-tuning with a clamped output from those weights records where it started.
    # ... under bfloat16 autocast (the faster training on CPUs with AMX).
    update = dict(init=out, output="clamp", margin=0.1, command="tune", precision="bfloat16")
    tuned_cfg = cfg.model_copy(update=update)
    tuned = train(tuned_cfg, tmp_path / "tuned")
    # Then only a new correction on top of those, the rest frozen.
    refined = train(
        tuned_cfg.model_copy(update=dict(init=tuned, refine=4, freeze_base=True)),
        tmp_path / "refined",
    )
    stage = ScanDenoiser.from_pretrained(out)
    y = stage(ImageBatch(torch.rand(1, 1, 33, 41)))
    assert y.images.shape == (1, 1, 33, 41)
    assert (out / "MODEL_CARD.md").is_file()
    config = json.loads((tuned / "config.json").read_text())
    source = json.loads((out / "config.json").read_text())
    assert config["model_kwargs"]["output"] == "clamp"
    assert config["training"]["init"]["sha256"] == source["sha256"]
    assert config["training"]["config"]["precision"] == "bfloat16"
    card = (tuned / "MODEL_CARD.md").read_text()
    assert "Command 1" in card and "Command 2, this run: `tune`" in card
    assert "random scale" in card and "random ink" in card  # the defaults augment
    native = model_card(TrainConfig(scale_prob=0, level_aug=0), {}, {})
    assert "own pixels (no resampling)" in native
    assert "random scale" not in native and "random ink" not in native
    assert ScanDenoiser.from_pretrained(tuned).model.output == "clamp"
    base_state = ScanDenoiser.from_pretrained(tuned).model.state_dict()
    refined_state = ScanDenoiser.from_pretrained(refined).model.state_dict()
    assert all(torch.equal(v, refined_state[k]) for k, v in base_state.items())
    assert float(refined_state["refine_out.weight"].abs().sum()) > 0.0
    with pytest.raises(ValueError, match="freeze-base"):
        TrainConfig(freeze_base=True, refine=4)  # nothing to start from
    with pytest.raises(ValueError, match="refine"):
        TrainConfig(arch="classic", refine=4)  # would be silently ignored


def test_init_refuses_a_source_trained_on_validation_pages(tmp_path: Path) -> None:
    from aepipe.train.scan_denoiser import init_record

    ScanDenoiser.tiny(0).save_pretrained(
        tmp_path / "w", training=dict(data=dict(ddd_train_names=["2", "5"], ddd_val_names=["3"]))
    )
    assert init_record(tmp_path / "w", ["3"])["sha256"]
    with pytest.raises(ValueError, match="holds out"):
        init_record(tmp_path / "w", ["5"])
    # A source with a test split held out its validation and test pages: both may be held now.
    data = dict(ddd_train_names=["2"], ddd_val_names=["3"], ddd_test_names=["4"])
    ScanDenoiser.tiny(0).save_pretrained(tmp_path / "t", training=dict(data=data))
    assert init_record(tmp_path / "t", ["3", "4"])["sha256"]
    with pytest.raises(ValueError, match="holds out"):
        init_record(tmp_path / "t", ["2", "3", "4"])


@pytest.mark.data
def test_ddd_reader_real_groups() -> None:
    if not DDD.is_dir():
        pytest.skip("../shared/data/ddd absent")
    pairs = load_pairs(DDD)
    assert len(pairs) == 144 and len({p.group for p in pairs}) == 36


@pytest.mark.slow
def test_shipped_weights_any_page_size() -> None:
    stage = ScanDenoiser.from_pretrained("scan-denoiser")
    for size in [(3, 3), (37, 53), (700, 600)]:
        x = torch.rand((2, 1, *size), generator=torch.Generator().manual_seed(0))
        assert stage(ImageBatch(x)).images.shape == (2, 1, *size)


def test_remove_borders_whitens_scanner_bands_and_keeps_type_at_the_edge() -> None:
    from aepipe.stages.scan_denoiser import remove_borders

    page = torch.ones(1, 1, 200, 300)
    page[0, 0, :12, :] = 0.0  # a scanner band along the whole top edge
    page[0, 0, 12:16, 40:260] = 0.0  # its ragged inner edge, connected to it
    page[0, 0, 80:110, 290:] = 0.0  # a letter cut by the right edge: short, kept
    page[0, 0, 150:160, 20:280] = 0.0  # a rule inside the page, kept
    out = remove_borders(page, band=0.1)
    assert out[0, 0, :16].min() == 1.0
    assert out[0, 0, 80:110, 290:].max() == 0.0 and out[0, 0, 150:160, 20:280].max() == 0.0
    assert page[0, 0, :12].max() == 0.0  # the input is left as it was
    clean = torch.ones(2, 1, 50, 60)
    assert torch.equal(remove_borders(clean, band=0.1), clean)


def test_border_removal_is_a_stage_option() -> None:
    page = torch.ones(1, 1, 96, 96)
    page[0, 0, :, :6] = 0.0  # a dark band down the left edge
    # "process": the band on pure white paper is otherwise a clean page, passed through as is.
    kept = ScanDenoiser.tiny(0, borders="keep", clean_pages="process")(ImageBatch(page)).images
    removed = ScanDenoiser.tiny(0, clean_pages="process")(ImageBatch(page)).images
    assert removed[0, 0, :, :6].min() == 1.0 and not torch.equal(kept, removed)
    with pytest.raises(ValueError, match="borders"):
        ScanDenoiser.tiny(0, borders="crop")
