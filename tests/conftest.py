from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


# The longest files (about half a minute to two minutes each) run first: `make test` hands whole
# files to its workers in collection order, and a long file handed out last runs alone while
# the others have nothing left to do.
LONG_FILES = ("test_ray.py", "test_packaging.py", "test_faces_frontends.py", "test_faces_photos.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: same order
    # Data tests skip (rather than fail) on a fresh checkout that has no ../shared.
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} not present")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write into: without write permission, or (as root, whom permissions
    do not stop) a read-only tmpfs mounted on it; skips where neither can be made."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip(
            "cannot mount a read-only tmpfs here (root in a container without CAP_SYS_ADMIN)"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for running the console scripts of this interpreter's venv."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class TinyWeights(dict):
    """Tiny seeded weights folders of the registered stages, written on first use."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        from aepipe.stage import stage_class

        folder = stage_class(name).tiny(seed=0).save_pretrained(self.root / name)
        self[name] = folder
        return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stage name -> a weights folder of its tiny seeded model (shared; do not modify)."""
    return TinyWeights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture
def one_synthetic_val_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scan training validates on one small synthetic page (the shipped set costs seconds)."""
    import aepipe.train.scan_denoiser as mod

    monkeypatch.setattr(mod, "SYNTH_VAL_PAGES", [(0, 64, 64, 100)])


@pytest.fixture
def one_torch_thread():
    """Tiny convolutions gain nothing from threads, and spinning threads crawl on a busy box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
