"""Scan denoiser on real pages: docbin reader and split, DDD 3-way split, bilevel loss, display
content, training with docbin pages, and the trainer's refusal to write into weights/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aepipe.data.ddd import DDDPair, split_by_group, split_three
from aepipe.data.docbin import (
    collection_of,
    f_measure,
    load_pages,
    otsu_ink,
    page_names,
    split_pages,
)

ROOT = Path(__file__).resolve().parent.parent
DOCBIN = ROOT.parent / "shared" / "data" / "docbin"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_docbin(root: Path, per_collection: dict[str, int], size: int = 96) -> Path:
    """A docbin-layout folder of random pages: dark strokes on gray paper, 1-bit truth."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    for coll, n in per_collection.items():
        for i in range(n):
            ink = np.zeros((size, size), bool)
            for _ in range(6):
                y, x = rng.integers(0, size - 12, 2)
                ink[y : y + int(rng.integers(2, 12)), x : x + int(rng.integers(2, 40))] = True
            scan = np.where(ink, 40, 200) + rng.integers(-20, 20, ink.shape)
            name = f"{coll}_H{i + 1:02d}.png"
            Image.fromarray(np.clip(scan, 0, 255).astype(np.uint8)).save(root / "images" / name)
            Image.fromarray(~ink).convert("1").save(root / "gt" / name)
    return root


def test_docbin_split_is_by_page_within_each_collection() -> None:
    names = [f"A_H{i:02d}" for i in range(10)] + [f"B_H{i:02d}" for i in range(3)]
    split = split_pages(names)
    parts = [set(v) for v in split.values()]
    assert sum(len(p) for p in parts) == len(names) and set.union(*parts) == set(names)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for coll, n in (("A", 10), ("B", 3)):
        test = [t for t in split["test"] if collection_of(t) == coll]
        val = [t for t in split["val"] if collection_of(t) == coll]
        assert len(test) == max(1, int(n * 0.25 + 0.5)) and len(val) == 1
    # A pure function of the names: order and other collections do not move a page.
    assert split_pages(names[::-1]) == split
    assert split_pages(names[:10])["test"] == [t for t in split["test"] if t.startswith("A")]


def test_docbin_reader_and_scores(tmp_path: Path) -> None:
    root = fake_docbin(tmp_path / "docbin", {"X2010": 2})
    assert page_names(root) == ["X2010_H01", "X2010_H02"]
    page = load_pages(root, ["X2010_H02"])[0]
    assert page.collection == "X2010" and page.ink.dtype == bool and page.ink.any()
    assert page.image.shape == page.ink.shape
    # Otsu on this clean-cut scan recovers the truth exactly.
    assert f_measure(otsu_ink(page.image / 255.0), page.ink) == 1.0
    assert f_measure(np.zeros_like(page.ink), page.ink) == 0.0
    with pytest.raises(FileNotFoundError, match="docbin layout"):
        page_names(tmp_path)


def test_ddd_three_way_split_nests_in_the_two_way_one() -> None:
    pairs = [
        DDDPair(str(i), np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), f"g{i // 4}")
        for i in range(48)
    ]
    train, val, test = split_three(pairs, 8, 4, seed=0)
    train2, held = split_by_group(pairs, 8, seed=0)
    assert train == train2 and len(val) == len(test) == 16
    assert {p.name for p in val + test} == {p.name for p in held}
    assert not {p.group for p in val} & {p.group for p in test}
    with pytest.raises(ValueError, match="test_groups"):
        split_three(pairs, 4, 4)


def test_bilevel_loss_hinges_ink_and_whitens_paper() -> None:
    from aepipe.train.scan_denoiser import bilevel_loss

    target = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    pred = torch.tensor([1.0, 0.8, 0.0, 0.15, 0.5])
    loss = bilevel_loss(pred, target, ink_level=0.2)
    # Paper at white and ink at or below the level cost nothing; the rest is squared.
    assert torch.allclose(loss, torch.tensor([0.0, 0.04, 0.0, 0.0, 0.09]), atol=1e-6)


def test_display_content_is_opt_in_and_deterministic() -> None:
    from aepipe.data.synthetic_pages import add_display_content, make_pair

    a = make_pair(3, 200, 240, 150, display=True)
    b = make_pair(3, 200, 240, 150, display=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    plain = make_pair(3, 200, 240, 150)
    assert not np.array_equal(a[1], plain[1])
    page = np.full((300, 300), 255, np.uint8)
    out, box = add_display_content(page, np.random.default_rng(1), 300, photo=True)
    assert (page == 255).all() and box is not None  # the input page is not modified
    y, x, h, w = box
    photo = out[y : y + h, x : x + w]
    assert photo.std() > 10 and (out < 60).mean() > 0.01  # a photo and heavy ink


def test_display_photo_from_real_photographs(tmp_path: Path) -> None:
    from aepipe.data.synthetic_pages import add_display_content, load_photos, make_pair

    with pytest.raises(FileNotFoundError, match="photographs in it"):
        load_photos(tmp_path)
    # A colour 'photograph' with a vertical edge: left half dark, right half light.
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, 30:] = (200, 180, 160)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    photos = load_photos(tmp_path)
    assert photos[0].shape == (40, 60) and photos[0].dtype == np.uint8
    page = np.full((300, 300), 255, np.uint8)
    out, box = add_display_content(page, np.random.default_rng(1), 300, True, photos)
    y, x, h, w = box
    photo = out[y : y + h, x : x + w].astype(int)
    # The photograph is pasted, resized to the box: dark on the left, light on the right.
    assert photo[:, : w // 4].mean() < 30 and photo[:, -w // 4 :].mean() > 150
    a = make_pair(3, 200, 240, 150, display=True, photos=photos)
    assert np.array_equal(a[1], make_pair(3, 200, 240, 150, display=True, photos=photos)[1])


def test_train_with_docbin_records_splits(tmp_path: Path, one_synthetic_val_page: None) -> None:
    import aepipe.train.scan_denoiser as mod

    root = fake_docbin(tmp_path / "docbin", {"A": 4, "B": 4}, size=80)
    cfg = mod.TrainConfig(
        ddd=None,
        base=4,
        levels=2,
        convs=1,
        output="clamp",
        docbin=root,
        docbin_fraction=0.5,
        clean_fraction=0.25,
        display_prob=1.0,
        synthetic_pool=1,
        patch=32,
        batch_size=4,
        max_steps=2,
        val_every=2,
        warmup=0,
    )
    out = mod.train(cfg, tmp_path / "w")
    config = json.loads((out / "config.json").read_text())
    split = config["training"]["data"]["docbin_split"]
    assert split == split_pages(page_names(root))
    assert 0.0 <= config["metrics"]["val_docbin_f"] <= 100.0
    card = (out / "MODEL_CARD.md").read_text()
    assert "docbin" in card and "test" in card
    with pytest.raises(ValueError, match="need --docbin"):
        mod.TrainConfig(docbin_fraction=0.5)


def test_train_cli_refuses_weights_folder_without_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    res = CliRunner().invoke(
        app,
        ["train", "scan-denoiser", "--ddd", str(tmp_path), "--out", str(ROOT / "weights" / "x")],
    )
    assert res.exit_code == 2 and "--overwrite-shipped" in res.output
    assert not (ROOT / "weights" / "x").exists()
