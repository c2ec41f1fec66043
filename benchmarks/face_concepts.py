"""Do the shipped face-vae concept vectors edit what they say? An independent-classifier check.

Run::

    .venv/bin/python benchmarks/face_concepts.py --threads 1

1. A small attribute classifier (its own CNN, nothing shared with the VAE) is trained on the
   TRAIN faces of ``lfw_64.npz`` (64x64 gray) against the labels of ``lfw_attributes.csv``,
   with flips and a random blur so that it also reads the smoother VAE reconstructions. Its
   person-disjoint validation part (the VAE's validation cut) gives the AUCs in the table. The
   classifier is cached in ``--cache`` (keyed by its settings) so reruns skip training.
2. On the labelled TEST faces: encode (posterior mean), add ``strength * vector`` for every
   shipped concept at strengths -1, 0, 0.5, 1, 2, decode, and classify. Reported per concept:
   the classifier's mean probability of the concept's attribute at each strength (0 is the
   unedited reconstruction), the change of the other attributes at strength 1 (leakage; gender
   is P(Male)), and identity: mean absolute pixel difference (0..255) to the unedited
   reconstruction.
3. One picture per concept (rows: test faces, columns: strengths) in ``docs/img/``.

The test faces are only evaluated; nothing is fitted or chosen on them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import write_report  # noqa: E402  (a sibling module)

STRENGTHS = (-1.0, 0.0, 0.5, 1.0, 2.0)
# What the classifier predicts: every shipped concept's attribute, plus the usual confounders.
CLASSIFIER_ATTRS = (
    "Smiling",
    "Eyeglasses",
    "Mustache",
    "Male",
    "Female",
    "Senior",
    "Youth",
    "Blond Hair",
    "Wearing Hat",
)
GENDER = "Male"
TARGETS = ("smile", "eyeglasses")
CLS_SETTINGS = {"epochs": 10, "batch": 64, "lr": 3e-3, "seed": 0, "width": 16, "version": 2}


def build_classifier(k: int, width: int):
    """A small CNN: (N, 1, 64, 64) in [0, 1] -> (N, k) logits (about 9 M multiply-adds)."""
    from torch import nn

    def conv(cin: int, cout: int, stride: int) -> list:
        return [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    w = width
    return nn.Sequential(
        *conv(1, w, 2),  # 32x32
        *conv(w, 2 * w, 2),  # 16x16
        *conv(2 * w, 2 * w, 1),
        *conv(2 * w, 4 * w, 2),  # 8x8
        *conv(4 * w, 4 * w, 1),
        *conv(4 * w, 8 * w, 2),  # 4x4
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8 * w, k),
    )


def augment(x, gen):
    """Random horizontal flip and a random Gaussian blur (sigma 0..1.5) per batch half."""
    import torch
    from torch.nn import functional as F

    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    sigma = float(torch.rand((), generator=gen)) * 1.5
    if sigma > 0.2:
        t = torch.arange(-3, 4, dtype=x.dtype)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = g / g.sum()
        half = len(x) // 2
        blurred = F.conv2d(
            F.pad(x[:half], (3, 3, 3, 3), mode="replicate"), (g[:, None] * g)[None, None]
        )
        x = torch.cat([blurred, x[half:]])
    return x


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank form); nan if one class is missing."""
    pos, neg = score[label == 1], score[label == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def train_classifier(x, y, log):
    """Fit the CNN on (N, 1, 64, 64) float images and (N, K) 0/1 labels; returns the model."""
    import torch

    s = CLS_SETTINGS
    torch.manual_seed(s["seed"])
    gen = torch.Generator().manual_seed(s["seed"])
    net = build_classifier(y.shape[1], s["width"])
    steps = s["epochs"] * (len(x) // s["batch"])
    opt = torch.optim.AdamW(net.parameters(), lr=s["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, s["lr"], total_steps=steps)
    # Rare attributes get a larger positive weight so they are not ignored.
    pos_weight = ((1 - y.mean(0)) / y.mean(0).clamp_min(1e-3)).clamp(max=10.0).sqrt()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    t0 = time.time()
    for epoch in range(s["epochs"]):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - s["batch"] + 1, s["batch"]):
            j = perm[i : i + s["batch"]]
            loss = loss_fn(net(augment(x[j], gen)), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(
            f"  classifier epoch {epoch + 1}/{s['epochs']} loss {loss.item():.3f} "
            f"({time.time() - t0:.0f} s)"
        )
    return net.eval()


def probabilities(net, x, batch: int = 256) -> np.ndarray:
    """(N, K) sigmoid outputs for (N, 1, 64, 64) images."""
    import torch

    with torch.inference_mode():
        return torch.cat(
            [torch.sigmoid(net(x[i : i + batch])) for i in range(0, len(x), batch)]
        ).numpy()


def cached_classifier(data: Path, attrs_csv: Path, cache: Path, log):
    """Train the classifier on the train rows (or load it from the cache); returns (net, aucs)."""
    import torch
    from safetensors.torch import load_file, save_file

    from aepipe.data.attributes import load_attributes
    from aepipe.data.faces import load_faces, split_by_person
    from aepipe.train.vae import PRESETS

    key = hashlib.sha256(json.dumps([CLS_SETTINGS, CLASSIFIER_ATTRS]).encode()).hexdigest()[:16]
    path = cache / f"attr_classifier_{key}.safetensors"
    images, files = load_faces(data, "train", with_files=True)
    attrs = load_attributes(attrs_csv, "train")
    # The VAE's own validation cut (person-disjoint), so these faces are unseen by both models
    # (not by the concept directions: fit-concepts fits on every labelled train-split row).
    cut = split_by_person(files, len(images), PRESETS["face-vae"]["val_fraction"])
    x = torch.from_numpy(images[attrs.index]).float().div(255.0)[:, None]
    y = torch.from_numpy(attrs.select(list(CLASSIFIER_ATTRS))).float()
    fit, val = attrs.index < cut, attrs.index >= cut
    net = build_classifier(len(CLASSIFIER_ATTRS), CLS_SETTINGS["width"])
    if path.is_file():
        net.load_state_dict(load_file(path))
        net.eval()
    else:
        log(f"training the attribute classifier on {int(fit.sum())} train faces")
        net = train_classifier(x[fit], y[fit], log)
        cache.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    p = probabilities(net, x[val])
    aucs = {a: auc(p[:, i], y[val][:, i].numpy()) for i, a in enumerate(CLASSIFIER_ATTRS)}
    return net, aucs, int(val.sum())


def edit_scores(stage, net, z, concepts, log, sharpen: bool = False):
    """Classifier probabilities and pixel changes of every concept at every strength.

    Args:
        stage: the face generator.
        net: the attribute classifier.
        z: (N, D) test codes.
        concepts: ``(info, vector)`` pairs from the concept files.
        sharpen: pass every decode through the stage's unsharp mask, as sampled faces
            (``gen-faces --concept``) get it.

    Returns:
        name -> {"p": {strength: (K,) mean probabilities}, "pix": {strength: mean |diff| 0..255},
        "images": {strength: (N, 1, S, S) tensor}}.
    """
    from aepipe.stages.face_generator import unsharp_mask

    amount = stage.config.sharpen if sharpen else 0.0
    decode = lambda codes: unsharp_mask(  # noqa: E731
        stage.decode(codes).images, amount, stage.config.sharpen_sigma
    )
    base = decode(z)
    out = {}
    for info, vec in concepts:
        res = {"p": {}, "pix": {}, "images": {}}
        for strength in STRENGTHS:
            img = base if strength == 0 else decode(stage.apply_concept(z, vec, strength))
            res["p"][strength] = probabilities(net, img).mean(0)
            res["pix"][strength] = float((img - base).abs().mean()) * 255.0
            res["images"][strength] = img
        out[info["name"]] = res
        log(
            f"  {info['name']}: P({info['attribute']}) "
            + " ".join(
                f"{s:+g}:{res['p'][s][CLASSIFIER_ATTRS.index(info['attribute'])]:.2f}"
                for s in STRENGTHS
            )
        )
    return out


def concept_picture(real, res, pick, path: Path) -> None:
    """Rows: picked test faces; columns: the real face, then the edit at each strength."""
    import torch

    from aepipe.batch import ImageBatch
    from aepipe.io import make_grid, write_image

    cols = [real[pick]] + [res["images"][s][pick] for s in STRENGTHS]
    tiles = torch.stack(cols, 1).flatten(0, 1)  # row-major: face by face
    grid = make_grid(ImageBatch(tiles).to_numpy(np.uint8), ncols=len(cols))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(grid[..., 0], path)


def report(concepts, scores, aucs, n_val, p_real, p_rec, cmd: str, faces: str) -> tuple[str, dict]:
    """Markdown tables and a JSON summary of the edit scores."""
    k = {a: i for i, a in enumerate(CLASSIFIER_ATTRS)}
    lines = [
        "# Face concept vectors: do the edits do what they say?",
        "",
        f"Command: `{cmd}`",
        "",
        "An attribute classifier independent of the VAE (a small CNN trained on the train faces at "
        f"64x64 gray; flips and blur as augmentation) scores the {faces} after "
        "encoding, adding `strength x vector` and decoding. Strength 0 is the unedited "
        "reconstruction. Each concept's own attribute: mean classifier probability. Leakage: "
        "change of the other attributes' mean probability at strength +1 (gender = P(Male)). "
        "Pixels: mean |edit - reconstruction| in 0..255 units.",
        "",
        "| concept | attribute | P at -1 | P at 0 | P at +0.5 | P at +1 | P at +2 | "
        "change at +1 | gender change at +1 | largest other change at +1 | pixels at +1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    summary = {}
    for info, _vec in concepts:
        name, attr = info["name"], info["attribute"]
        res = scores[name]
        p = {s: res["p"][s] for s in STRENGTHS}
        delta = p[1.0] - p[0.0]
        others = [(a, delta[i]) for a, i in k.items() if a not in (attr, "Female")]
        if attr == "Male":
            others = [(a, d) for a, d in others if a != "Male"]
        worst = max(others, key=lambda t: abs(t[1]))
        gender = "(target)" if attr == "Male" else f"{delta[k[GENDER]]:+.3f}"
        lines.append(
            f"| {name} | {attr} | "
            + " | ".join(f"{p[s][k[attr]]:.3f}" for s in STRENGTHS)
            + f" | {delta[k[attr]]:+.3f} | {gender} | {worst[0]} {worst[1]:+.3f} "
            f"| {res['pix'][1.0]:.1f} |"
        )
        summary[name] = {
            "attribute": attr,
            "p": {f"{s:g}": round(float(p[s][k[attr]]), 4) for s in STRENGTHS},
            "change_at_1": round(float(delta[k[attr]]), 4),
            "gender_change_at_1": round(float(delta[k[GENDER]]), 4),
            "pixels_at_1": round(res["pix"][1.0], 2),
        }
    for name in TARGETS:
        if name in summary:
            got = summary[name]
            ok = got["change_at_1"] >= 0.3 and abs(got["gender_change_at_1"]) < 0.1
            lines.append(
                f"{'' if name != TARGETS[0] else chr(10)}Target for {name} (change >= 0.3 at +1, "
                f"gender change < 0.1): {'met' if ok else 'NOT met'} "
                f"({got['change_at_1']:+.3f}, gender {got['gender_change_at_1']:+.3f})."
            )
    lines += ["", "Leakage: change of every classifier output at strength +1.", ""]
    lines.append("| concept | " + " | ".join(CLASSIFIER_ATTRS) + " |")
    lines.append("| --- |" + " ---: |" * len(CLASSIFIER_ATTRS))
    for info, _vec in concepts:
        d = scores[info["name"]]["p"][1.0] - scores[info["name"]]["p"][0.0]
        lines.append(f"| {info['name']} | " + " | ".join(f"{v:+.3f}" for v in d) + " |")
    lines += [
        "",
        f"Classifier check: AUC on the {n_val} person-disjoint validation faces of the train "
        "split, and mean probability on the real faces vs their VAE reconstructions "
        "(how far the reconstructions' blur shifts the classifier).",
        "",
        "| attribute | validation AUC | mean P real | mean P reconstructed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for a, i in k.items():
        lines.append(f"| {a} | {aucs[a]:.3f} | {p_real[i]:.3f} | {p_rec[i]:.3f} |")
    return "\n".join(lines) + "\n", summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/faces/lfw_64.npz")
    ap.add_argument(
        "--attributes", type=Path, default=ROOT.parent / "shared/data/faces/lfw_attributes.csv"
    )
    ap.add_argument("--model", default="face-vae")
    ap.add_argument(
        "--concepts", type=Path, default=None, help="concept folder [default: <model>/concepts]"
    )
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/face-concepts-cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="score on the test faces (the benchmark) or on the classifier's and VAE's "
        "validation faces of the train split (for choosing settings; writes only --out)",
    )
    ap.add_argument("--classifier-only", action="store_true", help="train/cache and stop")
    ap.add_argument(
        "--sharpen",
        action="store_true",
        help="score the edits through the model's unsharp mask, as generated faces get it "
        "(writes only --out, no pictures, no --update-weights)",
    )
    ap.add_argument("--out", type=Path, help="[default: benchmarks/results/face_concepts(_val).md]")
    ap.add_argument("--img", type=Path, default=ROOT / "docs/img")
    ap.add_argument(
        "--update-weights",
        action="store_true",
        help="write the strength-1 scores into the model's config.json metrics (test split only)",
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    net, aucs, n_val = cached_classifier(args.data, args.attributes, args.cache, log)
    log("validation AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    if args.classifier_only:
        return
    if args.out is None:
        suffix = "" if args.split == "test" else "_val"
        args.out = ROOT / f"benchmarks/results/face_concepts{suffix}.md"
    run(args, net, aucs, n_val, log)


def labelled_faces(data: Path, attributes: Path, split: str):
    """(N, 1, 64, 64) float faces and their labels: the test rows, or the validation rows of
    the train split (``val``: the part neither the VAE nor the classifier trained on)."""
    import torch

    from aepipe.data.attributes import Attributes, check_against_archive, load_attributes
    from aepipe.data.faces import load_faces, split_by_person
    from aepipe.train.vae import PRESETS

    source = "test" if split == "test" else "train"
    attrs = load_attributes(attributes, source)
    images, files = load_faces(data, source, with_files=True)
    check_against_archive(attrs, files)
    if split == "val":
        cut = split_by_person(files, len(images), PRESETS["face-vae"]["val_fraction"])
        keep = attrs.index >= cut
        attrs = Attributes(
            "val", attrs.index[keep], attrs.files[keep], attrs.names, attrs.labels[keep]
        )
    return torch.from_numpy(images[attrs.index]).float().div(255.0)[:, None], attrs


def run(args, net, aucs, n_val, log) -> None:
    """Score every concept of the model on the labelled test faces; write table and pictures."""
    import torch

    from aepipe.stage import load_stage
    from aepipe.stages.face_generator import default_concept_dirs, list_concepts, load_concept

    stage = load_stage(args.model, device="cpu")
    real, attrs = labelled_faces(args.data, args.attributes, args.split)
    z = torch.cat([stage.model.encode(real[i : i + 256]).mean for i in range(0, len(real), 256)])
    z = z.detach()
    dirs = [args.concepts] if args.concepts else default_concept_dirs(None, args.model)[:1]
    concepts = [(doc, load_concept(doc["path"])) for doc in list_concepts(dirs)]
    log(f"{len(concepts)} concepts from {dirs[0]}; {len(real)} labelled {args.split} faces")
    scores = edit_scores(stage, net, z, concepts, log, sharpen=args.sharpen)
    p_real = probabilities(net, real).mean(0)
    p_rec = scores[concepts[0][0]["name"]]["p"][0.0]
    cmd = "python benchmarks/face_concepts.py " + " ".join(sys.argv[1:])
    faces = f"{len(real)} labelled {'TEST' if args.split == 'test' else 'validation'} faces"
    text, summary = report(concepts, scores, aucs, n_val, p_real, p_rec, cmd.strip(), faces)
    if args.sharpen:
        text += (
            f"\nDecodes passed through the model's unsharp mask (strength "
            f"{stage.config.sharpen:g}, sigma {stage.config.sharpen_sigma:g} px).\n"
        )
    pictures = args.split == "test" and not args.sharpen
    for info, _vec in concepts if pictures else []:
        col = attrs.column(info["attribute"])
        # Six test faces that do not have the attribute, spread over the split.
        candidates = np.nonzero(col == 0)[0]
        pick = candidates[np.linspace(0, len(candidates) - 1, 6).round().astype(int)]
        path = args.img / f"concept_{info['name']}.png"
        concept_picture(real, scores[info["name"]], torch.from_numpy(pick), path)
        text += f"\n![{info['name']}](../../docs/img/{path.name})\n"
    if pictures:
        text += (
            "\nPictures: rows are six test faces without the attribute; columns: the real face, "
            "then strengths " + ", ".join(f"{s:+g}" for s in STRENGTHS) + " (0 = reconstruction).\n"
        )
    write_report(args.out, text, summary, indent=1)
    if args.update_weights and args.split == "test" and not args.sharpen:
        from aepipe.weights import resolve, update_metrics

        update_metrics(resolve(args.model), {"concept_edits_test": summary})
    log(text)


if __name__ == "__main__":
    main()
