"""PDF in, PDF out through the front ends: ``clean-scans`` (console script), TOML and HTTP all
clean a PDF inside the PDF through the core, keeping its text layer, forms and born-digital
pages, its scans' resolution and type, and report what happened to every page."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pikepdf
import pytest
from pdf_factory import (
    HIDDEN_TEXT,
    LOSSLESS_1_BIT,
    add_page,
    image_info,
    image_stream,
    page_pixels,
    render,
    scan_pdf,
    text_of,
)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def mixed_pdf(path: Path) -> Path:
    """A gray scan page (OCRed) and a born-digital page with vector art and a logo."""
    pdf = pikepdf.new()
    scan = image_stream(pdf, page_pixels(300, 400, paper=225))
    add_page(pdf, (216, 288), [(scan, "216 0 0 288 0 0")], text="Scanned page text")
    logo = image_stream(pdf, page_pixels(40, 30))
    # Small, so that --clean-born-digital renders it quickly (at 300 DPI: 600 x 600 pixels).
    add_page(pdf, (144, 144), [(logo, "30 0 0 20 100 110")], vector=True, text="Born digital")
    pdf.save(path)
    return path


def page_bytes(path: Path, index: int) -> tuple[bytes, list[bytes]]:
    with pikepdf.open(path) as pdf:
        page = pdf.pages[index]
        images = [im.read_raw_bytes() for im in page.get_images().values()]
        return page.Contents.read_raw_bytes(), images


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory, cli_env: dict[str, str]) -> dict:
    """One ``clean-scans`` run (the console script, shipped weights) over a folder of PDFs."""
    root = tmp_path_factory.mktemp("pdfs")
    docs = root / "docs"
    docs.mkdir()
    scan_pdf(docs / "scan.pdf", 640, 480, dpi=100)
    mixed_pdf(docs / "mixed.pdf")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a PDF")
    report = root / "report.json"
    args = ["clean-scans", str(docs), "--out", str(root / "out"), "--report", str(report)]
    res = run([*args, "--device", "cpu", "-q"], cli_env)
    return {"docs": docs, "out": root / "out", "res": res, "report": json.loads(report.read_text())}


def test_clean_scans_keeps_text_layer_form_and_metadata_of_a_pdf(cleaned):
    res, src, out = cleaned["res"], cleaned["docs"] / "scan.pdf", cleaned["out"] / "scan.pdf"
    assert res.returncode == 1, res.stderr  # broken.pdf fails, the others do not
    assert text_of(out) == text_of(src) and HIDDEN_TEXT in text_of(out)[0]
    with pikepdf.open(out) as pdf:
        assert [(str(f.T), str(f.V)) for f in pdf.Root.AcroForm.Fields] == [("payer", "ACME Ltd")]
        assert str(pdf.docinfo["/Title"]) == "Scanned invoice"
    # The scan was really cleaned (its specks are gone), at its own pixel grid.
    assert not np.array_equal(render(src), render(out))
    assert image_info(out)["size"] == (640, 480)


def test_a_1_bit_scan_stays_1_bit_lossless_and_small(cleaned):
    src, out = cleaned["docs"] / "scan.pdf", cleaned["out"] / "scan.pdf"
    after = image_info(out)
    assert after["bpc"] == 1 and after["filter"] in LOSSLESS_1_BIT
    assert out.stat().st_size <= 1.5 * src.stat().st_size


def test_a_born_digital_page_is_unchanged_and_a_gray_scan_stays_gray(cleaned):
    src, out = cleaned["docs"] / "mixed.pdf", cleaned["out"] / "mixed.pdf"
    assert page_bytes(out, 1) == page_bytes(src, 1)
    assert np.array_equal(render(src, 1), render(out, 1))
    assert text_of(out) == text_of(src)
    after = image_info(out, 0)
    assert (after["bpc"], after["size"], after["cs"]) == (8, (300, 400), "/DeviceGray")


def test_report_lists_every_page_outcome_and_a_broken_pdf_is_one_line(cleaned):
    files = {Path(f["path"]).name: f for f in cleaned["report"]["files"]}
    mixed = files["mixed.pdf"]
    assert (mixed["status"], mixed["pages"]) == ("ok", 2)
    counts = (mixed["edited"], mixed["unchanged"], mixed["passed"], mixed["rendered"])
    assert counts == (1, 0, 1, 0)
    assert [p["status"] for p in mixed["page_outcomes"]] == ["edited", "passed"]
    first = mixed["page_outcomes"][0]
    assert (first["kind"], first["size"], first["codec_out"]) == ("gray", [300, 400], "FlateDecode")
    assert first["dpi"] == [pytest.approx(100), pytest.approx(100)]
    out = cleaned["out"] / "mixed.pdf"
    assert mixed["bytes_out"] == out.stat().st_size
    assert mixed["bytes_in"] == (cleaned["docs"] / "mixed.pdf").stat().st_size
    scan = files["scan.pdf"]["page_outcomes"]
    assert [(p["kind"], p["stored_as"]) for p in scan] == [("bilevel", "bilevel")]
    broken = files["broken.pdf"]
    assert broken["status"] == "failed" and "cannot open PDF" in broken["reason"]
    stderr = cleaned["res"].stderr
    assert "broken.pdf" in stderr and "Traceback" not in stderr and "Warning" not in stderr


def clean_scans(args: list[str]) -> tuple[int, str]:
    """``clean-scans`` in this process (the console script's app): exit code and output."""
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    result = CliRunner().invoke(app, ["clean-scans", *args, "--device", "cpu", "-q"])
    return result.exit_code, result.output


def test_options_reach_the_editor(tmp_path):
    """--max-pixels, --jpeg-quality, --binarize and --clean-born-digital through the CLI."""
    docs = tmp_path / "docs"
    docs.mkdir()
    mixed_pdf(docs / "mixed.pdf")
    code, output = clean_scans([str(docs), "--out", str(tmp_path / "a"), "--max-pixels", "1000"])
    assert code == 3 and "exceeds the limit of 1,000" in output and "Traceback" not in output
    report = tmp_path / "r.json"
    args = [str(docs), "--out", str(tmp_path / "b"), "--report", str(report)]
    # The born-digital page is clean: rendered and cleaned only with --clean-all as well.
    code, output = clean_scans([*args, "--jpeg-quality", "80", "--clean-born-digital"])
    assert code == 0, output
    (row,) = json.loads(report.read_text())["files"]
    assert [p["status"] for p in row["page_outcomes"]] == ["edited", "unchanged"]
    args[2] = str(tmp_path / "b2")
    code, output = clean_scans(
        [*args, "--jpeg-quality", "80", "--clean-born-digital", "--clean-all"]
    )
    assert code == 0, output
    (row,) = json.loads(report.read_text())["files"]
    assert [p["status"] for p in row["page_outcomes"]] == ["edited", "rendered"]
    assert row["page_outcomes"][0]["codec_out"].endswith("DCTDecode")
    assert text_of(tmp_path / "b" / "mixed.pdf") == text_of(docs / "mixed.pdf")
    code, output = clean_scans([str(docs), "--out", str(tmp_path / "c"), "--binarize"])
    assert code == 0, output
    after = image_info(tmp_path / "c" / "mixed.pdf")
    assert after["bpc"] == 1 and after["filter"] in LOSSLESS_1_BIT


def test_toml_pipeline_edits_pdfs_in_place(tmp_path):
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    docs = tmp_path / "docs"
    docs.mkdir()
    src = scan_pdf(docs / "scan.pdf", 320, 240)
    spec = tmp_path / "p.toml"
    spec.write_text(
        f'[source]\ntype = "folder"\ninputs = ["{docs.as_posix()}"]\n\n'
        '[[stages]]\nweights = "scan-denoiser"\n\n'
        f'[sink]\ntype = "folder"\nout = "{(tmp_path / "out").as_posix()}"\n'
    )
    result = CliRunner().invoke(app, ["run", str(spec), "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "scan.pdf"
    assert text_of(out) == text_of(src)
    assert image_info(out)["filter"] in LOSSLESS_1_BIT


def test_http_clean_scan_edits_an_uploaded_pdf_in_place(tmp_path):
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    from fastapi.testclient import TestClient

    from aepipe.serve import ServeSettings, create_app

    settings = ServeSettings(models={"clean-scan": "scan-denoiser"}, device="cpu", max_pages=2)
    src = scan_pdf(tmp_path / "scan.pdf", 320, 240)
    with TestClient(create_app(settings)) as client:
        resp = client.post("/v1/clean-scan", files={"file": ("scan.pdf", src.read_bytes())})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/pdf"
        (tmp_path / "out.pdf").write_bytes(resp.content)
        assert text_of(tmp_path / "out.pdf") == text_of(src)
        assert image_info(tmp_path / "out.pdf")["filter"] in LOSSLESS_1_BIT
        pdf = pikepdf.new()
        for _ in range(3):
            add_page(pdf, (72, 72), vector=True)
        pdf.save(tmp_path / "long.pdf")
        data = (tmp_path / "long.pdf").read_bytes()
        long = client.post("/v1/clean-scan", files={"file": ("long.pdf", data)})
        assert long.status_code == 413 and long.json()["error"] == "too_many_pages"
        assert "long.pdf" in long.json()["detail"] and "aepipe-" not in long.json()["detail"]


def test_out_of_memory_in_the_editor_fails_that_file_with_one_line(tmp_path, monkeypatch):
    import aepipe.pdf_edit as pdf_edit
    from aepipe.runner import RunOptions, run_files

    def no_memory(*_args, **_kwargs):
        raise MemoryError

    (tmp_path / "in").mkdir()
    src = scan_pdf(tmp_path / "in" / "scan.pdf", 64, 48)
    monkeypatch.setattr(pdf_edit, "_decode", no_memory)
    summary = run_files([src], lambda b: b, RunOptions(out_dir=tmp_path / "out"))
    (record,) = summary.records
    assert record.status == "failed" and int(summary.exit_code) == 3
    assert record.reason == f"{src}: out of memory (lower --batch-size or the tile size)"
    assert not (tmp_path / "out" / "scan.pdf").exists()


def test_a_pdf_whose_scans_come_back_the_same_is_reported_unchanged_and_copied(tmp_path):
    from aepipe.runner import RunOptions, run_files

    (tmp_path / "in").mkdir()
    src = scan_pdf(tmp_path / "in" / "scan.pdf", 64, 48)
    summary = run_files([src], lambda b: b, RunOptions(out_dir=tmp_path / "out"))
    (record,) = summary.records
    assert (record.status, record.edited, record.unchanged, record.passed) == ("ok", 0, 1, 0)
    assert [p["status"] for p in record.page_outcomes] == ["unchanged"]
    assert (tmp_path / "out" / "scan.pdf").read_bytes() == src.read_bytes()
