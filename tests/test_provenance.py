"""The output record behind resume (.aepipe-outputs.jsonl), and the runner's stops and checks.

Make-like resume: an output is up to date only when the record says it was made from this
input, as it is, with these settings; aepipe's stale outputs are redone; files aepipe did not
make are never taken as done nor replaced without --overwrite.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from factory import gradient, pdf_pages
from PIL import Image

from aepipe import runner
from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError, ExitCode
from aepipe.io import TEMP_PREFIX, write_image
from aepipe.provenance import RECORD_NAME, OutputRecord, SourceStamp, settings_key
from aepipe.runner import ReportError, RunOptions, is_complete_output, run_files
from aepipe.stages.impulse_denoiser import ImpulseDenoiser


def invert(batch: ImageBatch) -> ImageBatch:
    return batch.replace(1.0 - batch.images)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def by_name(summary: runner.Summary) -> dict[str, runner.FileRecord]:
    return {Path(r.path).name: r for r in summary.records}


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORD_NAME).read_text().splitlines()]


def test_an_input_added_later_is_not_given_the_old_output_of_its_namesake(tmp_path):
    """(a) a.jpg was cleaned into a.png; a.png is added (cp -p: an old mtime). a.png is
    cleaned into a.png (the old one, a.jpg's, replaced) and a.jpg goes to a_jpg.png."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_image(gradient(20, 30, seed=1), src / "a.jpg")
    run_files([src], invert, RunOptions(out_dir=out))
    write_image(gradient(20, 30, seed=2), src / "a.png")
    os.utime(src / "a.png", ns=(1_000_000_000, 1_000_000_000))  # older than the output
    summary = run_files([src], invert, RunOptions(out_dir=out))
    got = by_name(summary)
    assert got["a.png"].status == "ok" and "made from" in got["a.png"].reason
    np.testing.assert_array_equal(pixels(out / "a.png"), 255 - gradient(20, 30, seed=2))
    assert got["a.jpg"].status == "ok" and (out / "a_jpg.png").is_file()
    again = run_files([src], invert, RunOptions(out_dir=out))
    assert [r.status for r in again.records] == ["skipped", "skipped"]
    assert again.records[0].reason.startswith("up to date")


def test_a_second_command_into_the_same_folder_redoes_the_name_it_shares(tmp_path):
    """(b) `clean-scans in/a.jpg --out o` then `clean-scans in/a.png --out o`."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(20, 30, seed=1), src / "a.jpg")
    write_image(gradient(20, 30, seed=2), src / "a.png")
    run_files([src / "a.jpg"], invert, RunOptions(out_dir=out))
    second = run_files([src / "a.png"], invert, RunOptions(out_dir=out))
    [record] = second.records
    assert record.status == "ok", record.reason
    assert "a.png replaced: it was made from" in record.reason and "a.jpg" in record.reason
    np.testing.assert_array_equal(pixels(out / "a.png"), 255 - gradient(20, 30, seed=2))
    last = records(out)[-1]
    assert last["output"] == "a.png" and last["source"] == os.path.realpath(src / "a.png")


def test_page_outputs_of_a_pdf_are_not_taken_by_a_file_named_like_its_page(tmp_path):
    """(c) scan.pdf --format png, then an input scan-p001.png is added: it is not skipped (the
    file there is scan.pdf's page), and the clash is reported truthfully."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    pdf_pages(src / "scan.pdf", [(100, 120), (100, 120)])
    opts = RunOptions(out_dir=out, fmt="png", dpi=72)
    first = run_files([src], invert, opts)
    assert first.count("ok") == 1 and (out / "scan-p002.png").is_file()
    page = (out / "scan-p001.png").read_bytes()
    write_image(gradient(20, 30, seed=5), src / "scan-p001.png")
    got = by_name(run_files([src], invert, opts))
    assert got["scan.pdf"].status == "skipped"  # up to date: its pages are its own
    assert got["scan-p001.png"].status == "failed"
    assert f"is already the output of {src / 'scan.pdf'}" in got["scan-p001.png"].reason
    assert (out / "scan-p001.png").read_bytes() == page
    # Once scan.pdf changes, its pages are redone and the other input keeps the name it has.
    os.utime(src / "scan.pdf", ns=(7, 7))
    got = by_name(run_files([src], invert, opts))
    assert got["scan-p001.png"].status == "ok" and "made from" in got["scan-p001.png"].reason
    assert got["scan.pdf"].status == "failed"
    assert f"is already the output of {src / 'scan-p001.png'}" in got["scan.pdf"].reason


def test_a_file_aepipe_did_not_make_is_neither_skipped_nor_replaced(tmp_path):
    """(d) `clean-scans arch/box2 --out arch`: the raw scan arch/page001.png is not box2's
    output; it is left alone (the input fails, saying so) unless --overwrite."""
    arch = tmp_path / "arch"
    (arch / "box2").mkdir(parents=True)
    write_image(gradient(20, 30, seed=1), arch / "page001.png")  # a raw scan
    write_image(gradient(20, 30, seed=2), arch / "box2" / "page001.png")
    write_image(gradient(20, 30, seed=3), arch / "box2" / "page002.png")
    raw = (arch / "page001.png").read_bytes()
    summary = run_files([arch / "box2"], invert, RunOptions(out_dir=arch))
    got = by_name(summary)
    assert got["page002.png"].status == "ok"
    assert got["page001.png"].status == "failed"
    assert got["page001.png"].reason == (
        f"{arch / 'page001.png'} exists and aepipe has no record of making it; "
        "--overwrite replaces it"
    )
    assert (arch / "page001.png").read_bytes() == raw
    assert summary.exit_code == ExitCode.SOME_FAILED
    assert summary.notes == [
        f"1 output exists that the output record ({RECORD_NAME}) does not list: made by another "
        "program, by aepipe before 0.2.0, or the record was removed; run once with --overwrite "
        "to replace them"
    ]
    forced = run_files([arch / "box2"], invert, RunOptions(out_dir=arch, overwrite=True))
    assert forced.count("ok") == 2
    np.testing.assert_array_equal(pixels(arch / "page001.png"), 255 - gradient(20, 30, seed=2))
    assert run_files([arch / "box2"], invert, RunOptions(out_dir=arch)).count("skipped") == 2


def test_other_settings_or_a_changed_input_redo_the_output(tmp_path):
    """(2) An interrupted --overwrite run with new settings resumes: outputs made with the old
    settings are redone, those with the new ones skipped."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    for i in range(4):
        write_image(gradient(20, 30, seed=i), src / f"p{i}.png")
    old, new = ImpulseDenoiser.tiny(0), ImpulseDenoiser.tiny(0, passes=2)
    assert run_files([src], old, RunOptions(out_dir=out)).count("ok") == 4
    # The new settings' run was killed after two files.
    run_files([src / "p0.png", src / "p1.png"], new, RunOptions(out_dir=out, overwrite=True))
    resumed = run_files([src], new, RunOptions(out_dir=out))
    got = by_name(resumed)
    assert [got[f"p{i}.png"].status for i in range(4)] == ["skipped", "skipped", "ok", "ok"]
    assert "made with other settings" in got["p2.png"].reason
    other_weights = run_files([src], ImpulseDenoiser.tiny(1, passes=2), RunOptions(out_dir=out))
    assert other_weights.count("ok") == 4
    write_image(gradient(20, 30, seed=9), src / "p3.png")
    os.utime(src / "p3.png", ns=(5, 5))
    changed = by_name(run_files([src], ImpulseDenoiser.tiny(1, passes=2), RunOptions(out_dir=out)))
    assert changed["p3.png"].status == "ok" and "older version" in changed["p3.png"].reason
    assert changed["p0.png"].status == "skipped"


def test_settings_key_covers_stage_weights_config_and_options():
    opts = runner.output_settings(RunOptions())
    base = settings_key(ImpulseDenoiser.tiny(0), opts)
    assert base == settings_key(ImpulseDenoiser.tiny(0), opts)
    assert base != settings_key(ImpulseDenoiser.tiny(1), opts)
    assert base != settings_key(ImpulseDenoiser.tiny(0, tile=512), opts)
    assert base != settings_key(ImpulseDenoiser.tiny(0), {**opts, "dpi": 150.0})
    # An unknown callable is "unknown" for its own part; the output options still count.
    assert settings_key(invert, opts) == settings_key(lambda b: b, opts)
    assert settings_key(invert, opts) != settings_key(invert, {**opts, "dpi": 150.0})


def test_settings_key_tells_wrappers_of_stages_by_their_options():
    """colorize --model auto (AutoColorizer) and faces (FaceEditor) are not plain Stages."""
    import torch

    from aepipe.core import FaceEditor
    from aepipe.pipeline import Pipeline
    from aepipe.stages.colorizer import AutoColorizer

    opts = runner.output_settings(RunOptions())
    auto = settings_key(AutoColorizer(device="cpu"), opts)
    assert auto == settings_key(AutoColorizer(device="cpu"), opts)
    assert auto != settings_key(AutoColorizer(device="cpu", saturation=3), opts)
    assert auto != settings_key(Pipeline([AutoColorizer(device="cpu", saturation=3)]), opts)
    assert auto != settings_key(AutoColorizer(device="cpu"), {**opts, "dpi": 150.0})
    stage = ImpulseDenoiser.tiny(0)
    concepts = [(torch.ones(4), 0.5)]
    face = settings_key(FaceEditor(stage, concepts), opts)  # type: ignore[arg-type]
    assert face == settings_key(FaceEditor(stage, concepts, report=print), opts)  # type: ignore[arg-type]
    assert face != settings_key(FaceEditor(stage, [(torch.ones(4), 0.7)]), opts)  # type: ignore[arg-type]
    assert face != settings_key(FaceEditor(stage, concepts, face="largest"), opts)  # type: ignore[arg-type]
    other = ImpulseDenoiser.tiny(1)
    assert face != settings_key(FaceEditor(other, concepts), opts)  # type: ignore[arg-type]

    class Offers:
        def __init__(self, level: int) -> None:
            self.level = level
            self._cache: dict[str, object] = {}

        def settings_key_parts(self) -> dict[str, int]:
            return {"level": self.level}

        def __call__(self, batch: ImageBatch) -> ImageBatch:
            return batch

    assert settings_key(Offers(1), opts) != settings_key(Offers(2), opts)


def test_changed_output_options_redo_outputs_of_any_callable(tmp_path):
    """run_files(pdfs, lambda) at dpi 50, then dpi 150: redone, not "up to date"."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    pdf_pages(src / "doc.pdf", [(72, 72)])
    first = run_files([src], lambda b: b, RunOptions(out_dir=out, fmt="png", dpi=50))
    assert first.count("ok") == 1
    again = run_files([src], lambda b: b, RunOptions(out_dir=out, fmt="png", dpi=150))
    assert again.count("ok") == 1 and "other settings" in again.records[0].reason
    with Image.open(out / "doc.png") as im:
        assert im.size == (150, 150)


def test_options_that_cannot_change_an_input_do_not_redo_it(tmp_path):
    """A regression hunt: `--dpi 300` (PDF only) redid a whole folder of PNG pages, with a
    line each, for byte-identical files; so did `--format png` on PNG inputs."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(20, 30), src / "a.png")
    pdf_pages(src / "doc.pdf", [(72, 72)])
    run_files([src], invert, RunOptions(out_dir=out, fmt="png", dpi=50))
    again = by_name(run_files([src], invert, RunOptions(out_dir=out, fmt="png", dpi=150)))
    assert again["a.png"].status == "skipped"  # a PNG page does not depend on the DPI
    assert again["doc.pdf"].status == "ok"  # a PDF's rendered page does
    same = by_name(run_files([src], invert, RunOptions(out_dir=out, fmt="same", dpi=150)))
    assert same["a.png"].status == "skipped"  # written as PNG either way
    assert same["doc.pdf"].status == "ok"  # now a PDF, not a PNG page


def test_a_run_killed_after_its_claim_is_redone_and_truncated_outputs_too(tmp_path):
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(20, 30), src / "a.png")
    write_image(gradient(20, 30, seed=1), src / "b.png")
    run_files([src], invert, RunOptions(out_dir=out))
    # As if killed between the claim and the rename: the last line for a.png is a claim.
    OutputRecord(out).claim([out / "a.png"], SourceStamp.of(src / "a.png"), None)
    data = (out / "b.png").read_bytes()
    (out / "b.png").write_bytes(data[: len(data) // 2])
    got = by_name(run_files([src], invert, RunOptions(out_dir=out)))
    assert got["a.png"].status == "ok" and "stopped while writing" in got["a.png"].reason
    assert got["b.png"].status == "ok" and "it was incomplete" in got["b.png"].reason
    # Killed after the rename but before the done line: the new file is kept, not redone.
    OutputRecord(out).claim([out / "a.png"], SourceStamp.of(src / "a.png"), None)
    renamed = out / "a.png.new"
    renamed.write_bytes((out / "a.png").read_bytes())
    renamed.replace(out / "a.png")
    again = by_name(run_files([src], invert, RunOptions(out_dir=out)))
    assert again["a.png"].status == "skipped" and again["b.png"].status == "skipped"
    assert records(out)[-1]["size"] == (out / "a.png").stat().st_size


def test_the_record_file_is_not_an_input_and_lines_are_not_torn(tmp_path):
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(), src / "a.png")
    run_files([src], invert, RunOptions(out_dir=out))
    summary = run_files([out], invert, RunOptions(out_dir=tmp_path / "o2", list_ignored=True))
    assert [Path(r.path).name for r in summary.records] == ["a.png"]
    record, stamp = OutputRecord(tmp_path / "many"), SourceStamp.of(src / "a.png")
    targets = [tmp_path / "many" / f"f{i}.png" for i in range(50)]

    def claim(part: list[Path]) -> None:
        for target in part:
            record.claim([target], stamp, "k" * 500)

    threads = [threading.Thread(target=claim, args=(targets[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["output"] for e in records(tmp_path / "many")) == sorted(
        f"f{i}.png" for i in range(50)
    )


def test_a_report_may_not_replace_an_output(tmp_path):
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(), src / "a4_150dpi.png")
    for report in (out / "a4_150dpi.png", out / "later-p001.png", out / RECORD_NAME):
        with pytest.raises(ConfigError, match="would replace an output"):
            run_files([src], invert, RunOptions(out_dir=out, report=report))
    assert not out.exists()
    summary = run_files([src], invert, RunOptions(out_dir=out, report=out / "report.json"))
    assert summary.count("ok") == 1 and (out / "report.json").is_file()


def test_a_report_that_cannot_be_written_does_not_hide_the_run(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(), src / "a.png")

    def full(path, summary):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "write_report", full)
    report = tmp_path / "r.json"
    with pytest.raises(ReportError) as caught:
        run_files([src], invert, RunOptions(out_dir=tmp_path / "o", report=report))
    assert str(caught.value) == f"cannot write the report {report}: No space left on device"
    summary = caught.value.summary
    assert summary.count("ok") == 1 and summary.exit_code == ExitCode.OK
    assert (tmp_path / "o" / "a.png").is_file()


def test_a_full_disk_stops_the_run_and_leaves_no_partial_output(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(20, 30), src / "a.png")
    frames = [Image.fromarray(gradient(20, 30, seed=i)) for i in range(3)]
    frames[0].save(src / "b.tif", save_all=True, append_images=frames[1:])
    for name in ("c.png", "d.png", "e.png"):
        write_image(gradient(20, 30, seed=7), src / name)
    real = runner.write_document

    def fills_up(pages, targets, source=None):
        if Path(source).name == "b.tif":
            real(pages[:1], targets[:1])  # the first page file fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(pages, targets, source=source)

    monkeypatch.setattr(runner, "write_document", fills_up)
    summary = run_files([src], invert, RunOptions(out_dir=out, fmt="png", batch_size=1))
    got = by_name(summary)
    assert got["a.png"].status == "ok"
    assert got["b.tif"].status == "failed" and got["b.tif"].reason.startswith("disk full: ")
    pending = [n for n, r in got.items() if r.status == "pending"]
    assert pending == ["c.png", "d.png", "e.png"]
    assert {r.reason for r in summary.records if r.status == "pending"} == {
        "not started: the output disk is full"
    }
    assert summary.disk_full and summary.exit_code == ExitCode.SOME_FAILED
    assert "the output disk is full: 3 not started" in summary.line()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png"]


def tiff_bytes(frames: int, **save: object) -> bytes:
    import io

    pages = [Image.fromarray(gradient(600, 400, seed=i)) for i in range(frames)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:], **save)
    return buf.getvalue()


@pytest.mark.parametrize(
    "save", [{}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}]
)
def test_a_truncated_tiff_is_not_complete(tmp_path, save):
    data = tiff_bytes(3, **save)
    path = tmp_path / "t.tif"
    path.write_bytes(data)
    assert is_complete_output(path)
    for keep in (0.1, 0.5, 0.95):
        path.write_bytes(data[: int(len(data) * keep)])
        assert not is_complete_output(path), keep


def test_on_page_reports_each_page_of_each_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    frames = [Image.fromarray(gradient(20, 30, seed=i)) for i in range(3)]
    frames[0].save(src / "a.tif", save_all=True, append_images=frames[1:])
    write_image(gradient(20, 30), src / "b.png")
    calls = []
    run_files(
        [src],
        invert,
        RunOptions(out_dir=tmp_path / "o", batch_size=2),
        on_page=lambda path, done, total: calls.append((path.name, done, total)),
    )
    assert calls == [("a.tif", 1, 3), ("a.tif", 2, 3), ("a.tif", 3, 3), ("b.png", 1, 1)]


def test_ocr_staging_folders_of_killed_runs_are_removed(tmp_path):
    from aepipe.ocrmypdf import _staging, remove_stale_staging

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "o"
    (out / "sub").mkdir(parents=True)
    stale = out / "sub" / f"{TEMP_PREFIX}ocr.{dead.pid}.abc123.tmp"
    stale.mkdir()
    (stale / "ocr.pdf").write_bytes(b"x" * 1000)
    with _staging(out) as live:
        assert live.parent == out and live.name.startswith(f"{TEMP_PREFIX}ocr.{os.getpid()}.")
        assert remove_stale_staging(out) == 1
        assert live.is_dir() and not stale.exists()
    assert not live.exists()


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs tesseract")
def test_ocr_resume_follows_the_record(tmp_path):
    pytest.importorskip("ocrmypdf")
    from aepipe.ocrmypdf import ocr_files

    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(60, 80), src / "a.png")
    write_image(gradient(60, 80, seed=1), src / "b.png")
    (out).mkdir()
    (out / "b.pdf").write_bytes(b"%PDF-1.4 not ours\n%%EOF\n")
    stage = ImpulseDenoiser.tiny(0)
    first = by_name(ocr_files([src], stage, RunOptions(out_dir=out), jobs=1))
    assert first["a.png"].status == "ok"
    assert first["b.png"].status == "failed" and "no record of making" in first["b.png"].reason
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX + "ocr")]
    again = by_name(ocr_files([src], stage, RunOptions(out_dir=out), jobs=1))
    assert again["a.png"].status == "skipped"
    other = by_name(ocr_files([src / "a.png"], ImpulseDenoiser.tiny(1), RunOptions(out_dir=out)))
    assert other["a.png"].status == "ok" and "other settings" in other["a.png"].reason
    # --overwrite adopts b.pdf (unrecorded) up front: stopped before it, a plain run redoes it.

    def stop(record, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ocr_files([src], stage, RunOptions(out_dir=out, overwrite=True), jobs=1, on_record=stop)
    resumed = ocr_files([src], stage, RunOptions(out_dir=out), jobs=1)
    assert by_name(resumed)["b.png"].status == "ok", resumed.records
    assert "an --overwrite run was stopped before it" in by_name(resumed)["b.png"].reason


def test_a_stopped_overwrite_run_over_unrecorded_outputs_is_continued_without_it(tmp_path):
    """--overwrite adopts the outputs it finds with no record; stopped, a plain run redoes them."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    for i in range(4):
        write_image(gradient(20, 30, seed=i), src / f"p{i}.png")
    run_files([src], invert, RunOptions(out_dir=out))
    (out / RECORD_NAME).unlink()  # outputs of an earlier aepipe, or the record deleted

    def stop(record, done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_files([src], invert, RunOptions(out_dir=out, overwrite=True), on_record=stop)
    assert sum(bool(line.get("adopted")) for line in records(out)) == 4
    again = run_files([src], invert, RunOptions(out_dir=out))
    assert again.exit_code == ExitCode.OK and again.count("ok") >= 2, again.line()
    assert again.count("skipped") + again.count("ok") == 4  # skipped: those the run finished
    redone = [r for r in again.records if r.status == "ok"]
    assert all("an --overwrite run was stopped before it" in r.reason for r in redone)


def test_an_output_changed_by_hand_is_kept_and_a_copy_of_the_folder_is_not_redone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(20, 30, seed=1), src / "a.png")
    write_image(gradient(20, 30, seed=2), src / "b.png")
    run_files([src], invert, RunOptions(out_dir=out))
    assert all(len(line["sha256"]) == 64 for line in records(out) if line["size"] is not None)
    # A byte-identical copy without its dates (cp -r): up to date, and hashed only once.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copyfile)
    os.utime(copy / "a.png", ns=(5_000_000_000, 5_000_000_000))
    got = run_files([src], invert, RunOptions(out_dir=copy))
    assert got.count("skipped") == 2, [r.reason for r in got.records]
    assert records(copy)[-1]["mtime_ns"] in (
        (copy / "a.png").stat().st_mtime_ns,
        (copy / "b.png").stat().st_mtime_ns,
    )
    # The input folder moved with its dates (mv): the same inputs.
    moved = tmp_path / "moved"
    shutil.move(src, moved)
    assert run_files([moved], invert, RunOptions(out_dir=copy)).count("skipped") == 2
    shutil.move(moved, src)
    # A hand edit of an output: the user's file now, never replaced without --overwrite.
    write_image(gradient(20, 30, seed=9), out / "a.png")
    edited = (out / "a.png").read_bytes()
    got = by_name(run_files([src], invert, RunOptions(out_dir=out)))
    assert got["a.png"].status == "failed"
    assert got["a.png"].reason == (
        f"{out / 'a.png'} was changed after aepipe wrote it; --overwrite replaces it"
    )
    assert (out / "a.png").read_bytes() == edited and got["b.png"].status == "skipped"


def test_unrecorded_outputs_do_not_reread_the_record_after_each_append(tmp_path, monkeypatch):
    """Only another process's writes make the record be read again (it was once per file)."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    out.mkdir()
    for i in range(20):
        write_image(gradient(8, 8, seed=i), src / f"p{i:02d}.png")
        if i % 2:
            write_image(gradient(8, 8), out / f"p{i:02d}.png")  # not aepipe's
    reads = []
    real = Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == RECORD_NAME:
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    summary = run_files([src], invert, RunOptions(out_dir=out, batch_size=1))
    assert summary.count("ok") == 10 and summary.count("failed") == 10
    assert len(reads) <= 1, len(reads)
    # Another process's line is still seen.
    record = OutputRecord(out)
    other = OutputRecord(out)
    other.claim([out / "new.png"], SourceStamp.of(src / "p00.png"), None)
    (out / "new.png").write_bytes(b"x")
    assert record.verdict(out / "new.png", SourceStamp.of(src / "p00.png"), None)[0] == "stale"


def test_show_summary_prints_the_unrecorded_note_once(tmp_path, capsys):
    from aepipe.cli.common import show_summary

    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    out.mkdir()
    for i in range(3):
        write_image(gradient(8, 8, seed=i), src / f"p{i}.png")
        write_image(gradient(8, 8), out / f"p{i}.png")
    summary = run_files([src], invert, RunOptions(out_dir=out))
    show_summary(summary, quiet=True)
    text = capsys.readouterr().err
    assert text.count("3 outputs exist that the output record") == 1
    assert text.count("aepipe has no record of making it") == 3


def test_an_unwritable_record_fails_no_output(tmp_path, monkeypatch):
    """A read-only record (bind mount, permissions): outputs written, one note, no raise."""
    from aepipe import provenance

    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    write_image(gradient(20, 30, seed=1), src / "a.png")
    write_image(gradient(20, 30, seed=2), src / "b.png")
    run_files([src], invert, RunOptions(out_dir=out))
    # Verdict's self-repair (a claim, then the rename, then killed) must not raise either.
    OutputRecord(out).claim([out / "a.png"], SourceStamp.of(src / "a.png"), None)
    (out / "a.png.new").write_bytes((out / "a.png").read_bytes())
    (out / "a.png.new").replace(out / "a.png")
    write_image(gradient(20, 30, seed=3), src / "b.png")  # b is redone
    real_open = os.open

    def read_only(path, flags, *args):
        if Path(path).name == RECORD_NAME and flags & os.O_WRONLY:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(provenance.os, "open", read_only)
    summary = run_files([src], invert, RunOptions(out_dir=out))
    got = by_name(summary)
    assert got["a.png"].status == "skipped" and got["b.png"].status == "ok"
    np.testing.assert_array_equal(pixels(out / "b.png"), 255 - gradient(20, 30, seed=3))
    assert summary.notes == [
        "the output record could not be written (Read-only file system): a re-run will redo "
        "or refuse these outputs"
    ]


def tiff_pages(path: Path, n: int) -> None:
    frames = [Image.fromarray(gradient(16, 16, seed=i)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def test_page_files_of_an_older_longer_input_are_removed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    tiff_pages(src / "doc.tif", 3)
    run_files([src], invert, RunOptions(out_dir=out, fmt="png"))
    assert sorted(p.name for p in out.glob("*.png")) == [f"doc-p00{i}.png" for i in (1, 2, 3)]
    tiff_pages(src / "doc.tif", 2)
    got = run_files([src], invert, RunOptions(out_dir=out, fmt="png")).records[0]
    assert got.status == "ok" and "removed doc-p003.png (the input now has 2 pages)" in got.reason
    assert sorted(p.name for p in out.glob("*.png")) == ["doc-p001.png", "doc-p002.png"]
    # One the user changed is left, and said so.
    write_image(gradient(16, 16, seed=7), out / "doc-p002.png")
    os.utime(src / "doc.tif", ns=(1, 1))  # an older version of the input: redone
    write_image(gradient(16, 16, seed=8), src / "doc.tif")
    got = run_files([src], invert, RunOptions(out_dir=out, fmt="png", overwrite=True)).records[0]
    assert "left doc-p002.png: changed since aepipe wrote it" in got.reason
    assert (out / "doc-p002.png").exists() and (out / "doc.png").exists()
    assert not (out / "doc-p001.png").exists()


def test_run_options_take_str_paths(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(8, 8), src / "a.png")
    options = RunOptions(out_dir=str(tmp_path / "o"), report=str(tmp_path / "r.json"))
    assert isinstance(options.out_dir, Path) and isinstance(options.report, Path)
    assert run_files([src], invert, options).count("ok") == 1


def test_alike_inputs_are_not_taken_for_moved_ones_and_whole_edits_are_kept(tmp_path):
    """A review: B/scan.tif with A/scan.tif's name, size and time (both still there) was
    skipped as A's moved copy (the output stayed A's); an output edited into a whole file of
    another kind (a BigTIFF) was taken as incomplete and replaced."""
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "o"
    a.mkdir(), b.mkdir()
    Image.new("L", (16, 12), 30).save(a / "scan.tif")
    Image.new("L", (16, 12), 220).save(b / "scan.tif")
    for f in (a / "scan.tif", b / "scan.tif"):
        os.utime(f, ns=(1_700_000_000_000_000_000,) * 2)
    run_files([a], invert, RunOptions(out_dir=out))
    got = run_files([b], invert, RunOptions(out_dir=out))
    assert got.records[0].status == "ok" and "made from" in got.records[0].reason
    with Image.open(out / "scan.tif") as im:
        assert np.asarray(im).mean() == 255 - 220
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(out / "scan.tif", np.zeros((12, 16), np.uint8), bigtiff=True)
    edited = (out / "scan.tif").read_bytes()
    got = run_files([b], invert, RunOptions(out_dir=out))
    assert got.records[0].status == "failed" and "changed after aepipe wrote it" in (
        got.records[0].reason
    )
    assert (out / "scan.tif").read_bytes() == edited


def test_the_kind_of_a_suffixless_input_is_its_content_and_ocr_keys_follow_kinds(tmp_path):
    """A GIF named `anim2` stayed "up to date" when --frames changed (its kind went by the
    suffix); the OCR path counted PDF-only options (--dpi) for image inputs too."""
    from aepipe.ocrmypdf import _ocr_settings

    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    frames = [Image.new("L", (16, 12), v) for v in (10, 120, 230)]
    frames[0].save(src / "anim2", format="GIF", save_all=True, append_images=frames[1:])
    assert runner.input_kind(src / "anim2") == "gif"
    run_files([src], invert, RunOptions(out_dir=out))
    again = run_files([src], invert, RunOptions(out_dir=out, frames="all"))
    assert again.records[0].status == "ok" and again.records[0].pages == 3
    stage, ocr = ImpulseDenoiser.tiny(0), (["eng"], 1, False)
    key = lambda dpi, kind: _ocr_settings(stage, RunOptions(dpi=dpi), ocr, kind)  # noqa: E731
    assert key(50, "raster") == key(150, "raster") and key(50, "pdf") != key(150, "pdf")


def test_a_one_page_name_does_not_stand_for_a_multi_page_inputs_pages(tmp_path):
    """A review: a user's `doc.png` in the output folder blocked the 3-page `doc.tif` written
    as `doc-p001.png` ... ("no record of making it"), though the input never writes doc.png."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir(), out.mkdir()
    pages = [Image.new("L", (16, 12), v) for v in (10, 120, 230)]
    pages[0].save(src / "doc.tif", save_all=True, append_images=pages[1:])
    Image.new("RGB", (8, 8), (255, 0, 0)).save(out / "doc.png")
    mine = (out / "doc.png").read_bytes()
    first = run_files([src], invert, RunOptions(out_dir=out, fmt="png"))
    assert first.records[0].status == "ok" and first.records[0].pages == 3, first.records
    again = run_files([src], invert, RunOptions(out_dir=out, fmt="png"))
    assert again.records[0].status == "skipped"
    assert (out / "doc.png").read_bytes() == mine


def test_a_moved_input_that_later_loses_a_page_leaves_no_old_page_file(tmp_path):
    """A review: after the input folder was moved (skipped: right), the input lost a page and
    its old third page file stayed, silently, since the record still named the old place."""
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()

    def tiff(values: tuple[int, ...]) -> None:
        pages = [Image.new("L", (16, 12), v) for v in values]
        pages[0].save(src / "doc.tif", save_all=True, append_images=pages[1:])

    tiff((10, 120, 230))
    run_files([src], invert, RunOptions(out_dir=out, fmt="png"))
    moved = tmp_path / "moved"
    shutil.move(src, moved)
    assert run_files([moved], invert, RunOptions(out_dir=out, fmt="png")).count("skipped") == 1
    src = moved
    tiff((10, 120))
    got = run_files([moved], invert, RunOptions(out_dir=out, fmt="png"))
    assert got.records[0].status == "ok" and "removed doc-p003.png" in got.records[0].reason
    assert sorted(p.name for p in out.glob("*.png")) == ["doc-p001.png", "doc-p002.png"]
