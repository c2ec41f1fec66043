"""aepipe installs as one import package, next to anything, and the built wheel is what works.

The wheel tests build the real wheel and sdist (``make dist`` does the same), install the wheel
into a fresh virtual environment with no checkout next to it, and run the console scripts and
the library call there. The fresh environment takes aepipe's dependencies (torch, ...) from the
test interpreter's site-packages through a ``.pth`` entry, so no multi-GB download happens; only
the wheel itself is installed into it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT
from test_api import python_blocks

from aepipe.weights import shipped_names

SAMPLE_PAGE = ROOT / "sample_inputs" / "scans" / "ddd_like_540x258.png"
# The weights travel in the wheel (about 60 MB with the photo colorizer's 18 MB ImageNet trunk);
# PyPI takes files up to 100 MB without asking.
WHEEL_LIMIT_MB = 70
# Weights of benchmarks only (no command loads them): in the repository, not in the wheel.
NOT_IN_WHEEL = {"mnist-vae", "face-ae"}
LIBRARY_CALL = textwrap.dedent(
    """
    import numpy as np
    import aepipe
    from aepipe import apply, load_stage

    page = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    out = apply(load_stage("scan-denoiser"), page)
    assert out.shape == page.shape and out.dtype == np.uint8
    print(aepipe.__file__)
    """
)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert res.returncode == 0, f"{args}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and sdist, built from the checkout as ``make dist`` builds them."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    return {"wheel": next(out.glob("aepipe-*.whl")), "sdist": next(out.glob("aepipe-*.tar.gz"))}


@pytest.fixture(scope="module")
def fresh_venv(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel installed; dependencies reach it through a ``.pth``."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys._base_executable, "-m", "venv", str(venv)])  # type: ignore[attr-defined]
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(dists["wheel"])])
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
        ).stdout.strip()
    )
    # Plain path entries: the test environment's own .pth files (its editable aepipe) are not run.
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (site / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    return venv


def _fresh_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def test_wheel_holds_one_import_package_with_the_weights(dists: dict[str, Path]) -> None:
    wheel = dists["wheel"]
    assert wheel.stat().st_size < WHEEL_LIMIT_MB * 2**20, f"{wheel.stat().st_size / 2**20:.1f} MB"
    members = zipfile.ZipFile(wheel).namelist()
    tops = {m.split("/", 1)[0] for m in members}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"aepipe"}, tops
    assert "aepipe/py.typed" in members
    assert "aepipe/models/vae.py" in members
    for name in shipped_names():
        packed = f"aepipe/_weights/{name}/model.safetensors" in members
        assert packed == (name not in NOT_IN_WHEEL), name
        assert (f"aepipe/_weights/{name}/config.json" in members) == packed, name
    assert "aepipe/_weights/README.md" in members  # the weights' terms of use
    with tarfile.open(dists["sdist"]) as tar:
        sdist = tar.getnames()
    assert any(n.endswith("pipeline/stage.py") for n in sdist)
    assert any(n.endswith("weights/scan-denoiser/model.safetensors") for n in sdist)
    # The README's quick start and links work in an unpacked sdist.
    for part in ("Makefile", "docs/RESULTS.md", "examples/faces.toml", "sample_inputs/scans"):
        assert any(n.split("/", 1)[-1].startswith(part) for n in sdist), part
    assert not any("/tests/" in n or "/runs/" in n or "/demo_out/" in n for n in sdist)


def test_installed_wheel_runs_without_the_checkout(fresh_venv: Path, tmp_path: Path) -> None:
    from aepipe import __version__

    env = _fresh_env(fresh_venv)
    bin_ = fresh_venv / "bin"
    res = _run([str(bin_ / "aepipe"), "--version"], env=env, cwd=tmp_path)
    assert res.stdout.strip() == f"aepipe {__version__}"
    shutil.copy(SAMPLE_PAGE, tmp_path / "page.png")
    _run(
        [str(bin_ / "clean-scans"), "page.png", "--out", "clean", "--quiet"], env=env, cwd=tmp_path
    )
    assert (tmp_path / "clean" / "page.png").is_file()
    res = _run([str(bin_ / "python"), "-c", LIBRARY_CALL], env=env, cwd=tmp_path)
    assert str(fresh_venv) in res.stdout, res.stdout


def _shadowing_project(root: Path) -> Path:
    """A user's project with its own ``models`` and ``pipeline`` packages."""
    for name in ("models", "pipeline"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    return root


SHADOW_CHECK = textwrap.dedent(
    """
    import models, pipeline
    import numpy as np
    from aepipe import apply, load_stage

    out = apply(load_stage("salt-pepper"), np.full((32, 32), 128, np.uint8))
    assert out.shape == (32, 32)
    assert models.OWNER == "user models" and pipeline.OWNER == "user pipeline"
    import aepipe.models, aepipe.stage
    assert "user" not in repr(aepipe.models)
    print("ok")
    """
)


def test_user_packages_named_models_and_pipeline_do_not_clash(tmp_path: Path) -> None:
    project = _shadowing_project(tmp_path / "project")
    env = dict(os.environ, PYTHONPATH=str(project))
    res = _run([sys.executable, "-c", SHADOW_CHECK], env=env, cwd=project)
    assert res.stdout.strip().endswith("ok")


def test_user_packages_do_not_clash_with_the_installed_wheel(
    fresh_venv: Path, tmp_path: Path
) -> None:
    project = _shadowing_project(tmp_path / "project")
    env = dict(_fresh_env(fresh_venv), PYTHONPATH=str(project))
    res = _run([str(fresh_venv / "bin" / "python"), "-c", SHADOW_CHECK], env=env, cwd=project)
    assert res.stdout.strip().endswith("ok")


def test_version_has_one_source() -> None:
    import aepipe
    from aepipe._version import __version__

    assert aepipe.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {__version__}" in changelog, "CHANGELOG.md has no entry for this version"


def test_import_aepipe_stays_torch_free() -> None:
    code = "import sys, aepipe; aepipe.__version__; print('torch' in sys.modules)"
    assert _run([sys.executable, "-c", code]).stdout.strip() == "False"


def test_readme_examples_pass_mypy_strict(fresh_venv: Path, tmp_path: Path) -> None:
    """A user's call site, as the README writes it, type-checks against the installed wheel."""
    blocks = [code for _, code in python_blocks(ROOT / "README.md")]
    assert blocks, "README.md has no python blocks"
    for i, code in enumerate(blocks):
        (tmp_path / f"example_{i}.py").write_text(code)
    # torch is typed but huge: analysing it took most of the check's half minute, and what is
    # checked here is the call sites' use of aepipe's API (torch types read as Any).
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n[mypy-torch.*]\nfollow_imports = skip\n")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent"]
    cmd += ["--config-file", str(config)]
    cmd += ["--python-executable", str(fresh_venv / "bin" / "python")]
    cmd += ["--cache-dir", str(tmp_path / ".mypy_cache"), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
