"""The face-vqvae generator: quantiser, prior sampling, training stages and every front end."""

from __future__ import annotations

import json
from pathlib import Path

import frontends
import numpy as np
import pytest
import torch

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError
from aepipe.models.vqvae import VQVAE, KVCache, VectorQuantizerEMA, _Block, pick
from aepipe.stage import load_stage
from aepipe.stages.face_vqvae import FaceVQVAE
from aepipe.train.face_vqvae import TrainConfig, train
from aepipe.weights import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, read_config

N, SEED, ROUTE = 5, 3, "faces-vqvae"


def test_quantizer_snaps_to_the_nearest_entry_and_passes_gradients_straight_through() -> None:
    vq = VectorQuantizerEMA(num_codes=4, dim=2).eval()
    vq.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    z = torch.tensor([[0.9, 0.1], [0.1, 0.8], [4.0, 4.5]]).t().reshape(1, 2, 1, 3)
    z.requires_grad_(True)
    z_q, codes, commitment = vq(z)
    assert codes.flatten().tolist() == [1, 2, 3]
    torch.testing.assert_close(z_q.detach()[0, :, 0].t(), vq.embed[[1, 2, 3]])
    z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through
    assert commitment.item() > 0


def test_dead_codes_are_restarted_on_encoder_outputs() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(num_codes=8, dim=3, decay=0.5).train()
    vq(torch.randn(2, 3, 4, 4))  # the codebook starts on these outputs
    z = torch.randn(2, 3, 4, 4) * 0.01 + 10.0  # then the outputs move far away, to one point
    for _ in range(12):
        vq(z)
    assert int(vq.restarts) > 0
    # Every entry left behind was restarted onto the new outputs.
    assert float((vq.embed - 10.0).abs().max()) < 0.1


def test_pick_follows_temperature_top_k_and_top_p() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(4, -1)
    u = torch.tensor([0.0, 0.5, 0.9, 0.999])
    assert pick(logits, u, 0.0, 0, 1.0).tolist() == [0, 0, 0, 0]
    assert set(pick(logits, u, 1.0, 1, 1.0).tolist()) == {0}
    assert set(pick(logits, u, 1.0, 2, 1.0).tolist()) <= {0, 1}
    assert pick(logits, u, 1.0, 0, 1.0).tolist()[-1] == 3  # the tail is reachable
    assert set(pick(logits, u, 1.0, 0, 0.5).tolist()) == {0}  # p(0) = 0.64 covers 0.5


def test_untruncated_pick_draws_each_code_with_its_probability() -> None:
    # Codes not in probability order: the no-sort path must still follow softmax(logits).
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0]]).expand(4000, -1)
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    counts = torch.bincount(pick(logits, u.float(), 1.0, 0, 1.0), minlength=4).double() / 4000
    assert torch.allclose(counts, torch.softmax(logits[0].double(), 0), atol=2e-3)


def test_cached_sampling_matches_the_full_forward_pass() -> None:
    torch.manual_seed(0)
    model = VQVAE(size=16, channels=[8, 8], num_codes=16, code_dim=4, prior_dim=16,
                  prior_layers=2, prior_heads=2).eval()  # fmt: skip
    codes = model.prior.sample(torch.rand(3, model.prior.tokens), temperature=0.0)
    # Greedy: each code is the argmax of the full (uncached) pass at its position.
    full = model.prior(codes).argmax(-1)
    assert torch.equal(full, codes)


def test_lead_codes_take_their_own_temperature() -> None:
    stage = FaceVQVAE.tiny(seed=0, temperature=0.0)
    tokens = stage.model.prior.tokens
    greedy = next(stage.sample_codes(4, seed=2))
    # Every code "lead" at temperature 0 is the greedy draw, whatever the main temperature.
    led = FaceVQVAE.tiny(seed=0, temperature=1.0, lead_codes=tokens, lead_temperature=0.0)
    assert torch.equal(next(led.sample_codes(4, seed=2)), greedy)
    # Only the first codes greedy: they match, and the hot tail differs somewhere.
    half = FaceVQVAE.tiny(seed=0, temperature=3.0, lead_codes=tokens // 2, lead_temperature=0.0)
    mixed = next(half.sample_codes(4, seed=2)).flatten(1)
    assert torch.equal(mixed[:, : tokens // 2], greedy.flatten(1)[:, : tokens // 2])
    assert not torch.equal(mixed, greedy.flatten(1))
    with pytest.raises(ValueError, match="temperatures"):
        stage.model.prior.sample(torch.rand(2, tokens), [1.0] * (tokens - 1))


def test_samples_do_not_depend_on_batch_size_and_options_are_checked() -> None:
    stage = FaceVQVAE.tiny(seed=0)
    whole = torch.cat([b.images for b in stage.sample(70, seed=1, batch_size=70)])
    parts = [b for b in stage.sample(70, seed=1, batch_size=8)]
    assert [len(b) for b in parts][:2] == [8, 8] and parts[-1].names[-1] == "face_00069"
    torch.testing.assert_close(torch.cat([b.images for b in parts]), whole, atol=1e-6, rtol=0)
    first = next(stage.sample(3, seed=1)).images
    torch.testing.assert_close(first, whole[:3], atol=1e-6, rtol=0)
    assert not torch.equal(next(stage.sample(3, seed=2)).images, first)
    with pytest.raises(ConfigError, match="unknown sampling options"):
        next(stage.sample(2, seed=0, concepts=[]))
    with pytest.raises(ConfigError, match="temperature"):
        next(stage.sample(2, seed=0, temperature=5.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_steps_match_the_full_causal_pass(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = _Block(dim=16, heads=2).eval()
    x = torch.randn(3, 7, 16)
    with torch.inference_mode():
        full = block(x)
        cache = KVCache(7, dtype)
        steps = torch.stack([block.step(x[:, i], cache) for i in range(7)], 1)
    assert cache.k is not None and cache.k.dtype == dtype and steps.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 3e-2  # bfloat16 keeps 8 bits of mantissa
    torch.testing.assert_close(steps, full, atol=tol, rtol=tol)


def test_precision_option_reaches_the_decoder() -> None:
    exact = FaceVQVAE.tiny(seed=0, precision="float32")
    fast = FaceVQVAE.tiny(seed=0, precision="bfloat16")
    codes = next(exact.sample_codes(6, seed=4))
    assert next(fast.sample_codes(6, seed=4)).shape == codes.shape
    a, b = exact.decode_codes(codes), fast.decode_codes(codes)
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    assert 0 < float((a - b).abs().max()) < 4 / 255
    faces = ImageBatch(a)
    assert float((exact(faces).images - fast(faces).images).abs().max()) < 4 / 255


def test_interpolate_and_codebook_pictures() -> None:
    stage = FaceVQVAE.tiny(seed=0)
    a, b = ImageBatch(torch.rand(1, 3, 20, 24)), ImageBatch(torch.rand(1, 1, 16, 16))
    path = stage.interpolate(a, b, steps=4)
    assert path.images.shape == (4, 1, 16, 16) and path.names[0] == "step_00"
    # The ends are the reconstructions of the two faces.
    torch.testing.assert_close(path.images[:1], stage(a).images, atol=1e-5, rtol=0)
    book = stage.codebook(count=6)
    assert book.images.shape == (6, 1, 16, 16) and book.names[-1] == "code_0005"
    assert not torch.equal(book.images[0], book.images[1])


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both training stages on a few synthetic faces (a tiny archive, written here)."""
    root = tmp_path_factory.mktemp("vq")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    blobs = [
        128 + 80 * np.exp(-((yy - 32 - dy) ** 2 + (xx - 32 - dx) ** 2) / 200.0)
        for dy, dx in rng.integers(-8, 9, size=(40, 2))
    ]
    images = np.stack(blobs).astype(np.uint8)
    files = np.array([f"P{i:02d}/P{i:02d}_0001.jpg" for i in range(40)])
    data = root / "faces.npz"
    np.savez(data, images=images, train_files=files)
    out = root / "face-vqvae"
    small = dict(data=data, epochs=3, batch_size=8, temperature=0.8, top_k=50)
    first = train(TrainConfig(stage="vqvae", **small), out)
    card_before = (first / CARD_NAME).read_text()
    # The prior under bfloat16 autocast (the shared loop's option): it must still learn.
    train(
        TrainConfig(stage="prior", lr=3e-3, precision="bfloat16", command="fixture prior", **small),
        out,
    )
    assert "vqvae" in card_before
    return out


def test_training_stages_write_one_folder_that_loads(weights: Path) -> None:
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= {p.name for p in weights.iterdir()}
    config = read_config(weights)
    assert set(config["training"]) == {"vqvae", "prior"}
    assert {"val_psnr_db", "val_codebook_perplexity", "val_prior_bits_per_face"} <= set(
        config["metrics"]
    )
    stage = load_stage(weights)
    assert stage.name == "face-vqvae" and stage.config.temperature == 0.8
    assert stage.config.top_k == 50
    history = config["training"]["prior"]["history"]
    # The prior learnt something: validation bits per face fell from the first check.
    assert history[-1]["val_bits_per_face"] < history[0]["val_bits_per_face"]
    batch = next(stage.sample(4, seed=0))
    assert batch.images.shape == (4, 1, 64, 64)
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0


def test_every_front_end_samples_face_vqvae_alike(weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    pytest.importorskip("ray", reason="needs the [ray] extra")
    names, pixels = frontends.library(weights, N, SEED)
    assert pixels.shape == (N, 64, 64, 1)
    frontends.assert_every_front_end_matches(weights, ROUTE, N, SEED, tmp_path, (names, pixels))


def test_train_command_refuses_the_shipped_folder_and_bad_stages(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    runner = CliRunner()
    res = runner.invoke(app, ["train", "face-vqvae", "--stage", "decoder", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--stage" in res.output
    res = runner.invoke(
        app, ["train", "face-vqvae", "--precision", "bfloat16", "--out", str(tmp_path / "w")]
    )
    assert res.exit_code != 0 and "prior only" in res.output
    shipped = Path(__file__).resolve().parents[1] / "weights" / "face-vqvae"
    res = runner.invoke(app, ["train", "face-vqvae", "--out", str(shipped)])
    assert res.exit_code != 0 and "overwrite-shipped" in res.output


def test_codebook_and_interpolation_commands(weights: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    runner = CliRunner()
    sheet, strip = tmp_path / "book.png", tmp_path / "strip.png"
    res = runner.invoke(
        app, ["faces", "codebook", "--model", str(weights), "--count", "9", "-o", str(sheet)]
    )
    assert res.exit_code == 0, res.output
    assert Image.open(sheet).size == (3 * 66 + 2, 3 * 66 + 2)  # 3 x 3 tiles of 64 + 2 padding
    args = ["faces", "vq-interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    res = runner.invoke(app, [*args, "--steps", "5", "--model", str(weights), "-o", str(strip)])
    assert res.exit_code == 0, res.output
    assert Image.open(strip).size == (5 * 66 + 2, 66 + 2)
    res = runner.invoke(app, ["faces", "codebook", "--model", "face-vae", "-o", str(sheet)])
    assert res.exit_code != 0 and "not 'face-vqvae'" in res.output


def test_prior_stage_resumes_from_its_own_checkpoint(weights: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "face-vqvae"
    shutil.copytree(weights, out)
    # As in the shipped folder, the sampling settings were chosen for the prior trained there.
    config = json.loads((out / CONFIG_NAME).read_text())
    config["metrics"]["val_sampling_sweep"] = {"chosen": {"temperature": 0.7}}
    (out / CONFIG_NAME).write_text(json.dumps(config))
    data = weights.parent / "faces.npz"
    cfg = dict(stage="prior", data=data, epochs=2, batch_size=8)
    train(TrainConfig(**cfg, max_steps=3), out)
    ckpt = tmp_path / "face-vqvae-prior.checkpoint.pt"
    assert ckpt.is_file() and not (tmp_path / "face-vqvae.checkpoint.pt").exists()
    train(TrainConfig(**cfg, resume=True), out)
    assert not ckpt.exists()  # finished: nothing left to resume
    assert "val_sampling_sweep" not in read_config(out)["metrics"]  # chosen for another prior
    prior = read_config(out)["training"]["prior"]
    assert prior["history"][-1]["step"] == 2 * 10  # 2 epochs of ceil(38 faces x 2 mirrors / 8)
    # These runs fine-tuned the fixture's trained prior (once, resumed): the card lists the
    # command that trained it first, once, then the fine-tune.
    assert prior["earlier_commands"] == ["fixture prior"]
    card = (out / CARD_NAME).read_text()
    assert "- prior: `fixture prior`" in card and "- then fine-tuned: `library call`" in card


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--prior"], "--prior"),
        (["--sharpen", "1"], "--sharpen"),
        (["--concept", "smile:1"], "--concept"),
        (["--prior", "--concept", "smile:1"], "--prior, --concept"),
    ],
)
def test_gen_faces_names_the_face_vae_options_it_refuses(
    tmp_path: Path, option: list[str], named: str
) -> None:
    """They were reported as config keys the user never typed (``face-vqvae.sampler: unknown
    key``), and --concept left an empty --out folder behind."""
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    out = tmp_path / "faces"
    args = ["gen-faces", "--model", "face-vqvae", "-n", "1", "-o", str(out), *option]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert f"{named}: for the face VAE only" in res.output and "unknown" not in res.output
    assert not out.exists()
