"""Scan denoiser on real pages, on clean pages (do no harm) and on the DDD test split, one run.

Sets:

* ``docbin`` test pages (:func:`aepipe.data.docbin.split_pages`: a quarter of each
  collection, never trained on; no network or checkpoint was chosen on them, but the clean-page
  check's thresholds were set on all docbin pages, these included): F-measure (%) of ink
  after a global Otsu threshold of each method's output against the hand-made ground truth,
  per collection (mean over its pages) and over all test pages. Binarizers' outputs are
  already 0/1.
* Clean pages, which must pass through unchanged: the docbin test pages' ground truth images
  (bilevel), and generated pages at 150, 300 and 600 DPI with body text, headlines and initials
  of 24-150 pt in bold faces, rules, filled shapes and tables, rendered without damage
  (``add_display_content``): bilevel versions (F of Otsu(output) against the page, every page
  must reach 99.5) and gray versions with a continuous-tone photo (RMSE against the page;
  SSIM inside the photo's box).
* DDD test: the page groups ``split_three(pairs, 8, 4, seed 0)`` puts in test (4 of the 8
  groups the chain's early runs, up to v14, were validated on; no run trained on them, but the
  chain's start was chosen among about 20 fine-tunes on all 8). RMSE and F.

``--photos DIR`` adds gray pages whose photo is a real photograph from ``DIR`` (``photos/test``
for the report: a smooth synthetic field alone is hard to tell from a stain, real photos are
what archives hold).

``--split val`` scores the same way on the validation side (docbin validation pages, DDD
validation groups, clean pages of other seeds, ``photos/val``) and leaves the baselines out
unless asked: that is the run to choose among candidate nets on; the test split is only for
the final report.

Run (about 15 min on 2 shared cores)::

    .venv/bin/python benchmarks/scan_real.py --weights scan-denoiser --weights runs/real/r1 \
        --photos ../shared/data/photos/test
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import scan_denoiser as sd  # noqa: E402  (a sibling script: its baselines and scoring)
from report import write_report  # noqa: E402  (a sibling module)

from aepipe.data.docbin import f_measure, otsu_ink  # noqa: E402

CLEAN_SEED = 16_000_000
CLEAN_SIZE = (1200, 1000)  # (H, W): a crop-sized page, so 600 DPI stays affordable


# ---- sets -----------------------------------------------------------------------------------


def docbin_pages(root: Path, split: str = "test") -> list:
    from aepipe.data.docbin import load_pages, page_names, split_pages

    return load_pages(root, split_pages(page_names(root))[split])


def clean_pages(
    n: int, bilevel: bool, seed: int = CLEAN_SEED, photos: list[np.ndarray] | None = None
) -> list[tuple[str, np.ndarray, int, tuple | None]]:
    """Undamaged generated pages: (name, uint8 page, dpi, photo box or None).

    ``photos``: real photographs for the gray pages' photo (else a synthetic field).
    """
    from aepipe.data.synthetic_pages import add_display_content, render_clean_page

    pages = []
    for dpi in (150, 300, 600):
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, dpi, i]))
            page = render_clean_page(rng, *CLEAN_SIZE, dpi)
            page, box = add_display_content(page, rng, dpi, photo=not bilevel, photos=photos)
            if bilevel:
                page = np.where(page < 128, 0, 255).astype(np.uint8)
            pages.append((f"{dpi}dpi-{i}{'b' if bilevel else 'g'}", page, dpi, box))
    return pages


# ---- scoring --------------------------------------------------------------------------------


def real_scores(method: sd.Method, pages: list) -> tuple[dict[str, list[float]], list]:
    """Per-collection lists of page F-measures (%), and each page's (precision, recall) (%).

    Precision tells noise kept as ink (stains, bleed-through) from ink lost (recall).
    """
    out: dict[str, list[float]] = {}
    pr = []
    for page in pages:
        ink = otsu_ink(np.clip(method(page.image, 300).astype(np.float32), 0.0, 1.0))
        out.setdefault(page.collection, []).append(100.0 * f_measure(ink, page.ink))
        tp = float((ink & page.ink).sum())
        pr.append(
            (100.0 * tp / max(float(ink.sum()), 1.0), 100.0 * tp / max(float(page.ink.sum()), 1.0))
        )
    return out, pr


def harm_bilevel(method: sd.Method, pages: list[tuple[str, np.ndarray, int]]) -> list[float]:
    """F (%) of Otsu(output) against each clean bilevel page itself."""
    fs = []
    for _name, page, dpi in pages:
        res = np.clip(method(page, dpi).astype(np.float32), 0.0, 1.0)
        fs.append(100.0 * f_measure(otsu_ink(res), page < 128))
    return fs


def harm_gray(method: sd.Method, pages: list) -> tuple[list[float], list[float]]:
    """Per-page RMSE against each clean gray page, and SSIM inside its photo box."""
    from metrics import ssim

    rmses, ssims = [], []
    for _name, page, dpi, box in pages:
        res = np.clip(method(page, dpi).astype(np.float32), 0.0, 1.0)
        ref = page.astype(np.float32) / 255.0
        rmses.append(math.sqrt(float(((res - ref) ** 2).mean())))
        if box is not None:
            y, x, h, w = box
            out8 = np.round(res[y : y + h, x : x + w] * 255.0).astype(np.uint8)
            ssims.append(ssim(page[None, y : y + h, x : x + w], out8[None]))
    return rmses, ssims


def baselines() -> dict[str, sd.Method]:
    methods: dict[str, sd.Method] = {
        "raw scan, Otsu": sd.raw,
        "Sauvola (scikit-image)": sd.sauvola,
    }
    try:
        methods["Su (doxapy)"] = sd.doxa("SU")
    except ImportError:
        print("doxapy not installed: Su left out", flush=True)
    if shutil.which("unpaper"):
        methods["unpaper (OCRmyPDF args), Otsu"] = sd.unpaper
    return methods


def save_crops(pages: list, methods: dict[str, sd.Method], specs: list[str], folder: Path) -> None:
    """Side-by-side PNGs (raw | each method) of crops given as ``NAME:y:x:h:w[:scale]``."""
    import cv2
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in pages}
    for spec in specs:
        name, *nums = spec.split(":")
        y, x, h, w = (int(v) for v in nums[:4])
        scale = float(nums[4]) if len(nums) > 4 else 1.0
        img = by_name[name].image[y : y + h, x : x + w]
        tiles = [img] + [
            np.round(np.clip(fn(img, 300), 0, 1) * 255).astype(np.uint8) for fn in methods.values()
        ]
        sep = np.full((h, max(4, w // 100)), 128, np.uint8)
        row = np.hstack([t for tile in tiles for t in (tile, sep)][:-1])
        if scale != 1.0:
            row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        path = folder / f"scan-real-{name}.png"
        Image.fromarray(row).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB): raw | {' | '.join(methods)}")


def save_clean_picture(methods: dict[str, sd.Method], folder: Path, scale: float = 0.5) -> Path:
    """Side by side: a clean generated 300-DPI bilevel page | each method's output."""
    import cv2
    from PIL import Image

    _name, page, dpi, _ = next(p for p in clean_pages(1, bilevel=True) if p[2] == 300)
    tiles = [page] + [
        np.round(np.clip(fn(page, dpi), 0, 1) * 255).astype(np.uint8) for fn in methods.values()
    ]
    sep = np.full((page.shape[0], 8), 128, np.uint8)
    row = np.hstack([t for tile in tiles for t in (tile, sep)][:-1])
    row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    path = folder / "scan-clean-bold-300dpi.png"
    Image.fromarray(row).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB): clean page | {' | '.join(methods)}")
    return path


# ---- report ---------------------------------------------------------------------------------


def _real_table(table: dict[str, dict[str, list[float]]], secs: dict[str, float]) -> list[str]:
    colls = sorted(next(iter(table.values())))
    n = {c: len(v) for c, v in next(iter(table.values())).items()}
    lines = [
        "| method | " + " | ".join(f"{c} ({n[c]})" for c in colls) + " | all pages | "
        "mean of collections | seconds |",
        "|---|" + "---:|" * (len(colls) + 3),
    ]
    for m, row in table.items():
        every = [f for c in colls for f in row[c]]
        cells = " | ".join(f"{np.mean(row[c]):.1f}" for c in colls)
        per_coll = np.mean([np.mean(row[c]) for c in colls])
        lines.append(
            f"| {m} | {cells} | **{np.mean(every):.2f}** | {per_coll:.2f} | {secs[m]:.0f} |"
        )
    return lines


def _pr_rows(prec_rec: dict[str, list], collections: list[str]) -> list[str]:
    rows = []
    for m, pr in prec_rec.items():
        cells = []
        for c in sorted(set(collections)):
            got = np.array([v for v, cc in zip(pr, collections, strict=True) if cc == c])
            cells.append(f"{got[:, 0].mean():.0f} / {got[:, 1].mean():.0f}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def _harm_rows(label: str, res: dict) -> str:
    b = res["bilevel"]
    cells = [f"{min(b['docbin_gt']):.2f} / {np.mean(b['docbin_gt']):.2f}"]
    for dpi in (150, 300, 600):
        cells.append(f"{min(b[str(dpi)]):.2f}")
    for key in ("gray", "gray_real_photo"):
        if g := res.get(key):
            ss = f"{min(g['photo_ssim']):.3f}" if g["photo_ssim"] else "-"
            cells += [f"{max(g['rmse']):.4f}", ss]
    return f"| {label} | " + " | ".join(cells) + " |"


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docbin", type=Path, default=ROOT.parent / "shared" / "data" / "docbin")
    ap.add_argument("--ddd", type=Path, default=ROOT.parent / "shared" / "data" / "ddd")
    ap.add_argument(
        "--weights", action="append", help="our weights (name or folder); repeat to compare"
    )
    ap.add_argument("--split", choices=("test", "val"), default="test", help="see the docstring")
    ap.add_argument(
        "--precision",
        action="append",
        choices=("auto", "float32", "bfloat16"),
        help="stage precision of our nets (default auto); repeat to compare",
    )
    ap.add_argument(
        "--views",
        action="append",
        type=int,
        help="stage views averaged by our nets (default 1); repeat to compare",
    )
    ap.add_argument("--photos", type=Path, help="photographs for gray clean pages' photos")
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--n-clean", type=int, default=2, help="generated clean pages per DPI")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crop", action="append", default=[], help="NAME:y:x:h:w[:scale] to save")
    ap.add_argument("--crops-dir", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--out", type=Path, help="report (default results/scan_real[_val].md)")
    args = ap.parse_args(argv)
    args.weights = args.weights or ["scan-denoiser"]
    args.precision = args.precision or ["auto"]
    args.views = args.views or [1]
    if args.baselines is None:
        args.baselines = args.split == "test"
    if args.out is None:
        tail = "" if args.split == "test" else "_val"
        args.out = ROOT / "benchmarks" / "results" / f"scan_real{tail}.md"
    return args


def _real_section(args, ours: dict[str, sd.Method], result: dict, lines: list[str]) -> list:
    pages = docbin_pages(args.docbin, args.split)
    methods = {**(baselines() if args.baselines else {}), **ours}
    real: dict[str, dict[str, list[float]]] = {}
    prec_rec: dict[str, list] = {}
    secs: dict[str, float] = {}
    for m, fn in methods.items():
        t = time.perf_counter()
        real[m], prec_rec[m] = real_scores(fn, pages)
        secs[m] = time.perf_counter() - t
        print(m, {c: round(float(np.mean(v)), 2) for c, v in real[m].items()}, flush=True)
    result[f"docbin_{args.split}"] = real
    result[f"docbin_{args.split}_precision_recall"] = prec_rec
    chosen = (
        "never trained on; no net chosen on them, the clean-page thresholds set on all pages"
        if args.split == "test"
        else "not trained on"
    )
    lines += [
        "",
        f"## Real degraded pages: docbin {args.split} split ({len(pages)} pages, {chosen})",
        "",
        "F-measure (%) of ink after a global Otsu threshold of the output (binarizers: their "
        "output), against the hand-made ground truth; mean per collection (pages), over all "
        f"{args.split} pages, and of the collection means. Pages run at their own pixels "
        "(--dpi 300 for the methods that take one).",
        "",
        *_real_table(real, secs),
        "",
        "Mean precision / recall (%) of the ink over the same pages (low precision: noise kept "
        "as ink; low recall: ink lost):",
        "",
        "| method | " + " | ".join(f"{c}" for c in sorted({p.collection for p in pages})) + " |",
        "|---|" + "---:|" * len({p.collection for p in pages}),
        *_pr_rows(prec_rec, [p.collection for p in pages]),
    ]
    if args.crop:
        otsu = {"Otsu": lambda d, dpi: (~otsu_ink(d / 255.0)).astype(np.float32)}
        save_crops(pages, {**otsu, **ours}, args.crop, args.crops_dir)
        save_clean_picture(ours, args.crops_dir)
    return [(p.name, np.where(p.ink, 0, 255).astype(np.uint8), 300) for p in pages]


def _harm_section(args, ours: dict[str, sd.Method], gt_pages: list, result: dict) -> list[str]:
    from aepipe.data.synthetic_pages import load_photos

    seed = CLEAN_SEED if args.split == "test" else CLEAN_SEED + 1
    gen_b = clean_pages(args.n_clean, bilevel=True, seed=seed)
    gen_g = clean_pages(args.n_clean, bilevel=False, seed=seed)
    photos = load_photos(args.photos) if args.photos else None
    gen_p = clean_pages(args.n_clean, bilevel=False, seed=seed, photos=photos) if photos else []
    harm: dict[str, dict] = {}
    for m, fn in ours.items():
        b = {"docbin_gt": harm_bilevel(fn, gt_pages)}
        for dpi in (150, 300, 600):
            b[str(dpi)] = harm_bilevel(fn, [(n, p, d) for n, p, d, _ in gen_b if d == dpi])
        rmse, ss = harm_gray(fn, gen_g)
        harm[m] = dict(bilevel=b, gray=dict(rmse=rmse, photo_ssim=ss))
        if gen_p:
            rmse, ss = harm_gray(fn, gen_p)
            harm[m]["gray_real_photo"] = dict(rmse=rmse, photo_ssim=ss)
        print(m, "harm", _harm_rows(m, harm[m]), flush=True)
    result["do_no_harm"] = harm
    real_photo = (
        f" Real photo: the gray pages again with a photograph from `{args.photos}` as the photo."
        if gen_p
        else ""
    )
    return [
        "",
        "## Do no harm: clean pages in, the same pages out",
        "",
        f"Bilevel: F (%) of Otsu(output) against the page itself, minimum (and mean) over the "
        f"{len(gt_pages)} docbin {args.split} ground-truth images, minimum over {args.n_clean} "
        "generated pages per DPI (bold headlines and initials 24-150 pt, rules, shapes, "
        f"tables; {CLEAN_SIZE[0]} x {CLEAN_SIZE[1]} px). Targets: every page >= 99.5. "
        "Gray: the same kind of pages with anti-aliased gray ink and a continuous-tone photo "
        "(a smooth synthetic field): largest page RMSE (target <= 0.01) and smallest SSIM "
        f"inside the photo (target >= 0.9).{real_photo}",
        "",
        "| weights | docbin GT min / mean F | 150 DPI min F | 300 DPI min F | 600 DPI min F "
        "| gray max RMSE | photo min SSIM |"
        + (" real photo: max RMSE | min SSIM |" if gen_p else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gen_p else ""),
        *(_harm_rows(m, r) for m, r in harm.items()),
    ]


def _ddd_section(args, ours: dict[str, sd.Method], result: dict) -> list[str]:
    from aepipe.data.ddd import load_pairs, split_three

    _, val, test = split_three(load_pairs(args.ddd), 8, 4, 0)
    ddd_pages = [(p.name, p.dirty, p.clean, 100) for p in (test if args.split == "test" else val)]
    dmethods: dict[str, sd.Method] = dict(ours)
    if args.baselines:
        # baselines() scores "raw scan, Otsu" as the raw page; on DDD it is Otsu of the page.
        dmethods = {"raw scan": sd.raw, **baselines(), "raw scan, Otsu": _otsu, **ours}
    ddd = {m: sd.score(fn, ddd_pages) for m, fn in dmethods.items()}
    result[f"ddd_{args.split}"] = ddd
    about = (
        "4 of the 8 page groups the chain's early runs (up to v14, the start of the shipped "
        "net's chain) were validated on: never trained on by any run, but v14 was chosen among "
        "about 20 fine-tunes on all 8, so these figures are somewhat optimistic."
        if args.split == "test"
        else "The 4 validation groups of `split_three(pairs, 8, 4, seed 0)`."
    )
    return [
        "",
        f"## DDD {args.split} split ({len(ddd_pages)} pages: {', '.join(p[0] for p in ddd_pages)})",
        "",
        f"{about} RMSE pooled; F of Otsu(output) against the clean page < 0.5.",
        "",
        "| method | RMSE | F |",
        "|---|---:|---:|",
        *(f"| {m} | {r['rmse']:.4f} | {r['f']:.1f} |" for m, r in ddd.items()),
    ]


def _otsu(dirty: np.ndarray, dpi: int) -> np.ndarray:
    return (~otsu_ink(dirty / 255.0)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import torch

    from aepipe.stages.scan_denoiser import ScanDenoiser
    from aepipe.weights import read_config, resolve

    torch.set_num_threads(args.threads)
    ours: dict[str, sd.Method] = {}
    title = "the DDD test split" if args.split == "test" else "validation pages (for choices)"
    lines = [f"# Scan denoiser on real pages, clean pages and {title}", ""]
    lines.append(
        f"Command: `.venv/bin/python benchmarks/{Path(__file__).name} "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`"
    )
    for w in args.weights:
        cfg = read_config(resolve(w))
        for precision, views in itertools.product(args.precision, args.views):
            label = f"**ScanUNet `{w}`** ({cfg['sha256'][:12]})"
            label += "" if precision == "auto" else f", precision {precision}"
            label += "" if views == 1 else f", {views} views"
            stage = ScanDenoiser.from_pretrained(w, precision=precision, views=views)
            ours[label] = sd.stage_method(stage)
    lines.append(
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs, torch threads {args.threads}."
    )
    result: dict = {}
    gt_pages = _real_section(args, ours, result, lines)
    lines += _harm_section(args, ours, gt_pages, result)
    lines += _ddd_section(args, ours, result)
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.out, text, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
