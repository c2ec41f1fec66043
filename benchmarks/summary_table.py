"""The README's results table, made from the figures the benchmarks wrote (their JSON files).

Each row of ``ROWS`` names, in one place, where each figure comes from (a JSON file under the
repository, a path of keys in it), how it is printed and which targets it is checked against;
``render()`` fills the table from the current files, so a rerun of a benchmark followed by
``python benchmarks/write_results.py`` updates the README. A key in a path is matched as an
``fnmatch`` pattern (``a|b`` for either), and ``field=pattern`` picks the items of a list whose
``field`` matches, so labels that carry a checksum still match after a rerun with new weights.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = "benchmarks/results/{}.json"


@dataclass(frozen=True)
class Figure:
    """One number from a benchmark's JSON file.

    Args:
        source: the file, relative to the repository (``"scan_real"`` is short for
            ``benchmarks/results/scan_real.json``).
        path: keys from the top of the file down to the number (or to the numbers that
            ``reduce`` combines).
        fmt: how to print it (``str.format`` spec of one value).
        reduce: ``value`` (one number), ``mean``/``min``/``max``/``maxabs`` of every number
            under every match, or ``best_mean``/``worst_mean``: the largest/smallest of the
            matches' own means.
    """

    source: str
    path: tuple[str | int, ...]
    fmt: str = "{:.2f}"
    reduce: str = "value"


@dataclass(frozen=True)
class Check:
    """A target: ``figure op (scale x limit + offset)``; ``limit`` is a number or a figure."""

    label: str
    figure: str
    op: str
    limit: float | str
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Row:
    """A row of the table; ``ours``/``baseline`` are templates over ``figures``.

    ``until_run`` (ours, baseline, target: words, no figures) stands in while a figure's file
    does not exist yet (a benchmark that wrote no JSON when it last ran).
    """

    stage: str
    ours: str
    baseline: str
    figures: dict[str, Figure] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    until_run: tuple[str, str, str] | None = None


RES = "docs/RESULTS.md"
FASHION = ("quality", "fashion-mnist/binary")  # salt_pepper.json: the 0/255 noise table
# The shipped net at its default precision ("auto": bfloat16 on this machine's CPU) and every
# baseline from one run (scan_real_shipped); scan_real.json holds the same net at float32
# beside the earlier nets.
SHIPPED_SCAN = "*`scan-denoiser`** (????????????)"
SCAN_DEFAULT = "scan_real_shipped"
OURS = "[!*]*"  # scan_real labels our nets **ScanUNet ...**; baselines are the other keys

ROWS: tuple[Row, ...] = (
    Row(
        "scan denoiser",
        "RMSE {rmse} on the DDD test pages (somewhat optimistic: early runs of the chain were"
        " validated on them; {rmse4} with `--views 4`, four times the net's time); {mpx} Mpx/s"
        " on four 300-DPI A4 pages, whole process",
        "Su {su}; unpaper {unpaper_mpx} Mpx/s",
        {
            "rmse": Figure(SCAN_DEFAULT, ("ddd_test", SHIPPED_SCAN, "rmse"), "{:.4f}"),
            "rmse4": Figure(
                "scan_real_views", ("ddd_test", f"{SHIPPED_SCAN}, 4 views", "rmse"), "{:.4f}"
            ),
            "su": Figure(SCAN_DEFAULT, ("ddd_test", "Su*", "rmse"), "{:.4f}"),
            "mpx": Figure(
                "scan_denoiser_speed", ("speed", "processes", "program=clean-scans on 4*", "mpx_s")
            ),
            "unpaper_mpx": Figure(
                "scan_denoiser_speed", ("speed", "processes", "program=unpaper on*4*", "mpx_s")
            ),
        },
        (
            Check("RMSE <= 0.022", "rmse", "<=", 0.022),
            Check(">= 2 Mpx/s", "mpx", ">=", 2.0),
            Check("2x unpaper", "mpx", ">=", "unpaper_mpx", scale=2.0),
        ),
    ),
    Row(
        "... on real archive pages",
        "F {f} on the docbin test pages (Otsu of the output); clean bilevel pages come back"
        " with F >= {bilevel}; [crops]({res}#scan-denoiser-on-real-archive-pages)",
        "Sauvola {sauvola}, Su {su}, unpaper {unpaper}",
        {
            "f": Figure(SCAN_DEFAULT, ("docbin_test", SHIPPED_SCAN), "{:.2f}", "mean"),
            "best": Figure(SCAN_DEFAULT, ("docbin_test", OURS), reduce="best_mean"),
            "sauvola": Figure(SCAN_DEFAULT, ("docbin_test", "Sauvola*"), reduce="mean"),
            "su": Figure(SCAN_DEFAULT, ("docbin_test", "Su*"), reduce="mean"),
            "unpaper": Figure(SCAN_DEFAULT, ("docbin_test", "unpaper*"), reduce="mean"),
            "bilevel": Figure(SCAN_DEFAULT, ("do_no_harm", SHIPPED_SCAN, "bilevel"), reduce="min"),
            "gray": Figure(
                SCAN_DEFAULT, ("do_no_harm", SHIPPED_SCAN, "gray", "rmse"), reduce="max"
            ),
        },
        (
            Check("clean bilevel pages F >= 99.5", "bilevel", ">=", 99.5),
            Check("best baseline + 4", "f", ">=", "best", offset=4.0),
            Check("clean gray pages RMSE <= 0.01", "gray", "<=", 0.01),
        ),
    ),
    Row(
        "... for OCR",
        "Tesseract CER {cer} on four DDD validation pages (held out from training) inside"
        " OCRmyPDF (our plugin); on the 16 DDD test pages {test_cer}% (raw scan {raw_cer}%,"
        " Otsu {otsu_cer}%, unpaper {unpaper_cer}%)",
        "OCRmyPDF `--clean` (unpaper) {clean}",
        {
            "cer": Figure("ocr_pipeline", ("rows", "method=*--plugin*", "cer_ddd"), "{:.1%}"),
            "test_cer": Figure("scan_ocr", ("*`scan-denoiser`*", "DDD test"), "{:.2f}"),
            "raw_cer": Figure("scan_ocr", ("raw scan", "DDD test"), "{:.2f}"),
            "otsu_cer": Figure("scan_ocr", ("Otsu*", "DDD test"), "{:.2f}"),
            "unpaper_cer": Figure("scan_ocr", ("unpaper*", "DDD test"), "{:.2f}"),
            "clean": Figure("ocr_pipeline", ("rows", "method=*--clean*", "cer_ddd"), "{:.1%}"),
            "best": Figure(
                "ocr_pipeline", ("rows", "method=ocrmypdf|*--clean*", "cer_ddd"), reduce="min"
            ),
            "s": Figure("ocr_pipeline", ("rows", "method=*--plugin*", "s_per_page")),
            "clean_s": Figure("ocr_pipeline", ("rows", "method=*--clean*", "s_per_page")),
        },
        (
            Check("lowest CER", "cer", "<=", "best"),
            Check("time <= 1.5x `--clean`", "s", "<=", "clean_s", scale=1.5),
        ),
    ),
    Row(
        "salt-and-pepper",
        "{psnr} dB / {ssim} SSIM at 10% noise (Fashion-MNIST test)",
        "switching median {median} dB / {median_ssim}",
        {
            "psnr": Figure("salt_pepper", (*FASHION, "ours*", "0.10", "psnr")),
            "ssim": Figure("salt_pepper", (*FASHION, "ours*", "0.10", "ssim"), "{:.3f}"),
            "best": Figure(
                "salt_pepper",
                (*FASHION, "[!o]*", "0.10", "psnr"),
                reduce="max",
            ),
            "median": Figure("salt_pepper", (*FASHION, "switching*", "0.10", "psnr")),
            "median_ssim": Figure(
                "salt_pepper",
                (*FASHION, "switching*", "0.10", "ssim"),
                "{:.3f}",
            ),
        },
        (Check("best PSNR", "psnr", ">=", "best"),),
    ),
    Row(
        "face VAE",
        "FID {fid} (samples vs the LFW test faces; {plain} without the unsharp mask)",
        "none in the same run ([quoted]({res}#face-generator-gen-faces))",
        {
            "fid": Figure("faces", ("rows", "system=*sharpen*", "fid"), "{:.1f}"),
            "plain": Figure("faces", ("rows", "system=*T=1.2", "fid"), "{:.1f}"),
        },
        (Check("FID <= 65", "fid", "<=", 65.0),),
    ),
    Row(
        "face VQ-VAE + prior",
        "FID {fid} (same protocol); 64 faces sampled in {sample} s; test reconstructions {psnr} dB",
        "in the same run: the VAE FID {vae}, {vae_psnr} dB; a plain AE FID {ae}, {ae_psnr} dB",
        {
            "fid": Figure("vqvae_compare", ("models", "VQ-VAE + prior", "fid"), "{:.1f}"),
            "psnr": Figure("vqvae_compare", ("models", "VQ-VAE + prior", "psnr_db"), "{:.2f}"),
            "vae": Figure("vqvae_compare", ("models", "VAE", "fid"), "{:.1f}"),
            "vae_psnr": Figure("vqvae_compare", ("models", "VAE", "psnr_db"), "{:.2f}"),
            "ae": Figure("vqvae_compare", ("models", "AE", "fid"), "{:.1f}"),
            "ae_psnr": Figure("vqvae_compare", ("models", "AE", "psnr_db"), "{:.2f}"),
            "sample": Figure("vqvae_compare", ("models", "VQ-VAE + prior", "sample64_s")),
        },
        (Check("FID <= 65", "fid", "<=", 65.0), Check("64 faces < 2 s", "sample", "<", 2.0)),
        until_run=(
            "[FID and speed]({res}#face-vq-vae-with-a-learnt-prior) (same protocol)",
            "the VAE above",
            "FID <= 65: **not met**; 64 faces < 2 s: met",
        ),
    ),
    Row(
        "MNIST VAE",
        "NLL {nll} nats (importance sampling, MNIST test)",
        "IWAE {iwae} (published)",
        {
            "nll": Figure("weights/mnist-vae/config.json", ("metrics", "test_iw_nll_k1000_nats")),
            "iwae": Figure("mnist_nll", ("anchors", "0=IWAE*", 1)),
        },
        (Check("NLL <= 84", "nll", "<=", 84.0),),
    ),
    Row(
        "colorizer",
        "{psnr} dB PSNR, FID {fid}, {colour} colourfulness (LFW test faces)",
        "per-pixel mean chroma {map_psnr} dB, FID {map_fid}",
        {
            "psnr": Figure("colorizer", ("rows", "system=*(shipped)", "psnr_db")),
            "fid": Figure("colorizer", ("rows", "system=*(shipped)", "fid"), "{:.1f}"),
            "colour": Figure(
                "colorizer", ("rows", "system=*(shipped)", "colorfulness_pct_real"), "{:.0f}%"
            ),
            "luma": Figure("colorizer", ("rows", "system=*(shipped)", "luma_mae_levels")),
            "best": Figure("colorizer", ("rows", "system=gray*", "psnr_db"), reduce="max"),
            "map_psnr": Figure("colorizer", ("rows", "system=gray + mean chroma map", "psnr_db")),
            "map_fid": Figure(
                "colorizer", ("rows", "system=gray + mean chroma map", "fid"), "{:.1f}"
            ),
        },
        (
            Check("PSNR above the baselines", "psnr", ">=", "best"),
            Check("FID <= 25", "fid", "<=", 25.0),
            Check("colourfulness >= 80%", "colour", ">=", 80.0),
            Check("luma error < 1 level", "luma", "<", 1.0),
        ),
    ),
    Row(
        "... on photos",
        "{colour} colourfulness, {psnr} dB, FID {fid} (test photos; `--model auto` picks it per"
        " image, [how often](docs/RESULTS.md#colorize---model-auto-which-colorizer-it-picks))",
        "training-mean chroma {best} dB; gray replicated FID {gray_fid} (lower than ours);"
        " face colorizer {face_colour}, FID {face_fid}",
        {
            "colour": Figure(
                "colorizer_photo", ("photos", "system=*(ours)", "colorfulness_pct_real"), "{:.0f}%"
            ),
            "psnr": Figure("colorizer_photo", ("photos", "system=*(ours)", "psnr_db")),
            "gray": Figure("colorizer_photo", ("photos", "system=gray replicated", "psnr_db")),
            "best": Figure("colorizer_photo", ("photos", "system=gray*", "psnr_db"), reduce="max"),
            "face_colour": Figure(
                "colorizer_photo",
                ("photos", "system=face colorizer", "colorfulness_pct_real"),
                "{:.0f}%",
            ),
            "fid": Figure("colorizer_photo", ("photos", "system=*(ours)", "fid"), "{:.1f}"),
            "gray_fid": Figure(
                "colorizer_photo", ("photos", "system=gray replicated", "fid"), "{:.1f}"
            ),
            "face_fid": Figure(
                "colorizer_photo", ("photos", "system=face colorizer", "fid"), "{:.1f}"
            ),
        },
        (
            Check("colourfulness >= 70%", "colour", ">=", 70.0),
            Check("PSNR above the gray baselines", "psnr", ">=", "best"),
            # "Clearly below": FID at n = 80 moves by a few points between equally good
            # systems, so a lead of at least 10 counts.
            Check("FID 10 below the face colorizer's", "fid", "<=", "face_fid", offset=-10.0),
        ),
    ),
    Row(
        "face concepts",
        "P(attribute) +{smile} for smile, +{glasses} for eyeglasses at strength 1;"
        " gender moves at most {gender}",
        "(an independent attribute classifier on the test faces)",
        {
            "smile": Figure("face_concepts", ("smile", "change_at_1")),
            "glasses": Figure("face_concepts", ("eyeglasses", "change_at_1")),
            "gender": Figure(
                "face_concepts", ("smile|eyeglasses", "gender_change_at_1"), reduce="maxabs"
            ),
        },
        (
            Check("smile >= 0.3", "smile", ">=", 0.3),
            Check("eyeglasses >= 0.3", "glasses", ">=", 0.3),
            Check("gender < 0.1", "gender", "<", 0.1),
        ),
    ),
    Row(
        "faces in photos",
        "{found} of the LFW test faces pasted into photos found; `smile:+1` moves P(Smiling)"
        " {smile} on photos",
        "the same change on the aligned crop: {crop}",
        {
            "found": Figure("faces_in_photos", ("found_share",), "{:.0%}"),
            "smile": Figure(
                "faces_in_photos", ("edit_scores", "smile +1", "photo", "mean"), "{:+.2f}"
            ),
            "crop": Figure(
                "faces_in_photos", ("edit_scores", "smile +1", "crop_transfer", "mean"), "{:+.2f}"
            ),
            "gap": Figure(
                "faces_in_photos",
                ("edit_scores", "smile +1|eyeglasses +1", "photo - crop_transfer"),
                reduce="maxabs",
            ),
        },
        (
            Check("found >= 95%", "found", ">=", 0.95),
            Check("edits within 0.05 of the crop's", "gap", "<=", 0.05),
        ),
        until_run=(
            "[share of faces found, edit strength on photos]({res}#faces-in-photos)",
            "the same edit on aligned crops",
            "found >= 95%: **not met**; edits within 0.05 of the crop's: **not met**",
        ),
    ),
)

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def _matches(key: object, pattern: str) -> bool:
    return any(fnmatchcase(str(key), p) for p in pattern.split("|"))


def _select(nodes: list[Any], step: str | int) -> list[Any]:
    """The children of ``nodes`` that ``step`` names (a key pattern, an index, field=pattern)."""
    out: list[Any] = []
    for node in nodes:
        if isinstance(step, int):
            out.append(node[step])
        elif isinstance(node, list) and "=" in step:
            name, pattern = step.split("=", 1)
            key: str | int = int(name) if name.isdigit() else name
            out += [item for item in node if _matches(item[key], pattern)]
        elif isinstance(node, dict):
            out += [value for k, value in node.items() if _matches(k, step)]
    return out


def _numbers(node: Any) -> list[float]:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [x for item in node for x in _numbers(item)]
    return [float(node)] if isinstance(node, (int, float)) else []


def _load(source: str, cache: dict[str, Any]) -> Any:
    if source not in cache:
        cache[source] = json.loads(_source(source).read_text(encoding="utf-8"))
    return cache[source]


def value(fig: Figure, cache: dict[str, Any]) -> float:
    """The number ``fig`` names, from its file (read once per ``cache``)."""
    nodes = [_load(fig.source, cache)]
    for step in fig.path:
        nodes = _select(nodes, step)
    if not nodes:
        raise KeyError(f"{fig.source}: nothing matches {'/'.join(map(str, fig.path))}")
    if fig.reduce == "value":
        if len(nodes) != 1 or not isinstance(nodes[0], (int, float)):
            raise KeyError(f"{fig.source}: {fig.path} is not one number ({len(nodes)} matches)")
        return float(nodes[0])
    if fig.reduce in ("best_mean", "worst_mean"):
        means = [math.fsum(v) / len(v) for v in map(_numbers, nodes)]
        return max(means) if fig.reduce == "best_mean" else min(means)
    numbers = _numbers(nodes)
    reducers = {"mean": lambda v: math.fsum(v) / len(v), "min": min, "max": max}
    if fig.reduce == "maxabs":
        return max(abs(v) for v in numbers)
    return float(reducers[fig.reduce](numbers))


def _source(name: str) -> Path:
    return ROOT / (name if "/" in name else RESULTS_JSON.format(name))


def _cells(row: Row, cache: dict[str, Any]) -> list[str]:
    if row.until_run and not all(_source(f.source).is_file() for f in row.figures.values()):
        return [row.stage, *(cell.format(res=RES) for cell in row.until_run)]
    values = {name: value(fig, cache) for name, fig in row.figures.items()}
    shown = {name: fig.fmt.format(values[name]) for name, fig in row.figures.items()}
    targets = []
    for check in row.checks:
        limit = values[check.limit] if isinstance(check.limit, str) else check.limit
        met = _OPS[check.op](values[check.figure], check.scale * limit + check.offset)
        targets.append(f"{check.label}: {'met' if met else '**not met**'}")
    return [
        row.stage,
        row.ours.format(res=RES, **shown),
        row.baseline.format(res=RES, **shown),
        "; ".join(targets),
    ]


def render() -> str:
    """The Markdown table, one row per entry of ``ROWS``, from the current JSON files."""
    cache: dict[str, Any] = {}
    lines = ["| stage | ours | best baseline in the same run | target |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(_cells(row, cache)) + " |" for row in ROWS]
    return "\n".join(lines) + "\n"
