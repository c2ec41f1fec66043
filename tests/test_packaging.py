"""The installed wheel finds its shipped weights (not only an editable checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from pipeline.weights import shipped_names


@pytest.mark.slow
def test_wheel_contains_weights_and_loads_them_outside_the_checkout(tmp_path):
    names = shipped_names()
    assert names, "no shipped weights found in the checkout"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    wheel = next(tmp_path.glob("aepipe-*.whl"))
    members = zipfile.ZipFile(wheel).namelist()
    for name in names:
        assert f"aepipe_weights/{name}/model.safetensors" in members
        assert f"aepipe_weights/{name}/config.json" in members
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    code = (
        "import pipeline.weights as w, sys; "
        "assert 'site' in w.__file__, w.__file__; "
        "print(w.shipped_weights_dir()); "
        f"[w.load_model(n) for n in {names!r}]"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert str(target) in res.stdout
