"""Colorizer benchmark: baselines and models on the colour LFW test faces, side by side.

Run::

    .venv/bin/python benchmarks/colorizer.py --data ../shared/data/faces/lfw_64.npz \
        --model weights/colorizer --mse-model runs/colorizer-mse [--fid]

Every system gets the 8-bit rounded BT.601 gray of each test face (what a gray PNG holds) and
is scored against the real colour face. Rows:

* gray replicated to RGB;
* gray + the training set's mean chroma (one (Cb, Cr) for every pixel);
* gray + the training set's per-pixel mean chroma map (64x64x2);
* the plain-MSE model (``--mse-model``: regression head trained with MSE only);
* our model (``--model``) through the ``colorizer`` stage with its shipped defaults.

The chroma baselines are laid onto the input luma the same way the stage does
(:func:`aepipe.models.colorizer.gamut_fit`), so every row keeps the input's gray.

Metrics (benchmarks/metrics.py): PSNR and SSIM of the 8-bit RGB against the real face;
Hasler & Suesstrunk colorfulness (and its share of the real faces' mean); mean absolute error
between the BT.601 gray of the 8-bit output and the gray input, in gray levels; FID against the
real colour test faces with ``--fid`` (Inception on CPU: about 1 s per image on an idle core,
so 995 faces per row take a while; ``--fid-n`` scores the first N faces only).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import write_report  # noqa: E402  (a sibling module)

from benchmarks.metrics import colorfulness, fid, psnr, ssim  # noqa: E402


def command_line() -> str:
    """This run's command as it pastes into a shell (labels with spaces or parentheses quoted)."""
    return ".venv/bin/python " + shlex.join(sys.argv)


def to_u8(t) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C)."""
    return (t.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def run_stage(folder: str, gray_u8: np.ndarray, **overrides) -> tuple[np.ndarray, float]:
    """Colorize uint8 gray (N, H, W) with a weights folder; returns RGB uint8 and ms/image."""
    from aepipe.batch import ImageBatch
    from aepipe.stages.colorizer import Colorizer

    stage = Colorizer.from_pretrained(folder, **overrides)
    outs = []
    t0 = time.perf_counter()
    for i in range(0, len(gray_u8), 200):
        outs.append(stage(ImageBatch.from_numpy(gray_u8[i : i + 200, ..., None])).to_numpy())
    ms = 1000 * (time.perf_counter() - t0) / len(gray_u8)
    return np.concatenate(outs), ms


def luma_error(rgb_u8: np.ndarray, gray_u8: np.ndarray) -> float:
    """Mean |BT.601 gray of the 8-bit output - input gray| in gray levels."""
    from aepipe.batch import LUMA_WEIGHTS

    return float(np.abs(rgb_u8.astype(np.float64) @ np.array(LUMA_WEIGHTS) - gray_u8).mean())


def strip(gray_u8: np.ndarray, ours: np.ndarray, real: np.ndarray, path: Path, n: int = 8) -> None:
    """Save a picture strip: rows gray input, ours, real; ``n`` faces, 2x upscaled."""
    from PIL import Image

    rows = [np.repeat(gray_u8[:n, ..., None], 3, -1), ours[:n], real[:n]]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def sample_strip(folder: str, path: Path) -> None:
    """Gray input | ours | real colour photo, for a picture from sample_inputs/ (public domain).

    The LFW strip above shows dataset faces and stays out of the repository; this one can be
    shown in the README.
    """
    from PIL import Image

    from aepipe import apply, load_stage

    name = "astronaut_face.png"
    gray = np.asarray(Image.open(ROOT / "sample_inputs/faces" / name))
    real = np.asarray(Image.open(ROOT / "sample_inputs/faces_color_targets" / name).convert("RGB"))
    ours = apply(load_stage(folder), gray)
    row = np.concatenate([np.repeat(gray[..., None], 3, -1), ours, real], axis=1)
    Image.fromarray(row).save(path)


def main() -> None:
    import torch

    from aepipe.models.colorizer import gamut_fit
    from aepipe.train.colorizer import gray_and_chroma, load_color_faces

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/faces/lfw_64.npz")
    ap.add_argument("--model", default="colorizer")
    ap.add_argument("--mse-model", default=None, help="plain-MSE weights folder (table row)")
    ap.add_argument("--mse-label", default="plain-MSE model")
    ap.add_argument("--model-label", default="StackNN (ours)")
    ap.add_argument(
        "--ship",
        choices=("model", "mse"),
        default="model",
        help="which of the two is the shipped model (strip, --update-weights)",
    )
    ap.add_argument("--fid", action="store_true", help="also compute FID (slow on CPU)")
    ap.add_argument("--fid-n", type=int, default=0, help="FID on the first N faces (0: all)")
    ap.add_argument(
        "--temperatures", default="", help="comma list of stage temperatures (default: shipped)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/colorizer.md")
    ap.add_argument("--update-weights", action="store_true", help="write metrics into config.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    train_u8, _ = load_color_faces(args.data, "train")
    test_u8, _ = load_color_faces(args.data, "test")
    # Baseline statistics come from the train split only.
    _, train_c, _ = gray_and_chroma(train_u8)
    gray, gray_c, _ = gray_and_chroma(test_u8)
    gray_u8 = to_u8(gray)[..., 0]
    n = len(test_u8)
    mean_c = train_c.mean(dim=(0, 2, 3), keepdim=True)
    map_c = train_c.mean(dim=0, keepdim=True)
    del train_c

    systems: list[tuple[str, np.ndarray, str]] = [
        ("gray replicated", np.repeat(gray_u8[..., None], 3, -1), "no colour"),
        ("gray + mean chroma", to_u8(gamut_fit(gray, mean_c.expand_as(gray_c))), "train mean"),
        ("gray + mean chroma map", to_u8(gamut_fit(gray, map_c.expand_as(gray_c))), "per pixel"),
    ]
    speed = {}
    if args.mse_model:
        rgb, ms = run_stage(args.mse_model, gray_u8)
        systems.append((args.mse_label, rgb, "regression head, MSE + luma"))
        speed[args.mse_label] = ms
    temps = [float(t) for t in args.temperatures.split(",") if t] or [None]
    for t in temps:
        over = {} if t is None else {"temperature": t}
        ours, ms = run_stage(args.model, gray_u8, **over)
        name = args.model_label + ("" if t is None else f" T={t:g}")
        systems.append((name, ours, "chroma bins, rebalanced CE + L1 + luma"))
        speed[name] = ms

    real_cf = colorfulness(test_u8)
    rows = []
    for name, rgb, note in systems:
        row = {
            "system": name,
            "psnr_db": psnr(test_u8, rgb),
            "ssim": ssim(test_u8, rgb),
            "colorfulness": colorfulness(rgb),
            "colorfulness_pct_real": 100 * colorfulness(rgb) / real_cf,
            "luma_mae_levels": luma_error(rgb, gray_u8),
            "note": note,
        }
        if name in speed:
            row["ms_per_image"] = speed[name]
        if args.fid:
            k = args.fid_n or n
            log(f"FID {name} ({k} faces)")
            row["fid"] = fid(test_u8[:k], rgb[:k], log=log)
        rows.append(row)
        log(f"{name}: PSNR {row['psnr_db']:.2f} colorfulness {row['colorfulness']:.1f}")

    fid_note = (
        f"FID vs the real colour test faces ({args.fid_n or n} faces)"
        if args.fid
        else "FID not measured in this run (pass --fid)"
    )
    lines = [
        "# Colorizer benchmark (LFW 64x64 colour test faces)",
        "",
        f"{n} test faces; input: 8-bit BT.601 gray of each; scored against the real colour face. "
        f"Real faces' colorfulness: {real_cf:.1f}. {fid_note}. "
        "Luma error: mean |BT.601 gray of the 8-bit output - input gray| in gray levels.",
        "",
        "| system | PSNR dB | SSIM | colorfulness (% real) | luma err | FID | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = f"{r['fid']:.1f}" if "fid" in r else "-"
        lines.append(
            f"| {r['system']} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['colorfulness']:.1f} "
            f"({r['colorfulness_pct_real']:.0f}%) | {r['luma_mae_levels']:.3f} | {f} "
            f"| {r['note']} |"
        )
    lines += ["", f"Command: `{command_line()}`", ""]
    text = "\n".join(lines)
    print(text)
    payload = {"real_colorfulness": real_cf, "n": n, "rows": rows, "argv": sys.argv}
    write_report(args.out, text, payload)
    shipped_name = args.mse_label if args.ship == "mse" else systems[-1][0]
    shipped = next(i for i, s in enumerate(systems) if s[0] == shipped_name)
    strip(gray_u8, systems[shipped][1], test_u8, args.out.with_name("colorizer_strip.png"))
    sample_strip(
        args.mse_model if args.ship == "mse" else args.model,
        args.out.with_name("colorizer_sample_strip.png"),
    )
    if args.update_weights:
        from aepipe.weights import resolve, update_metrics

        r = rows[shipped]
        update_metrics(
            resolve(args.mse_model if args.ship == "mse" else args.model),
            {f"test_{k}": v for k, v in r.items() if k not in ("system", "note")}
            | {"test_real_colorfulness": real_cf},
        )


if __name__ == "__main__":
    main()
