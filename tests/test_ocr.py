"""The OCRmyPDF plugin and ``clean-scans --ocr`` end to end, on real OCRmyPDF and Tesseract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pdf_factory import LOSSLESS_1_BIT, add_page
from typer.testing import CliRunner

from aepipe.errors import ExitCode
from aepipe.ocrmypdf import PLUGIN, missing_tools

MISSING = missing_tools()
needs_ocr = pytest.mark.skipif(bool(MISSING), reason=f"OCR tools missing: {'; '.join(MISSING)}")

DPI = 200
LINES = ("Records office archive ledger", "quick brown foxes jump over lazy dogs")
WORDS = ("Records", "archive", "ledger", "brown", "foxes", "lazy")


def text_page(seed: int, size: tuple[int, int] = (1100, 500)) -> np.ndarray:
    """A (H, W) uint8 page of ``LINES`` in 14 pt DejaVu at ``DPI``, on grey, speckled paper."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font_file = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font = ImageFont.truetype(str(font_file), round(14 * DPI / 72))
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(LINES):
        draw.text((60, 80 + 90 * i), line, font=font, fill=20)
    rng = np.random.default_rng(seed)
    arr = np.asarray(page, dtype=np.float32) * 0.8 + 30  # grey paper, lifted ink
    arr += rng.normal(0, 12, arr.shape)
    specks = rng.random(arr.shape) < 0.01
    arr[specks] = 0
    return np.clip(arr, 0, 255).astype(np.uint8)


def save_pdf(path: Path, pages: list[np.ndarray]) -> Path:
    from PIL import Image

    images = [Image.fromarray(p) for p in pages]
    images[0].save(path, save_all=True, append_images=images[1:], resolution=DPI)
    return path


def pdf_pages(path: Path) -> list[tuple[tuple[float, float], str]]:
    """(page size in points, text layer) of each page."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    try:
        return [(tuple(p.get_size()), p.get_textpage().get_text_range()) for p in doc]
    finally:
        doc.close()


def assert_words(text: str) -> None:
    found = [w for w in WORDS if w.lower() in text.lower()]
    assert len(found) >= len(WORDS) - 1, f"text layer {text!r} lacks most of {WORDS}"


@needs_ocr
def test_plugin_through_ocrmypdf_command_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """OCRmyPDF's own options still rule: two workers, only page 2 selected, PDF/A out."""
    import pikepdf

    src = save_pdf(tmp_path / "in.pdf", [text_page(0, (800, 300)), text_page(1)])
    dst = tmp_path / "out.pdf"
    args = [sys.executable, "-m", "ocrmypdf", "--plugin", PLUGIN, "-j", "2", "--pages", "2"]
    args += ["--force-ocr", "--aepipe-clean-final", "--output-type", "pdfa", str(src), str(dst)]
    res = subprocess.run(args, capture_output=True, text=True, env=cli_env, timeout=300)
    assert res.returncode == 0, res.stderr
    (size1, text1), (size2, text2) = pdf_pages(dst)
    assert size1 == pytest.approx((800 * 72 / DPI, 300 * 72 / DPI), abs=0.5)
    assert size2 == pytest.approx((1100 * 72 / DPI, 500 * 72 / DPI), abs=0.5)
    assert text1.strip() == ""  # not selected: copied without a text layer
    assert_words(text2)
    with pikepdf.open(dst) as pdf:
        assert pdf.open_metadata().pdfa_status == "2B"


@needs_ocr
def test_clean_scans_ocr_image_and_pdf(tmp_path: Path) -> None:
    import pikepdf
    from PIL import Image

    from aepipe.cli.main import _single

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(text_page(1, (900, 400))).save(src / "photo.png", dpi=(DPI, DPI))
    save_pdf(src / "two.pdf", [text_page(2), text_page(3)])
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _single("clean-scans"), [str(src), "--ocr", "--binarize", "--out", str(out), "-q"]
    )
    assert res.exit_code == 0, res.output

    [(size, text)] = pdf_pages(out / "photo.pdf")
    assert size == pytest.approx((900 * 72 / DPI, 400 * 72 / DPI), abs=0.5)
    assert_words(text)
    pages = pdf_pages(out / "two.pdf")
    assert [s for s, _ in pages] == [s for s, _ in pdf_pages(src / "two.pdf")]
    for _, text in pages:
        assert_words(text)
    with pikepdf.open(out / "two.pdf") as pdf:  # bilevel pages, stored as without --ocr
        xobjects = [x for page in pdf.pages for x in page.Resources.XObject.values()]
        images = [pikepdf.PdfImage(x) for x in xobjects if x.Subtype == "/Image"]
    assert [im.bits_per_component for im in images] == [1, 1]
    assert all(im.filters[-1] in LOSSLESS_1_BIT for im in images)


@pytest.mark.parametrize(
    ("absent", "package"),
    [("tesseract", "tesseract-ocr"), ("gs", "ghostscript"), ("ocrmypdf", "ocrmypdf")],
)
def test_missing_tool_is_one_line_and_setup_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absent: str, package: str
) -> None:
    import importlib.util
    import shutil

    from aepipe.cli.main import _single

    which, find_spec = shutil.which, importlib.util.find_spec
    monkeypatch.setattr(shutil, "which", lambda name: None if name == absent else which(name))
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == absent else find_spec(name)
    )
    (tmp_path / "a.png").write_bytes(b"")  # never read: the set-up is checked first
    res = CliRunner().invoke(
        _single("clean-scans"), [str(tmp_path), "--ocr", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == ExitCode.SETUP_ERROR
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and package in lines[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()


@needs_ocr
def test_clean_scans_ocr_bad_weights_and_bad_file(tmp_path: Path) -> None:
    from aepipe.cli.main import _single

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    app, out = _single("clean-scans"), str(tmp_path / "out")
    res = CliRunner().invoke(app, [str(tmp_path / "in"), "--ocr", "--out", out, "--model", "nope"])
    assert res.exit_code == ExitCode.MODEL_ERROR and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(app, [str(tmp_path / "in"), "--ocr", "--out", out, "-q"])
    assert res.exit_code == ExitCode.NOTHING_PROCESSED, res.output
    assert "broken.png" in res.output and "Traceback" not in res.output
    assert not list((tmp_path / "out").glob("*.pdf*"))  # no partial output left behind


@needs_ocr
def test_clean_scans_ocr_stores_the_page_the_stage_cleans_with_views(tmp_path: Path) -> None:
    """``--views`` reaches the plugin: the stored gray page (lossless PNG in the PDF) is the
    stage's own output with ``views=2``, to the pixel, and not the one-view output."""
    import pikepdf
    from PIL import Image

    from aepipe import apply, load_stage
    from aepipe.cli.main import _single

    page = text_page(1)
    (tmp_path / "in").mkdir()
    Image.fromarray(page).save(tmp_path / "in" / "p.png", dpi=(DPI, DPI))
    args = [str(tmp_path / "in"), "--ocr", "--views", "2", "--out", str(tmp_path / "o"), "-q"]
    res = CliRunner().invoke(_single("clean-scans"), args)
    assert res.exit_code == 0, res.output
    with pikepdf.open(tmp_path / "o" / "p.pdf") as pdf:
        [image] = [
            pikepdf.PdfImage(x)
            for p in pdf.pages
            for x in p.Resources.XObject.values()
            if x.Subtype == "/Image"
        ]
        stored = np.asarray(image.as_pil_image().convert("L"))
        assert_words(pdf_pages(tmp_path / "o" / "p.pdf")[0][1])
    np.testing.assert_array_equal(stored, apply(load_stage("scan-denoiser", views=2), page))
    assert not np.array_equal(stored, apply(load_stage("scan-denoiser"), page))


@needs_ocr
def test_clean_scans_ocr_gives_every_input_its_own_pdf_and_writes_the_report(tmp_path: Path):
    """Names that would clash as PDFs (scan.v1/scan.v2, x.png/x.pdf) stay apart; --report is
    written as for every file command."""
    import json

    from PIL import Image

    from aepipe.cli.main import _single

    src = tmp_path / "in"
    src.mkdir()
    page = text_page(4, (300, 120))
    for name in ("scan.v1.png", "scan.v2.png", "x.png"):
        Image.fromarray(page).save(src / name, dpi=(DPI, DPI))
    save_pdf(src / "x.pdf", [page])
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = [str(src), "--ocr", "--out", str(out), "--report", str(report), "-q"]
    res = CliRunner().invoke(_single("clean-scans"), args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "scan.v1.pdf",
        "scan.v2.pdf",
        "x.pdf",
        "x_png.pdf",
    ]
    files = json.loads(report.read_text())["files"]
    assert sorted(f["status"] for f in files) == ["ok"] * 4
    assert len({o for f in files for o in f["outputs"]}) == 4


def kept_pdf(path: Path) -> Path:
    """An encrypted PDF (owner password, no copying) a reader opens without a password:
    page 1 a JPEG scan of ``LINES`` with a form field, a link and a sticky note; page 2
    born-digital text."""
    import io

    import pikepdf
    from PIL import Image

    pdf = pikepdf.new()
    pixels = text_page(5, (800, 300))
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=80)
    image = pdf.make_stream(
        jpeg.getvalue(),
        Type=pikepdf.Name.XObject,
        Subtype=pikepdf.Name.Image,
        Width=800,
        Height=300,
        ColorSpace=pikepdf.Name.DeviceGray,
        BitsPerComponent=8,
        Filter=pikepdf.Name.DCTDecode,
    )
    size = (800 * 72 / DPI, 300 * 72 / DPI)
    scan = add_page(pdf, size, [(image, f"{size[0]} 0 0 {size[1]} 0 0")])
    annot = dict(Type=pikepdf.Name.Annot, Rect=[10, 10, 60, 30])
    field = pdf.make_indirect(
        pikepdf.Dictionary(
            **annot, Subtype=pikepdf.Name.Widget, FT=pikepdf.Name.Tx, T=pikepdf.String("payer")
        )
    )
    note = pikepdf.Dictionary(**annot, Subtype=pikepdf.Name.Text, Contents=pikepdf.String("n"))
    link = pikepdf.Dictionary(
        **annot,
        Subtype=pikepdf.Name.Link,
        A=pikepdf.Dictionary(S=pikepdf.Name.URI, URI=pikepdf.String("https://example.org")),
    )
    scan.obj.Annots = pdf.make_indirect(pikepdf.Array([field, note, link]))
    pdf.Root.AcroForm = pikepdf.Dictionary(Fields=pikepdf.Array([field]))
    page = add_page(pdf, (300, 200))
    page.obj.Contents = pdf.make_stream(b"BT /F1 14 Tf 20 100 Td (Born digital Hello) Tj ET")
    allow = pikepdf.Permissions(extract=False)
    pdf.save(path, encryption=pikepdf.Encryption(owner="secret", user="", allow=allow))
    return path


def pdf_parts(path: Path) -> dict:
    """What the in-place edit keeps: encryption, form, annotation types, each page's images
    (raw bytes and filters) and the content streams it had."""
    import pikepdf

    with pikepdf.open(path) as pdf:
        pages = []
        for page in pdf.pages:
            contents = page.obj.Contents
            streams = list(contents) if isinstance(contents, pikepdf.Array) else [contents]
            images = [(x.read_raw_bytes(), str(x.Filter)) for x in page.get_images().values()]
            annots = [str(a.Subtype) for a in page.obj.get("/Annots", [])]
            pages.append(
                dict(images=images, annots=annots, contents=[s.read_bytes() for s in streams])
            )
        return dict(
            encrypted=pdf.is_encrypted,
            extract=pdf.allow.extract,
            fields=[str(f.T) for f in pdf.Root.AcroForm.Fields]
            if "/AcroForm" in pdf.Root
            else None,
            pages=pages,
        )


@needs_ocr
def test_clean_scans_ocr_keeps_what_the_in_place_edit_keeps(tmp_path: Path) -> None:
    """--ocr is clean-scans' own PDF edit plus a text layer: encryption and permissions, the
    form, the link and the sticky note, the JPEG scan's bytes as cleaned without --ocr, the
    born-digital page's content stream; only the scan page gets OCR text, prepended."""
    from aepipe.cli.main import _single

    (tmp_path / "in").mkdir()
    src = kept_pdf(tmp_path / "in" / "kept.pdf")
    app = _single("clean-scans")
    args = [str(src), "-q"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*args, "--ocr", "--out", str(tmp_path / "ocr")])
    assert res.exit_code == 0, res.output
    # OCRmyPDF's warning about the form concerns its own output, which is not kept: not shown.
    assert "fillable form" not in res.output

    original, plain = pdf_parts(src), pdf_parts(tmp_path / "plain" / "kept.pdf")
    ocr = pdf_parts(tmp_path / "ocr" / "kept.pdf")
    assert ocr["encrypted"] and not ocr["extract"] and ocr["fields"] == ["payer"]
    assert [p["annots"] for p in ocr["pages"]] == [["/Widget", "/Text", "/Link"], []]
    scan, digital = ocr["pages"]
    assert scan["images"] == plain["pages"][0]["images"]
    assert "/DCTDecode" in scan["images"][0][1]  # a JPEG scan stays JPEG
    assert scan["contents"][1:] == plain["pages"][0]["contents"]  # text layer put first
    assert digital == original["pages"][1]
    (_, text1), (_, text2) = pdf_pages(tmp_path / "ocr" / "kept.pdf")
    assert_words(text1)
    assert text2.strip() == "Born digital Hello"


@needs_ocr
def test_clean_scans_ocr_means_the_same_options(tmp_path: Path) -> None:
    """--max-pixels refuses the page as without --ocr; --format png cannot be OCR'd (exit 2)."""
    from PIL import Image

    from aepipe.cli.main import _single

    (tmp_path / "in").mkdir()
    Image.fromarray(text_page(6, (300, 120))).save(tmp_path / "in" / "p.png", dpi=(DPI, DPI))
    app, out = _single("clean-scans"), str(tmp_path / "out")
    res = CliRunner().invoke(
        app, [str(tmp_path / "in"), "--ocr", "--out", out, "--max-pixels", "1000"]
    )
    assert res.exit_code == ExitCode.NOTHING_PROCESSED and "exceeds the limit" in res.output
    res = CliRunner().invoke(app, [str(tmp_path / "in"), "--ocr", "--out", out, "--format", "png"])
    assert res.exit_code == ExitCode.BAD_ARGS and "--format pdf" in res.output


@needs_ocr
def test_clean_scans_ocr_interrupted_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside OCRmyPDF (which turns it into its exit code 130) stops the run: exit
    130, the report says interrupted and lists the unfinished files as pending, no output."""
    import json

    import ocrmypdf
    from PIL import Image

    from aepipe.cli.main import _single

    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(text_page(7, (300, 120))).save(tmp_path / "in" / name, dpi=(DPI, DPI))
    monkeypatch.setattr(ocrmypdf, "ocr", lambda *a, **k: ocrmypdf.ExitCode.ctrl_c)
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = [str(tmp_path / "in"), "--ocr", "--out", str(out), "--report", str(report), "-q"]
    res = CliRunner().invoke(_single("clean-scans"), args)
    assert res.exit_code == ExitCode.INTERRUPTED, res.output
    data = json.loads(report.read_text())
    assert data["summary"]["interrupted"] is True
    assert data["summary"]["exit_code"] == ExitCode.INTERRUPTED
    assert [(Path(f["path"]).name, f["status"]) for f in data["files"]] == [
        ("a.png", "pending"),
        ("b.png", "pending"),
    ]
    assert not list(out.glob("*.pdf"))


@needs_ocr
@pytest.mark.parametrize(
    ("options", "needs"),
    [
        (dict(aepipe_clean_final=True), "--force-ocr"),
        (dict(force_ocr=True, aepipe_binarize=True), "--aepipe-clean-final"),
    ],
)
def test_plugin_refuses_storage_options_that_would_do_nothing(
    tmp_path: Path, options: dict, needs: str
) -> None:
    """Without a rasterizing option OCRmyPDF keeps each page's image, so --aepipe-clean-final
    would be ignored; --aepipe-binarize only changes what --aepipe-clean-final stores."""
    import ocrmypdf

    src = save_pdf(tmp_path / "in.pdf", [text_page(8, (300, 120))])
    with pytest.raises(ocrmypdf.exceptions.BadArgsError, match=needs):
        ocrmypdf.ocr(src, tmp_path / "out.pdf", plugins=[PLUGIN], progress_bar=False, **options)


def test_tesseract_reads_the_gray_page_of_a_binarizing_stage_in_the_same_network_pass() -> None:
    """--binarize stores bilevel pages, Tesseract reads the same network's gray page, and the
    network runs once per page: the stored page is the read one thresholded, exactly as the
    binarizing stage itself gives it (photographs kept as they came)."""
    from aepipe import load_stage
    from aepipe.batch import ImageBatch
    from aepipe.ocrmypdf import ocr_stages
    from aepipe.stages.scan_denoiser import ScanDenoiser

    stage = ScanDenoiser.tiny(seed=1, binarize=True, views=2)
    calls = []
    forward = stage.model.forward
    stage.model.forward = lambda x: calls.append(x.shape) or forward(x)
    store, read = ocr_stages(stage)
    assert read is not None and read.__self__.gray.model is stage.model
    assert not read.__self__.gray.config.binarize and read.__self__.gray.config.views == 2
    g = torch.Generator().manual_seed(0)
    page = 0.8 + 0.2 * torch.rand(1, 1, 96, 80, generator=g)
    page[..., 20:30, 10:60] = 0.1  # a line of "ink"
    # Smooth mid-tones with no paper around them: taken for a photograph.
    coarse = 0.15 + 0.6 * torch.rand(1, 3, 6, 5, generator=g)
    photo = torch.nn.functional.interpolate(coarse, size=(96, 80), mode="bicubic").clamp(0, 1)
    for images in (page, photo):
        batch = ImageBatch(images, ["p"], [{"source": "a.pdf", "page": 0}])
        gray = read(batch)
        passes = len(calls)
        stored = store(batch)
        assert len(calls) == passes  # the stored page took no network pass of its own
        expected = stage(batch)
        assert torch.equal(stored.images, expected.images)
        assert stored.meta == expected.meta
        photograph = images is photo
        assert stored.meta[0]["photograph"] == photograph
        assert (set(torch.unique(stored.images).tolist()) <= {0.0, 1.0}) != photograph
        assert torch.equal(gray.images, stored.images) == photograph
    # Two pages of one file with the same pixels (a duplicated page): one pass each, both found.
    twice = ImageBatch(
        torch.cat([page, page]), ["p1", "p2"], [{"source": "d.tif", "page": i} for i in (0, 1)]
    )
    read(twice)
    passes = len(calls)
    stored = store(twice)
    assert len(calls) == passes and torch.equal(stored.images, stage(twice).images)
    # A page the reading pass did not see is cleaned by the binarizing stage itself.
    unseen = ImageBatch(page.flip(-1), ["q"], [{}])
    assert torch.equal(store(unseen).images, stage(unseen).images)
    assert ocr_stages(load_stage("scan-denoiser"))[1] is None


def test_ocrmypdf_warnings_name_their_file_and_moot_ones_are_dropped(capsys) -> None:
    import logging

    from aepipe.ocrmypdf import _warnings_name

    with _warnings_name(Path("in/scan.pdf")):
        log = logging.getLogger("ocrmypdf")
        log.warning("page 2: OCR skipped, text found")
        log.warning("This PDF has a fillable form. Chances are it is a pure digital document")
    err = capsys.readouterr().err
    assert "in/scan.pdf: page 2: OCR skipped, text found" in err
    assert "fillable form" not in err


@needs_ocr
def test_ocr_reports_its_text_pages_in_its_own_default_folder(tmp_path: Path) -> None:
    """A plain run's PDFs (no text) in <input>_clean are not taken for --ocr's outputs: --ocr
    writes <input>_ocr, and the report counts the pages that got text."""
    import json
    import shutil

    from aepipe.cli.main import _single

    root = Path(__file__).resolve().parent.parent
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(root / "sample_inputs" / "scans" / "ddd_like_540x420.png", scans / "page.png")
    app = _single("clean-scans")
    assert CliRunner().invoke(app, [str(scans), "--format", "pdf", "-q"]).exit_code == 0
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, [str(scans), "--ocr", "-q", "--report", str(report)])
    assert res.exit_code == 0, res.output
    [record] = json.loads(report.read_text())["files"]
    assert record["status"] == "ok" and record["text_pages"] == 1
    assert record["outputs"] == [str(tmp_path / "scans_ocr" / "page.pdf")]


@needs_ocr
def test_ocr_languages_missing_from_tesseract_are_refused_up_front(tmp_path: Path) -> None:
    from aepipe.cli.main import _single

    (tmp_path / "a.png").write_bytes(b"")  # never read: refused before
    app = _single("clean-scans")
    res = CliRunner().invoke(app, [str(tmp_path), "--ocr", "--language", "eng+xx_nope"])
    assert res.exit_code == ExitCode.SETUP_ERROR and "tesseract-ocr-xx_nope" in res.output
    res = CliRunner().invoke(app, [str(tmp_path), "--language", "deu"])
    assert res.exit_code == ExitCode.BAD_ARGS and "--language is for --ocr" in res.output


def dense_text_page(seed: int) -> np.ndarray:
    """A (1700, 1300) uint8 page of 24 lines of words: enough text for Tesseract's OSD to be
    sure of the page's orientation (a few lines are below OCRmyPDF's confidence)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font_file = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font = ImageFont.truetype(str(font_file), round(11 * DPI / 72))
    words = " ".join([*LINES, *WORDS]).lower().split()
    rng = np.random.default_rng(seed)
    page = Image.new("L", (1300, 1700), 235)
    draw = ImageDraw.Draw(page)
    for i in range(24):
        draw.text((60, 60 + 65 * i), " ".join(rng.choice(words, 8)), font=font, fill=30)
    return np.asarray(page)


@needs_ocr
def test_ocr_rotate_pages_turns_an_upside_down_page_upright(tmp_path: Path) -> None:
    import json

    import pikepdf

    from aepipe.cli.main import _single

    upright = dense_text_page(0)
    src = save_pdf(tmp_path / "in.pdf", [upright, upright[::-1, ::-1].copy()])
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = [str(src), "--ocr", "--rotate-pages", "--out", str(out), "--report", str(report)]
    res = CliRunner().invoke(_single("clean-scans"), [*args, "-q"])
    assert res.exit_code == 0, res.output
    with pikepdf.open(out / "in.pdf") as pdf:
        assert [p.obj.get("/Rotate") for p in pdf.pages] == [None, 180]
    texts = [text for _, text in pdf_pages(out / "in.pdf")]
    assert texts[1].split()[:6] == texts[0].split()[:6]  # read the right way up
    assert "turned upright: page 2" in json.loads(report.read_text())["files"][0]["reason"]
    res = CliRunner().invoke(_single("clean-scans"), [str(src), "--rotate-pages"])
    assert res.exit_code == ExitCode.BAD_ARGS and "--rotate-pages is for --ocr" in res.output
