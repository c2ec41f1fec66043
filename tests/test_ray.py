"""Stages inside Ray Data, against a real local Ray cluster (``ray.init(num_cpus=2)``).

One cluster is started for the whole module (about 10 s); everything else is tiny models on tiny
images so the file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from factory import clean_colour_page
from PIL import Image

ray = pytest.importorskip("ray", reason="needs the [ray] extra")

from aepipe import apply  # noqa: E402
from aepipe.errors import ConfigError  # noqa: E402
from aepipe.ray import FaceBlockMapper, StageMapper, face_blocks  # noqa: E402
from aepipe.stage import load_stage  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def scans_folder(folder: Path) -> Path:
    """Pages of mixed sizes and formats, a two-page PDF and one broken file."""
    from factory import pdf_pages

    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (54, 42), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(0, 256, (33, 47), dtype=np.uint8)).save(
        folder / "scan.jpg", quality=90
    )
    pdf_pages(folder / "report.pdf", [(40, 30), (30, 40)], dpi=72)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def test_mapper_is_picklable_and_loads_in_init(tiny_weights: dict[str, Path]) -> None:
    mapper = StageMapper(weights=tiny_weights["scan-denoiser"], device="cpu")
    clone = pickle.loads(pickle.dumps(mapper))
    batch = {"image": np.random.default_rng(1).integers(0, 256, (2, 20, 24, 1), dtype=np.uint8)}
    np.testing.assert_array_equal(clone(batch)["image"], mapper(batch)["image"])
    # So is the per-image colorizer choice ("auto"), its shipped models loaded on demand.
    auto = StageMapper(stages=[{"weights": "auto", "stage": "colorizer"}], device="cpu")
    assert isinstance(pickle.loads(pickle.dumps(auto)), StageMapper)
    with pytest.raises(ConfigError, match="exactly one"):
        StageMapper()
    with pytest.raises(ConfigError, match="columns"):
        mapper({"other": np.zeros(2)})


def test_mapper_handles_ragged_and_keeps_other_columns(tiny_weights: dict[str, Path]) -> None:
    mapper = StageMapper(stages=[{"weights": str(tiny_weights["scan-denoiser"])}], max_batch=2)
    rng = np.random.default_rng(2)
    ragged = np.empty(3, dtype=object)
    ragged[0] = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    ragged[1] = rng.integers(0, 256, (30, 16), dtype=np.uint8)
    ragged[2] = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    out = mapper({"image": ragged, "id": np.arange(3)})
    np.testing.assert_array_equal(out["id"], np.arange(3))
    stage = load_stage(tiny_weights["scan-denoiser"])
    from aepipe import apply

    for i in range(3):
        assert out["image"][i].shape == ragged[i].shape
        assert np.abs(out["image"][i].astype(int) - apply(stage, ragged[i]).astype(int)).max() <= 1


@pytest.mark.slow
def test_read_images_pipeline_on_cluster(
    cluster: None, tiny_weights: dict[str, Path], tmp_path: Path
) -> None:
    """An image column from ``ray.data.read_images`` (the README's way is binary files, tested
    by the example tests; the mapper's image-column path is tested without a cluster above)."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "same"
    folder.mkdir()
    arrays = {}
    for i in range(6):
        arrays[f"p{i}"] = rng.integers(0, 256, (32, 40), dtype=np.uint8)
        Image.fromarray(arrays[f"p{i}"]).save(folder / f"p{i}.png")
    ds = ray.data.read_images(str(folder), mode="L", include_paths=True, num_cpus=0)
    ds = ds.map_batches(
        StageMapper,
        fn_constructor_kwargs={"weights": str(tiny_weights["scan-denoiser"])},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=2,
        batch_format="numpy",
    )
    rows = ds.take_all()
    assert len(rows) == 6
    stage = load_stage(tiny_weights["scan-denoiser"])
    from aepipe import apply

    for row in rows:
        name = Path(row["path"]).stem
        assert row["image"].dtype == np.uint8
        want = apply(stage, arrays[name])
        assert np.abs(row["image"].astype(int) - want.astype(int)).max() <= 1


def test_example_batch_clean_equals_cli(
    cluster: None, tiny_weights: dict[str, Path], tmp_path: Path
) -> None:
    src = scans_folder(tmp_path / "scans")
    # The single-process CLI runs beside the Ray job (it is the reference, not under test).
    cmd = [str(BIN / "clean-scans"), str(src), "--out", str(tmp_path / "cli_out")]
    cmd += [
        "--format",
        "png",
        "--model",
        str(tiny_weights["scan-denoiser"]),
        "--device",
        "cpu",
        "-q",
    ]  # both at their default resolution: each PDF page's own
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    example = load_example("ray_batch_clean")
    try:
        result = example.run(
            src,
            tmp_path / "ray_out",
            model=str(tiny_weights["scan-denoiser"]),
            # One actor: on two cores a second one (and its torch import) beside the CLI doubled
            # this test's time; several actors: test_example_gen_faces (behind slow).
            concurrency=1,
            batch_size=2,
        )
    finally:
        _, stderr = proc.communicate(timeout=180)
    assert [Path(p).name for p, _ in result["failed"]] == ["broken.png"]
    assert proc.returncode == 1, stderr  # the broken file fails, the others are written
    ray_files = sorted(p.name for p in (tmp_path / "ray_out").iterdir())
    # (less the CLI's hidden record of what it wrote, .aepipe-outputs.jsonl)
    cli_files = sorted(p.name for p in (tmp_path / "cli_out").iterdir() if p.name[0] != ".")
    assert (
        ray_files
        == cli_files
        == ["colour.png", "gray.png", "report-p001.png", "report-p002.png", "scan.png"]
    )
    for name in ray_files:
        a = np.asarray(Image.open(tmp_path / "ray_out" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "cli_out" / name), dtype=np.int16)
        assert a.shape == b.shape, name
        assert np.abs(a - b).max() <= 2, name  # batching may move a pixel by a rounding step


def test_face_block_rows_without_a_cluster(tiny_weights: dict[str, Path]) -> None:
    """The mapper of the gen-faces example, called on its block rows in-process (the example on
    a cluster, below, is behind ``slow``: 15-25 s of actor start-up on two cores)."""
    mapper = FaceBlockMapper(
        str(tiny_weights["face-generator"]), str(tiny_weights["colorizer"]), device="cpu"
    )
    blocks = face_blocks(10, seed=5, block_size=4)
    rows = mapper({k: np.array([b[k] for b in blocks]) for k in blocks[0]})
    assert list(rows["name"]) == [f"face_{i:05d}" for i in range(10)]
    assert rows["image"].shape[0] == 10 and rows["image"].shape[-1] == 3
    assert len({f.tobytes() for f in rows["image"]}) == 10  # no repeated face
    assert list(rows["seed"]) == [5] * 10
    # A block is the same faces however the rows are grouped into batches.
    again = mapper({k: np.array([blocks[1][k]]) for k in blocks[0]})
    np.testing.assert_array_equal(again["image"], rows["image"][4:8])
    # ... and they are gen-faces' faces of that seed, whatever the block size.
    from aepipe.core import generate_batch

    whole = generate_batch(mapper.generator, 10, seed=5, stages=[mapper.colorizer])
    assert np.abs(whole.to_numpy(np.uint8).astype(int) - rows["image"].astype(int)).max() <= 1
    other = face_blocks(10, seed=5, block_size=3)
    regrouped = mapper({k: np.array([b[k] for b in other]) for k in other[0]})
    assert np.abs(regrouped["image"].astype(int) - rows["image"].astype(int)).max() <= 1


@pytest.mark.slow
def test_example_gen_faces(cluster: None, tiny_weights: dict[str, Path], tmp_path: Path) -> None:
    example = load_example("ray_gen_faces")
    kwargs = dict(
        seed=5,
        block_size=4,
        generator=str(tiny_weights["face-generator"]),
        colorizer=str(tiny_weights["colorizer"]),
    )
    result = example.run(
        10, tmp_path / "faces", concurrency=2, grid=tmp_path / "grid.png", **kwargs
    )
    names = [Path(p).name for p in result["written"]]
    assert names == [f"face_{i:05d}.png" for i in range(10)]
    faces = [np.asarray(Image.open(p)) for p in result["written"]]
    assert all(f.ndim == 3 and f.shape[-1] == 3 for f in faces)
    assert len({f.tobytes() for f in faces}) == 10  # no repeated face
    assert (tmp_path / "grid.png").is_file()

    # The same faces come out of one process, block by block, with no Ray at all.
    local = FaceBlockMapper(kwargs["generator"], kwargs["colorizer"], device="cpu")
    for block in face_blocks(10, seed=5, block_size=4):
        batch = local.faces(block["count"], block["seed"], block["start"])
        for name, image in zip(batch.names, batch.to_numpy(np.uint8), strict=True):
            got = faces[int(name.split("_")[1])]
            assert np.abs(got.astype(int) - image.astype(int)).max() <= 1


def test_face_blocks_cover_the_run_with_its_seed() -> None:
    a = face_blocks(100, seed=3, block_size=16)
    assert [b["count"] for b in a] == [16] * 6 + [4]
    assert [b["start"] for b in a] == list(range(0, 100, 16))
    assert {b["seed"] for b in a} == {3}  # each block draws its place in seed 3's sequence
    with pytest.raises(ConfigError):
        face_blocks(0)


def test_mapper_loads_a_pipeline_file(tiny_weights: dict[str, Path], tmp_path: Path) -> None:
    scan = tiny_weights["scan-denoiser"]
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        f'[source]\ntype = "folder"\ninputs = ["{tmp_path}"]\n'
        f'[[stages]]\nweights = "{scan}"\n[stages.config]\nbinarize = true\n'
        f'[sink]\nout = "{tmp_path / "out"}"\n'
    )
    mapper = StageMapper(pipeline_file=cfg)
    pages = np.full((2, 24, 24), 220, np.uint8)  # paper with a stroke (pure noise would count
    pages[:, 8:12, 3:20] = 25  # as a photograph, which binarize leaves as it is)
    out = mapper({"image": pages})
    assert set(np.unique(out["image"])) <= {0, 255}  # the file's binarize = true was applied
    cfg.write_text(cfg.read_text().replace("binarize", "binarise"))
    with pytest.raises(ConfigError, match="binarise"):
        StageMapper(pipeline_file=cfg)


def test_face_edits_of_photo_files_without_a_cluster() -> None:
    """The file-batch face path of the cluster test below, called in-process (the cluster test is
    behind ``slow``: 15-25 s of actor start-up on two cores)."""
    import io

    from factory import face_photo

    def png(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    stages = [{"weights": "face-vae", "faces": {"concepts": ["smile:+2"], "face": "largest"}}]
    mapper = StageMapper(stages=stages, device="cpu")
    files = {"bytes": [png(face_photo()), png(face_photo(None))], "path": ["p.png", "e.png"]}
    rows = mapper({k: np.array(v, dtype=object) for k, v in files.items()})
    assert rows["error"][0] == "" and "no face" in rows["error"][1]
    # The row's error names its file and page, not the bare array's batch name.
    assert rows["error"][1].startswith("e.png e:") and "image_0" not in rows["error"][1]
    assert rows["image"][0].shape == face_photo().shape
    # A block whose only readable page is refused still gives rows, not a failed job.
    alone = {"bytes": [png(face_photo(None)), b"not an image"], "path": ["e.png", "n.txt"]}
    rows = mapper({k: np.array(v, dtype=object) for k, v in alone.items()})
    assert "no face" in rows["error"][0] and rows["error"][1]


@pytest.mark.slow
def test_face_edits_of_photo_files_on_cluster(cluster: None, tmp_path: Path) -> None:
    """A face-VAE ``faces`` stage on whole photo files: the library's edit, a row error for a
    photo with no face (the rest of the block still done)."""
    from factory import face_photo

    from aepipe.batch import ImageBatch
    from aepipe.core import edit_face_photo, face_concepts
    from aepipe.stages.face_generator import default_concept_dirs

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(face_photo()).save(folder / "photo.png")
    Image.fromarray(face_photo(None)).save(folder / "empty.png")
    stages = [{"weights": "face-vae", "faces": {"concepts": ["smile:+2"], "face": "largest"}}]
    ds = ray.data.read_binary_files(str(folder), include_paths=True, num_cpus=0)
    ds = ds.map_batches(
        StageMapper,
        fn_constructor_kwargs={"stages": stages, "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=2,
        batch_format="numpy",
    )
    rows = {Path(r["path"]).name: r for r in ds.take_all()}
    assert "no face" in rows["empty.png"]["error"]
    vectors = face_concepts(["smile:+2"], default_concept_dirs())
    batch = ImageBatch.from_numpy(face_photo(), ["photo"])
    want = edit_face_photo(load_stage("face-vae"), batch, vectors, face="largest", align="photo")
    assert rows["photo.png"]["error"] == ""
    np.testing.assert_array_equal(rows["photo.png"]["image"], want.batch.to_numpy(np.uint8)[0])


def test_workers_without_gpus_use_the_cpu(cluster: None) -> None:
    from aepipe.ray import worker_device

    @ray.remote(num_cpus=0, num_gpus=0)
    def device() -> str:
        return worker_device("auto")

    assert ray.get(device.remote(), timeout=60) == "cpu"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _map_workers() -> list[int]:
    """PIDs of this test's Ray Data map actors (Ray titles them ``ray::MapWorker(...)``)."""
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::MapWorker"):
            pids.append(pid)
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds workers through /proc")
def test_batch_job_survives_a_killed_worker(
    cluster: None, tiny_weights: dict[str, Path], tmp_path: Path
) -> None:
    import signal
    import threading
    import time

    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        page = rng.integers(0, 256, (400 + i, 500), dtype=np.uint8)
        Image.fromarray(page).save(src / f"page{i:02d}.png")
    out = tmp_path / "out"
    out.mkdir()
    killed: list[tuple[int, int]] = []  # (pid, outputs written when it was killed)

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = len(list(out.iterdir()))
            workers = _map_workers()
            if done and workers:  # mid-job: some pages written, the rest still to come
                os.kill(workers[0], signal.SIGKILL)
                killed.append((workers[0], done))
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    example = load_example("ray_batch_clean")
    model = str(tiny_weights["scan-denoiser"])
    result = example.run(src, out, model=model, concurrency=1, batch_size=1)
    thread.join(5)
    print(f"\nkilled map worker {killed} (pid, pages written by then); {result['seconds']:.1f} s")
    assert killed, "no worker was killed"
    assert killed[0][1] < 40, f"worker killed only after the job ended: {killed}"
    assert result["failed"] == []
    names = [Path(p).name for p in result["written"]]
    assert names == [f"page{i:02d}.png" for i in range(40)]  # each once, none lost
    assert sorted(p.name for p in out.iterdir()) == names  # no temp files left behind
    stage = load_stage(model)
    for i in (0, 17, 39):
        got = np.asarray(Image.open(out / f"page{i:02d}.png"), dtype=np.int16)
        want = np.asarray(Image.open(src / f"page{i:02d}.png"))
        ref = apply(stage, want).astype(np.int16)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 2, i


def test_the_mapper_outside_ray_neither_imports_ray_nor_sets_its_environment() -> None:
    """Ray's import sets environment variables and log handlers: a plain library user's process
    (no cluster) must not get them from ``device="auto"``."""
    code = (
        "import os, sys; from aepipe.ray import worker_device; before = dict(os.environ); "
        "worker_device('auto'); print('ray' in sys.modules, dict(os.environ) == before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_file_rows_keep_a_fax_resolution(tiny_weights: dict[str, Path]) -> None:
    """PNG rows carry both DPIs of a 204 x 98 fax, as the CLI writes them."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(buf, format="TIFF", dpi=(204, 98))
    mapper = StageMapper(weights=tiny_weights["impulse-denoiser"], device="cpu", encode="png")
    rows = mapper({"bytes": np.array([buf.getvalue()], dtype=object), "path": np.array(["f.tif"])})
    dpi = Image.open(io.BytesIO(rows["png"][0])).info["dpi"]
    assert dpi == pytest.approx((204, 98), abs=0.1)


def test_file_rows_are_written_with_the_pages_profile_metadata_and_1_bit(
    tiny_weights: dict[str, Path],
) -> None:
    """PNG rows carry what the CLI writes with a page: its gray ICC profile, its text, and 1 bit
    for a black-and-white page stored 8-bit (encode_page got no page meta)."""
    import io

    from PIL import PngImagePlugin
    from test_image_fidelity import gray_profile

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "my scan")
    bw = np.full((40, 60), 255, np.uint8)
    bw[10:14, 5:50] = 0
    files = []
    for pixels in (bw, np.where(bw == 0, 40, 230).astype(np.uint8)):  # black and white; gray
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info, icc_profile=gray_profile())
        files.append(buf.getvalue())
    mapper = StageMapper(weights=tiny_weights["impulse-denoiser"], device="cpu", encode="png")
    rows = mapper({"bytes": np.array(files, dtype=object), "path": np.array(["a.png", "b.png"])})
    one_bit, gray = (Image.open(io.BytesIO(png)) for png in rows["png"])
    assert (one_bit.mode, gray.mode) == ("1", "L")
    assert one_bit.info.get("Title") == gray.info.get("Title") == "my scan"
    assert gray.info.get("icc_profile") == gray_profile()  # a 1-bit page takes none


def test_a_pipeline_file_on_a_worker_needs_only_its_stages(
    tiny_weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray runs a file's [[stages]]: paths of its source and sink, which a worker may not see,
    are not checked (an interpolate source's photos, a sink folder that cannot be made); and a
    stage taking only gray images gets colour ones as gray, as from every front end."""
    from test_runner import GrayOnly

    import aepipe.ray as ray_mod
    from aepipe.pipeline import Pipeline

    cfg = tmp_path / "p.toml"
    cfg.write_text(
        '[source]\ntype = "interpolate"\na = "/nowhere/a.jpg"\nb = "/nowhere/b.jpg"\n'
        f'[[stages]]\nweights = "{tiny_weights["impulse-denoiser"]}"\n'
        '[sink]\nout = "/proc/no/such/out"\n'
    )
    StageMapper(pipeline_file=cfg, device="cpu")  # no ConfigError about a or sink.out
    tiny = load_stage(tiny_weights["impulse-denoiser"])
    gray_only = GrayOnly(tiny.model, tiny.config)
    monkeypatch.setattr(ray_mod, "build_pipeline", lambda *a, **k: Pipeline([gray_only]))
    mapper = StageMapper(weights="any", device="cpu")
    rgb = np.zeros((1, 24, 32, 3), np.uint8)
    rgb[..., 0] = 200
    out = mapper({"image": rgb})
    assert out["image"].shape[:3] == (1, 24, 32)


def test_image_rows_are_delivered_as_the_cli_writes_them(tiny_weights: dict[str, Path]) -> None:
    """The image column gets what every front end delivers: a page kept as it was in its own
    colours (not its luma), a black-and-white page two-level, equal to the PNG column of file
    rows, which is the CLI's page."""
    import io

    mapper = StageMapper(weights=tiny_weights["scan-denoiser"], device="cpu", encode="png")
    page = clean_colour_page()
    out = mapper({"image": np.stack([page, page])})
    np.testing.assert_array_equal(out["image"], np.stack([page, page]))
    assert list(out["error"]) == ["", ""]

    bw = np.full((40, 60), 255, np.uint8)
    bw[10:14, 5:50] = 0
    bw[20:30:3, 5:50] = 0
    buf = io.BytesIO()
    Image.fromarray(bw).convert("1").save(buf, format="PNG")
    rows = mapper({"bytes": np.array([buf.getvalue()], dtype=object)})
    png = Image.open(io.BytesIO(rows["png"][0]))
    assert png.mode == "1"
    np.testing.assert_array_equal(rows["image"][0][..., 0], np.asarray(png.convert("L")))
    as_read = mapper({"image": (bw == 255)[None]})["image"][0]  # read_images gives 1-bit as bool
    np.testing.assert_array_equal(as_read, np.asarray(png, np.float32))


def test_one_bad_image_row_fails_its_own_row(tiny_weights: dict[str, Path]) -> None:
    """As byte rows do: a float row of 0..255 gets its reason in ``error`` and an empty image,
    the other rows their results. A column left unnamed is named in the message."""
    mapper = StageMapper(weights=tiny_weights["impulse-denoiser"], device="cpu", column="data")
    rng = np.random.default_rng(5)
    data = rng.random((3, 16, 20, 1), dtype=np.float32)
    data[1] *= 255
    out = mapper({"data": data, "id": np.arange(3)})
    assert out["error"][0] == out["error"][2] == ""
    assert out["error"][1].startswith("batch row 1") and "[0, 1]" in out["error"][1]
    assert out["data"][1].shape == (0, 0, 1) and out["data"][1].dtype == np.float32
    want = StageMapper(weights=tiny_weights["impulse-denoiser"], device="cpu").process([data[0]])
    np.testing.assert_array_equal(out["data"][0], want[0])
    np.testing.assert_array_equal(out["id"], np.arange(3))
    with pytest.raises(ConfigError, match=r"\['data'\].*column="):
        StageMapper(weights=tiny_weights["impulse-denoiser"], device="cpu")({"data": data})


def test_read_images_of_gray_and_colour_files_together(
    cluster: None, tiny_weights: dict[str, Path], tmp_path: Path
) -> None:
    """Ray pads a (H, W) gray row to (1, H, W) beside (H, W, 3) colour rows of one batch; the
    mapper takes it back as the gray image it was (the job used to fail on it)."""
    rng = np.random.default_rng(4)
    arrays = {
        "a_gray": rng.integers(0, 256, (30, 40), dtype=np.uint8),
        "b_colour": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8),
        "c_page": clean_colour_page(),
    }
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, pixels in arrays.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    ds = ray.data.read_images(str(folder), include_paths=True, num_cpus=0)
    ds = ds.map_batches(
        StageMapper,
        fn_constructor_kwargs={"weights": str(tiny_weights["scan-denoiser"]), "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=3,
        batch_format="numpy",
    )
    rows = {Path(r["path"]).stem: r for r in ds.take_all()}
    mapper = StageMapper(weights=tiny_weights["scan-denoiser"], device="cpu")
    for name, pixels in arrays.items():
        assert rows[name]["error"] == ""
        got = np.asarray(rows[name]["image"])
        want = mapper.process([pixels])[0]
        assert got.shape == want.shape == pixels.shape[:2] + want.shape[2:], name
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name
    np.testing.assert_array_equal(rows["c_page"]["image"], arrays["c_page"])
