"""The file runner: per-file errors, resume, atomic outputs, layout, reports, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factory import gradient, pdf_pages, truncated
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError, ExitCode
from aepipe.io import write_image
from aepipe.runner import RunOptions, is_complete_output, run_files
from aepipe.stages.impulse_denoiser import ImpulseDenoiser


def invert(batch: ImageBatch) -> ImageBatch:
    return batch.replace(1.0 - batch.images)


class GrayOnly(ImpulseDenoiser):
    """A stage taking only gray images (as a contributor's may)."""

    input_channels = (1,)


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        write_image(gradient(20, 30, seed=i), root / f"p{i}.png")
    write_image(gradient(20, 30, 3), root / "sub" / "c.jpg")
    truncated(root / "broken.png", Image.fromarray(gradient(64, 64)), "PNG")
    (root / "notes.txt").write_text("not an image")
    return root


def test_resume_skips_done_files_and_overwrite_redoes_them(docs, tmp_path):
    out = tmp_path / "out"
    run_files([docs], invert, RunOptions(out_dir=out))
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return invert(batch)

    again = run_files([docs], counting, RunOptions(out_dir=out))
    assert again.count("skipped") == 3 and not calls
    assert again.exit_code == ExitCode.SOME_FAILED  # broken.png still fails
    redo = run_files([docs], counting, RunOptions(out_dir=out, overwrite=True))
    assert redo.count("ok") == 3 and sum(calls) == 3


def test_default_output_folder_is_a_sibling(docs):
    summary = run_files([docs], invert, RunOptions(out_suffix="clean"))
    assert summary.out_dir == str(docs.parent / "docs_clean")
    assert (docs.parent / "docs_clean" / "p0.png").is_file()
    # Given through "..", the folder is named after the real one, not ".._clean".
    from aepipe.runner import default_out_dir

    assert default_out_dir([docs / "sub" / ".."], "clean") == docs.parent / "docs_clean"
    assert default_out_dir([docs / "sub" / ".." / "p0.png"], "x") == docs.parent / "docs_x"
    # Files of one folder share its default; inputs from several folders must name one.
    assert default_out_dir([docs / "p0.png", docs / "p1.png", docs], "x") == docs.parent / "docs_x"
    other = docs.parent / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match=r"2 folders .* give --out DIR"):
        default_out_dir([docs, other], "clean")
    with pytest.raises(ConfigError, match="beside /; give --out DIR"):
        default_out_dir([Path("/")], "clean")


def test_same_size_files_are_batched_with_identical_results(docs, tmp_path):
    sizes = []

    def spy(batch):
        sizes.append(len(batch))
        return invert(batch)

    run_files([docs], spy, RunOptions(out_dir=tmp_path / "a", batch_size=8))
    assert max(sizes) == 3
    # A pixel budget caps the batch for large pages (each 20 x 30 here): two fit, not three.
    sizes.clear()
    run_files([docs], spy, RunOptions(out_dir=tmp_path / "c", batch_size=8, batch_pixels=1300))
    assert sizes == [2, 1]
    run_files([docs], invert, RunOptions(out_dir=tmp_path / "b", batch_size=1))
    for name in ("p0.png", "p1.png", "p2.png"):
        a = np.asarray(Image.open(tmp_path / "a" / name))
        b = np.asarray(Image.open(tmp_path / "b" / name))
        np.testing.assert_array_equal(a, b)


def test_pdf_in_pdf_out_same_pages(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pdf_pages(src / "doc.pdf", [(100.0, 150.0), (150.0, 100.0), (100.0, 150.0)])
    summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "o", dpi=72))
    assert summary.count("ok") == 1 and summary.pages == 3
    from aepipe.io import read_pages

    pages = list(read_pages(tmp_path / "o" / "doc.pdf", dpi=72))
    assert [p.meta["page_size_pt"] for p in pages] == [
        (100.0, 150.0),
        (150.0, 100.0),
        (100.0, 150.0),
    ]


# ---- the overlapped pipeline: reader and writer threads around the stage ------------------


@pytest.fixture
def mixed(tmp_path):
    """Pages of two sizes, a broken file in the middle and a three-page TIFF."""
    src = tmp_path / "mixed"
    src.mkdir()
    for i in range(5):
        write_image(gradient(20 + 4 * (i % 2), 30, seed=i), src / f"p{i}.png")
    truncated(src / "p2b.png", Image.fromarray(gradient(64, 64)), "PNG")
    frames = [Image.fromarray(gradient(16, 16, seed=s)) for s in range(3)]
    frames[0].save(src / "z.tif", save_all=True, append_images=frames[1:])
    return src


def test_overlapped_run_keeps_input_order_in_records_and_progress(mixed, tmp_path):
    seen = []
    summary = run_files(
        [mixed],
        invert,
        RunOptions(out_dir=tmp_path / "o", batch_size=2),
        on_record=lambda record, done, total: seen.append((Path(record.path).name, done)),
    )
    # As a sequential run records them: each file when it is done, so the unreadable p2b.png
    # (failed as soon as it is read) comes before p2.png, which still waits for its batch.
    names = ["p0.png", "p1.png", "p2b.png", "p2.png", "p3.png", "p4.png", "z.tif"]
    assert [Path(r.path).name for r in summary.records] == names
    assert seen == [(name, k + 1) for k, name in enumerate(names)]
    assert summary.count("ok") == 6 and summary.count("failed") == 1
    assert summary.pages == 8


def test_overlapped_outputs_are_byte_identical_to_the_sequential_path(mixed, tmp_path):
    from aepipe import core
    from aepipe.io import png_with_dpi, read_pages

    run_files([mixed], invert, RunOptions(out_dir=tmp_path / "o", batch_size=3, fmt="png"))
    for src in sorted(mixed.glob("p?.png")):
        pages = core.run_pages(invert, list(read_pages(src)), src.stem)
        expected = png_with_dpi(pages[0].png, pages[0].meta.get("dpi"))
        assert (tmp_path / "o" / src.name).read_bytes() == expected, src.name
    tiff = core.run_pages(invert, list(read_pages(mixed / "z.tif")), "z")
    for k, page in enumerate(tiff):
        out = tmp_path / "o" / f"z-p{k + 1:03d}.png"
        assert out.read_bytes() == png_with_dpi(page.png, page.meta.get("dpi"))


def test_an_encode_or_write_failure_in_the_writer_fails_only_its_file(mixed, tmp_path, monkeypatch):
    from aepipe import runner

    real = runner.encode_result

    def encode(out, index, name, source=None):
        if name == "p1":
            raise ValueError("encoder exploded")
        return real(out, index, name, source)

    monkeypatch.setattr(runner, "encode_result", encode)
    out = tmp_path / "o"
    (out / "p3.png").mkdir(parents=True)  # a folder where p3's output must go: write fails
    summary = run_files([mixed], invert, RunOptions(out_dir=out, overwrite=True))
    records = {Path(r.path).name: r for r in summary.records}
    assert "encoder exploded" in records["p1.png"].reason and "p1.png" in records["p1.png"].reason
    assert records["p3.png"].status == "failed" and "p3.png" in records["p3.png"].reason
    assert records["p2b.png"].status == "failed"
    ok = [name for name, r in records.items() if r.status == "ok"]
    assert ok == ["p0.png", "p2.png", "p4.png", "z.tif"]
    for name in ("p0.png", "p2.png", "p4.png"):
        assert is_complete_output(out / name)


def test_a_bug_in_the_reader_thread_reaches_the_caller_and_no_thread_is_left(
    mixed, tmp_path, monkeypatch
):
    import threading

    from aepipe import runner

    before = threading.active_count()

    def broken(self, job):
        raise RuntimeError("reader bug")

    monkeypatch.setattr(runner._Run, "decide", broken)
    with pytest.raises(RuntimeError, match="reader bug"):
        run_files([mixed], invert, RunOptions(out_dir=tmp_path / "o"))
    assert threading.active_count() == before
    monkeypatch.undo()
    assert run_files([mixed], invert, RunOptions(out_dir=tmp_path / "o2")).count("ok") == 6
    assert threading.active_count() == before


def test_jpeg_quality_with_image_only_output_is_refused(tmp_path: Path) -> None:
    from aepipe.errors import ConfigError
    from aepipe.runner import plan

    write_image(gradient(20, 30), tmp_path / "a.png")
    for fmt in ("png", "tiff"):
        options = RunOptions(out_dir=tmp_path / "out", fmt=fmt, jpeg_quality=80)
        with pytest.raises(ConfigError, match=f"--format {fmt} writes none"):
            plan([tmp_path / "a.png"], options)
    # PDF output (or "same", which keeps PDFs) takes it.
    for fmt in ("pdf", "same"):
        plan([tmp_path / "a.png"], RunOptions(out_dir=tmp_path / "out", fmt=fmt, jpeg_quality=80))


def test_report_and_output_paths_that_cannot_be_written_fail_before_any_work(docs, tmp_path):
    from aepipe.errors import ConfigError

    calls = []

    def spy(batch):
        calls.append(len(batch))
        return invert(batch)

    a_file = tmp_path / "r1.json"
    a_file.write_text("{}")
    (tmp_path / "repdir").mkdir()
    bad = [
        (RunOptions(out_dir=tmp_path / "o", report=tmp_path / "repdir"), "is a folder"),
        (RunOptions(out_dir=tmp_path / "o", report=a_file / "rep.json"), f"{a_file} is a file"),
        (RunOptions(out_dir=a_file / "sub"), f"{a_file} is a file"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigError, match=message):
            run_files([docs], spy, options)
    assert not calls and not (tmp_path / "o").exists()


def test_folders_we_may_not_write_into_fail_before_any_work(docs, tmp_path, read_only_dir):
    from aepipe.errors import ConfigError

    calls = []

    def spy(batch):
        calls.append(len(batch))
        return invert(batch)

    for options in (
        RunOptions(out_dir=read_only_dir),
        RunOptions(out_dir=read_only_dir / "new" / "sub"),
        RunOptions(out_dir=tmp_path / "o", report=read_only_dir / "report.json"),
    ):
        with pytest.raises(ConfigError, match=f"cannot write into {read_only_dir}"):
            run_files([docs], spy, options)
    assert not calls and not (tmp_path / "o").exists()


def test_a_page_output_never_replaces_another_inputs_output(tmp_path):
    """m.tif's first page would be m-p001.png, the name of another input's output: that file
    fails with a reason, the other output stays, on the first run and on a resumed one."""
    src = tmp_path / "in"
    src.mkdir()
    pages = [Image.fromarray(gradient(20, 30, seed=i)) for i in range(3)]
    pages[0].save(src / "m.tif", save_all=True, append_images=pages[1:])
    write_image(gradient(20, 30, seed=9), src / "m-p001.png")
    out = tmp_path / "out"
    for _ in range(2):
        summary = run_files([src], invert, RunOptions(out_dir=out, fmt="png"))
        by_name = {Path(r.path).name: r for r in summary.records}
        assert by_name["m-p001.png"].status in ("ok", "skipped")
        assert by_name["m.tif"].status == "failed"
        assert "m-p001.png is already the output of" in by_name["m.tif"].reason
        kept = np.asarray(Image.open(out / "m-p001.png"))
        np.testing.assert_array_equal(kept, 255 - gradient(20, 30, seed=9))


def test_resume_after_an_input_with_the_same_stem_is_added(tmp_path):
    """a.jpg was cleaned into a.png; then a.png is added. The re-run must not take the old
    a.png (a.jpg's) as a.png's output: a.png is cleaned into it, a.jpg into a_jpg.png."""
    import os

    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(20, 30, seed=1), src / "a.jpg")
    out = tmp_path / "out"
    run_files([src], invert, RunOptions(out_dir=out))
    earlier = (out / "a.png").stat().st_mtime - 60  # the first run was a minute ago
    os.utime(out / "a.png", (earlier, earlier))
    write_image(gradient(20, 30, seed=2), src / "a.png")
    summary = run_files([src], invert, RunOptions(out_dir=out))
    assert sorted(r.status for r in summary.records) == ["ok", "ok"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "a.png")), 255 - gradient(20, 30, seed=2)
    )
    assert (out / "a_jpg.png").is_file()
    again = run_files([src], invert, RunOptions(out_dir=out))  # nothing new: both skipped
    assert [r.status for r in again.records] == ["skipped", "skipped"]


def test_one_bit_inputs_stay_one_bit(tmp_path):
    """A 1-bit PNG or G4 TIFF comes out 1-bit (cut at mid-gray) even when the stage returns
    gray; a gray input with the same stage stays gray."""

    def soften(batch):
        return batch.replace(batch.images * 0.6 + 0.2)

    src = tmp_path / "in"
    src.mkdir()
    bits = gradient(30, 40) > 100
    Image.fromarray(bits).convert("1").save(src / "bw.png")
    Image.fromarray(bits).convert("1").save(src / "bw.tif", compression="group4")
    write_image(gradient(30, 40), src / "gray.png")
    out = tmp_path / "out"
    run_files([src], soften, RunOptions(out_dir=out))
    for name in ("bw.png", "bw.tif"):
        with Image.open(out / name) as im:
            assert im.mode == "1", name
            np.testing.assert_array_equal(np.asarray(im), bits)  # 0.2 / 0.8 cut at 0.5
    with Image.open(out / "gray.png") as im:
        assert im.mode == "L"


def test_a_pdf_with_nothing_to_process_says_so(tmp_path):
    """A PDF whose pages have no scan (born-digital, or photos under half a page) is written as
    it was; its record says why instead of passing for processed."""
    import pikepdf
    from pdf_factory import add_page

    pdf = pikepdf.new()
    add_page(pdf, (200, 200), text="Hello")
    pdf.save(tmp_path / "text.pdf")
    summary = run_files([tmp_path / "text.pdf"], invert, RunOptions(out_dir=tmp_path / "o"))
    record = summary.records[0]
    assert record.status == "ok" and record.passed == 1
    assert "no page has a scan to process" in record.reason


def test_editing_a_signed_pdf_says_the_signature_no_longer_holds(tmp_path):
    import pikepdf
    from pdf_factory import scan_pdf

    src = scan_pdf(tmp_path / "s.pdf", 120, 90, bilevel=False)
    with pikepdf.open(src, allow_overwriting_input=True) as pdf:
        field = pdf.Root.AcroForm.Fields[0]
        field.FT = pikepdf.Name.Sig
        field.V = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Sig))
        pdf.Root.AcroForm.SigFlags = 3
        pdf.save(src)
    summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "o"))
    record = summary.records[0]
    assert record.status == "ok" and record.edited == 1
    assert "digitally signed" in record.reason


def test_several_input_folders_keep_their_own_subfolders_and_a_file_is_done_once(tmp_path):
    """Two boxes of 0001.png go to out/box1/ and out/box2/ (flattened, one got a made-up name
    and a later run of one box took the other's output for its own); a file given twice is
    cleaned once; two folders of one name are refused up front."""
    boxes = [tmp_path / "box1", tmp_path / "box2"]
    for seed, box in enumerate(boxes):
        box.mkdir()
        write_image(gradient(20, 30, seed=seed), box / "0001.png")
    out = tmp_path / "out"
    summary = run_files([*boxes, boxes[0] / "0001.png"], invert, RunOptions(out_dir=out))
    assert [r.outputs for r in summary.records] == [
        [str(out / "box1" / "0001.png")],
        [str(out / "box2" / "0001.png")],
    ]
    for box in boxes:
        cleaned = np.asarray(Image.open(out / box.name / "0001.png"))
        assert np.array_equal(cleaned, 255 - np.asarray(Image.open(box / "0001.png")))
    # One folder alone keeps the flat layout.
    alone = run_files([boxes[1]], invert, RunOptions(out_dir=tmp_path / "one"))
    assert alone.records[0].outputs == [str(tmp_path / "one" / "0001.png")]
    (tmp_path / "a" / "box1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="have the same name, 'box1'"):
        run_files([boxes[0], tmp_path / "a" / "box1"], invert, RunOptions(out_dir=out))


def test_pages_the_scan_stage_keeps_as_they_were_are_counted_and_photos_named(tmp_path):
    """An already clean page and a photograph come back as they were: the record counts them
    (unchanged), and a photograph, a guess the user should see, gets a note."""
    import torch

    from aepipe.stages.scan_denoiser import ScanDenoiser

    src = tmp_path / "in"
    src.mkdir()
    clean = np.full((120, 100), 255, np.uint8)
    clean[40:50, 10:90] = 0  # a rule of ink on white paper
    write_image(clean, src / "clean.png")
    coarse = 0.15 + 0.6 * torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    photo = torch.nn.functional.interpolate(coarse, size=(120, 100), mode="bicubic").clamp(0, 1)
    photo_u8 = (photo[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    write_image(photo_u8, src / "photo.png")
    rng = np.random.default_rng(0)
    scan = np.where(clean > 0, rng.integers(200, 235, clean.shape), 20).astype(np.uint8)  # dingy
    write_image(scan, src / "scan.png")
    summary = run_files([src], ScanDenoiser.tiny(), RunOptions(out_dir=tmp_path / "out"))
    records = {Path(r.path).name: r for r in summary.records}
    assert (records["clean.png"].unchanged, records["clean.png"].reason) == (1, None)
    assert records["photo.png"].unchanged == 1
    assert "taken for a photograph (--clean-all cleans it)" in records["photo.png"].reason
    assert (records["scan.png"].unchanged, records["scan.png"].reason) == (0, None)


def test_a_stage_taking_only_gray_gets_colour_files_as_gray_from_every_front_end(tmp_path):
    """The service converted channels for such a stage, the runner (CLI, pipeline files)
    refused every colour file; now the conversion is one function both use, and the stage's
    own call still refuses (its contract)."""
    import pickle

    from aepipe.errors import ShapeError
    from aepipe.stage import fit_channels

    tiny = ImpulseDenoiser.tiny()
    stage = GrayOnly(tiny.model, tiny.config)
    src = tmp_path / "in"
    src.mkdir()
    rgb = np.stack([gradient(40, 60, seed=s) for s in range(3)], axis=-1)
    write_image(rgb, src / "c.png")
    summary = run_files([src], stage, RunOptions(out_dir=tmp_path / "out"))
    assert summary.count("ok") == 1, summary.records
    gray = ImageBatch.from_numpy(rgb[None]).gray()
    expected = stage(gray).to_numpy(np.uint8)[0, ..., 0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "c.png")), expected)
    with pytest.raises(ShapeError, match="channel"):
        stage(ImageBatch.from_numpy(rgb[None]))
    assert fit_channels(tiny) is tiny  # takes both: nothing to fit
    wrapped = pickle.loads(pickle.dumps(fit_channels(stage)))
    assert wrapped.config == stage.config


def test_a_pipeline_of_stages_gets_the_same_channel_fitting_and_pdf_colour_as_one_stage(
    tmp_path,
):
    """aepipe run hands the runner a Pipeline, not a stage: a gray-only stage inside it still
    gets gray pages, and a binarizing last stage still stores 1-bit PDF pages."""
    import pikepdf
    from pdf_factory import add_page, image_stream

    from aepipe.pipeline import Pipeline
    from aepipe.stages.scan_denoiser import ScanDenoiser

    tiny = ImpulseDenoiser.tiny()
    src = tmp_path / "in"
    src.mkdir()
    rgb = np.full((100, 160, 3), 235, np.uint8)
    rgb[20:30, 10:150] = (20, 20, 20)
    rgb[50:60, 10:150] = (200, 30, 30)  # red ink: kept in colour by a gray stage's "auto"
    write_image(rgb, src / "c.png")
    pdf = pikepdf.new()
    add_page(pdf, (160, 100), [(image_stream(pdf, rgb), "160 0 0 100 0 0")])
    pdf.save(src / "c.pdf")
    pipe = Pipeline([GrayOnly(tiny.model, tiny.config), ScanDenoiser.tiny(binarize=True)])
    summary = run_files([src], pipe, RunOptions(out_dir=tmp_path / "out"))
    assert summary.count("ok") == 2, summary.records
    record = next(r for r in summary.records if r.path.endswith(".pdf"))
    assert record.page_outcomes[0]["stored_as"] == "bilevel"


def test_a_page_kept_by_the_scan_stage_but_changed_later_in_a_pipeline_is_not_unchanged(
    tmp_path,
):
    from aepipe.pipeline import Pipeline
    from aepipe.stages.scan_denoiser import ScanDenoiser

    src = tmp_path / "in"
    src.mkdir()
    clean = np.full((120, 100), 255, np.uint8)
    clean[40:50, 10:90] = 0
    write_image(clean, src / "clean.png")
    summary = run_files(
        [src], Pipeline([ScanDenoiser.tiny(), invert]), RunOptions(out_dir=tmp_path / "out")
    )
    assert summary.records[0].unchanged is None and summary.records[0].reason is None


def test_a_file_named_and_found_in_a_folder_goes_where_its_folder_puts_it_in_any_order(tmp_path):
    boxes = [tmp_path / "b1", tmp_path / "b2"]
    for box in boxes:
        box.mkdir()
        write_image(gradient(20, 30), box / "a.png")
    named = boxes[0] / "a.png"
    for order in ([named, *boxes], [*boxes, named]):
        out = tmp_path / f"out{len(order)}{order[0].name}"
        summary = run_files(order, invert, RunOptions(out_dir=out))
        assert sorted(r.outputs[0] for r in summary.records) == [
            str(out / "b1" / "a.png"),
            str(out / "b2" / "a.png"),
        ]
