"""Salt-and-pepper denoising: our ImpulseDenoiser against median filters and the tutorial AE.

    .venv/bin/python benchmarks/salt_pepper.py --data ../shared/data \
        [--model salt-pepper] [--tutorial runs/salt-pepper-tutorial] [--limit N] [--threads 1]

One run measures, side by side, on the Fashion-MNIST and MNIST test sets (never trained on; the
model saw Fashion-MNIST train only):

* quality: mean per-image PSNR (dB, [0, 1] images) and SSIM (7x7 uniform window, as
  ``skimage.metrics.structural_similarity`` with ``data_range=1``) at densities 5-50%, for the
  noisy input, a 3x3 median filter, a switching median filter (only pixels at exactly 0 or 255
  are replaced by the 3x3 median), the tutorial Conv 64-32-16 AE and ours. The main table uses
  classic 0/255 salt-and-pepper; a second table uses imgaug's ``SaltAndPepper`` (Beta values).
* a larger image: scikit-image's 512x512 ``camera`` with 10% noise (+ a picture);
* speed: images/s on 28x28 batches and megapixels/s on one 512x512 image, all methods in the
  same process with the same number of torch threads.

Writes benchmarks/results/salt_pepper.md, .json and salt_pepper_camera.png (docs/RESULTS.md
includes the report: ``python benchmarks/write_results.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DENSITIES = (0.05, 0.10, 0.20, 0.30, 0.50)

Method = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W) -> float32 (N, H, W) in [0, 1]


# ---- baselines ------------------------------------------------------------------------------


def median3(noisy: np.ndarray) -> np.ndarray:
    """3x3 median filter (OpenCV, replicated border) of uint8 (N, H, W); float32 out."""
    import cv2

    return np.stack([cv2.medianBlur(im, 3) for im in noisy]).astype(np.float32) / 255.0


def switching_median(noisy: np.ndarray) -> np.ndarray:
    """Switching median: pixels at exactly 0 or 255 get the 3x3 median, the rest are kept."""
    import cv2

    med = np.stack([cv2.medianBlur(im, 3) for im in noisy])
    out = np.where((noisy == 0) | (noisy == 255), med, noisy)
    return out.astype(np.float32) / 255.0


def identity(noisy: np.ndarray) -> np.ndarray:
    return noisy.astype(np.float32) / 255.0


def model_method(model, batch_size: int = 500) -> Method:
    from aepipe.train.salt_pepper import denoise_array

    return lambda noisy: denoise_array(model, noisy, batch_size)


# ---- metrics --------------------------------------------------------------------------------


def psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of float (N, H, W) in [0, 1]."""
    from aepipe.train.salt_pepper import psnr_per_image

    return psnr_per_image(pred, target)


def ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image SSIM of float (N, H, W) in [0, 1], vectorised; equals skimage's defaults."""
    from scipy.ndimage import uniform_filter

    win, c1, c2 = 7, 0.01**2, 0.03**2
    a, b = pred.astype(np.float64), target.astype(np.float64)

    def f(z: np.ndarray) -> np.ndarray:
        return uniform_filter(z, size=(1, win, win), mode="reflect")

    cov_norm = win * win / (win * win - 1)
    ux, uy = f(a), f(b)
    vx = cov_norm * (f(a * a) - ux * ux)
    vy = cov_norm * (f(b * b) - uy * uy)
    vxy = cov_norm * (f(a * b) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[:, pad:-pad, pad:-pad].mean(axis=(1, 2))


# ---- runs -----------------------------------------------------------------------------------


def quality_table(
    clean: np.ndarray, methods: dict[str, Method], kind: str, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {density: {psnr, ssim}}} on uint8 (N, H, W) clean images."""
    from aepipe.data.noise import salt_pepper

    target = clean.astype(np.float32) / 255.0
    table: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    for d in DENSITIES:
        noisy = salt_pepper(clean, d, kind, seed=seed + round(d * 1000))
        for name, fn in methods.items():
            out = fn(noisy)
            table[name][f"{d:.2f}"] = {
                "psnr": float(psnr(out, target).mean()),
                "ssim": float(ssim(out, target).mean()),
            }
    return table


def speed(methods: dict[str, Method], seed: int, repeats: int) -> dict[str, dict[str, float]]:
    """images/s on 28x28 batches (256 images) and Mpx/s on one 512x512 image, per method."""
    import skimage.data

    from aepipe.data.noise import salt_pepper

    rng = np.random.default_rng(seed)
    small = salt_pepper(rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), 0.1, seed=seed)
    big = salt_pepper(skimage.data.camera()[None], 0.1, seed=seed)
    out: dict[str, dict[str, float]] = {}
    for name, fn in methods.items():
        if name == "noisy input":
            continue
        fn(small[:64])  # warm-up (allocations, oneDNN kernels)
        fn(big)
        best_small = best_big = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(small)
            best_small = min(best_small, time.perf_counter() - t0)
            t0 = time.perf_counter()
            fn(big)
            best_big = min(best_big, time.perf_counter() - t0)
        out[name] = {
            "images_per_s_28x28": len(small) / best_small,
            "mpx_per_s_512x512": big[0].size / 1e6 / best_big,
        }
    return out


def camera(methods: dict[str, Method], seed: int, picture: Path) -> dict[str, dict[str, float]]:
    """PSNR/SSIM on scikit-image's camera with 10% noise of both kinds; writes a picture."""
    import skimage.data
    from PIL import Image

    from aepipe.data.noise import salt_pepper

    clean = skimage.data.camera()[None]
    target = clean.astype(np.float32) / 255.0
    res: dict[str, dict[str, float]] = {}
    tiles = []
    for kind in ("binary", "imgaug"):
        noisy = salt_pepper(clean, 0.10, kind, seed=seed)
        row = []
        for name, fn in methods.items():
            out = fn(noisy)
            res.setdefault(name, {})[f"{kind}_psnr"] = float(psnr(out, target)[0])
            res[name][f"{kind}_ssim"] = float(ssim(out, target)[0])
            if kind == "binary" and name != "tutorial AE":
                row.append(out[0])
        if row:
            tiles.append(np.concatenate(row, axis=1))
    # Crop the middle 256x256 of each panel so the pixels are visible in the README.
    panel = tiles[0]
    n = panel.shape[1] // 512
    crops = [panel[128:384, i * 512 + 128 : i * 512 + 384] for i in range(n)]
    Image.fromarray(np.rint(np.concatenate(crops, axis=1) * 255).astype(np.uint8)).save(picture)
    return res


# ---- report ---------------------------------------------------------------------------------


def md_quality(table: dict[str, dict[str, dict[str, float]]]) -> str:
    head = "| method | " + " | ".join(f"{float(d):.0%}" for d in next(iter(table.values()))) + " |"
    sep = "|---|" + "---:|" * len(next(iter(table.values())))
    rows = [
        f"| {name} | "
        + " | ".join(f"{v['psnr']:.2f} / {v['ssim']:.3f}" for v in per.values())
        + " |"
        for name, per in table.items()
    ]
    return "\n".join([head, sep, *rows])


def md_speed(sp: dict[str, dict[str, float]]) -> str:
    rows = [
        f"| {k} | {v['images_per_s_28x28']:,.0f} | {v['mpx_per_s_512x512']:.2f} |"
        for k, v in sp.items()
    ]
    return "\n".join(["| method | 28x28 images/s | 512x512 Mpx/s |", "|---|---:|---:|", *rows])


def md_camera(cam: dict[str, dict[str, float]]) -> str:
    rows = [
        f"| {k} | {v['binary_psnr']:.2f} / {v['binary_ssim']:.3f} | "
        f"{v['imgaug_psnr']:.2f} / {v['imgaug_ssim']:.3f} |"
        for k, v in cam.items()
    ]
    return "\n".join(
        [
            "| method | 0/255 salt-and-pepper 10% | imgaug SaltAndPepper(0.1) |",
            "|---|---:|---:|",
            *rows,
        ]
    )


CARD_MARK = "## Test figures (benchmarks/salt_pepper.py)"


def record_card(
    folder: Path,
    quality: dict[str, dict[str, dict[str, dict[str, float]]]],
    n_images: dict[str, int],
    cam: dict[str, dict[str, float]],
    ours: str,
) -> None:
    """Replace the test-figures section of the model card with this run's figures for ours."""
    card_path = folder / "MODEL_CARD.md"
    text = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    text = text.split(CARD_MARK)[0].rstrip() + "\n\n"
    lines = [
        CARD_MARK,
        "",
        "Mean PSNR (dB) / SSIM of this model; the benchmark report has the baselines.",
        "",
    ]
    lines.append("| test set, noise | " + " | ".join(f"{float(d):.0%}" for d in DENSITIES) + " |")
    lines.append("|---|" + "---:|" * len(DENSITIES))
    for key, tab in quality.items():
        cells = " | ".join(f"{v['psnr']:.2f} / {v['ssim']:.3f}" for v in tab[ours].values())
        lines.append(f"| {key} ({n_images[key]:,} images) | {cells} |")
    c = cam[ours]
    lines += [
        "",
        f"camera 512x512, 10% noise: 0/255 {c['binary_psnr']:.2f} dB / {c['binary_ssim']:.3f}, "
        f"imgaug {c['imgaug_psnr']:.2f} dB / {c['imgaug_ssim']:.3f}.",
        "",
    ]
    card_path.write_text(text + "\n".join(lines), encoding="utf-8")


def budget_note(ours_cfg: dict, tut_cfg: dict | None) -> str:
    """One line comparing the training budgets recorded in the two weights folders."""

    def budget(cfg: dict) -> str:
        t = cfg.get("training", {})
        return (
            f"{t.get('epochs_run', '?')} epochs, {t.get('samples_seen', '?'):,} samples, "
            f"{t.get('wall_time_s', 0) / 60:.0f} min, stopped by {t.get('stopped_by', '?')}"
        )

    line = f"Training budgets: ours {budget(ours_cfg)}"
    if tut_cfg is None:
        return line + "; tutorial AE not available (no weights folder)."
    return line + f"; tutorial AE {budget(tut_cfg)}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="folder holding fashion-mnist/ and mnist/",
    )
    parser.add_argument("--model", default="salt-pepper", help="our weights (name or folder)")
    parser.add_argument(
        "--tutorial",
        default="runs/salt-pepper-tutorial",
        help="tutorial AE weights folder (skipped if absent)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="score only the first N test images (all tables)"
    )
    parser.add_argument(
        "--secondary-limit",
        type=int,
        default=0,
        help="images scored for the MNIST and imgaug-noise tables (0: all)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="speed: best of N")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--record",
        action="store_true",
        help="also merge our model's test figures into its config.json metrics",
    )
    args = parser.parse_args(argv)

    import torch

    from aepipe.data.idx import load_mnist_like
    from aepipe.weights import load_model, resolve, update_metrics

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ours, ours_cfg = load_model(args.model)
    methods: dict[str, Method] = {
        "noisy input": identity,
        "3x3 median": median3,
        "switching median": switching_median,
    }
    tutorial_src = None
    tut_path = Path(args.tutorial)
    if not tut_path.is_absolute():
        tut_path = ROOT / tut_path
    if (tut_path / "config.json").is_file():
        tutorial, tut_cfg = load_model(tut_path)
        methods["tutorial AE"] = model_method(tutorial)
        tutorial_src = str(args.tutorial)
    else:
        print(f"note: no tutorial AE weights at {tut_path}; that row is left out", file=sys.stderr)
    methods["ours (ImpulseDenoiser)"] = model_method(ours)

    t_start = time.time()
    results: dict[str, object] = {
        "model": str(resolve(args.model)),
        "model_sha256": ours_cfg["sha256"],
        "tutorial": tutorial_src,
        "threads": args.threads,
        "seed": args.seed,
        "limit": args.limit,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "quality": {},
        "n_images": {},
    }
    for dataset in ("fashion-mnist", "mnist"):
        clean, _ = load_mnist_like(args.data / dataset, "test")
        if args.limit:
            clean = clean[: args.limit]
        for kind in ("binary", "imgaug"):
            print(f"quality: {dataset} {kind} ...", file=sys.stderr)
            main_table = dataset == "fashion-mnist" and kind == "binary"
            part = clean if main_table else clean[: args.secondary_limit or None]
            results["quality"][f"{dataset}/{kind}"] = quality_table(part, methods, kind, args.seed)  # type: ignore[index]
            results["n_images"][f"{dataset}/{kind}"] = len(part)  # type: ignore[index]
    print("camera ...", file=sys.stderr)
    picture = args.out / "salt_pepper_camera.png"
    results["camera"] = camera(methods, args.seed, picture)
    print("speed ...", file=sys.stderr)
    results["speed"] = speed(methods, args.seed, args.repeats)
    results["wall_time_s"] = round(time.time() - t_start, 1)

    q = results["quality"]  # type: ignore[assignment]
    n = results["n_images"]  # type: ignore[assignment]
    md = "\n\n".join(
        [
            "# Salt-and-pepper denoising benchmark",
            f"Generated by `.venv/bin/python benchmarks/{Path(__file__).name} "
            + " ".join(sys.argv[1:] if argv is None else argv)
            + f"` ({results['wall_time_s']} s, {args.threads} torch thread(s), torch "
            f"{torch.__version__}). Our model: `{results['model']}` (sha256 "
            f"{str(results['model_sha256'])[:12]}...), trained on Fashion-MNIST train only. "
            "Cells are PSNR (dB) / SSIM, mean over images; noise densities are the fraction of "
            "pixels replaced.",
            budget_note(ours_cfg, tut_cfg if tutorial_src else None),
            f"## Fashion-MNIST test, 0/255 salt-and-pepper ({n['fashion-mnist/binary']:,} images)",
            md_quality(q["fashion-mnist/binary"]),
            "## Fashion-MNIST test, imgaug `SaltAndPepper(p)`: Beta(0.5, 0.5) replacement values "
            f"({n['fashion-mnist/imgaug']:,} images)",
            md_quality(q["fashion-mnist/imgaug"]),
            f"## MNIST test (no retraining), 0/255 salt-and-pepper ({n['mnist/binary']:,} images)",
            md_quality(q["mnist/binary"]),
            "## MNIST test (no retraining), imgaug `SaltAndPepper(p)` "
            f"({n['mnist/imgaug']:,} images)",
            md_quality(q["mnist/imgaug"]),
            "## Larger image: scikit-image `camera` (512x512), 10% noise",
            md_camera(results["camera"]),  # type: ignore[arg-type]
            f"![camera, centre crop: noisy | 3x3 median | switching median | ours]({picture.name})"
            "\n\nCentre 256x256 crops, 10% 0/255 noise: "
            "noisy | 3x3 median | switching median | ours.",
            "## Speed (same process, best of "
            f"{args.repeats}, {args.threads} torch thread(s); median filters are OpenCV)",
            md_speed(results["speed"]),  # type: ignore[arg-type]
        ]
    )
    (args.out / "salt_pepper.md").write_text(md + "\n", encoding="utf-8")
    (args.out / "salt_pepper.json").write_text(
        json.dumps(results, indent=2) + "\n", encoding="utf-8"
    )
    if args.record:
        ours_name = "ours (ImpulseDenoiser)"
        update_metrics(
            resolve(args.model),
            {
                f"test_{key.replace('/', '_')}": {
                    "n_images": n[key],
                    **{
                        d: {k: round(v, 4) for k, v in m.items()} for d, m in tab[ours_name].items()
                    },
                }
                for key, tab in q.items()
            }
            | {
                "camera_512_10pct": {
                    k: round(v, 4) for k, v in results["camera"][ours_name].items()
                }
            },  # type: ignore[index]
        )
        record_card(resolve(args.model), q, n, results["camera"], ours_name)  # type: ignore[arg-type]
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
