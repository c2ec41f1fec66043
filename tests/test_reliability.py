"""Issue 8, reliability and safety: bad inputs, nothing lost, trusted weights, fuzzing, soak.

Every broken file is built on the fly (tests/factory.py). Tests that are about commands go
through the real console scripts; they skip when the stage behind a command is not built yet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from factory import (
    bad_files,
    gradient,
    pdf_pages,
    random_image,
    start,
    truncated,
    unusual_images,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError, ExitCode, InputImageError, WeightsError
from aepipe.io import (
    TEMP_PREFIX,
    atomic_write,
    decode_pages,
    page_batch,
    read_pages,
    remove_stale_temps,
    write_image,
)
from aepipe.provenance import RECORD_NAME
from aepipe.registry import ENTRIES
from aepipe.runner import RunOptions, run_files
from aepipe.stage import stage_class
from aepipe.weights import CONFIG_NAME, WEIGHTS_NAME, load_model, save_model, sha256_file

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def visible(folder: Path) -> list[Path]:
    """The files of ``folder`` a user sees: not the hidden output record nor temporaries."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def temporaries(folder: Path) -> list[Path]:
    """Left-over temporary files (``.aepipe-*``; the output record is not one)."""
    return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX) and p.name != RECORD_NAME]


FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def invert(batch: ImageBatch) -> ImageBatch:
    return batch.replace(1.0 - batch.images)


def stage_available(name: str) -> bool:
    module = ENTRIES[name].stage.split(":")[0]
    return importlib.util.find_spec(module) is not None


AVAILABLE_STAGES = [n for n in sorted(ENTRIES) if stage_available(n)]


def by_name(summary) -> dict[str, object]:
    return {Path(r.path).name: r for r in summary.records}


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mtime and mode of every file under ``root`` (symlinks not followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            st_ = path.stat()
            out[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                st_.st_mtime_ns,
                st_.st_mode,
            )
    return out


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# ---- bad input gets a clear error and nothing else is lost --------------------------------


def test_every_kind_of_bad_file_fails_alone_with_one_line(tmp_path):
    src = tmp_path / "in"
    bad = bad_files(src)
    good = unusual_images(src)
    (src / "notes.txt").write_text("not an image, skipped quietly")
    (src / "Thumbs.db").write_bytes(b"\x00" * 16)
    report = tmp_path / "report.json"
    summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "out", report=report))

    records = by_name(summary)
    # Non-image files are recorded as ignored (the report lists every file), not failed.
    assert set(records) == set(bad) | set(good) | {"notes.txt", "Thumbs.db"}
    assert {records[n].status for n in ("notes.txt", "Thumbs.db")} == {"ignored"}
    assert summary.line().endswith(", 2 ignored (not images)")
    for name, phrase in bad.items():
        rec = records[name]
        assert rec.status == "failed", name
        assert str(src / name) in rec.reason and phrase in rec.reason, rec.reason
        assert "\n" not in rec.reason and "Traceback" not in rec.reason
    for name, (w, h) in good.items():
        rec = records[name]
        assert rec.status == "ok", (name, rec.reason)
        with Image.open(rec.outputs[0]) as im:
            assert im.size == (w, h), name
    assert records["multi.tif"].pages == 3 and records["anim.gif"].pages == 1
    assert summary.exit_code == ExitCode.SOME_FAILED
    assert f"{len(good)} processed" in summary.line() and f"{len(bad)} failed" in summary.line()

    data = json.loads(report.read_text())
    assert data["summary"]["processed"] == len(good)
    assert data["summary"]["failed"] == len(bad)
    assert {Path(f["path"]).name: f["status"] for f in data["files"]} == {
        r: ("failed" if r in bad else "ok" if r in good else "ignored") for r in records
    }


def test_non_image_files_are_counted_and_named_only_when_asked(tmp_path):
    """A folder's non-image files were left out without a word (no count in the summary, not
    in the report) unless --list-ignored; now they are recorded and counted, named on request.
    A file without a suffix is told by its content (a scanner's `page_e` is a PNG)."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(), src / "a.png")
    write_image(gradient(), src / "b.png")
    (src / "b.png").rename(src / "page_e")
    (src / "readme.md").write_text("hello")
    (src / "NOTES").write_text("not an image either")
    quiet = run_files([src], invert, RunOptions(out_dir=tmp_path / "o1"))
    assert {n: r.status for n, r in by_name(quiet).items()} == {
        "a.png": "ok",
        "page_e": "ok",
        "readme.md": "ignored",
        "NOTES": "ignored",
    }
    assert not quiet.list_ignored and quiet.line().endswith(", 2 ignored (not images)")
    assert (tmp_path / "o1" / "page_e.png").is_file()
    loud = run_files([src], invert, RunOptions(out_dir=tmp_path / "o2", list_ignored=True))
    assert loud.list_ignored and by_name(loud)["readme.md"].status == "ignored"
    assert loud.exit_code == ExitCode.OK


def test_all_files_bad_is_exit_3(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "o"))
    assert summary.exit_code == ExitCode.NOTHING_PROCESSED


def test_pixel_limit_is_configurable_per_run(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(100, 120), src / "big.png")
    write_image(gradient(10, 12), src / "small.png")
    strict = run_files([src], invert, RunOptions(out_dir=tmp_path / "o1", max_pixels=5_000))
    assert by_name(strict)["big.png"].status == "failed"
    assert "12,000 pixels exceeds the limit of 5,000" in by_name(strict)["big.png"].reason
    assert by_name(strict)["small.png"].status == "ok"
    loose = run_files([src], invert, RunOptions(out_dir=tmp_path / "o2", max_pixels=20_000))
    assert loose.count("ok") == 2


def test_bomb_is_refused_without_allocating(tmp_path):
    from factory import png_bomb

    png_bomb(tmp_path / "bomb.png", 100_000, 100_000)
    png_bomb(tmp_path / "mid.png", 12_000, 12_000)  # above our limit, below PIL's 2x guard
    before = rss_mb()
    for name in ("bomb.png", "mid.png"):
        with pytest.raises(InputImageError, match="exceeds the limit"):
            list(read_pages(tmp_path / name))
    assert rss_mb() - before < 50  # a decoded 12,000^2 page would be 144 MB


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 does not stop root from reading")
def test_unreadable_file_and_folder_are_reported(tmp_path):
    src = tmp_path / "in"
    (src / "locked_dir").mkdir(parents=True)
    write_image(gradient(), src / "ok.png")
    write_image(gradient(), src / "secret.png")
    write_image(gradient(), src / "locked_dir" / "x.png")
    (src / "secret.png").chmod(0)
    (src / "locked_dir").chmod(0)
    try:
        summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "o", recursive=True))
    finally:
        (src / "secret.png").chmod(0o644)
        (src / "locked_dir").chmod(0o755)
    records = by_name(summary)
    assert records["ok.png"].status == "ok"
    assert records["secret.png"].status == "failed"
    assert "permission denied" in records["secret.png"].reason
    assert records["locked_dir"].status == "failed"
    assert "cannot list folder" in records["locked_dir"].reason


def test_permission_error_is_one_line_naming_the_file(tmp_path, monkeypatch):
    # Runs as root too: the OS-level refusal is simulated for one file.
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(), src / "ok.png")
    write_image(gradient(), src / "secret.png")
    real_open = os.open

    def guarded(path, *args, **kwargs):
        if Path(path).name == "secret.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "o"))
    records = by_name(summary)
    assert records["ok.png"].status == "ok"
    assert records["secret.png"].reason == f"{src / 'secret.png'}: permission denied"


def test_symlink_loops_and_special_files_do_not_hang_or_crash(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_image(gradient(), src / "a.png")
    write_image(gradient(), src / "sub" / "b.png")
    (src / "sub" / "up").symlink_to("..")  # a folder pointing to its parent: a loop
    (src / "loop").symlink_to(src)
    (src / "self.png").symlink_to("self.png")  # a file link pointing to itself
    (src / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (src / "zero.png").symlink_to("/dev/zero")  # would read forever
    os.mkfifo(src / "fifo.png")  # would block forever
    summary = run_files(
        [src], invert, RunOptions(out_dir=tmp_path / "o", recursive=True, list_ignored=True)
    )
    records = {Path(r.path).relative_to(src).as_posix(): r for r in summary.records}
    assert records["a.png"].status == "ok" and records["sub/b.png"].status == "ok"
    assert sum(r.status == "ok" for r in summary.records) == 2  # each file once
    assert records["loop"].status == "ignored" and records["sub/up"].status == "ignored"
    assert "symbolic link" in records["self.png"].reason
    assert "broken symbolic link" in records["dangling.png"].reason
    assert "not a regular file" in records["zero.png"].reason
    assert "not a regular file" in records["fifo.png"].reason
    assert (tmp_path / "o" / "sub" / "b.png").is_file()


def test_recursive_keeps_relative_layout_and_plain_run_stays_on_top(tmp_path):
    src = tmp_path / "in"
    for rel in ("a.png", "x/b.png", "x/y/c.png"):
        write_image(gradient(), src / rel)
    flat = run_files([src], invert, RunOptions(out_dir=tmp_path / "flat"))
    assert flat.count("ok") == 1
    deep = run_files([src], invert, RunOptions(out_dir=tmp_path / "deep", recursive=True))
    assert deep.count("ok") == 3
    got = sorted(
        p.relative_to(tmp_path / "deep").as_posix() for p in (tmp_path / "deep").rglob("*.png")
    )
    assert got == ["a.png", "x/b.png", "x/y/c.png"]


# ---- nothing lost: inputs untouched, atomic outputs, resume ---------------------------------


def test_inputs_are_never_modified(tmp_path):
    src = tmp_path / "in"
    bad_files(src)
    unusual_images(src / "nested")
    pdf_pages(src / "doc.pdf", [(72.0, 72.0), (72.0, 100.0)])
    before = tree_digest(src)
    for overwrite in (False, True, False):
        run_files(
            [src], invert, RunOptions(out_dir=tmp_path / "o", recursive=True, overwrite=overwrite)
        )
    assert tree_digest(src) == before


def test_output_folder_that_is_or_reaches_an_input_is_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(), src / "a.png")
    (tmp_path / "alias").symlink_to(src)
    for out in (src, src / "clean", tmp_path / "alias", tmp_path / "alias" / "deeper"):
        with pytest.raises(ConfigError, match="inside input folder"):
            run_files([src], invert, RunOptions(out_dir=out))
    with pytest.raises(ConfigError, match="is the folder of input"):
        run_files([src / "a.png"], invert, RunOptions(out_dir=tmp_path / "alias"))
    with pytest.raises(ConfigError, match="report"):
        run_files([src], invert, RunOptions(out_dir=tmp_path / "o", report=src / "a.png"))
    assert not (tmp_path / "o").exists()


def test_an_input_inside_the_output_folder_is_never_replaced(tmp_path):
    out = tmp_path / "o"
    src = out / "in"
    write_image(gradient(seed=1), src / "x.png")
    write_image(gradient(seed=2), src / "in" / "x.png")  # its output would be o/in/x.png
    before = tree_digest(src)
    for overwrite in (False, True):
        summary = run_files(
            [src], invert, RunOptions(out_dir=out, recursive=True, overwrite=overwrite)
        )
        rec = next(r for r in summary.records if r.path.endswith("in/in/x.png"))
        assert rec.status == "failed" and "would replace an input" in rec.reason
    assert tree_digest(src) == before
    assert (out / "x.png").is_file()


def test_inputs_sharing_a_stem_get_distinct_outputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(10, 20), src / "scan.png")
    Image.fromarray(gradient(30, 40)).save(src / "scan.jpg", quality=95)
    Image.fromarray(gradient(50, 60)).save(src / "scan.bmp")
    out = tmp_path / "o"
    summary = run_files([src], invert, RunOptions(out_dir=out))
    assert summary.count("ok") == 3
    sizes = {p.name: Image.open(p).size for p in visible(out)}
    assert sizes == {"scan.png": (20, 10), "scan_jpg.png": (40, 30), "scan_bmp.png": (60, 50)}
    again = run_files([src], invert, RunOptions(out_dir=out))
    assert again.count("skipped") == 3


def test_atomic_write_leaves_nothing_when_interrupted_mid_write(tmp_path):
    target = tmp_path / "o" / "a.png"

    def half_then_ctrl_c(fh):
        fh.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_ctrl_c)
    assert list((tmp_path / "o").iterdir()) == []
    write_image(gradient(), target)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_ctrl_c)
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["a.png"]
    assert Image.open(target).size == (32, 24)  # the previous complete file is still there


def test_stale_temps_are_removed_but_live_writers_are_left_alone(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{TEMP_PREFIX}a.png.{dead.pid}.x1y2.tmp"
    live = tmp_path / f"{TEMP_PREFIX}b.png.{os.getpid()}.x1y2.tmp"
    legacy = tmp_path / "sub" / f"{TEMP_PREFIX}c.png.abcd.tmp"
    for p in (stale, live, legacy):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 2
    assert live.exists() and not stale.exists() and not legacy.exists()


def test_outputs_get_normal_permissions(tmp_path):
    import aepipe.io as pio

    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask  # not mkstemp's 0600
    assert expected == pio._FILE_MODE
    path = write_image(gradient(), tmp_path / "a.png")
    assert stat.S_IMODE(path.stat().st_mode) == expected


@pytest.mark.parametrize("kind", ["pdf", "tiff", "gif"])
def test_multi_page_inputs_to_png_resume(tmp_path, kind):
    src = tmp_path / "in"
    src.mkdir()
    if kind == "pdf":
        pdf_pages(src / "doc.pdf", [(72.0, 72.0), (72.0, 100.0), (100.0, 72.0)])
    else:
        frames = [Image.fromarray(gradient(seed=i)) for i in range(3)]
        frames[0].save(src / f"doc.{kind[:3]}", save_all=True, append_images=frames[1:])
    write_image(gradient(), src / "single.png")
    out = tmp_path / "o"
    opts = RunOptions(out_dir=out, fmt="png", dpi=72, frames="all")
    first = run_files([src], invert, opts)
    assert first.count("ok") == 2 and first.pages == 4
    names = sorted(p.name for p in visible(out))
    assert names == ["doc-p001.png", "doc-p002.png", "doc-p003.png", "single.png"]
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return invert(batch)

    again = run_files([src], counting, opts)
    assert again.count("skipped") == 2 and not calls
    (out / "doc-p002.png").unlink()
    third = run_files([src], counting, opts)
    assert by_name(third)["doc." + ("pdf" if kind == "pdf" else kind[:3])].status == "ok"
    assert sum(calls) == 3 and (out / "doc-p002.png").is_file()


def test_truncated_existing_output_is_redone_not_skipped(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(), src / "a.png")
    out = tmp_path / "o"
    run_files([src], invert, RunOptions(out_dir=out))
    data = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(data[: len(data) // 2])  # e.g. a copy that ran out of disk
    again = run_files([src], invert, RunOptions(out_dir=out))
    assert again.count("ok") == 1
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), 255 - gradient())


def test_one_bad_page_in_a_batch_fails_only_its_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        write_image(gradient(seed=i), src / f"p{i}.png")

    def poisoned(batch):
        if "p3" in batch.names:
            raise RuntimeError("NaN in activations")
        return invert(batch)

    summary = run_files([src], poisoned, RunOptions(out_dir=tmp_path / "o", batch_size=8))
    records = by_name(summary)
    assert records["p3.png"].status == "failed" and "NaN" in records["p3.png"].reason
    assert summary.count("ok") == 5


def test_stage_bugs_are_reported_per_file_not_as_a_crash(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        write_image(gradient(seed=i), src / f"p{i}.png")

    def buggy(batch):
        if batch.names == ["p0"]:
            raise TypeError("unsupported operand")
        if batch.names == ["p1"]:
            return ImageBatch.concat([batch, batch])  # one image too many
        return invert(batch)

    summary = run_files([src], buggy, RunOptions(out_dir=tmp_path / "o", batch_size=1))
    records = by_name(summary)
    assert "TypeError: unsupported operand" in records["p0.png"].reason
    assert "returned 2 images for 1" in records["p1.png"].reason
    assert records["p2.png"].status == "ok"


def test_interrupted_report_lists_every_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write_image(gradient(seed=i), src / f"p{i}.png")
    seen = []

    def interrupting(batch):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return invert(batch)

    report = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        run_files(
            [src], interrupting, RunOptions(out_dir=tmp_path / "o", batch_size=1, report=report)
        )
    data = json.loads(report.read_text())
    statuses = {Path(f["path"]).name: f["status"] for f in data["files"]}
    assert statuses == {
        "p0.png": "ok",
        "p1.png": "pending",
        "p2.png": "pending",
        "p3.png": "pending",
    }
    assert data["summary"]["interrupted"] and data["summary"]["exit_code"] == 130
    # Only the finished output is there, complete; a second run skips it and does the rest.
    assert [p.name for p in visible(tmp_path / "o")] == ["p0.png"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "o" / "p0.png")), 255 - gradient()
    )
    resumed = run_files([src], invert, RunOptions(out_dir=tmp_path / "o", batch_size=1))
    assert resumed.count("skipped") == 1 and resumed.count("ok") == 3


RUNNER_SCRIPT = """
import sys, time
from pathlib import Path
from aepipe.runner import RunOptions, run_files

def slow(batch):
    time.sleep(0.05)
    return batch.replace(1.0 - batch.images)

s = run_files([sys.argv[1]], slow, RunOptions(out_dir=Path(sys.argv[2]), batch_size=1,
              report=Path(sys.argv[3])))
sys.exit(int(s.exit_code))
"""


def make_pages(folder: Path, n: int, h: int = 300, w: int = 400) -> dict[str, tuple[int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for i in range(n):
        hh, ww = h + i, w - i  # distinct sizes, so a wrong output is caught
        write_image(gradient(hh, ww, seed=i), folder / f"page{i:03d}.png")
        sizes[f"page{i:03d}.png"] = (ww, hh)
    return sizes


def check_outputs_complete(out: Path, sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Every visible file is a complete output of the right size; returns their names."""
    names = []
    for path in out.iterdir():
        if path.name.startswith(TEMP_PREFIX):
            continue  # a hidden temporary file left by SIGKILL (or the output record)
        assert path.name in sizes, f"unexpected file {path.name}"
        with Image.open(path) as im:
            im.load()  # raises on a truncated file
            assert im.size == sizes[path.name]
        names.append(path.name)
    return names


def kill_after_outputs(cmd, out: Path, env, at_least: int, sig=signal.SIGKILL, timeout=90.0):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            break
        if out.is_dir() and sum(not p.name.startswith(".") for p in out.iterdir()) >= at_least:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


@pytest.mark.slow
def test_runner_killed_with_sigkill_leaves_only_complete_outputs_and_resumes(tmp_path, cli_env):
    sizes = make_pages(tmp_path / "in", 20)
    out, script = tmp_path / "o", tmp_path / "job.py"
    script.write_text(RUNNER_SCRIPT)
    cmd = [sys.executable, str(script), str(tmp_path / "in"), str(out), str(tmp_path / "r.json")]
    rc, stderr = kill_after_outputs(cmd, out, cli_env, at_least=3)
    assert rc == -signal.SIGKILL, stderr
    done = check_outputs_complete(out, sizes)
    assert 3 <= len(done) < len(sizes)
    res = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(check_outputs_complete(out, sizes)) == sorted(sizes)
    assert not temporaries(out)
    report = json.loads((tmp_path / "r.json").read_text())
    skipped = {Path(f["path"]).name for f in report["files"] if f["status"] == "skipped"}
    assert skipped == set(done)


# ---- trusted weights and configs ----------------------------------------------------------


@pytest.fixture
def weights(tmp_path) -> Path:
    from aepipe.models.classic import ClassicDenoisingAE

    torch.manual_seed(0)
    model = ClassicDenoisingAE(channels=4)
    return save_model(model, tmp_path / "w", stage="scan-denoiser", model_kwargs=model.hparams)


def test_weights_load_and_every_tampering_is_refused_naming_the_file(weights):
    _, config = load_model(weights)
    assert config["model_class"] == "ClassicDenoisingAE"
    data = bytearray((weights / WEIGHTS_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (weights / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=rf"{WEIGHTS_NAME}: sha256 .* does not match"):
        load_model(weights)
    (weights / WEIGHTS_NAME).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightsError, match="sha256"):
        load_model(weights)
    (weights / WEIGHTS_NAME).unlink()
    with pytest.raises(WeightsError, match=rf"{WEIGHTS_NAME}: missing"):
        load_model(weights)


def set_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


def test_config_that_does_not_fit_the_model_is_refused(weights):
    set_config(weights, model_kwargs={"channels": 8, "in_channels": 1})
    with pytest.raises(WeightsError, match=rf"{WEIGHTS_NAME}: does not fit ClassicDenoisingAE"):
        load_model(weights)
    set_config(weights, model_kwargs={"chanels": 4})
    with pytest.raises(WeightsError, match=rf"{CONFIG_NAME}: cannot build the model"):
        load_model(weights)
    set_config(weights, model_kwargs={"channels": 4}, model_class="os.system")
    with pytest.raises(WeightsError, match="unknown model class"):
        load_model(weights)
    (weights / CONFIG_NAME).write_text('{"schema_version": 1}')
    with pytest.raises(WeightsError, match=rf"{CONFIG_NAME}: missing keys"):
        load_model(weights)


def test_a_pickle_disguised_as_safetensors_is_never_unpickled(weights, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    (weights / WEIGHTS_NAME).write_bytes(buf.getvalue())
    set_config(weights, sha256=sha256_file(weights / WEIGHTS_NAME))  # attacker fixed the hash
    with pytest.raises(WeightsError, match=WEIGHTS_NAME):
        load_model(weights)
    assert not marker.exists()


@pytest.mark.parametrize("name", AVAILABLE_STAGES)
def test_stage_configs_name_the_bad_field(name, tmp_path):
    cls = stage_class(name)
    folder = cls.tiny(seed=0).save_pretrained(tmp_path / "w")
    with pytest.raises(ConfigError, match=rf"{name}\.no_such_knob: unknown key"):
        cls.from_pretrained(folder, no_such_knob=1)
    ranged = [
        (field, meta)
        for field, info in cls.Config.model_fields.items()
        for meta in info.metadata
        if getattr(meta, "ge", None) is not None or getattr(meta, "le", None) is not None
    ]
    for field, meta in ranged[:1]:
        bad = (meta.ge - 1) if getattr(meta, "ge", None) is not None else (meta.le + 1)
        with pytest.raises(ConfigError, match=rf"{name}\.{field}: "):
            cls.from_pretrained(folder, **{field: bad})


# ---- property-based tests -----------------------------------------------------------------


@FUZZ
@given(
    data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".tif", ".pdf", ".gif"])
)
def test_random_bytes_only_ever_raise_input_image_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        pages = list(read_pages(path, max_pixels=4_000_000))
    except InputImageError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        for page in pages:
            page_batch(page)  # whatever decoded must become a valid batch


def _valid_file(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = random_image(rng, "RGB" if fmt in ("JPEG", "WEBP") else "L", 23, 17)
    buf = io.BytesIO()
    if fmt == "PDF":
        import img2pdf

        png = io.BytesIO()
        image.save(png, format="PNG")
        return img2pdf.convert(png.getvalue())
    image.save(buf, format=fmt)
    return buf.getvalue()


VALID = {
    fmt: _valid_file(fmt, i)
    for i, fmt in enumerate(["PNG", "JPEG", "TIFF", "GIF", "BMP", "WEBP", "PDF"])
}


@FUZZ
@given(
    fmt=st.sampled_from(sorted(VALID)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_valid_files_only_ever_raise_input_image_error(fmt, flips, cut):
    data = bytearray(VALID[fmt])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    name = f"damaged.{fmt.lower()}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a leaked warning would garble the CLI's one-liners
            for page in decode_pages(bytes(data), name, max_pixels=4_000_000, dpi=72):
                page_batch(page)
    except InputImageError as exc:
        assert name in str(exc) and "\n" not in str(exc)


MODES = ["1", "L", "I;16", "P", "LA", "RGB", "RGBA", "CMYK"]


@FUZZ
@given(
    mode=st.sampled_from(MODES),
    w=st.integers(1, 70),
    h=st.integers(1, 70),
    seed=st.integers(0, 2**16),
    fmt=st.sampled_from(["PNG", "TIFF"]),
)
def test_random_valid_images_round_trip(tmp_path, mode, w, h, seed, fmt):
    image = random_image(np.random.default_rng(seed), mode, w, h)
    if mode == "CMYK" and fmt == "PNG":
        fmt = "TIFF"  # PNG has no CMYK
    path = tmp_path / f"r.{fmt.lower()}"
    image.save(path, format=fmt)
    batch = page_batch(next(read_pages(path)))
    assert batch.size == (h, w)
    assert batch.images.dtype == torch.float32
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
    if mode in ("1", "L", "I;16", "LA"):
        assert batch.channels == 1
    if mode in ("1", "L"):
        ref = np.asarray(image.convert("L"), np.float32) / 255.0
        np.testing.assert_allclose(batch.images[0, 0].numpy(), ref, atol=1e-6)
    elif mode == "I;16":
        ref = np.asarray(image, np.float32) / 65535.0
        np.testing.assert_allclose(batch.images[0, 0].numpy(), ref, atol=1e-6)
    elif mode == "RGB":
        ref = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(batch.images[0].numpy(), ref, atol=1e-6)
    out = write_image(batch.to_numpy()[0], tmp_path / "back.png")
    assert Image.open(out).size == (w, h)


_TINY: dict[str, object] = {}


def tiny(name: str):
    if name not in _TINY:
        _TINY[name] = stage_class(name).tiny(seed=0)
    return _TINY[name]


@pytest.mark.skipif(not AVAILABLE_STAGES, reason="no stage is built yet")
@settings(FUZZ, max_examples=25)
@given(
    name=st.sampled_from(AVAILABLE_STAGES or ["none"]),
    n=st.integers(1, 3),
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    gray=st.booleans(),
    seed=st.integers(0, 2**16),
    extreme=st.sampled_from(["random", "black", "white"]),
)
def test_random_batches_through_every_stage_keep_shape_and_range(
    name, n, h, w, gray, seed, extreme
):
    stage = tiny(name)
    channels = 1 if gray else 3
    if channels not in stage.input_channels:
        channels = stage.input_channels[0]
    gen = torch.Generator().manual_seed(seed)
    if extreme == "random":
        images = torch.rand(n, channels, h, w, generator=gen)
    else:
        images = torch.full((n, channels, h, w), 0.0 if extreme == "black" else 1.0)
    batch = ImageBatch(images, [f"i{k}" for k in range(n)])
    if min(h, w) < stage.min_size:
        with pytest.raises(ValueError, match="at least"):
            stage(batch)
        return
    out = stage(batch)
    assert len(out) == n and out.names == batch.names
    assert out.images.dtype == torch.float32 and out.channels in (1, 3)
    assert torch.isfinite(out.images).all()
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    if not getattr(stage, "resizes", False):
        assert out.size == (h, w)


# ---- soak: many files, some corrupt, memory flat ------------------------------------------


def soak(tmp_path: Path, n: int, stage_name: str | None = None) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    bad = set()
    for i in range(n):
        path = src / f"f{i:05d}.png"
        if i % 20 == 7:  # 5% corrupt, of rotating kinds
            kind = (i // 20) % 4
            if kind == 0:
                path.write_bytes(b"")
            elif kind == 1:
                truncated(path, Image.fromarray(gradient(40, 40)), "PNG")
            elif kind == 2:
                path.write_text("<html>not an image</html>")
            else:
                path.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            bad.add(path.name)
        else:
            h, w = rng.integers(16, 48, 2)
            write_image(rng.integers(0, 256, (h, w), dtype=np.uint8), path)
    stage = tiny(stage_name) if stage_name in AVAILABLE_STAGES else invert
    samples: list[float] = []

    def on_record(record, done, total):
        if done in (total // 4, total):
            samples.append(rss_mb())

    report = tmp_path / "r.json"
    summary = run_files(
        [src], stage, RunOptions(out_dir=tmp_path / "o", batch_size=8, report=report), on_record
    )
    assert summary.count("failed") == len(bad) == n // 20
    assert summary.count("ok") == n - len(bad)
    failed = {Path(r.path).name for r in summary.records if r.status == "failed"}
    assert failed == bad
    outs = {p.name for p in visible(tmp_path / "o")}
    assert outs == {f"f{i:05d}.png" for i in range(n)} - bad
    assert len(json.loads(report.read_text())["files"]) == n
    growth = samples[-1] - samples[0]
    print(f"soak n={n}: RSS {samples[0]:.0f} MB after {n // 4} files, {samples[-1]:.0f} MB at end")
    assert growth < 40, f"memory grew {growth:.0f} MB from file {n // 4} to file {n}"


def test_soak_200_files_5_percent_corrupt(tmp_path):
    soak(tmp_path, 200)


@pytest.mark.slow
def test_soak_2000_files_5_percent_corrupt(tmp_path):
    soak(tmp_path, 2000, "scan-denoiser")


# ---- very large pages: tiles, bounded memory ----------------------------------------------


BIG_PAGE_SCRIPT = """
import resource, sys, time
import numpy as np
import torch
from pathlib import Path
from aepipe.io import write_image
from aepipe.runner import RunOptions, run_files

torch.set_num_threads(2)
tmp = Path(sys.argv[1])
rng = np.random.default_rng(0)
page = np.full((10_000, 7_000), 235, np.uint8)
page[::40, :] = 20  # text-like dark lines
page[rng.integers(0, 10_000, 20_000), rng.integers(0, 7_000, 20_000)] = 0
write_image(page, tmp / "in" / "big.png", dpi=600)
del page
if sys.argv[2] == "identity":
    process = lambda b: b
else:
    from aepipe.stage import stage_class
    process = stage_class(sys.argv[2]).tiny(seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
s = run_files([tmp / "in"], process, RunOptions(out_dir=tmp / "out", batch_size=1))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
r = s.records[0]
print(f"seconds={time.perf_counter() - t0:.1f} peak_mb={peak:.0f} base_mb={base:.0f} "
      f"status={r.status} reason={r.reason}")
"""


def run_big_page(tmp_path: Path, process: str, cli_env) -> dict[str, str]:
    (tmp_path / "in").mkdir()
    script = tmp_path / "big.py"
    script.write_text(BIG_PAGE_SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path), process],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    line = res.stdout.strip().splitlines()[-1]
    print(line)
    fields = dict(kv.split("=", 1) for kv in line.split(" ") if "=" in kv)
    with Image.open(tmp_path / "out" / "big.png") as im:
        assert im.size == (7_000, 10_000)
    return fields


@pytest.mark.slow
def test_very_large_page_runner_overhead_is_bounded(tmp_path, cli_env):
    fields = run_big_page(tmp_path, "identity", cli_env)
    assert fields["status"] == "ok"
    # One 70 MP page: 70 MB as uint8, 280 MB as float32. Reading, converting and writing it
    # must stay within a few float copies.
    assert float(fields["peak_mb"]) < 2_000


@pytest.mark.slow
@pytest.mark.skipif("scan-denoiser" not in AVAILABLE_STAGES, reason="scan-denoiser not built yet")
def test_very_large_page_through_scan_denoiser_in_tiles(tmp_path, cli_env):
    fields = run_big_page(tmp_path, "scan-denoiser", cli_env)
    assert fields["status"] == "ok", fields
    # Without tiling, a conv net's activations on 70 MP would need tens of GB.
    assert float(fields["peak_mb"]) < 4_000


# ---- the commands, through their console scripts ------------------------------------------

COMMANDS = {
    "clean-scans": (["clean-scans"], "scan-denoiser"),
    "denoise": (["aepipe", "denoise"], "impulse-denoiser"),
    "colorize": (["colorize"], "colorizer"),
}


def command(name: str) -> list[str]:
    argv, stage = COMMANDS[name]
    if not stage_available(stage):
        pytest.skip(f"stage {stage} behind {name} is not built yet")
    return argv


def available_commands() -> list[str]:
    return [name for name, (_, stage) in sorted(COMMANDS.items()) if stage_available(stage)]


def main_command() -> str:
    """The command the signal and weights tests drive: clean-scans, or another if not built."""
    names = available_commands()
    if not names:
        pytest.skip("no command's stage is built yet")
    return "clean-scans" if "clean-scans" in names else names[0]


def test_every_command_reports_each_bad_file_on_one_line(tmp_path, tiny_weights, cli_env):
    names = available_commands()
    if not names:
        pytest.skip("no command's stage is built yet")
    src = tmp_path / "in"
    bad = bad_files(src)
    for i in range(2):
        write_image(gradient(40, 48, channels=3, seed=i), src / f"good{i}.png")
    (src / "notes.txt").write_text("skipped quietly")
    procs = {}
    for name in names:  # concurrently: each start-up pays for importing torch
        argv, stage = COMMANDS[name]
        procs[name] = start(
            [
                *argv,
                str(src),
                "--out",
                str(tmp_path / f"o-{name}"),
                "--model",
                str(tiny_weights[stage]),
                "--report",
                str(tmp_path / f"{name}.json"),
                "--device",
                "cpu",
            ],
            cli_env,
        )
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == ExitCode.SOME_FAILED, (name, stderr)
        assert "Traceback" not in stderr and "Warning" not in stderr, (name, stderr)
        lines = stderr.splitlines()
        for file, phrase in bad.items():
            hits = [ln for ln in lines if str(src / file) in ln]
            assert len(hits) == 1 and phrase in hits[0], (name, file, hits)
        assert not any("notes.txt" in ln for ln in lines)
        assert f"2 processed (2 pages), 0 skipped (up to date), {len(bad)} failed" in stderr
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert len(data["files"]) == len(bad) + 3 and data["summary"]["exit_code"] == 1
        assert data["summary"]["ignored"] == 1  # notes.txt: counted, named only on request
        ok = {Path(f["path"]).name for f in data["files"] if f["status"] == "ok"}
        assert ok == {"good0.png", "good1.png"}
        assert {p.name for p in visible(tmp_path / f"o-{name}")} == ok


def job_command(name: str, src: Path, out: Path, weights: Path, report: Path) -> list[str]:
    return [
        *COMMANDS[name][0],
        str(src),
        "--out",
        str(out),
        "--model",
        str(weights),
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--report",
        str(report),
    ]


@pytest.mark.parametrize("name", ["clean-scans", pytest.param("denoise", marks=pytest.mark.slow)])
def test_command_killed_with_sigkill_then_resumed(name, tmp_path, tiny_weights, cli_env):
    command(name)
    sizes = make_pages(tmp_path / "in", 30, 150, 200)
    out, report = tmp_path / "o", tmp_path / "r.json"
    cmd = job_command(name, tmp_path / "in", out, tiny_weights[COMMANDS[name][1]], report)
    rc, stderr = kill_after_outputs(cmd, out, cli_env, at_least=2)
    assert rc == -signal.SIGKILL, f"finished before it could be killed: {stderr}"
    done = check_outputs_complete(out, sizes)
    assert 2 <= len(done) < 30
    res = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sorted(check_outputs_complete(out, sizes)) == sorted(sizes)
    assert not temporaries(out)
    assert f"{30 - len(done)} processed" in res.stderr and f"{len(done)} skipped" in res.stderr
    data = json.loads(report.read_text())
    assert {Path(f["path"]).name for f in data["files"] if f["status"] == "skipped"} == set(done)


def test_command_stopped_by_sigterm_or_sigint_exits_130_cleanly(tmp_path, tiny_weights, cli_env):
    name = main_command()
    weights = tiny_weights[COMMANDS[name][1]]
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        root = tmp_path / sig.name
        sizes = make_pages(root / "in", 30, 150, 200)
        cmd = job_command(name, root / "in", root / "o", weights, root / "r.json")
        runs[sig] = (root, sizes, start(cmd, cli_env))
    pending = dict(runs)
    t0 = time.monotonic()
    while pending and time.monotonic() - t0 < 120:
        for sig, (root, _, proc) in list(pending.items()):
            out = root / "o"
            if proc.poll() is not None:
                del pending[sig]
            elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
                proc.send_signal(sig)
                del pending[sig]
        time.sleep(0.01)
    for sig, (root, sizes, proc) in runs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.INTERRUPTED, (sig.name, stderr)
        assert "interrupted" in stderr and "Traceback" not in stderr, stderr
        check_outputs_complete(root / "o", sizes)
        assert not temporaries(root / "o")
        data = json.loads((root / "r.json").read_text())
        assert data["summary"]["interrupted"] and len(data["files"]) == 30
        assert {f["status"] for f in data["files"]} <= {"ok", "pending"}


def test_command_with_bad_weights_exits_4_naming_the_file(tmp_path, tiny_weights, cli_env):
    name = main_command()
    write_image(gradient(), tmp_path / "in" / "a.png")
    good = tiny_weights[COMMANDS[name][1]]

    def copy(label: str) -> Path:
        folder = tmp_path / label
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        return folder

    tampered = copy("tampered")
    data = bytearray((tampered / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (tampered / WEIGHTS_NAME).write_bytes(bytes(data))
    missing = copy("missing")
    (missing / WEIGHTS_NAME).unlink()
    broken = copy("broken")
    (broken / "config.json").write_text("{not json")
    cases = {
        tampered: str(tampered / WEIGHTS_NAME),
        missing: str(missing / WEIGHTS_NAME),
        broken: str(broken / "config.json"),
    }
    procs = {
        folder: start(
            [
                *COMMANDS[name][0],
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / f"o_{folder.name}"),
                "--model",
                str(folder),
                "--device",
                "cpu",
            ],
            cli_env,
        )
        for folder in cases
    }
    for folder, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == ExitCode.MODEL_ERROR, (folder.name, stderr)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and cases[folder] in lines[0], (folder.name, stderr)
        assert not (tmp_path / f"o_{folder.name}").exists()


def test_weights_that_do_not_fit_give_one_line(weights):
    set_config(weights, model_kwargs={"channels": 8, "in_channels": 1})
    with pytest.raises(WeightsError) as info:
        load_model(weights)
    assert str(weights / WEIGHTS_NAME) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", AVAILABLE_STAGES)
def test_stored_stage_config_with_unknown_key_names_the_weights_file(name, tmp_path):
    from aepipe.stage import load_stage

    folder = stage_class(name).tiny(seed=0).save_pretrained(tmp_path / "w")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["stage_config"]["tile_sise"] = 64
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=rf"{CONFIG_NAME}.*tile_sise"):
        load_stage(folder)


@pytest.mark.parametrize("fmt", ["png", "tiff", "pdf", "jpeg"])
def test_very_small_images_in_every_output_format(tmp_path, fmt):
    src = tmp_path / "in"
    src.mkdir()
    write_image(np.full((3, 3), 40, np.uint8), src / "t.png")
    write_image(np.full((1, 5, 3), 200, np.uint8), src / "line.png")
    summary = run_files([src], invert, RunOptions(out_dir=tmp_path / "o", fmt=fmt, dpi=300))
    assert summary.count("ok") == 2, [r.reason for r in summary.records]
    shapes = sorted(
        p.pixels.shape[:2] for f in visible(tmp_path / "o") for p in read_pages(f, dpi=300)
    )
    if fmt != "pdf":  # PDF pages under 3 pt are scaled up to PDF's minimum page size
        assert shapes == [(1, 5), (3, 3)]
