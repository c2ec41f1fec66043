"""The file runner: per-file errors, resume, atomic outputs, layout, reports, batching."""

from __future__ import annotations

import numpy as np
import pytest
from factory import gradient, pdf_pages, truncated
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.errors import ExitCode
from aepipe.io import write_image
from aepipe.runner import RunOptions, run_files


def invert(batch: ImageBatch) -> ImageBatch:
    return batch.replace(1.0 - batch.images)


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


def test_same_size_files_are_batched_with_identical_results(docs, tmp_path):
    sizes = []

    def spy(batch):
        sizes.append(len(batch))
        return invert(batch)

    run_files([docs], spy, RunOptions(out_dir=tmp_path / "a", batch_size=8))
    assert max(sizes) == 3
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
