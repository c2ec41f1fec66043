"""Benchmark the scan denoiser against classic and learned baselines, quality and speed.

Quality, on two sets with clean targets:

* ``ddd-val``: the DDD training pages of the page groups held out by the shipped model's
  training run (names read from its config.json; never trained on);
* ``synthetic``: fresh pages from ``aepipe.data.synthetic_pages`` (seeds unused in training),
  100-DPI Kaggle-like pages and 300-DPI pages, plus ``synthetic-bilevel``: 300-DPI pages whose
  ground truth is strictly black/white, as in archive-scan benchmarks (DIBCO-style).

Metrics: RMSE of the output against the clean page (pixels in [0, 1], pooled over pages) and
the mean per-page F-measure of ink after Otsu binarization of the output against the clean
page thresholded at 0.5.

Speed, on a synthetic 300-DPI A4 page (2480 x 3508): the network's throughput on tile batches
under several settings, the stage's Mpx/s in-process, and the whole-process wall time of
``clean-scans`` on the page file next to ``unpaper`` (with OCRmyPDF's default arguments).
``--onnx`` adds the stage with its tile batches run by ONNX Runtime, fp32 and static int8
(with the int8 output's error against fp32 and against clean synthetic pages).

Run::

    .venv/bin/python benchmarks/scan_denoiser.py --ddd ../shared/data/ddd \
        --classic runs/scan-denoiser-classic
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import write_report  # noqa: E402  (a sibling module)

from aepipe.data.docbin import f_measure, otsu_ink  # noqa: E402  (after the path insert)

# OCRmyPDF's default unpaper arguments (ocrmypdf/_exec/unpaper.py, clean()).
UNPAPER_ARGS = [
    "--layout",
    "none",
    "--mask-scan-size",
    "100",
    "--no-border-align",
    "--no-mask-center",
    "--no-grayfilter",
    "--no-blackfilter",
    "--no-deskew",
]
SYNTH_SEED = 5_000_000

Pages = list[tuple[str, np.ndarray, np.ndarray, int]]  # (name, dirty uint8, clean uint8, dpi)
Method = Callable[[np.ndarray, int], np.ndarray]  # (dirty uint8, dpi) -> float [0, 1]


# ---- data -----------------------------------------------------------------------------------


def ddd_val_pages(ddd: Path, weights_cfg: dict) -> Pages:
    from aepipe.data.ddd import load_pairs

    names = set(weights_cfg["training"]["data"]["ddd_val_names"])
    return [(p.name, p.dirty, p.clean, 100) for p in load_pairs(ddd) if p.name in names]


def synthetic_pages(n100: int, n300: int, bilevel: bool) -> Pages:
    from aepipe.data.synthetic_pages import make_pair

    pages: Pages = []
    offset = 10_000 if bilevel else 0
    if not bilevel:
        for i in range(n100):
            d, c = make_pair(SYNTH_SEED + i, 420, 540, 100)
            pages.append((f"s100-{i}", d, c, 100))
    for i in range(n300):
        d, c = make_pair(SYNTH_SEED + offset + 100 + i, 900, 700, 300, bilevel=bilevel)
        pages.append((f"s300{'b' if bilevel else ''}-{i}", d, c, 300))
    return pages


# ---- metrics --------------------------------------------------------------------------------


def score(method: Method, pages: Pages) -> dict[str, float]:
    se, count, fms, secs = 0.0, 0, [], 0.0
    for _name, dirty, clean, dpi in pages:
        t = time.perf_counter()
        out = np.clip(method(dirty, dpi).astype(np.float32), 0.0, 1.0)
        secs += time.perf_counter() - t
        assert out.shape == clean.shape, (out.shape, clean.shape)
        target = clean.astype(np.float32) / 255.0
        se += float(((out - target) ** 2).sum())
        count += target.size
        fms.append(f_measure(otsu_ink(out), target < 0.5))
    return dict(rmse=math.sqrt(se / count), f=100.0 * float(np.mean(fms)), seconds=secs)


# ---- methods --------------------------------------------------------------------------------


def raw(dirty: np.ndarray, dpi: int) -> np.ndarray:
    return dirty / 255.0


def median_background(dirty: np.ndarray, dpi: int) -> np.ndarray:
    """Kaggle's classic: background = median filter; keep only pixels well below it."""
    k = 21 if dpi <= 150 else 2 * int(21 * dpi / 200) + 1
    bg = cv2.medianBlur(dirty, k).astype(np.float32) / 255.0
    img = dirty / 255.0
    return np.where(img < bg - 0.1, img, 1.0)


def sauvola(dirty: np.ndarray, dpi: int) -> np.ndarray:
    from skimage.filters import threshold_sauvola

    w = 25 if dpi <= 150 else 2 * int(25 * dpi / 200) + 1
    img = dirty / 255.0
    return (img > threshold_sauvola(img, window_size=w)).astype(np.float32)


def doxa(algorithm: str) -> Method:
    import doxapy

    def run(dirty: np.ndarray, dpi: int) -> np.ndarray:
        out = np.empty_like(dirty)
        b = doxapy.Binarization(getattr(doxapy.Binarization.Algorithms, algorithm))
        b.initialize(np.ascontiguousarray(dirty))
        b.to_binary(out, {})
        return out.astype(np.float32) / 255.0

    return run


def unpaper(dirty: np.ndarray, dpi: int) -> np.ndarray:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pgm", Path(tmp) / "out.pgm"
        Image.fromarray(dirty).save(src)
        subprocess.run(
            ["unpaper", "--dpi", str(dpi), *UNPAPER_ARGS, str(src), str(dst)],
            check=True,
            capture_output=True,
        )
        with Image.open(dst) as im:
            out = np.asarray(im.convert("L"))
    if out.shape != dirty.shape:  # unpaper keeps the size with these args; guard anyway
        out = cv2.resize(out, dirty.shape[::-1], interpolation=cv2.INTER_AREA)
    return out.astype(np.float32) / 255.0


def torch_method(model) -> Method:
    import torch

    def run(dirty: np.ndarray, dpi: int) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(dirty.astype(np.float32) / 255.0)[None, None]
            return model(x)[0, 0].numpy()

    return run


def stage_method(stage) -> Method:
    from aepipe.batch import ImageBatch

    def run(dirty: np.ndarray, dpi: int) -> np.ndarray:
        return stage(ImageBatch.from_numpy(dirty)).images[0, 0].numpy()

    return run


# ---- speed ----------------------------------------------------------------------------------


def a4_page(path: Path, cache: Path | None) -> np.ndarray:
    """The synthetic 300-DPI A4 page, written to ``path`` (rendering it takes a while, so it
    is cached in ``cache`` when given)."""
    from PIL import Image

    from aepipe.data.synthetic_pages import make_pair

    if cache is not None and cache.is_file():
        with Image.open(cache) as im:
            dirty = np.asarray(im.convert("L"))
    else:
        dirty, _ = make_pair(SYNTH_SEED + 999, 3508, 2480, 300)
        if cache is not None:
            Image.fromarray(dirty).save(cache)
    Image.fromarray(dirty).save(path)
    return dirty


def time_call(fn: Callable[[], object], repeat: int, warm: Callable[[], object]) -> float:
    warm()  # warm-up on a crop (oneDNN primitive caches, allocations)
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


CALIB_SEED = SYNTH_SEED + 20_000  # int8 calibration pages: none of the scored pages


def ort_stage(weights: str, model_path: Path, threads: int):
    """The shipped stage with its network replaced by an ONNX Runtime session on ``model_path``.

    The stage's own tiling and blending run unchanged around the session (only the forward
    pass of each tile batch moves to ORT), so rows time the same page-level work.
    """
    import onnxruntime as ort
    import torch

    from aepipe.stages.scan_denoiser import ScanDenoiser

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Torch blends the tiles on the same cores between runs: ORT's pool must not busy-wait then.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    tile_shape = tuple(session.get_inputs()[0].shape[2:])

    class OrtNet(torch.nn.Module):
        """Tile batch (N, 1, T, T) -> cleaned tiles through the session; no parameters, so
        the stage's device is the CPU and its channels-last switch is a no-op."""

        def __init__(self, multiple: int) -> None:
            super().__init__()
            self.multiple = multiple

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if tuple(x.shape[2:]) != tile_shape:
                raise ValueError(f"ONNX graph is for {tile_shape} tiles, got {tuple(x.shape)}")
            return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    st = ScanDenoiser.from_pretrained(weights)
    st.model = OrtNet(int(st.model.multiple))
    return st


def export_onnx(weights: str, path: Path) -> int:
    """Export the shipped network for the stage's tile shape, batch dimension dynamic;
    returns the tile side."""
    import torch

    from aepipe.stages.scan_denoiser import ScanDenoiser

    st = ScanDenoiser.from_pretrained(weights)
    m = int(st.model.multiple)
    tile = max(m, st.config.tile // m * m)  # the tile side clean_gray() uses
    x = torch.rand(2, 1, tile, tile)
    # The exporter warns once per torchvision op it cannot register (torchvision is no
    # dependency) and torch.export raises a FutureWarning: noise in the benchmark's output.
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                st.model.eval(),
                (x,),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamo=True,  # torch 2.13's default exporter (needs onnxscript)
                dynamic_shapes=({0: torch.export.Dim("n")},),
                verbose=False,
            )
    finally:
        log.setLevel(level)
    return tile


def quantize_int8(fp32: Path, out: Path, tile: int, n_pages: int = 3) -> int:
    """Static int8 quantization (QDQ) calibrated on tiles of fresh synthetic 300-DPI pages
    (not the timed page); returns the number of calibration tiles."""
    from onnxruntime import quantization as oq

    from aepipe.data.synthetic_pages import make_pair

    tiles = []
    for i in range(n_pages):
        dirty, _ = make_pair(CALIB_SEED + i, 2 * tile, 2 * tile, 300)
        page = dirty.astype(np.float32)[None, None] / 255.0
        tiles += [page[..., :tile, :tile], page[..., tile:, tile:]]

    class Tiles(oq.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(tiles)

        def get_next(self) -> dict | None:
            t = next(self.it, None)
            return None if t is None else {"x": np.ascontiguousarray(t)}

    pre = out.with_name("pre.onnx")
    oq.quant_pre_process(str(fp32), str(pre))  # shape inference + folding, as ORT advises
    oq.quantize_static(
        str(pre),
        str(out),
        Tiles(),
        quant_format=oq.QuantFormat.QDQ,
        per_channel=True,
        # U8S8 (uint8 activations, int8 weights): ORT's CPU kernels fuse these QDQ pairs into
        # integer convolutions. In a trial on this AVX-512 VNNI machine (one batch of 8 tiles,
        # 1 thread) S8S8, the default, ran no faster than fp32; U8S8 ~3.5x faster, same error.
        activation_type=oq.QuantType.QUInt8,
        weight_type=oq.QuantType.QInt8,
    )
    return len(tiles)


def onnx_rows(weights: str, batch, crop, threads: int, repeat: int) -> list[dict]:
    """ONNX Runtime fp32 and int8 rows, timed like the stage rows, with their difference to
    the PyTorch stage on the page and the int8 quality on synthetic pages with clean targets."""
    from aepipe.stages.scan_denoiser import ScanDenoiser

    # Fail before the minutes of reference runs when the optional packages are missing.
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(m)]
    if missing:
        raise ImportError(f"{', '.join(missing)} not installed")
    mpx = batch.images[0, 0].numel() / 1e6
    ref_stage = ScanDenoiser.from_pretrained(weights)
    ref = ref_stage(batch).images[0, 0].numpy()
    # The 300-DPI pages of the quality set's "synthetic" group: each spans several tiles.
    pages = synthetic_pages(0, 3, bilevel=False)
    q_ref = score(stage_method(ref_stage), pages)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        tile = export_onnx(weights, fp32)
        outs = {}
        for kind, path in (("fp32", fp32), ("int8", int8)):
            if kind == "int8":
                n_calib = quantize_int8(fp32, int8, tile)
            st = ort_stage(weights, path, threads)
            t = time_call(lambda st=st: st(batch), repeat, lambda st=st: st(crop))
            out = st(batch).images[0, 0].numpy()
            outs[kind] = out
            q = score(stage_method(st), pages)
            row = dict(
                setting=f"same, ONNX Runtime {kind} (tiles through ORT, blending in torch)",
                seconds=round(t, 3),
                mpx_s=round(mpx / t, 2),
                max_abs_diff=float(np.abs(out - ref).max()),
                synthetic_rmse=round(q["rmse"], 4),
                synthetic_f=round(q["f"], 2),
            )
            note = f"max abs diff vs torch stage {row['max_abs_diff']:.1e}"
            if kind == "int8":
                row["rmse_vs_fp32"] = math.sqrt(float(np.mean((out - outs["fp32"]) ** 2)))
                # Holds: off fp32 by well under one gray level on the page, and no worse
                # against the clean targets than rounding noise.
                holds = (
                    row["rmse_vs_fp32"] < 1 / 255
                    and q["rmse"] <= q_ref["rmse"] * 1.02
                    and q["f"] >= q_ref["f"] - 0.5
                )
                row["quality_holds"] = holds
                row["synthetic_rmse_torch"] = round(q_ref["rmse"], 4)
                row["synthetic_f_torch"] = round(q_ref["f"], 2)
                row["setting"] = (
                    "same, ONNX Runtime int8 (static QDQ, U8S8 per-channel, "
                    f"{n_calib} calibration tiles)"
                )
                note = (
                    f"{note}; RMSE vs fp32 on the page {row['rmse_vs_fp32']:.4f} "
                    f"(1 gray level = 0.0039); {len(pages)} synthetic 300-DPI pages vs clean: "
                    f"RMSE {q['rmse']:.4f} / F {q['f']:.2f} (torch fp32: {q_ref['rmse']:.4f} / "
                    f"{q_ref['f']:.2f}): quality {'holds' if holds else 'DOES NOT hold'}"
                )
            row["note"] = note
            rows.append(row)
    return rows


def speed(
    weights: str,
    page: np.ndarray,
    page_path: Path,
    threads: int,
    repeat: int,
    compile_: bool,
    onnx: bool = False,
    pages: int = 1,
) -> tuple[list[dict], list[dict]]:
    import torch

    from aepipe.batch import ImageBatch
    from aepipe.stages.scan_denoiser import ScanDenoiser

    torch.set_num_threads(threads)
    mpx = page.size / 1e6
    rows: list[dict] = []
    batch = ImageBatch.from_numpy(page)
    crop = ImageBatch.from_numpy(np.ascontiguousarray(page[:1100, :1100]))

    def stage_row(label: str, stage) -> None:
        t = time_call(lambda: stage(batch), repeat, lambda: stage(crop))
        rows.append(dict(setting=label, seconds=round(t, 3), mpx_s=round(mpx / t, 2)))

    from aepipe.stage import resolved_precision

    st = ScanDenoiser.from_pretrained(weights)
    c = st.config
    here = resolved_precision(c.precision, "cpu")
    stage_row(
        f"stage as shipped: channels-last, tile {c.tile}, overlap {c.overlap}, "
        f"{c.batch_size} tile(s)/batch, precision {c.precision} ({here} on this CPU)",
        st,
    )
    other_precision = "float32" if here == "bfloat16" else "bfloat16"
    st = ScanDenoiser.from_pretrained(weights, precision=other_precision)
    stage_row(f"same, precision {other_precision}", st)
    st = ScanDenoiser.from_pretrained(weights)
    st._layout_ready = True  # leave the model in NCHW: measures what channels-last buys
    st.model.to(memory_format=torch.contiguous_format)
    orig = st.model.forward
    st.model.forward = lambda x: orig(x.contiguous())  # type: ignore[method-assign]
    stage_row("same, NCHW (no channels-last)", st)
    other = 8 if c.batch_size == 1 else 1
    st = ScanDenoiser.from_pretrained(weights, batch_size=other)
    stage_row(f"same as shipped, {other} tile(s)/batch", st)
    if compile_:
        # Inductor's "freezing" folds the weights into the graph as constants, which lets it
        # pre-pack them for oneDNN and fuse each convolution with its ReLU.
        for label, options in (("", None), (" with freezing", {"freezing": True})):
            st = ScanDenoiser.from_pretrained(weights)
            st._prepare()
            t0 = time.perf_counter()
            try:
                st.model = torch.compile(st.model, dynamic=False, options=options)
                st(crop)
                compile_s = time.perf_counter() - t0
                stage_row(f"same, torch.compile{label} (first call {compile_s:.0f} s)", st)
            except Exception as exc:
                rows.append(
                    dict(
                        setting=f"torch.compile{label} failed: {type(exc).__name__}",
                        seconds=None,
                        mpx_s=None,
                    )
                )
    if onnx:
        try:
            rows += onnx_rows(weights, batch, crop, threads, repeat)
        except ImportError as exc:  # onnx, onnxscript and onnxruntime are optional (bench extra)
            rows.append(dict(setting=f"ONNX Runtime left out: {exc}", seconds=None, mpx_s=None))

    procs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        ours = _clean_scans_cmd(page_path, Path(tmp), weights)
        procs.append(
            _timed_processes(
                "clean-scans (aepipe, whole process)",
                [ours],
                env,
                mpx,
                command=" ".join([*ours[:1], "page.png", "--out", "DIR", *ours[4:]]),
            )
        )
        pgm = Path(tmp) / "page.pgm"
        from PIL import Image

        Image.fromarray(page).save(pgm)
        procs.append(
            _timed_processes(
                "unpaper 7 (OCRmyPDF args, whole process)",
                [_unpaper_cmd(pgm, Path(tmp) / "o.pgm")],
                None,
                mpx,
                command="unpaper --dpi 300 " + " ".join(UNPAPER_ARGS),
            )
        )
        if pages > 1:
            # A folder of copies of the page: one clean-scans process for the folder, one
            # unpaper process per page (as OCRmyPDF runs it; a new output file each time, since
            # unpaper refuses to overwrite one).
            folder = Path(tmp) / "set"
            folder.mkdir()
            for i in range(pages):
                shutil.copy(page_path, folder / f"page{i}.png")
            procs.append(
                _timed_processes(
                    f"clean-scans on {pages} such pages (one process for the folder)",
                    [_clean_scans_cmd(folder, Path(tmp) / "set-out", weights)],
                    env,
                    pages * mpx,
                )
            )
            procs.append(
                _timed_processes(
                    f"clean-scans --precision {other_precision} on the same {pages} pages",
                    [
                        _clean_scans_cmd(
                            folder, Path(tmp) / "set-out2", weights, "--precision", other_precision
                        )
                    ],
                    env,
                    pages * mpx,
                )
            )
            procs.append(
                _timed_processes(
                    f"unpaper on the same {pages} pages (one process per page, as OCRmyPDF)",
                    [_unpaper_cmd(pgm, Path(tmp) / f"set-o{i}.pgm") for i in range(pages)],
                    None,
                    pages * mpx,
                )
            )
    return rows, procs


def _clean_scans_cmd(src: Path, out: Path, weights: str, *extra: str) -> list[str]:
    exe = Path(sys.executable).parent / "clean-scans"
    flags = ["--device", "cpu", "--overwrite", "--quiet", "--model", weights, *extra]
    return [str(exe), str(src), "--out", str(out), *flags]


def _unpaper_cmd(src: Path, out: Path) -> list[str]:
    return ["unpaper", "--dpi", "300", *UNPAPER_ARGS, str(src), str(out)]


def _timed_processes(
    program: str,
    cmds: list[list[str]],
    env: dict[str, str] | None,
    mpx: float,
    command: str | None = None,
) -> dict:
    """Run ``cmds`` one after another; their total wall time and worst exit code as a row."""
    t = time.perf_counter()
    rcs = [subprocess.run(c, env=env, capture_output=True, text=True).returncode for c in cmds]
    wall = time.perf_counter() - t
    row = dict(program=program, seconds=round(wall, 2), mpx_s=round(mpx / wall, 2), rc=max(rcs))
    if command is not None:
        row["command"] = command
    return row


# ---- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ddd", type=Path, default=ROOT.parent / "shared" / "data" / "ddd")
    ap.add_argument("--weights", default="scan-denoiser", help="our weights (name or folder)")
    ap.add_argument(
        "--classic",
        default="runs/scan-denoiser-classic",
        help="weights folder of the classic two-layer AE trained on the same data",
    )
    ap.add_argument("--n100", type=int, default=8, help="synthetic 100-DPI pages")
    ap.add_argument("--n300", type=int, default=4, help="synthetic 300-DPI pages (each set)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the speed part")
    ap.add_argument("--quality-threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--pages",
        type=int,
        default=4,
        help="also time both programs on a folder of this many A4 pages (1: the page only)",
    )
    ap.add_argument("--a4-cache", type=Path, default=Path(tempfile.gettempdir()) / "aepipe-a4.png")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument(
        "--onnx",
        action="store_true",
        help="also time ONNX Runtime fp32 and static int8 (needs onnx, onnxscript, onnxruntime)",
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scan_denoiser.md"
    )
    args = ap.parse_args(argv)

    import torch

    from aepipe.stages.scan_denoiser import ScanDenoiser
    from aepipe.weights import load_model, read_config, resolve

    wcfg = read_config(resolve(args.weights))
    lines = ["# Scan denoiser benchmark", ""]
    lines.append(
        f"Command: `.venv/bin/python benchmarks/{Path(__file__).name} "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`"
    )
    lines.append(
        f"Weights: `{args.weights}` ({wcfg['model_class']} {wcfg['model_kwargs']}), "
        f"sha256 {wcfg['sha256'][:12]}."
    )
    lines.append(
        f"Machine: {os.cpu_count()} CPU cores, shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at start)."
    )
    lines.append("")
    result: dict = dict(weights=args.weights, quality={}, speed={})

    if not args.no_quality:
        torch.set_num_threads(args.quality_threads)
        sets = {
            "ddd-val": ddd_val_pages(args.ddd, wcfg),
            "synthetic": synthetic_pages(args.n100, args.n300, bilevel=False),
            "synthetic-bilevel": synthetic_pages(0, args.n300, bilevel=True),
        }
        methods: dict[str, Method] = {
            "raw input": raw,
            "Otsu (global)": lambda d, dpi: (~otsu_ink(d / 255.0)).astype(np.float32),
            "median-background subtraction": median_background,
            "Sauvola (scikit-image)": sauvola,
        }
        try:
            methods["Su (doxapy)"] = doxa("SU")
            methods["Wolf (doxapy)"] = doxa("WOLF")
        except ImportError:
            lines.append("doxapy not installed: Su and Wolf left out.")
        if shutil.which("unpaper"):
            methods["unpaper (OCRmyPDF args)"] = unpaper
        else:
            lines.append("unpaper not installed: left out.")
        if args.classic and (Path(args.classic) / "config.json").is_file():
            classic, ccfg = load_model(args.classic)
            methods[
                f"classic 2-layer AE (same data, {ccfg['training'].get('wall_minutes')} min)"
            ] = torch_method(classic)
        else:
            lines.append(f"classic AE weights {args.classic} not found: left out.")
        ours = ScanDenoiser.from_pretrained(args.weights)
        methods["**ScanUNet (ours)**"] = stage_method(ours)
        methods["**ScanUNet (ours) --binarize**"] = stage_method(
            ScanDenoiser.from_pretrained(args.weights, binarize=True)
        )
        table: dict[str, dict[str, dict[str, float]]] = {}
        for mname, fn in methods.items():
            table[mname] = {s: score(fn, pages) for s, pages in sets.items()}
            print(
                mname,
                {s: (round(v["rmse"], 4), round(v["f"], 1)) for s, v in table[mname].items()},
                flush=True,
            )
        result["quality"] = table
        counts = ", ".join(f"{s}: {len(p)} pages" for s, p in sets.items())
        lines += [
            "## Quality",
            "",
            f"Sets ({counts}). RMSE: pixels in [0, 1] against the clean page, pooled. "
            "F: mean per-page F-measure (%) of ink after Otsu binarization of the output, "
            "against the clean page thresholded at 0.5.",
            "",
            "| method | " + " | ".join(f"{s} RMSE | {s} F" for s in sets) + " |",
            "|---|" + "---:|---:|" * len(sets),
        ]
        for mname, row in table.items():
            cells = " | ".join(f"{row[s]['rmse']:.4f} | {row[s]['f']:.1f}" for s in sets)
            lines.append(f"| {mname} | {cells} |")
        lines.append("")

    if not args.no_speed:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "page.png"
            page = a4_page(path, args.a4_cache)
            rows, procs = speed(
                args.weights,
                page,
                path,
                args.threads,
                args.repeat,
                args.compile,
                args.onnx,
                pages=args.pages,
            )
        result["speed"] = dict(threads=args.threads, stage=rows, processes=procs)
        lines += [
            f"## Speed: one 300-DPI A4 page (2480 x 3508 = {page.size / 1e6:.1f} Mpx), "
            f"{args.threads} torch threads",
            "",
            f"In-process, the stage alone (best of {args.repeat}, "
            "after a warm-up on a 1100 x 1100 crop):",
            "",
        ]
        # A note column only when some row has one (the ONNX Runtime rows), so the table of a
        # run without --onnx keeps its layout.
        notes = any("note" in r for r in rows)
        lines += (
            ["| setting | seconds | Mpx/s | note |", "|---|---:|---:|---|"]
            if notes
            else ["| setting | seconds | Mpx/s |", "|---|---:|---:|"]
        )
        for r in rows:
            note = f" {r.get('note', '')} |" if notes else ""
            lines.append(f"| {r['setting']} | {r['seconds']} | {r['mpx_s']} |{note}")
        lines += [
            "",
            "Whole process (start-up, read, clean, write), same page, same run:",
            "",
            "| program | seconds | Mpx/s | exit code |",
            "|---|---:|---:|---:|",
        ]
        for p in procs:
            lines.append(f"| {p['program']} | {p['seconds']} | {p['mpx_s']} | {p['rc']} |")
        lines.append("")
        lines.append(
            f"Load average at the end: {os.getloadavg()[0]:.1f} "
            f"(on {os.cpu_count()} cores; other jobs were running)."
        )
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.out, text, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
