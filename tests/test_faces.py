"""Face VAE / MNIST VAE: model, stage, data reader, trainer and CLI (tiny models; fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError, ExitCode
from aepipe.models.vae import ConvVAE
from aepipe.stages.face_generator import (
    FaceGenerator,
    load_concept,
    parse_concept_arg,
    save_concept,
    slerp,
    unsharp_mask,
)


def tiny_vae(
    likelihood: str = "gaussian", size: int = 16, latent: int = 4, seed: int = 0
) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(size=size, channels=[4, 8], latent_dim=latent, hidden=16, likelihood=likelihood)


# ---- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "bernoulli"])
def test_vae_distributions_and_shapes(likelihood: str) -> None:
    model = tiny_vae(likelihood)
    x = torch.rand(5, 1, 16, 16)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x)
    q = model.encode(x)
    assert isinstance(q, torch.distributions.Normal)
    assert q.loc.shape == (5, 4) and bool((q.scale > 0).all())
    dist = model.likelihood_dist(q.mean)
    assert isinstance(dist, torch.distributions.Independent)
    assert dist.event_shape == (1, 16, 16)
    img = model.decode(q.mean)
    assert img.shape == (5, 1, 16, 16)
    assert float(img.detach().min()) >= 0 and float(img.detach().max()) <= 1
    elbo = model.elbo(x)
    assert elbo.shape == (5,) and bool(torch.isfinite(elbo).all())
    rec, kl = model.loss_terms(x)
    assert rec.shape == (5,) and bool((kl >= 0).all())
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, model.prior()).sum(-1))


def test_iw_nll_is_tighter_than_elbo() -> None:
    model = tiny_vae("bernoulli", size=16, latent=2)
    x = torch.bernoulli(torch.full((3, 1, 16, 16), 0.3))
    torch.manual_seed(0)
    with torch.no_grad():
        neg_elbo = -model.elbo(x.repeat(64, 1, 1, 1)).view(64, 3).mean(0)
        nll = model.iw_nll(x, k=128, chunk=64)
    assert nll.shape == (3,)
    assert bool((nll <= neg_elbo + 0.5).all()), (nll, neg_elbo)


def test_hparams_rebuild_and_learned_scale() -> None:
    model = tiny_vae()
    clone = ConvVAE(**model.hparams)
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(clone(x), model(x))
    assert model.log_scale.requires_grad
    fixed = ConvVAE(size=16, channels=[4], latent_dim=2, scale="fixed", fixed_scale=0.2)
    assert not fixed.log_scale.requires_grad
    assert abs(float(fixed.pixel_scale()) - 0.2) < 1e-6
    with pytest.raises(ValueError, match="divisible"):
        ConvVAE(size=30, channels=[4, 8, 16])


def test_fit_sampling_gaussian_recovers_mean_and_covariance() -> None:
    model = tiny_vae(latent=3)
    gen = torch.Generator().manual_seed(0)
    true_l = torch.tensor([[2.0, 0, 0], [0.5, 1.0, 0], [0, -0.3, 0.5]])
    codes = torch.tensor([1.0, -2.0, 0.5]) + torch.randn(20000, 3, generator=gen) @ true_l.T
    model.fit_sampling_gaussian(codes)
    torch.testing.assert_close(model.sample_loc, torch.tensor([1.0, -2.0, 0.5]), atol=0.05, rtol=0)
    cov = model.sample_scale_tril @ model.sample_scale_tril.T
    torch.testing.assert_close(cov, true_l @ true_l.T, atol=0.08, rtol=0)


def test_gaussian_mixture_fit_recovers_two_clusters() -> None:
    from aepipe.models.vae import fit_gaussian_mixture

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 2, generator=gen, dtype=torch.float64) * 0.5 + torch.tensor([-4.0, 1])
    b = torch.randn(7000, 2, generator=gen, dtype=torch.float64) * 1.0 + torch.tensor([4.0, 0])
    logits, means, trils = fit_gaussian_mixture(torch.cat([a, b]), 2, iterations=50)
    order = torch.argsort(means[:, 0])
    torch.testing.assert_close(
        logits.softmax(0)[order], torch.tensor([0.3, 0.7], dtype=torch.float64), atol=0.01, rtol=0
    )
    torch.testing.assert_close(
        means[order], torch.tensor([[-4.0, 1], [4.0, 0]], dtype=torch.float64), atol=0.05, rtol=0
    )
    stds = torch.diagonal(trils @ trils.transpose(1, 2), dim1=1, dim2=2).sqrt()[order]
    torch.testing.assert_close(
        stds, torch.tensor([[0.5, 0.5], [1.0, 1.0]], dtype=torch.float64), atol=0.05, rtol=0
    )
    with pytest.raises(ValueError, match="at least"):
        fit_gaussian_mixture(torch.zeros(3, 2), 5)


def _two_cluster_codes(latent: int = 4, n: int = 4000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    codes = torch.randn(n, latent, generator=gen) * 0.3
    codes[: n // 4, 0] -= 3.0  # a quarter of the codes in a second cluster
    return codes


def test_mixture_sampler_is_seeded_saved_and_matches_its_weights(tmp_path: Path) -> None:
    from aepipe.stage import load_stage

    torch.manual_seed(0)
    model = ConvVAE(size=16, channels=[4, 8], latent_dim=4, sample_components=2)
    assert model.hparams["sample_components"] == 2
    # Zero EM iterations: every component is the single Gaussian, whatever u picks.
    model.fit_sampling_gaussian(_two_cluster_codes(), iterations=0)
    eps, u = torch.randn(5, 4), torch.rand(5)
    single = model.sample_loc + eps @ model.sample_scale_tril.T
    torch.testing.assert_close(model.latents_from_noise(eps, u), single)
    model.fit_sampling_gaussian(_two_cluster_codes(), iterations=50)
    stage = FaceGenerator(model, {})
    z = stage.sample_latents(4000, seed=0, temperature=1.0)
    assert abs(float((z[:, 0] < -1.5).float().mean()) - 0.25) < 0.03
    assert torch.isfinite(model.sampling_dist().log_prob(z)).all()
    # Seeded, and face i does not depend on how many faces are drawn.
    torch.testing.assert_close(stage.sample_latents(10, seed=0, temperature=1.0), z[:10])
    reloaded = load_stage(stage.save_pretrained(tmp_path / "mix"))
    torch.testing.assert_close(reloaded.sample_latents(100, seed=0, temperature=1.0), z[:100])
    with pytest.raises(ValueError, match="uniform"):
        model.latents_from_noise(eps)
    with pytest.raises(ValueError, match="sample_components"):
        ConvVAE(size=16, channels=[4, 8], latent_dim=4, sample_components=0)


# ---- stage -----------------------------------------------------------------------------------


def test_sampling_is_seeded_and_independent_of_batch_size() -> None:
    stage = FaceGenerator.tiny(seed=0)
    a = ImageBatch.concat(list(stage.sample(10, seed=3, batch_size=4)))
    b = ImageBatch.concat(list(stage.sample(10, seed=3, batch_size=10)))
    c = ImageBatch.concat(list(stage.sample(10, seed=4)))
    assert len(a) == 10 and a.images.shape == (10, 1, 16, 16)
    # Only float rounding of differently sized convolutions may differ.
    torch.testing.assert_close(a.images, b.images, atol=1e-6, rtol=0)
    assert not torch.equal(a.images, c.images)
    assert a.names[0] == "face_00000" and a.meta[3] == {"seed": 3, "index": 3}
    # The first faces of a longer run are the same faces.
    longer = next(stage.sample(12, seed=3, batch_size=12))
    torch.testing.assert_close(longer.images[:10], a.images, atol=1e-6, rtol=0)


def test_temperature_zero_gives_the_mean_face_and_prior_sampler() -> None:
    stage = FaceGenerator.tiny(seed=0, temperature=0.0)
    batch = next(stage.sample(3, seed=1))
    torch.testing.assert_close(batch.images[0], batch.images[2])
    z = stage.sample_latents(1000, seed=0, temperature=1.0)
    assert abs(float(z.std()) - 1.0) < 0.05
    prior = FaceGenerator.tiny(seed=0, sampler="prior")
    assert prior.sample_latents(2, seed=0).shape == (2, 4)
    with pytest.raises(ConfigError, match="temperature"):
        stage.sample_latents(1, temperature=5.0)


def test_reconstruct_any_size_gray_or_rgb() -> None:
    stage = FaceGenerator.tiny(seed=0)
    rgb = ImageBatch(torch.rand(2, 3, 40, 30), ["a", "b"], [{"x": 1}, {"x": 2}])
    out = stage(rgb)
    assert out.images.shape == (2, 1, 16, 16)
    assert out.names == ["a", "b"] and out.meta == [{"x": 1}, {"x": 2}]
    # Same picture given in gray gives the same reconstruction.
    gray = ImageBatch(rgb.gray().images)
    torch.testing.assert_close(stage(gray).images, out.images, atol=1e-5, rtol=0)


def test_unsharp_mask_boosts_edges_and_keeps_flat_areas() -> None:
    flat = torch.full((2, 1, 12, 12), 0.4)
    torch.testing.assert_close(unsharp_mask(flat, 1.5, 1.0), flat)
    edge = torch.zeros(1, 1, 12, 12)
    edge[..., 6:] = 0.5
    edge = edge + 0.25
    x = torch.cat([edge, edge.transpose(-1, -2)])
    assert unsharp_mask(x, 0.0, 1.0) is x
    out = unsharp_mask(x, 1.0, 1.0)
    assert out.shape == x.shape and out.dtype == torch.float32
    # Overshoot on both sides of the edge, nothing far from it, clamped to [0, 1].
    assert out[0, 0, 3, 5] < 0.25 and out[0, 0, 3, 6] > 0.75
    torch.testing.assert_close(out[..., :2, :2], x[..., :2, :2])
    torch.testing.assert_close(out[1], out[0].transpose(-1, -2))
    assert float(unsharp_mask(x, 4.0, 2.0).min()) == 0.0
    assert float(unsharp_mask(x, 4.0, 2.0).max()) == 1.0


def test_sharpen_applies_to_samples_not_to_reconstructions() -> None:
    plain = FaceGenerator.tiny(seed=0)
    sharp = FaceGenerator.tiny(seed=0, sharpen=1.0, sharpen_sigma=0.8)
    a = ImageBatch.concat(list(plain.sample(5, seed=2)))
    b = ImageBatch.concat(list(sharp.sample(5, seed=2, batch_size=2)))
    torch.testing.assert_close(b.images, unsharp_mask(a.images, 1.0, 0.8), atol=1e-6, rtol=0)
    assert not torch.allclose(a.images, b.images)
    assert b.names == a.names and b.meta == a.meta
    faces = ImageBatch(torch.rand(3, 1, 16, 16))
    torch.testing.assert_close(sharp(faces).images, plain(faces).images)
    z = plain.sample_latents(3, seed=0)
    torch.testing.assert_close(sharp.decode(z).images, plain.decode(z).images)
    with pytest.raises(ConfigError, match="sharpen"):
        FaceGenerator.tiny(seed=0, sharpen=-0.5)
    with pytest.raises(ConfigError, match="sharpen_sigma"):
        FaceGenerator.tiny(seed=0, sharpen_sigma=0.0)


def test_interpolate_linear_and_slerp_hit_the_ends() -> None:
    stage = FaceGenerator.tiny(seed=0)
    za, zb = torch.randn(4), torch.randn(4)
    ends = stage.decode(torch.stack([za, zb])).images
    for method in ("linear", "slerp"):
        path = stage.interpolate(za, zb, steps=5, method=method)
        assert len(path) == 5
        torch.testing.assert_close(path.images[0], ends[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(path.images[-1], ends[1], atol=1e-5, rtol=0)
    # Slerp keeps the norm between the ends' norms (both unit here).
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, torch.tensor([[0.5]]), torch.zeros(2))
    assert abs(float(mid.norm()) - 1.0) < 1e-5
    with pytest.raises(ConfigError, match="steps"):
        stage.interpolate(za, zb, steps=1)
    images = ImageBatch(torch.rand(1, 1, 20, 20))
    assert len(stage.interpolate(images, images, steps=3)) == 3


def test_traverse_rows_per_dimension() -> None:
    stage = FaceGenerator.tiny(seed=0)
    batch, dims = stage.traverse(steps=5)
    assert dims == [0, 1, 2, 3] or sorted(dims) == [0, 1, 2, 3]
    assert len(batch) == 4 * 5
    batch, dims = stage.traverse(dims=[2], steps=3)
    assert dims == [2] and len(batch) == 3 and batch.names[0] == "dim002_00"
    with pytest.raises(ConfigError, match="dims"):
        stage.traverse(dims=[9])


def test_concepts_round_trip_and_apply(tmp_path: Path) -> None:
    stage = FaceGenerator.tiny(seed=0)
    pos = ImageBatch(torch.rand(3, 1, 16, 16) * 0.3 + 0.7)
    neg = ImageBatch(torch.rand(3, 1, 16, 16) * 0.3)
    vec = stage.make_concept(pos, neg)
    assert vec.shape == (4,)
    path = save_concept(tmp_path / "c", "bright", vec, {"n_positive": 3})
    assert path.name == "bright.json" and json.loads(path.read_text())["n_positive"] == 3
    loaded = load_concept("bright", [tmp_path / "c"])
    torch.testing.assert_close(loaded, vec, atol=1e-5, rtol=0)
    torch.testing.assert_close(load_concept(path), loaded)
    z = torch.zeros(2, 4)
    torch.testing.assert_close(stage.apply_concept(z, vec, 2.0), 2 * vec.expand(2, 4))
    edited = stage.edit(neg, [(vec, 1.0)])
    assert edited.images.shape == (3, 1, 16, 16)
    assert parse_concept_arg("smile:1.5") == ("smile", 1.5)
    assert parse_concept_arg("smile:+1") == ("smile", 1.0)
    assert parse_concept_arg("smile") == ("smile", 1.0)
    for bad in ("smile:lots", "smile:nan", "smile:inf", "smile:-inf", "smile:1e309"):
        with pytest.raises(ConfigError, match="needs a number from -10 to 10"):
            parse_concept_arg(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_concept("nope", [tmp_path])
    with pytest.raises(ConfigError, match="concept name"):
        save_concept(tmp_path, "../evil", vec)
    with pytest.raises(ConfigError, match="dims"):
        stage.apply_concept(z, torch.zeros(7))


def test_concept_strength_is_bounded_for_every_front_end(tmp_path: Path, cli) -> None:
    """smile:1e308 is finite but overflowed the decoder: black faces, a cast warning, exit 0."""
    assert parse_concept_arg("smile:10") == ("smile", 10.0)
    assert parse_concept_arg("smile:-10") == ("smile", -10.0)
    for bad in ("smile:1e308", "smile:-1e308", "smile:10.5"):
        with pytest.raises(ConfigError, match=r"from -10 to 10 \(e.g. smile:1.5\)"):
            parse_concept_arg(bad)
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    out = tmp_path / "faces"
    res = cli("gen-faces", "--n", 2, "--concept", "smile:1e308", "--model", weights, "-o", out)
    assert res.exit_code == 2 and "from -10 to 10" in res.output, res.output
    assert not out.exists()
    # TOML stage tables parse concepts the same way, before any weights load.
    from aepipe.pipeline import StageSpec, check_stage_spec

    spec = StageSpec(weights="face-vae", faces={"concepts": ["smile:1e308"]})
    with pytest.raises(ConfigError, match="from -10 to 10"):
        check_stage_spec(spec, "stages.0")


def test_cli_help_shows_bracketed_defaults() -> None:
    """Rich markup took ``[default: ...]`` in help texts for a tag and printed nothing."""
    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    runner = CliRunner(env={"COLUMNS": "200"})
    for args, text in (
        (["faces", "reconstruct"], "[default: <input>_recon]"),
        (["faces", "edit"], "[default: <input>_edit]"),
        (["faces", "fit-concepts"], "[default: runs/<model>/concepts]"),
        (["vae", "grid"], "[default: <model>-grid.png]"),
        (["vae", "scatter"], "[default: <model>-scatter.png]"),
    ):
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0 and text in res.output, (args, res.output)


# ---- data and training ---------------------------------------------------------------------


def fake_lfw(path: Path, n: int = 40, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    files = np.array([f"P{i // 3:03d}/P{i // 3:03d}_{i % 3:04d}.jpg" for i in range(n)])
    np.savez(path, images=images, test_images=images[:5], train_files=files, test_files=files[:5])
    return path


def test_load_faces_is_bt601_luma_and_person_split(tmp_path: Path) -> None:
    from aepipe.batch import to_gray
    from aepipe.data.faces import load_faces, person_of, split_by_person

    path = fake_lfw(tmp_path / "f.npz")
    gray, files = load_faces(path, "train", with_files=True)
    assert gray.shape == (40, 64, 64) and gray.dtype == np.uint8
    raw = np.load(path)["images"]
    want = to_gray(torch.from_numpy(raw).permute(0, 3, 1, 2).float())[:, 0].round().numpy()
    np.testing.assert_array_equal(gray, want.astype(np.uint8))
    assert load_faces(path, "test").shape == (5, 64, 64)
    cut = split_by_person(files, len(files), 0.2)
    assert {person_of(f) for f in files[:cut]}.isdisjoint({person_of(f) for f in files[cut:]})
    with pytest.raises(ValueError, match="split"):
        load_faces(path, "val")  # type: ignore[arg-type]


def test_train_smoke_writes_a_loadable_weights_folder(tmp_path: Path) -> None:
    from aepipe.stage import load_stage
    from aepipe.train.vae import TrainConfig, train

    data = fake_lfw(tmp_path / "f.npz", n=40)
    cfg = TrainConfig(
        preset="face-vae", data=data, epochs=2, warmup_epochs=1, limit=40, batch_size=16
    )
    lines: list[str] = []
    out = train(cfg, tmp_path / "w", progress=lines.append)
    stage = load_stage(out)
    assert isinstance(stage, FaceGenerator) and stage.native_size == 64
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["seed"] == 0 and "val_elbo_nats" in config["metrics"]
    assert (out / "MODEL_CARD.md").read_text().startswith("# face-vae")
    assert any(line.startswith("epoch 2/2") for line in lines)
    with pytest.raises(ValueError):
        TrainConfig(preset="face-vae", no_such=1)  # type: ignore[call-arg]
    # The preset's sampling mixture is refitted by EM on the best snapshot at the end.
    k = config["model_kwargs"].get("sample_components", 1)
    assert config["training"]["sampler"]["em_iterations" if k > 1 else "kind"]

    # A fine-tune starts from those weights (a vanishing learning rate keeps them) with the
    # KL weighted down, and says so in its config and card.
    tune = TrainConfig(
        preset="face-vae",
        data=data,
        epochs=1,
        warmup_epochs=0,
        limit=40,
        batch_size=16,
        init=str(out),
        kl_weight=0.5,
        lr=1e-12,
    )
    tuned = train(tune, tmp_path / "t")
    config = json.loads((tuned / "config.json").read_text())
    assert config["training"]["init"] == str(out) and config["training"]["kl_weight"] == 0.5
    assert "linearly to 0.5" in (tuned / "MODEL_CARD.md").read_text()
    before, after = load_stage(out).model.state_dict(), load_stage(tuned).model.state_dict()
    for name, value in before.items():
        if not name.startswith(("mix_", "sample_")):
            torch.testing.assert_close(after[name], value, atol=1e-6, rtol=0)
    # Refused by the config itself, before any data loads (a model_copy would skip the check).
    with pytest.raises(ValueError, match="drop --latent-dim"):
        TrainConfig(**{**tune.model_dump(), "latent_dim": 8})


def test_cli_fit_sampler_refits_only_the_sampler(tmp_path: Path, cli) -> None:
    from aepipe.stage import load_stage
    from aepipe.train.vae import TrainConfig, train

    data = fake_lfw(tmp_path / "f.npz", n=40)
    cfg = TrainConfig(preset="face-vae", data=data, epochs=1, warmup_epochs=0, limit=40)
    src = train(cfg, tmp_path / "w")
    res = cli(
        "faces", "fit-sampler", "--model", src, "--out", tmp_path / "k3", "--components", 3,
        "--temperature", 1.1,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "k3/config.json").read_text())
    assert config["model_kwargs"]["sample_components"] == 3
    assert config["stage_config"]["temperature"] == 1.1
    assert config["training"]["sampler"]["command"].startswith("aepipe ")  # argv of the run
    a, b = load_stage(src), load_stage(tmp_path / "k3")
    for (name, wa), (_, wb) in zip(
        a.model.decoder.state_dict().items(), b.model.decoder.state_dict().items(), strict=True
    ):
        assert torch.equal(wa, wb), name
    assert b.sample_latents(8, seed=0).shape == (8, 128)
    same = cli("faces", "fit-sampler", "--model", src, "--out", src)
    assert same.exit_code == int(ExitCode.BAD_ARGS) and "new folder" in same.output
    other = fake_lfw(tmp_path / "g.npz", n=25)
    wrong = cli("faces", "fit-sampler", "--model", src, "--out", tmp_path / "x", "--data", other)
    assert wrong.exit_code == int(ExitCode.BAD_ARGS) and "trained on" in wrong.output


# ---- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_gen_faces_is_reproducible(tmp_path: Path, cli) -> None:
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")

    def gen(out: str, *extra: object) -> None:
        res = cli(
            "gen-faces", "--n", 5, "--seed", 7, "--model", weights, "--out", tmp_path / out, *extra
        )
        assert res.exit_code == 0, res.output

    gen("a")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [f"face_0000{i}.png" for i in range(5)] + ["grid.png"]
    gen("b", "--batch-size", 2, "--grid", tmp_path / "sheet.png")
    for i in range(5):
        name = f"face_0000{i}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "sheet.png").is_file()
    # --sharpen overrides the weights' unsharp mask: same faces, sharper.
    gen("s", "--sharpen", 2, "--no-grid")
    plain = np.asarray(Image.open(tmp_path / "a" / "face_00000.png"), dtype=np.float64)
    sharp = np.asarray(Image.open(tmp_path / "s" / "face_00000.png"), dtype=np.float64)
    assert np.abs(sharp - plain).max() > 2 and abs(sharp.mean() - plain.mean()) < 3
    res = cli(
        "gen-faces", "--n", 2, "--model", weights, "--out", tmp_path / "c", "--concept", "nope:1"
    )
    assert res.exit_code == 2 and "not found" in res.output


def test_cli_faces_commands(tmp_path: Path, cli) -> None:
    from PIL import Image

    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    pos, neg = tmp_path / "pos", tmp_path / "neg"
    pos.mkdir()
    neg.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(150, 256, (20, 24, 3), dtype=np.uint8)).save(pos / f"{i}.png")
        Image.fromarray(rng.integers(0, 100, (20, 20), dtype=np.uint8)).save(neg / f"{i}.jpg")
    cdir = tmp_path / "concepts"
    res = cli(
        "faces",
        "concept",
        "--positive",
        pos,
        "--negative",
        neg,
        "--name",
        "bright",
        "--model",
        weights,
        "--concepts-dir",
        cdir,
    )
    assert res.exit_code == 0, res.output
    assert (cdir / "bright.json").is_file()
    res = cli(
        "faces",
        "edit",
        neg,
        "--concept",
        "bright:+1",
        "--concepts-dir",
        cdir,
        "--model",
        weights,
        "--out",
        tmp_path / "edited",
    )
    assert res.exit_code == 0, res.output
    # The runner's output record (.aepipe-outputs.jsonl) lies beside the images.
    assert sorted(p.name for p in (tmp_path / "edited").glob("*.png")) == ["0.png", "1.png"]
    res = cli("faces", "reconstruct", pos, "--model", weights, "--out", tmp_path / "rec")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "rec" / "0.png").size == (16, 16)
    res = cli(
        "faces",
        "interpolate",
        pos / "0.png",
        neg / "1.jpg",
        "--steps",
        4,
        "--method",
        "both",
        "--model",
        weights,
        "--out",
        tmp_path / "i.png",
    )
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "i.png").size == (4 * 18 + 2, 2 * 18 + 2)
    res = cli(
        "faces",
        "traverse",
        "--dims",
        0,
        "--dims",
        3,
        "--steps",
        3,
        "--model",
        weights,
        "--out",
        tmp_path / "t.png",
    )
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "t.png").size == (3 * 18 + 2, 2 * 18 + 2)


def test_cli_vae_grid_needs_2d_latent(tmp_path: Path, cli) -> None:
    from PIL import Image

    torch.manual_seed(0)
    model = ConvVAE(size=28, channels=[4, 8], latent_dim=2, likelihood="bernoulli")
    weights = FaceGenerator(model).save_pretrained(tmp_path / "m2")
    res = cli("vae", "grid", "--model", weights, "--n", 5, "--out", tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "g.png").size == (5 * 30 + 2, 5 * 30 + 2)
    other = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    res = cli("vae", "grid", "--model", other, "--out", tmp_path / "h.png")
    assert res.exit_code == 2 and "2-D latent" in res.output
    # The scatter's data missing (its default outside the repository): one line, exit 2.
    pytest.importorskip("matplotlib", reason="the scatter needs the [plot] extra")
    res = cli("vae", "scatter", "--model", weights, "--data", tmp_path / "nope", "--limit", 10)
    assert res.exit_code == 2 and "cannot read" in res.output, res.output
    assert "Traceback" not in res.output


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, aepipe.cli.faces; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr


# ---- shipped weights (slow / data) -------------------------------------------------------------


@pytest.mark.slow
def test_shipped_face_vae_decodes_64_faces_fast() -> None:
    from aepipe.stage import load_stage

    stage = load_stage("face-vae")
    z = stage.sample_latents(64, seed=0)
    stage.decode(z)
    t0 = time.perf_counter()
    batch = stage.decode(z)
    elapsed = time.perf_counter() - t0
    assert batch.images.shape == (64, 1, 64, 64)
    assert elapsed < 0.5, elapsed  # the 50 ms target is checked on an idle machine


@pytest.mark.data
@pytest.mark.slow
def test_shipped_face_vae_reconstructs_test_faces(shared_data: Path) -> None:
    from aepipe.data.faces import load_faces
    from aepipe.stage import load_stage

    stage = load_stage("face-vae")
    faces = load_faces(shared_data / "faces/lfw_64.npz", "test")[:64]
    x = torch.from_numpy(faces).unsqueeze(1).float() / 255.0
    rec = stage(ImageBatch(x)).images
    psnr = 10 * torch.log10(1 / ((rec - x) ** 2).flatten(1).mean(1)).mean()
    assert float(psnr) > 18.0


# ---- the CPU-friendly inference decoder ---------------------------------------------------------


def test_subpixel_conv_equals_transposed_conv() -> None:
    from aepipe.models.vae import subpixel_conv

    torch.manual_seed(0)
    ct = torch.nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1)
    x = torch.randn(3, 6, 7, 9)
    assert torch.allclose(subpixel_conv(ct)(x), ct(x), atol=1e-5)
    with pytest.raises(ValueError, match="4x4 stride-2"):
        subpixel_conv(torch.nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1))


def test_inference_decoder_matches_and_follows_weight_changes() -> None:
    from aepipe.models.vae import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(size=32, channels=(8, 16), latent_dim=4, res_blocks=1).eval()
    z = torch.randn(5, 4)
    with torch.inference_mode():
        fast = model.decode(z)
    slow = torch.sigmoid(model.decoder(z))  # grad mode: the module as trained
    assert torch.allclose(fast, slow, atol=1e-5)
    other = ConvVAE(size=32, channels=(8, 16), latent_dim=4, res_blocks=1)
    model.load_state_dict(other.state_dict())  # new weights: the cached decoder is rebuilt
    with torch.inference_mode():
        fast = model.decode(z)
    assert torch.allclose(fast, torch.sigmoid(other.decoder(z)), atol=1e-5)
    assert not any("fast" in k for k in model.state_dict())


def test_face_vae_training_writes_the_shipped_stage_config() -> None:
    from aepipe.train.vae import PRESETS
    from aepipe.weights import read_config, resolve

    # `aepipe train face-vae` must reproduce the sampling settings shipped with the weights.
    shipped = read_config(resolve("face-vae"))["stage_config"]
    assert PRESETS["face-vae"]["stage_config"] == shipped


def test_cli_sheet_paths_are_checked_before_any_work(tmp_path: Path, cli) -> None:
    """A grid or strip the writer could not write exits 2 before faces are made (a traceback
    after the work before)."""
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "faces"
    cases = [
        (("gen-faces", "--n", 2, "--out", out, "--grid", tmp_path / "grid"), "cannot write"),
        (("gen-faces", "--n", 2, "--out", out, "--grid", tmp_path / "adir"), "is a folder"),
        (("gen-faces", "--n", 2, "--out", tmp_path / "afile"), "is a file"),
        (("faces", "traverse", "--out", tmp_path / "t.gif"), "cannot write"),
        (("vae", "grid", "--out", tmp_path / "afile" / "g.png"), "is a file"),
    ]
    for args, message in cases:
        res = cli(*args, "--model", weights)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    assert not out.exists()


def test_cli_gen_faces_keeps_existing_faces_unless_overwrite(tmp_path: Path, cli) -> None:
    """A second gen-faces into the same folder silently replaced faces 0-1 with another
    seed's, kept 2-3 of the first run and drew a grid of 2: existing files are now kept, as
    `aepipe run`'s folder sink keeps them (--overwrite replaces), and leftovers are reported."""
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    out, fresh = tmp_path / "ow", tmp_path / "fresh"

    def gen(folder: Path, *extra: object):
        res = cli("gen-faces", "--model", weights, "--out", folder, *extra)
        assert res.exit_code == 0, res.output
        return res.output

    gen(out, "--n", 4, "--seed", 1)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    said = gen(out, "--n", 2, "--seed", 2)
    assert "wrote 0 faces" in said and "kept 2 that exist" in said
    assert "kept the grid" in said or "grid" not in said.split("kept 2")[1]
    assert "also holds 2 file(s) of another run (face_00002.png, face_00003.png)" in said
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    said = gen(out, "--n", 2, "--seed", 2, "--overwrite")
    gen(fresh, "--n", 2, "--seed", 2)
    for name in ("face_00000.png", "face_00001.png", "grid.png"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    assert "also holds 2 file(s)" in said  # replaced 0-1; 2-3 are still the first run's
    # --colorize writes through the same sink: a re-run keeps what is there.
    gen(tmp_path / "col", "--n", 2, "--colorize")
    assert "kept 2 that exist" in gen(tmp_path / "col", "--n", 2, "--colorize")


def test_cli_gen_faces_refuses_grid_with_no_grid(tmp_path: Path, cli) -> None:
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    out = tmp_path / "faces"
    res = cli("gen-faces", "--model", weights, "--out", out, "--no-grid", "--grid", "x.png")
    assert res.exit_code == 2 and "--no-grid" in res.output and not out.exists()


def test_cli_interpolate_frames_keep_earlier_walks_and_sort_past_100(tmp_path: Path, cli) -> None:
    """`faces interpolate --frames` replaced a first walk's frames and left the rest; names
    step_00 ... stopped sorting in walk order at 100 steps."""
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    frames = tmp_path / "frames"

    def walk(steps: int, *extra: object) -> str:
        res = cli(
            "faces", "interpolate", tmp_path / "a.png", tmp_path / "b.png", "--steps", steps,
            "--model", weights, "--out", tmp_path / "s.png", "--frames", frames, *extra,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        return res.output

    walk(4)
    first = {p.name: p.read_bytes() for p in frames.iterdir()}
    said = walk(3, "--method", "slerp")
    assert "wrote 3 frames" in said and "also holds 4 file(s) of another run" in said
    assert all(first[n] == (frames / n).read_bytes() for n in first)
    said = walk(3)
    assert "kept 3 that exist" in said and "also holds 4 file(s)" in said  # step_03, slerp
    assert {p.name: p.read_bytes() for p in frames.iterdir() if p.name in first} == first
    walk(3, "--overwrite")
    stage = FaceGenerator.tiny(seed=0)
    names = stage.interpolate(torch.zeros(4), torch.ones(4), steps=101).names
    assert names[0] == "step_000" and names[-1] == "step_100" and sorted(names) == names
    assert stage.interpolate(torch.zeros(4), torch.ones(4), steps=8).names[-1] == "step_07"


def test_results_pictures_of_generated_faces_are_current() -> None:
    """docs/RESULTS.md showed `gen-faces --n 16 --seed 0 --colorize` as made before the unsharp
    mask shipped; benchmarks/face_pictures.py remakes the pictures with the quoted commands."""
    from aepipe.core import generate, load_generator
    from aepipe.io import make_grid
    from aepipe.stage import load_stage

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    batches = generate(load_generator("face-vae"), 16, seed=0, stages=[load_stage("colorizer")])
    made = make_grid(ImageBatch.concat(list(batches)).to_numpy(np.uint8)).astype(float)
    shown = np.asarray(Image.open(root / "face-vae-colorized-seed0.png").convert("RGB"), float)
    assert made.shape == shown.shape and np.abs(made - shown).mean() < 0.5
