"""Photo colorizer benchmark: baselines, the face colorizer and ``colorizer-photo``.

Run (one run writes the table, its JSON and the strip)::

    .venv/bin/python benchmarks/colorizer_photo.py --photos ../shared/data/photos \
        --faces ../shared/data/faces/lfw_64.npz --threads 2

Part 1, the photo test split (``test/``, 80 photos of 128 px short side, scored at their own
size): every system gets the 8-bit rounded BT.601 gray of each photo and is scored against the
real colour photo. Rows: gray replicated; gray + the training photos' mean chroma (one (Cb, Cr)
everywhere, laid on with :func:`aepipe.models.colorizer.gamut_fit` like the stage does); the face
colorizer (``--face-model``) and ``colorizer-photo`` (``--model``), both through the
``colorizer`` stage with their shipped defaults; ``--extra label=folder`` adds rows.

Part 2, the 995 LFW test faces (64x64): the face colorizer and ``colorizer-photo``.

Metrics: PSNR (dB, 8-bit RGB, mean per image); Hasler & Suesstrunk colourfulness and its share
of the real images'; mean chroma error (mean Euclidean distance of (Cb, Cr) to the real image's,
in 8-bit levels); luma error (mean and max |BT.601 gray of the 8-bit output - input gray|, gray
levels); FID against the real colour images (benchmarks/metrics.py; photos: the centre 128x128
crop of each test photo, so all n = 80 systems are compared at the same n; faces: the first
``--face-fid-n`` faces, 0 skips it). FID at n = 80 is strongly biased upwards; only differences
between rows at the same n mean anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import write_report  # noqa: E402  (a sibling module)

from benchmarks.colorizer import command_line, to_u8  # noqa: E402
from benchmarks.metrics import colorfulness, fid, psnr  # noqa: E402


def gray_u8_of(rgb_u8: np.ndarray) -> np.ndarray:
    """8-bit rounded BT.601 gray (H, W) of uint8 RGB (H, W, 3) (what a gray file holds)."""
    from aepipe.batch import LUMA_WEIGHTS

    return np.round(rgb_u8.astype(np.float64) @ np.array(LUMA_WEIGHTS)).astype(np.uint8)


def chroma_u8(rgb_u8: np.ndarray) -> np.ndarray:
    """BT.601 (Cb, Cr) of uint8 RGB (..., 3), in 8-bit levels: (..., 2)."""
    from aepipe.batch import LUMA_WEIGHTS

    x = rgb_u8.astype(np.float64)
    y = x @ np.array(LUMA_WEIGHTS)
    kb, kr = 2 * (1 - LUMA_WEIGHTS[2]), 2 * (1 - LUMA_WEIGHTS[0])
    return np.stack([(x[..., 2] - y) / kb, (x[..., 0] - y) / kr], axis=-1)


def scores(real: list[np.ndarray], out: list[np.ndarray], gray: list[np.ndarray]) -> dict:
    """Per-image means of PSNR, colourfulness, chroma error and luma error over a set."""
    chroma_err = [
        float(np.linalg.norm(chroma_u8(o) - chroma_u8(r), axis=-1).mean())
        for r, o in zip(real, out, strict=True)
    ]
    from aepipe.batch import LUMA_WEIGHTS

    luma = [
        np.abs(o.astype(np.float64) @ np.array(LUMA_WEIGHTS) - g)
        for o, g in zip(out, gray, strict=True)
    ]
    cf = float(np.mean([colorfulness(o[None]) for o in out]))
    real_cf = float(np.mean([colorfulness(r[None]) for r in real]))
    return {
        "psnr_db": float(np.mean([psnr(r[None], o[None]) for r, o in zip(real, out, strict=True)])),
        "colorfulness": cf,
        "colorfulness_pct_real": 100 * cf / real_cf,
        "chroma_err": float(np.mean(chroma_err)),
        "luma_mae_levels": float(np.mean([e.mean() for e in luma])),
        "luma_max_levels": float(max(e.max() for e in luma)),
    }


def colorize_each(
    folder: str, gray: list[np.ndarray], **overrides
) -> tuple[list[np.ndarray], float]:
    """Colorize uint8 gray images one by one through the stage; returns RGB and ms/image."""
    from aepipe.batch import ImageBatch
    from aepipe.stages.colorizer import Colorizer

    stage = Colorizer.from_pretrained(folder, **overrides)
    t0 = time.perf_counter()
    out = [stage(ImageBatch.from_numpy(g[None, ..., None])).to_numpy()[0] for g in gray]
    return out, 1000 * (time.perf_counter() - t0) / len(gray)


def mean_chroma_rows(gray: list[np.ndarray], mean_c) -> list[np.ndarray]:
    """Gray + one (Cb, Cr) everywhere, laid on the exact gray like the stage does."""
    import torch

    from aepipe.models.colorizer import gamut_fit

    out = []
    for g in gray:
        y = torch.from_numpy(g).float()[None, None] / 255.0
        out.append(to_u8(gamut_fit(y, mean_c.expand(1, 2, *g.shape)))[0])
    return out


def centre(img: np.ndarray, side: int = 128) -> np.ndarray:
    """Centre side x side crop of (H, W, ...)."""
    h, w = img.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return img[y : y + side, x : x + side]


def strip_picks(n_images: int, n: int = 10) -> list[int]:
    """Indices of ``n`` photos spread evenly over the sorted test split (every source set)."""
    return [round(i) for i in np.linspace(0, n_images - 1, n)]


def strip(gray, ours, real, path: Path) -> None:
    """Rows gray input | ours | real of the :func:`strip_picks` photos, centre 128x128 crops."""
    from PIL import Image

    picks = strip_picks(len(real))
    rows = [
        [np.repeat(centre(gray[i])[..., None], 3, -1) for i in picks],
        [centre(ours[i]) for i in picks],
        [centre(real[i]) for i in picks],
    ]
    sep = lambda a: np.pad(a, ((2, 2), (2, 2), (0, 0)), constant_values=255)  # noqa: E731
    grid = np.concatenate([np.concatenate([sep(a) for a in r], axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def load_photo_split(folder: Path) -> tuple[list[str], list[np.ndarray]]:
    """Names and uint8 RGB (H, W, 3) of every image in a folder, sorted by name."""
    from aepipe.io import is_image_path, read_image

    files = sorted(p for p in folder.iterdir() if is_image_path(p))
    return [f.name for f in files], [read_image(f).to_numpy()[0] for f in files]


def table(rows: list[dict], with_fid: bool) -> list[str]:
    """Markdown table rows (the FID column only when measured)."""
    fid_col = " FID |" if with_fid else ""
    lines = [
        "| system | PSNR dB | colourfulness (% real) | chroma err | luma err mean / max |"
        + fid_col
        + " ms/image |",
        "|---|---|---|---|---|" + ("---|" if with_fid else "") + "---|",
    ]
    for r in rows:
        f = f" {r['fid']:.1f} |" if with_fid else ""
        ms = f"{r['ms_per_image']:.1f}" if "ms_per_image" in r else "-"
        lines.append(
            f"| {r['system']} | {r['psnr_db']:.2f} | {r['colorfulness']:.1f} "
            f"({r['colorfulness_pct_real']:.0f}%) | {r['chroma_err']:.2f} "
            f"| {r['luma_mae_levels']:.3f} / {r['luma_max_levels']:.3f} |{f} {ms} |"
        )
    return lines


def photo_part(args, log) -> tuple[list[dict], dict]:
    """Rows of the photo test split, plus what the strip needs."""

    mean_c = train_mean_chroma(args.photos)  # from the training photos only
    names, real = load_photo_split(args.photos / "test")
    gray = [gray_u8_of(r) for r in real]
    systems = [
        ("gray replicated", [np.repeat(g[..., None], 3, -1) for g in gray], None),
        ("gray + training-mean chroma", mean_chroma_rows(gray, mean_c), None),
    ]
    for label, folder in [
        ("face colorizer", args.face_model),
        *args.extra,
        (args.label, args.model),
    ]:
        out, ms = colorize_each(folder, gray)
        systems.append((label, out, ms))
    rows = []
    for label, out, ms in systems:
        row = {"system": label, **scores(real, out, gray)}
        if ms is not None:
            row["ms_per_image"] = ms
        if not args.no_fid:
            log(f"FID {label} ({len(real)} photos)")
            row["fid"] = fid(
                np.stack([centre(r) for r in real]), np.stack([centre(o) for o in out])
            )
        log(f"{label}: {row}")
        rows.append(row)
    return rows, {"gray": gray, "ours": systems[-1][1], "real": real, "names": names}


def face_part(args, log) -> tuple[list[dict], int]:
    """Rows of the LFW test faces: the face colorizer and colorizer-photo."""
    from aepipe.train.colorizer import load_color_faces

    faces, _ = load_color_faces(args.faces, "test")
    real = list(faces)
    gray = [gray_u8_of(r) for r in real]
    rows = []
    for label, folder in [("face colorizer", args.face_model), (args.label, args.model)]:
        out, ms = colorize_each(folder, gray)
        row = {"system": label, **scores(real, out, gray), "ms_per_image": ms}
        if args.face_fid_n:
            k = args.face_fid_n
            row["fid"] = fid(np.stack(real[:k]), np.stack(out[:k]), log=log)
        log(f"faces {label}: {row}")
        rows.append(row)
    return rows, len(real)


def train_mean_chroma(photos: Path):
    """Mean (Cb, Cr) over every pixel of the training photos, shape (1, 2, 1, 1)."""
    import torch

    from aepipe.models.colorizer import rgb_to_ycbcr

    _, train = load_photo_split(photos / "train")
    sums = torch.zeros(2, dtype=torch.float64)
    count = 0
    for t in train:
        rgb = torch.from_numpy(t).permute(2, 0, 1)[None].float() / 255.0
        sums += rgb_to_ycbcr(rgb)[1].double().sum(dim=(0, 2, 3))
        count += t.shape[0] * t.shape[1]
    return (sums / count).float().view(1, 2, 1, 1)


SATURATIONS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)


def parse_upsamples(text: str) -> tuple[dict, ...]:
    """``bilinear,guided:1:0.001`` -> the stage's chroma-upsampling settings to sweep.

    Every entry names all three stage options (the guided filter's at the stage defaults for
    bilinear, where they are unused), so a chosen row can be stored as it is.
    """
    from aepipe.stages.colorizer import Config

    unused = {k: Config.model_fields[k].default for k in ("guide_radius", "guide_eps")}
    out = []
    for item in text.split(","):
        kind, *rest = item.split(":")
        if kind == "bilinear" and not rest:
            out.append({"upsample": "bilinear", **unused})
        elif kind == "guided" and len(rest) == 2:
            out.append(
                {"upsample": "guided", "guide_radius": int(rest[0]), "guide_eps": float(rest[1])}
            )
        else:
            raise argparse.ArgumentTypeError(f"not bilinear or guided:RADIUS:EPS: {item!r}")
    return tuple(out)


def upsample_label(row: dict) -> str:
    """How a sweep row brought the chroma to full size (rows from before the option: bilinear)."""
    if row.get("upsample", "bilinear") == "bilinear":
        return "bilinear"
    return f"guided (r {row['guide_radius']}, eps {row['guide_eps']:g})"


TEMPERATURES = (0.38, 0.5, 0.7, 1.0, 1.5, 2.0)


def select_setting(args, log) -> None:
    """Choose ``--model``'s stage temperature and saturation on the VAL photos; store them.

    Rule: among the settings whose val colourfulness is at least ``--min-colorfulness`` % of
    the real val photos', the one with the best val PSNR (full-size photos, through the stage);
    if none is that colourful, the most colourful within 0.5 dB of the best val PSNR (the
    trainer's own rule). A regression model has no temperature, so only the saturation is
    swept. The test split is not read.
    """
    from aepipe.weights import resolve

    path = Path(resolve(args.model)) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    _, real = load_photo_split(args.photos / "val")
    gray = [gray_u8_of(r) for r in real]
    real_cf = float(np.mean([colorfulness(r[None]) for r in real]))
    floor = scores(real, mean_chroma_rows(gray, train_mean_chroma(args.photos)), gray)["psnr_db"]
    classify = config["model_kwargs"].get("head", "classify") == "classify"
    temps = TEMPERATURES if classify else (config["stage_config"].get("temperature", 1.0),)
    sweep = []
    for t in temps:
        for up in args.upsamples:
            for gain in args.saturations:
                setting = {"temperature": t, "saturation": gain, **up}
                out, _ = colorize_each(args.model, gray, **setting)
                row = {**setting, **scores(real, out, gray)}
                log(f"val {setting}: {row}")
                sweep.append(
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                )
    ok = [r for r in sweep if r["colorfulness"] >= args.min_colorfulness / 100 * real_cf]
    if ok:
        chosen = max(ok, key=lambda r: r["psnr_db"])
    else:
        best = max(r["psnr_db"] for r in sweep)
        chosen = max(
            (r for r in sweep if r["psnr_db"] >= best - 0.5), key=lambda r: r["colorfulness"]
        )
    chosen_setting = {k: chosen[k] for k in ("temperature", "saturation", *args.upsamples[0])}
    config["stage_config"].update(chosen_setting)
    config.setdefault("metrics", {}).pop("val_fullsize_temperature_sweep", None)
    config["metrics"]["val_fullsize_setting_sweep"] = {
        "rule": f"best val PSNR among settings with val colourfulness >= {args.min_colorfulness}%"
        " of the real val photos'; if none, the most colourful within 0.5 dB of the best PSNR",
        "real_val_colorfulness": round(real_cf, 4),
        "baseline_val_psnr_db": round(floor, 4),
        "sweep": sweep,
        "chosen": chosen_setting,
        "command": command_line(),
    }
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    card = path.parent / "MODEL_CARD.md"
    if card.is_file():
        share = 100 * chosen["colorfulness"] / real_cf
        choice = (
            f"{config['metrics']['val_fullsize_setting_sweep']['rule']}: temperature "
            f"{chosen['temperature']:g}, saturation {chosen['saturation']:g}, chroma "
            f"upsampling {upsample_label(chosen)}; val PSNR "
            f"{chosen['psnr_db']:.2f} dB at {share:.0f}% (training-mean chroma: {floor:.2f} dB). "
            f"Command: `{command_line()}`."
        )
        text = card_with_setting(card.read_text(encoding="utf-8"), config["stage_config"], choice)
        card.write_text(text, encoding="utf-8")
    log(
        f"baseline val PSNR {floor:.2f}; chose T={chosen['temperature']} saturation="
        f"{chosen['saturation']} upsampling {upsample_label(chosen)} (val PSNR "
        f"{chosen['psnr_db']:.2f}, colourfulness "
        f"{100 * chosen['colorfulness'] / real_cf:.0f}% of real); wrote {path}"
    )


def card_with_setting(card: str, stage_config: dict, choice: str) -> str:
    """A trainer's model card with the stage defaults and the setting chosen on val.

    The "Stage defaults" line is rewritten and a "Stage setting" section (replaced on a rerun)
    goes before "## Limits", so the card says what the folder's config.json does.
    """
    lines = [
        f"- Stage defaults: {stage_config}." if line.startswith("- Stage defaults:") else line
        for line in card.split("\n")
    ]
    card = "\n".join(lines)
    head = "## Stage setting (chosen on the val photos at full size)"
    if head in card:
        start = card.index(head)
        card = card[:start] + card[card.index("## ", start + len(head)) :]
    section = f"{head}\n" + textwrap.fill(choice, 96, initial_indent="- ", subsequent_indent="  ")
    return card.replace("## Limits", f"{section}\n\n## Limits", 1)


def selection_summary(folders: list[str]) -> str:
    """Markdown of the ``--select-setting`` choices stored in each model's config (val only)."""
    from aepipe.weights import resolve

    lines = [
        "# Photo colorizer: stage settings chosen on the val photos",
        "",
        "| model | size | head | context (crops, dropout) | rebalance | EMA | temperature "
        "| saturation | chroma upsampling | val PSNR dB | val colourfulness (% real) "
        "| val training-mean chroma dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rules, commands = set(), []
    for folder in folders:
        config = json.loads((Path(resolve(folder)) / "config.json").read_text(encoding="utf-8"))
        rec = config["metrics"]["val_fullsize_setting_sweep"]
        row = next(r for r in rec["sweep"] if all(r.get(k) == v for k, v in rec["chosen"].items()))
        kwargs = config["model_kwargs"]
        head, context = kwargs.get("head", "classify"), kwargs.get("context", "none")
        trained = config["training"]["config"]
        rebalance = trained.get("rebalance", "-") if head == "classify" else "-"
        if context != "none":
            # Runs from before the option had its default, 0.2, built in.
            dropout = trained.get("context_dropout", 0.2)
            context += f" ({trained['context_crops']}, {dropout:g})"
        share = 100 * row["colorfulness"] / rec["real_val_colorfulness"]
        lines.append(
            f"| `{folder}` | {config['stage_config']['model_size']} | "
            f"{head} | {context} | {rebalance} | {trained.get('ema') or '-'} | "
            f"{row['temperature']:g} | {row['saturation']:g} | {upsample_label(row)} | "
            f"{row['psnr_db']:.2f} | {share:.0f}% | {rec['baseline_val_psnr_db']:.2f} |"
        )
        rules.add(rec["rule"])
        commands.append(f"`{rec['command']}`")
    lines += ["", f"Rule: {'; '.join(sorted(rules))}.", "", "Commands: " + ", ".join(commands)]
    return "\n".join([*lines, ""])


def speed_12mpx(folder: str, repeats: int = 3) -> dict:
    """Seconds to colorize one 4000x3000 gray photo through the stage (best and median of runs).

    The gray is a smooth random field plus noise (content does not change the cost). Timed:
    the stage call (batch in, float RGB batch out) and, separately, the conversion of the
    result to 8-bit pixels; file decoding and encoding are not included.
    """
    import torch
    from torch.nn import functional as F

    from aepipe.batch import ImageBatch
    from aepipe.stages.colorizer import Colorizer

    gen = torch.Generator().manual_seed(0)
    field = F.interpolate(
        torch.rand(1, 1, 30, 40, generator=gen), size=(3000, 4000), mode="bicubic"
    )
    gray = (field + 0.05 * torch.randn(field.shape, generator=gen)).clamp(0, 1)
    batch = ImageBatch(gray)
    stage = Colorizer.from_pretrained(folder)
    times, convert = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = stage(batch)
        t1 = time.perf_counter()
        out.to_numpy(np.uint8)
        convert.append(time.perf_counter() - t1)
        times.append(t1 - t0)
    return {
        "stage_best_s": min(times),
        "stage_median_s": float(np.median(times)),
        "to_uint8_median_s": float(np.median(convert)),
        "threads": torch.get_num_threads(),
    }


def context_note(model: str) -> str:
    """A caveat for the FID column when ``model`` reads the FID network's own early layers."""
    from aepipe.weights import read_config, resolve

    if not read_config(resolve(model)).get("parts"):
        return ""
    return (
        f"; `{model}` reads frozen features of the same Inception-v3 (its layers up to "
        "Mixed_6e) that FID's last layer comes from: it is not trained on FID, but its FID "
        "gain may overstate how much better it looks"
    )


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared/data/photos")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/faces/lfw_64.npz")
    ap.add_argument("--model", default="colorizer-photo")
    ap.add_argument("--label", default="colorizer-photo (ours)")
    ap.add_argument("--face-model", default="colorizer")
    ap.add_argument(
        "--extra", action="append", default=[], help="label=weights folder: one more photo row"
    )
    ap.add_argument("--no-fid", action="store_true", help="skip FID (no extractor offline)")
    ap.add_argument("--face-fid-n", type=int, default=0, help="FID on the first N faces")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--select-setting",
        "--select-temperature",
        action="store_true",
        help="only choose --model's temperature and saturation on the val photos and write "
        "them to its config",
    )
    ap.add_argument(
        "--min-colorfulness",
        type=float,
        default=75.0,
        help="--select-setting: least val colourfulness, %% of the real photos' (target: 70)",
    )
    ap.add_argument(
        "--saturations",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default=SATURATIONS,
        help="--select-setting: the saturation gains to try, comma-separated",
    )
    ap.add_argument(
        "--upsamples",
        type=parse_upsamples,
        default=parse_upsamples("bilinear"),
        help="--select-setting: chroma upsamplings to try, comma-separated: bilinear or "
        "guided:RADIUS:EPS",
    )
    ap.add_argument(
        "--summarize-selections",
        nargs="+",
        metavar="MODEL",
        help="only write (to --out) the settings --select-setting chose for these models",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/colorizer_photo.md")
    ap.add_argument("--strip", type=Path, default=Path("docs/img/colorizer_photo_strip.png"))
    args = ap.parse_args()
    args.extra = [tuple(e.split("=", 1)) for e in args.extra]
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.select_setting:
        select_setting(args, log)
        return
    if args.summarize_selections:
        args.out.write_text(selection_summary(args.summarize_selections), encoding="utf-8")
        return

    photo_rows, keep = photo_part(args, log)
    face_rows, n_faces = face_part(args, log)
    speed = speed_12mpx(args.model)
    log(f"12 Mpx: {speed}")
    n_photos = len(keep["real"])
    fid_note = (
        "FID not measured (--no-fid)"
        if args.no_fid
        else f"FID: centre 128x128 crops, n = {n_photos} real vs {n_photos} colorized"
        + context_note(args.model)
    )
    lines = [
        "# Photo colorizer benchmark",
        "",
        f"## Photo test split ({n_photos} photos, `{args.photos.name}/test`, scored at full size)",
        "",
        "Input: 8-bit BT.601 gray of each photo; scored against the real colour photo. "
        f"{fid_note} (strongly biased at this n: compare rows only). Chroma err: mean |(Cb, Cr) "
        "- real| in 8-bit levels. Luma err: |BT.601 gray of the 8-bit output - input gray|.",
        "",
        *table(photo_rows, not args.no_fid),
        "",
        f"## LFW test faces ({n_faces}, 64x64)",
        "",
        "FID: "
        + (f"first {args.face_fid_n} faces" if args.face_fid_n else "not measured here")
        + " (the face colorizer's FID on all 995 faces is in benchmarks/results/colorizer.md).",
        "",
        *table(face_rows, bool(args.face_fid_n)),
        "",
        "## Speed: one 12-megapixel (4000x3000) gray photo",
        "",
        f"`colorizer` stage with `{args.model}`, torch threads {speed['threads']}: "
        f"{speed['stage_median_s']:.2f} s median (best {speed['stage_best_s']:.2f} s) of 3 runs "
        f"for the stage call (gray batch in, float RGB out); converting the result to 8-bit "
        f"pixels adds {speed['to_uint8_median_s']:.2f} s. File decoding/encoding not included.",
        "",
        f"Strip (`{args.strip}`): gray | ours | real, centre 128x128 crops of "
        f"{len(strip_picks(n_photos))} test photos spread over the sorted split "
        f"({', '.join(keep['names'][i] for i in strip_picks(n_photos))}).",
        "",
        f"Command: `{command_line()}` (torch threads {args.threads})",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    payload = {"photos": photo_rows, "faces": face_rows, "speed_12mpx": speed, "argv": sys.argv}
    write_report(args.out, text, payload)
    strip(keep["gray"], keep["ours"], keep["real"], args.strip)


if __name__ == "__main__":
    main()
