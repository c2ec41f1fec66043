"""File commands in operation: report errors, unreadable folders, page progress, --threads,
interrupts at every stage (start-up, model loading, mid-run) and how to continue after them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factory import gradient, start
from PIL import Image

from aepipe.errors import ExitCode
from aepipe.io import write_image

# A real entry point (clean_scans_main: run_app, typer, the command) with one thing patched
# before it runs: what a test cannot arrange from outside (a disk that fills up as the report
# is written, a model that takes long to load).
WRAPPED = """
import sys, time
from pathlib import Path
{patch}
from aepipe.cli.main import clean_scans_main
sys.argv = ["clean-scans", *sys.argv[1:]]
clean_scans_main()
"""

REPORT_DISK_FULL = """
import errno
import aepipe.runner as runner
def write_report(path, summary):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
runner.write_report = write_report
"""

OS_ERROR_AFTER_RUN = """
import errno
import aepipe.runner as runner
real = runner.run_files
def run_files(*args, **kwargs):
    real(*args, **kwargs)
    raise OSError(errno.EIO, "Input/output error", "/mnt/gone/.aepipe-outputs.jsonl")
runner.run_files = run_files
"""

SLOW_LOAD = """
from aepipe.stages.scan_denoiser import ScanDenoiser
marker = Path(sys.argv.pop())
def from_pretrained(*args, **kwargs):
    marker.write_text("loading")
    time.sleep(120)
ScanDenoiser.from_pretrained = from_pretrained
"""


def wrapped(patch: str, *args: str) -> list[str]:
    return [sys.executable, "-c", WRAPPED.format(patch=patch), *map(str, args)]


def pages(folder: Path, n: int, h: int = 40, w: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{i:03d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        write_image(gradient(h, w, seed=i), path)
    return paths


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


# ---- 1. a report that cannot be written, other OSErrors after the run ------------------------


def test_unwritable_report_prints_the_summary_one_error_line_and_the_runs_own_code(
    tmp_path, tiny_weights, cli_env
):
    """The report's disk was full: a traceback and exit 1, though every file was cleaned."""
    weights = tiny_weights["scan-denoiser"]
    pages(tmp_path / "in", 2)
    (tmp_path / "bad").mkdir()
    pages(tmp_path / "bad", 1)
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    common = ["--model", weights, "--device", "cpu"]
    procs = {
        "ok": start(
            wrapped(
                REPORT_DISK_FULL,
                tmp_path / "in",
                "--out",
                tmp_path / "o1",
                *common,
                "--report",
                tmp_path / "r1.json",
            ),
            cli_env,
        ),
        "one failed": start(
            wrapped(
                REPORT_DISK_FULL,
                tmp_path / "bad",
                "--out",
                tmp_path / "o2",
                *common,
                "--report",
                tmp_path / "r2.json",
            ),
            cli_env,
        ),
        "os error": start(
            wrapped(OS_ERROR_AFTER_RUN, tmp_path / "in", "--out", tmp_path / "o3", *common),
            cli_env,
        ),
    }
    out = {
        name: (proc.communicate(timeout=300)[1], proc.returncode) for name, proc in procs.items()
    }

    stderr, rc = out["ok"]
    no_traceback(stderr)
    assert rc == ExitCode.OK, stderr
    lines = stderr.splitlines()
    assert lines[-3].startswith("2 processed (2 pages), 0 skipped (up to date), 0 failed"), lines
    assert lines[-2] == f"outputs in {tmp_path / 'o1'}"
    assert lines[-1] == (
        f"error: cannot write the report {tmp_path / 'r1.json'}: No space left on device"
    )
    assert len(list((tmp_path / "o1").glob("*.png"))) == 2

    stderr, rc = out["one failed"]
    no_traceback(stderr)
    assert rc == ExitCode.SOME_FAILED, stderr
    assert "1 processed (1 page), 0 skipped (up to date), 1 failed" in stderr
    assert stderr.splitlines()[-1].startswith("error: cannot write the report")

    stderr, rc = out["os error"]
    no_traceback(stderr)
    assert rc == ExitCode.SOME_FAILED
    assert stderr.strip() == "error: /mnt/gone/.aepipe-outputs.jsonl: Input/output error"


# ---- 2. a folder that cannot be read ---------------------------------------------------------


def unprivileged() -> list[str]:
    """A prefix that runs a command without root's right to read any folder."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE")
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("root, and setpriv may not drop CAP_DAC_OVERRIDE here")
    return prefix


def test_unreadable_sub_folder_is_named_with_its_reason(tmp_path, tiny_weights, cli_env):
    """It was counted as failed but named nowhere; alone, it gave 'no image files found'."""
    weights = str(tiny_weights["scan-denoiser"])
    mixed, alone = tmp_path / "mixed", tmp_path / "alone"
    pages(mixed, 1)
    pages(mixed / "locked", 1)
    (alone / "locked").mkdir(parents=True)
    for folder in (mixed / "locked", alone / "locked"):
        folder.chmod(0)
    try:
        common = ["-r", "--model", weights, "--device", "cpu"]
        procs = [
            start(
                [
                    *unprivileged(),
                    "clean-scans",
                    str(mixed),
                    "--out",
                    str(tmp_path / "o1"),
                    *common,
                ],
                cli_env,
            ),
            start(
                [
                    *unprivileged(),
                    "clean-scans",
                    str(alone),
                    "--out",
                    str(tmp_path / "o2"),
                    "--report",
                    str(tmp_path / "r.json"),
                    *common,
                ],
                cli_env,
            ),
        ]
        (err_mixed, err_alone) = (p.communicate(timeout=300)[1] for p in procs)
    finally:
        for folder in (mixed / "locked", alone / "locked"):
            folder.chmod(0o755)
    no_traceback(err_mixed)
    assert procs[0].returncode == ExitCode.SOME_FAILED, err_mixed
    named = [ln for ln in err_mixed.splitlines() if str(mixed / "locked") in ln]
    assert named == [f"failed {mixed / 'locked'}: cannot list folder (permission denied)"]
    assert "1 processed (1 page), 0 skipped (up to date), 1 failed" in err_mixed

    no_traceback(err_alone)
    assert procs[1].returncode == ExitCode.NOTHING_PROCESSED, err_alone
    assert err_alone.splitlines() == [
        f"failed {alone / 'locked'}: cannot list folder (permission denied)",
        f"error: no image files found in {alone} (1 folder could not be read)",
    ]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["exit_code"] == ExitCode.NOTHING_PROCESSED
    assert [(f["path"], f["status"]) for f in report["files"]] == [
        (str(alone / "locked"), "failed")
    ]


# ---- 3. page progress within a file ----------------------------------------------------------


def test_bar_moves_page_by_page_within_a_multi_page_file():
    from aepipe.cli.common import progress_bar
    from aepipe.runner import FileRecord

    with progress_bar(3, quiet=True) as bar:
        task = bar.progress.tasks[0]
        bar(FileRecord("a.png", "ok", pages=1), 1, 3)
        bar.on_page(Path("b.pdf"), 12, 30)
        assert task.completed == pytest.approx(1.4)
        assert task.fields["page"] == "page 12/30"
        assert bar._rate()  # 13 pages counted, not 1
        bar.on_page(Path("b.pdf"), 30, 30)
        assert task.completed < 2  # done only once written
        bar.on_page(Path("c.gif"), 4, 0)  # frame count unknown
        assert task.fields["page"] == "page 4"
        bar(FileRecord("b.pdf", "ok", pages=30), 2, 3)
        assert (task.completed, task.fields["page"]) == (2, "")
        assert bar.pages == 31 and [r.path for r in bar.records] == ["a.png", "b.pdf"]


def test_every_page_of_a_multi_page_file_reaches_the_bar(tmp_path, tiny_weights, monkeypatch):
    from typer.testing import CliRunner

    from aepipe.cli import common
    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    frames = [Image.fromarray(gradient(30, 40, seed=i)) for i in range(3)]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "m.tif", save_all=True, append_images=frames[1:])
    seen = []
    monkeypatch.setattr(common.FileProgress, "on_page", lambda self, *a: seen.append(a))
    res = CliRunner().invoke(
        app,
        [
            "denoise",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tiny_weights["impulse-denoiser"]),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert seen == [(tmp_path / "in" / "m.tif", i, 3) for i in (1, 2, 3)]
    assert "pages/s" not in res.output  # no bar where stderr is not a terminal


def on_a_terminal(cmd: list[str], env: dict[str, str]) -> bytes:
    """What ``cmd`` writes to stderr when stderr is a terminal (a pseudo-terminal)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave
    )
    os.close(slave)
    shown = b""
    while True:  # read as it comes, so a full terminal buffer never blocks the command
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, shown
    return shown


def test_bar_is_drawn_on_a_terminal_but_not_with_quiet(tmp_path, tiny_weights, cli_env):
    pages(tmp_path / "in", 2)
    env = {**cli_env, "TERM": "xterm", "COLUMNS": "120"}
    cmd = [
        "clean-scans",
        str(tmp_path / "in"),
        "--model",
        str(tiny_weights["scan-denoiser"]),
        "--device",
        "cpu",
    ]
    shown = on_a_terminal([*cmd, "--out", str(tmp_path / "o1")], env)
    assert b"files" in shown and b"2/2" in shown, shown
    quiet = on_a_terminal([*cmd, "--out", str(tmp_path / "o2"), "-q"], env)
    assert b"files" not in quiet and b"2 processed" in quiet, quiet


# ---- 4. --threads ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["clean-scans", "colorize", "denoise"])
def test_threads_option_is_documented_on_every_file_command(command):
    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"})
    assert res.exit_code == 0
    assert "--threads" in res.output and "CPU threads for the model" in res.output


def test_threads_sets_torchs_threads_and_leaves_them_alone_without_it(tmp_path, tiny_weights):
    import torch
    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    pages(tmp_path / "in", 1)
    before = torch.get_num_threads()
    args = [
        "denoise",
        str(tmp_path / "in"),
        "--model",
        str(tiny_weights["impulse-denoiser"]),
        "--device",
        "cpu",
        "-q",
    ]
    try:
        torch.set_num_threads(2)
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o1")])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 2
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o2"), "--threads", "3"])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_non_image_files_are_counted_in_the_summary_and_named_when_asked(tmp_path, tiny_weights):
    """A folder's other files were left out without a word (a scanner's PNG named `page_e`
    too); they are counted in the summary line and named with --list-ignored."""
    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    pages(tmp_path / "in", 1)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    model = ["--model", str(tiny_weights["impulse-denoiser"]), "--device", "cpu"]
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "in"), *model, "-q"])
    assert res.exit_code == 0, res.output
    assert "1 ignored (not images)" in res.output and "notes.txt" not in res.output
    args = ["denoise", str(tmp_path / "in"), *model, "--out", str(tmp_path / "o2")]
    res = CliRunner().invoke(app, [*args, "--list-ignored"])
    assert f"ignored {tmp_path / 'in' / 'notes.txt'}: not an image file name" in res.output
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "notes.txt").write_text("not an image")
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "only"), *model])
    assert res.exit_code == ExitCode.NOTHING_PROCESSED
    assert "(1 other entry: --list-ignored names them)" in res.output


# ---- 5. interrupts ---------------------------------------------------------------------------


def summary_counts(line: str) -> dict[str, int]:
    """'3 processed (3 pages), 0 skipped (up to date), 0 failed in 1.0 s, 27 not reached ...'"""
    words = line.replace(",", "").split()
    return {
        "ok": int(words[0]),
        "skipped": int(words[words.index("skipped") - 1]),
        "failed": int(words[words.index("failed") - 1]),
        "pending": int(words[words.index("reached") - 2]),
    }


def test_mid_run_interrupt_prints_the_summary_and_how_to_continue(tmp_path, tiny_weights, cli_env):
    """It printed only 'interrupted: ...'; after --overwrite a plain re-run redoes every file."""
    weights = str(tiny_weights["scan-denoiser"])
    runs = {}
    for sig, overwrite in ((signal.SIGINT, []), (signal.SIGTERM, ["--overwrite"])):
        root = tmp_path / sig.name
        pages(root / "in", 30, 150, 200)
        cmd = [
            "clean-scans",
            str(root / "in"),
            "--out",
            str(root / "o"),
            "--model",
            weights,
            "--device",
            "cpu",
            "--batch-size",
            "1",
            "--report",
            str(root / "r.json"),
            *overwrite,
        ]
        runs[sig] = (root, bool(overwrite), start(cmd, cli_env))
    waiting = dict(runs)
    t0 = time.monotonic()
    while waiting and time.monotonic() - t0 < 120:
        for sig, (root, _, proc) in list(waiting.items()):
            out = root / "o"
            if proc.poll() is not None:
                del waiting[sig]
            elif out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
                proc.send_signal(sig)
                del waiting[sig]
        time.sleep(0.01)
    for sig, (root, overwrite, proc) in runs.items():
        _, stderr = proc.communicate(timeout=120)
        no_traceback(stderr)
        assert proc.returncode == ExitCode.INTERRUPTED, (sig.name, stderr)
        line, hint = stderr.splitlines()[-2:]
        counts = summary_counts(line)
        report = json.loads((root / "r.json").read_text())["summary"]
        assert counts == {
            "ok": report["processed"],
            "skipped": report["skipped"],
            "failed": report["failed"],
            "pending": report["pending"],
        }
        assert counts["ok"] >= 1 and counts["pending"] >= 1 and sum(counts.values()) == 30
        if overwrite:
            assert "run the same command without --overwrite" in hint, hint
        else:
            assert "run the same command again" in hint, hint


def test_interrupt_while_the_model_loads_writes_the_report(tmp_path, tiny_weights, cli_env):
    pages(tmp_path / "in", 3)
    procs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        marker = tmp_path / f"loading-{sig.name}"
        cmd = wrapped(
            SLOW_LOAD,
            tmp_path / "in",
            "--out",
            tmp_path / f"o-{sig.name}",
            "--report",
            tmp_path / f"{sig.name}.json",
            marker,
        )
        procs[sig] = (marker, start(cmd, cli_env))
    for sig, (marker, proc) in procs.items():
        t0 = time.monotonic()
        while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        proc.send_signal(sig)
    for sig, (_, proc) in procs.items():
        _, stderr = proc.communicate(timeout=60)
        no_traceback(stderr)
        assert proc.returncode == ExitCode.INTERRUPTED, (sig.name, stderr)
        assert "0 processed (0 pages), 0 skipped (up to date), 0 failed" in stderr
        assert "3 not reached (interrupted)" in stderr
        report = json.loads((tmp_path / f"{sig.name}.json").read_text())
        assert report["summary"]["interrupted"] and report["summary"]["exit_code"] == 130
        assert [f["status"] for f in report["files"]] == ["pending"] * 3


PAUSE = """
import importlib
mod = importlib.import_module({module!r})
marker = Path(sys.argv.pop())
real = getattr(mod, {name!r})
def paused(*args, **kwargs):
    marker.write_text("here")
    time.sleep(120)
    return real(*args, **kwargs)
setattr(mod, {name!r}, paused)
"""


def test_interrupt_during_start_up_is_one_line_and_exit_130(tmp_path, cli_env):
    """Importing the commands and building the options (which imports torch) ran outside the
    handlers: Ctrl-C gave a 49-line traceback (or click's 'Aborted!', exit 1) and SIGTERM
    the default exit 143, where the docs say 130."""
    pages(tmp_path / "in", 2)
    phases = {
        "importing the commands": ("aepipe.registry", "cli_modules"),
        "building the options": ("aepipe.cli.common", "file_options"),
    }
    procs = {}
    for phase, (module, name) in phases.items():
        for sig in (signal.SIGINT, signal.SIGTERM):
            marker = tmp_path / f"{name}-{sig.name}"
            patch = PAUSE.format(module=module, name=name)
            out = tmp_path / f"o-{name}-{sig.name}"
            procs[phase, sig] = (
                marker,
                start(wrapped(patch, tmp_path / "in", "--out", out, marker), cli_env),
            )
    for (_, sig), (marker, proc) in procs.items():
        t0 = time.monotonic()
        while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        proc.send_signal(sig)
    for (phase, sig), (_, proc) in procs.items():
        _, stderr = proc.communicate(timeout=60)
        no_traceback(stderr)
        assert proc.returncode == ExitCode.INTERRUPTED, (phase, sig.name, stderr)
        assert len(stderr.splitlines()) == 1 and stderr.startswith("interrupted"), stderr
