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
        f"{arch / 'page001.png'} exists and was not made from {arch / 'box2' / 'page001.png'} "
        "by aepipe; use --overwrite to replace it"
    )
    assert (arch / "page001.png").read_bytes() == raw
    assert summary.exit_code == ExitCode.SOME_FAILED
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
    assert settings_key(invert, opts) is None  # unknown: not compared


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
    assert got["b.png"].status == "ok" and "changed after it was written" in got["b.png"].reason
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
    assert first["b.png"].status == "failed" and "not made from" in first["b.png"].reason
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX + "ocr")]
    again = by_name(ocr_files([src], stage, RunOptions(out_dir=out), jobs=1))
    assert again["a.png"].status == "skipped"
    other = by_name(ocr_files([src / "a.png"], ImpulseDenoiser.tiny(1), RunOptions(out_dir=out)))
    assert other["a.png"].status == "ok" and "other settings" in other["a.png"].reason
