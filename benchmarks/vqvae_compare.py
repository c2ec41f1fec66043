"""VAE vs VQ-VAE + prior on gray LFW faces: reconstruction, code size, FID, sampling time.

Run::

    .venv/bin/python benchmarks/vqvae_compare.py --n 1000

Three models: a plain AE (``--ae``: the face VAE's network trained with KL weight 0, i.e.
reconstruction only; its codes are the encoder's means), the VAE and the VQ-VAE. Same data and
FID protocol as ``benchmarks/faces.py`` (its Inception extractor, cache and Frechet distance):
samples at each model's stored sampling settings, seed 0, against the gray LFW test faces
(``--ref-n`` of them, all 995 by default); the AE samples from a Gaussian fitted to its training
codes (its stored sampler) and, in a second row, from N(0, I), as a VAE would. Reconstruction
PSNR / SSIM are on all 995 test faces (uint8, ``benchmarks/metrics.py``). Bits per face: the
AE's code as 32-bit floats, the VAE's test KL in bits (the cost of sending its code), the
VQ-VAE's grid x log2(codebook) and its prior's test cross-entropy (the code length under the
learnt prior). Sampling time: median of 5 runs of
64 faces after loading, at ``--threads``.

Writes ``--out`` (markdown table; its figures as JSON beside it) and ``--picture`` (8 samples
of each model, then an interpolation row of each between the same two test faces).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def sample_time(stage, runs: int = 5) -> float:
    """Median seconds to sample 64 faces (one batch) after loading."""
    times = []
    for r in range(runs):
        t0 = time.perf_counter()
        list(stage.sample(64, seed=r, batch_size=64))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def reconstruction(stage, test_u8: np.ndarray) -> dict[str, float]:
    """Test PSNR / SSIM (uint8) of ``stage(faces)``."""
    from metrics import psnr, ssim

    from aepipe.batch import ImageBatch

    outs = []
    for i in range(0, len(test_u8), 250):
        batch = ImageBatch.from_numpy(test_u8[i : i + 250, ..., None])
        outs.append(stage(batch).to_numpy(np.uint8)[..., 0])
    rec = np.concatenate(outs)
    return {"psnr": psnr(test_u8, rec), "ssim": ssim(test_u8, rec)}


def vae_bits(stage, test_u8: np.ndarray, seed: int) -> float:
    """The VAE's mean test KL in bits: what its code costs to send."""
    import torch

    from aepipe.train.vae import evaluate

    return evaluate(stage.model, torch.from_numpy(test_u8), "faces", seed=seed)["kl"] / math.log(2)


def prior_bits(stage, test_u8: np.ndarray) -> float:
    """The VQ-VAE prior's mean test cross-entropy in bits per face."""
    import torch
    from torch.nn import functional as F

    from aepipe.batch import ImageBatch

    codes = torch.cat(
        [
            stage.codes(ImageBatch.from_numpy(test_u8[i : i + 250, ..., None])).flatten(1)
            for i in range(0, len(test_u8), 250)
        ]
    )
    with torch.no_grad():
        nll = F.cross_entropy(
            stage.model.prior(codes).flatten(0, 1), codes.flatten(), reduction="sum"
        )
    return float(nll) / len(codes) / math.log(2)


def picture(stages: dict[str, object], test_u8: np.ndarray, path: Path) -> None:
    """8 samples per model, then an interpolation row per model between two test faces."""
    from aepipe.batch import ImageBatch
    from aepipe.io import make_grid, write_image

    a = ImageBatch.from_numpy(test_u8[:1, ..., None])
    b = ImageBatch.from_numpy(test_u8[7:8, ..., None])
    rows = [next(s.sample(8, seed=0)).to_numpy(np.uint8) for s in stages.values()]
    rows += [s.interpolate(a, b, steps=8).to_numpy(np.uint8) for s in stages.values()]
    grid = make_grid(np.concatenate(rows), ncols=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(grid[..., 0], path)


def measure(args, stages: dict, test_u8: np.ndarray, log) -> dict:
    """Every figure of the comparison, per model (and the extra VQ-VAE temperatures)."""
    from faces import features, fid

    from aepipe.stage import load_stage

    vq = stages["VQ-VAE + prior"]
    bits = {
        "AE": {"floats": 32 * stages["AE"].model.latent_dim} if "AE" in stages else {},
        "VAE": {"test_kl": vae_bits(stages["VAE"], test_u8, args.seed)},
        "VQ-VAE + prior": {
            "grid": vq.model.grid**2 * math.log2(vq.model.num_codes),
            "prior_nll": prior_bits(vq, test_u8),
        },
    }
    ref = features(test_u8[: args.ref_n], args.cache, log=log) if args.n else None
    models: dict[str, dict] = {}
    for name, stage in stages.items():
        rec = reconstruction(stage, test_u8)
        m = {"psnr_db": rec["psnr"], "ssim": rec["ssim"], "bits_per_face": bits[name]}
        m["sample64_s"] = sample_time(stage)
        if "precision" in type(stage.config).model_fields:
            # Precision "auto" is bfloat16 on CPUs with native units: time float32 too, what
            # other CPUs get.
            chosen, stage.config.precision = stage.config.precision, "float32"
            m["sample64_s_float32"] = sample_time(stage)
            stage.config.precision = chosen
        if args.n:
            batches = stage.sample(args.n, seed=args.seed)
            imgs = np.concatenate([b.to_numpy(np.uint8)[..., 0] for b in batches])
            m["fid"] = fid(features(imgs, args.cache, log=log), ref)
        if name == "AE" and args.n:
            # The same AE decoding N(0, I) codes, as one would sample a VAE.
            normal = load_stage(args.ae, sampler="prior")
            batches = normal.sample(args.n, seed=args.seed)
            imgs = np.concatenate([b.to_numpy(np.uint8)[..., 0] for b in batches])
            m["fid_normal"] = fid(features(imgs, args.cache, log=log), ref)
        models[name] = m
        log(f"{name}: {m}")
    temps = [float(t) for t in args.vq_temperatures.split(",") if t and args.n]
    vq_fid = {}
    for temp in temps:
        imgs = np.concatenate(
            [
                b.to_numpy(np.uint8)[..., 0]
                for b in vq.sample(args.n, seed=args.seed, temperature=temp)
            ]
        )
        vq_fid[f"{temp:g}"] = fid(features(imgs, args.cache, log=log), ref)
    return {"models": models, "vq_fid_at_temperature": vq_fid}


def table(results: dict, args) -> list[str]:
    """The Markdown table of :func:`measure`'s figures (an AE column when measured)."""
    from aepipe.stage import resolved_precision

    models = results["models"]
    ae, vae, vq = models.get("AE"), models["VAE"], models["VQ-VAE + prior"]
    cols = [m for m in (ae, vae, vq) if m is not None]
    vq_bits = vq["bits_per_face"]
    bits = [f"{vae['bits_per_face']['test_kl']:.0f} (test KL)"]
    bits.append(f"{vq_bits['grid']:.0f} (grid); {vq_bits['prior_nll']:.0f} (prior NLL)")
    head = "| | VAE (`face-vae`) | VQ-VAE + prior (`face-vqvae`) |"
    if ae is not None:
        head = f"| | AE (`{args.ae}`) " + head[2:]
        bits.insert(0, f"{ae['bits_per_face']['floats']} (32-bit floats)")
    row = lambda label, cells: f"| {label} | " + " | ".join(cells) + " |"  # noqa: E731
    lines = [head, "| --- |" + " ---: |" * len(cols)]
    lines.append(
        row(
            "test reconstruction PSNR (dB) / SSIM, 995 faces",
            [f"{m['psnr_db']:.2f} / {m['ssim']:.3f}" for m in cols],
        )
    )
    lines.append(row("bits per face for the code", bits))
    if args.n:
        label = f"FID, {args.n} samples vs {args.ref_n} gray test faces"
        lines.append(row(label, [f"{m['fid']:.1f}" for m in cols]))
        if ae is not None:
            blank = [""] * (len(cols) - 1)
            lines.append(
                row("FID as above, AE decoding N(0, I) codes", [f"{ae['fid_normal']:.1f}", *blank])
            )
    lines.append(
        row(
            f"seconds to sample 64 faces ({args.threads} thread(s))",
            [f"{m['sample64_s']:.2f}" for m in cols],
        )
    )
    if "sample64_s_float32" in vq:
        label = (
            "seconds as above, VQ-VAE with precision float32 (CPUs without bfloat16 units; "
            f"the row above is precision auto, {resolved_precision('auto', 'cpu')} here)"
        )
        lines.append(row(label, [""] * (len(cols) - 1) + [f"{vq['sample64_s_float32']:.2f}"]))
    for temp, score in results["vq_fid_at_temperature"].items():
        lines.append(
            row(
                f"FID as above, VQ-VAE prior at temperature {temp}",
                [""] * (len(cols) - 1) + [f"{score:.1f}"],
            )
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/faces/lfw_64.npz")
    ap.add_argument("--ae", default="face-ae", help="plain AE weights ('': no AE column)")
    ap.add_argument("--vae", default="face-vae")
    ap.add_argument("--vqvae", default="face-vqvae")
    ap.add_argument("--n", type=int, default=1000, help="samples per model for FID (0: no FID)")
    ap.add_argument("--ref-n", type=int, default=995, help="test faces in the FID reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--vq-temperatures", default="", help="comma list: extra VQ-VAE FID rows at these"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/fid-cache")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vqvae_compare.md")
    ap.add_argument("--picture", type=Path, default=ROOT / "docs/img/vqvae_compare.png")
    ap.add_argument("--card", type=Path, help="also add the table to this MODEL_CARD.md")
    args = ap.parse_args()

    import torch
    from faces import add_card_section
    from report import write_report

    from aepipe.data.faces import load_faces
    from aepipe.stage import load_stage

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    test_u8 = load_faces(args.data, "test")
    stages = {"AE": load_stage(args.ae)} if args.ae else {}
    stages.update({"VAE": load_stage(args.vae), "VQ-VAE + prior": load_stage(args.vqvae)})
    results = measure(args, stages, test_u8, log)
    cmd = " ".join(sys.argv[1:])
    lines = table(results, args)
    lines += ["", f"Command: `.venv/bin/python benchmarks/vqvae_compare.py {cmd}`"]
    results.update(n=args.n, ref_n=args.ref_n, threads=args.threads, command=cmd)
    print("\n".join(lines))
    write_report(args.out, "\n".join(lines) + "\n", results)
    picture(stages, test_u8, args.picture)
    if args.card:
        add_card_section(args.card, "Benchmark", "# table\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
