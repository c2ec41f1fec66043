"""Fit named concept vectors for a VAE from labelled codes (``aepipe faces fit-concepts``).

Method: a least-squares regression of the latent codes (posterior means) on several binary
labels at once,

    z_i = b + sum_k y_ik w_k + e_i,

solved with a small ridge on the ``w_k``. The row ``w_k`` is the mean change of the code when
label ``k`` switches from 0 to 1 *with the other labels held fixed*, so a label that merely
co-occurs with another one (smiling with being female, eyeglasses with age) does not leak into
its vector, as it would into a plain difference of group means. A concept may name a second,
opposite label (``male``: Male minus Female; ``senior``: Senior minus Youth), and its vector is
then ``w_pos - w_neg``: the change from a clear negative to a clear positive.

Scale (what strength 1 means; the direction is the same under every rule, see :data:`UNITS`):
``coefficient`` adds the regression coefficient itself; ``projection`` the two groups'
difference of mean codes projected on the direction; ``discriminant`` (what ships) the step
along the direction that moves the groups' linear discriminant (shrinkage LDA on the codes) by
as much as the groups' difference of mean codes does, i.e. strength 1 makes a typical face of
the negative group read like a typical positive one to a linear read-out of the codes. The
coefficient is shorter than that because a 0 label also covers weakly present attributes and
posterior means are shrunk; ``discriminant`` was chosen over the other two on the validation
faces of the train split (``benchmarks/results/face_concepts_val_*.md``), never on the test
faces. Only train rows are ever passed here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ConceptSpec:
    """One concept to build.

    Attributes:
        positive: the label whose presence the concept adds (e.g. ``Smiling``).
        negative: an opposite label (``Female`` for ``male``), or None: then the contrast is
            label 1 against label 0.
        aliases: other names the concept answers to on the command line.
    """

    positive: str
    negative: str | None = None
    aliases: tuple[str, ...] = ()


# The concepts shipped with face-vae, by short name.
FACE_CONCEPTS: dict[str, ConceptSpec] = {
    "smile": ConceptSpec("Smiling", aliases=("smiling",)),
    "eyeglasses": ConceptSpec("Eyeglasses", "No Eyewear", aliases=("glasses",)),
    "mustache": ConceptSpec("Mustache", aliases=("moustache",)),
    "male": ConceptSpec("Male", "Female", aliases=("man", "gender")),
    "senior": ConceptSpec("Senior", "Youth", aliases=("old", "age")),
    "blond": ConceptSpec("Blond Hair", aliases=("blonde", "blond-hair")),
    "hat": ConceptSpec("Wearing Hat", aliases=("wearing-hat",)),
}

# Labels regressed on together with the concepts' own: the attributes they co-occur with that
# are not part of what the concept means (gender, age, race, hair, eyewear, lighting). Mouth and
# teeth labels are left out on purpose: they ARE the smile.
FACE_REGRESSORS: tuple[str, ...] = (
    "Smiling",
    "Eyeglasses",
    "Sunglasses",
    "No Eyewear",
    "Mustache",
    "Male",
    "Female",
    "Senior",
    "Youth",
    "Child",
    "Blond Hair",
    "Black Hair",
    "Gray Hair",
    "Bald",
    "Wearing Hat",
    "White",
    "Asian",
    "Black",
    "Harsh Lighting",
    "Flash",
    "Soft Lighting",
    "Outdoor",
    "Blurry",
)


def regress_codes(codes: np.ndarray, labels: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Least-squares coefficients of codes on labels (with an unpenalised intercept).

    Args:
        codes: (N, D) latent codes.
        labels: (N, K) labels (0/1).
        ridge: penalty on the label coefficients (keeps rare, collinear labels stable).

    Returns:
        (K, D): row k is the code change for label k going 0 -> 1, the others held fixed.
    """
    n, k = labels.shape
    if len(codes) != n:
        raise ValueError(f"{len(codes)} codes but {n} label rows")
    x = np.concatenate([np.ones((n, 1)), labels.astype(np.float64)], axis=1)
    penalty = np.diag([0.0] + [float(ridge)] * k)
    coef = np.linalg.solve(x.T @ x + penalty, x.T @ codes.astype(np.float64))
    return coef[1:]


Unit = Literal["coefficient", "projection", "discriminant"]
UNITS: dict[str, str] = {
    "coefficient": "the regression coefficient (label 0 -> 1, the other labels fixed)",
    "projection": "the difference of the two groups' mean codes, projected on the direction",
    "discriminant": "the step along the direction that moves the groups' linear discriminant "
    "(shrinkage LDA on the codes) by as much as the difference of the groups' mean codes does",
}


def unit_length(
    codes: np.ndarray, pos: np.ndarray, neg: np.ndarray, direction: np.ndarray, unit: Unit
) -> float:
    """Length of strength 1 along ``direction`` under the rule ``unit`` (see :data:`UNITS`).

    Args:
        codes: (N, D) codes.
        pos: (N,) bool, the faces with the attribute.
        neg: (N,) bool, the faces of the contrasting group.
        direction: (D,) the concept's regression vector.
        unit: the rule.

    Returns:
        The length the vector gets (for ``"coefficient"``: its own length).
    """
    norm = float(np.linalg.norm(direction))
    u = direction / max(norm, 1e-12)
    diff = codes[pos].mean(0) - codes[neg].mean(0)
    if unit == "coefficient":
        return norm
    if unit == "projection":
        return float(diff @ u)
    if unit == "discriminant":
        within = 0.5 * (np.cov(codes[pos].T) + np.cov(codes[neg].T))
        # A small ridge keeps the inverse stable for near-constant latent dimensions.
        w = np.linalg.solve(within + 0.1 * np.eye(len(u)), diff)
        return float((w @ diff) / (w @ u))
    raise ValueError(f"unit must be one of {sorted(UNITS)}; got {unit!r}")


def fit_concepts(
    codes: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    specs: Mapping[str, ConceptSpec],
    regressors: Sequence[str] | None = None,
    ridge: float = 1.0,
    unit: Unit = "coefficient",
) -> dict[str, tuple[np.ndarray, dict[str, object]]]:
    """Build concept vectors by a joint regression of the codes on the labels.

    Args:
        codes: (N, D) codes of the TRAIN faces.
        labels: (N, K) 0/1 labels of the same faces, columns named by ``label_names``.
        label_names: the K column names.
        specs: concept name -> what it contrasts.
        regressors: labels regressed on together (default: every label the specs use);
            the specs' labels are always added.
        ridge: see :func:`regress_codes`.
        unit: what strength 1 means (the direction is the same); see :data:`UNITS`.

    Returns:
        name -> ``(vector (D,), info)``; ``info`` records the labels, counts and method.

    Raises:
        KeyError: a label that is not a column.
    """
    names = list(label_names)
    used = list(dict.fromkeys(regressors or []))
    for spec in specs.values():
        for label in (spec.positive, spec.negative):
            if label is not None and label not in used:
                used.append(label)
    missing = [u for u in used if u not in names]
    if missing:
        raise KeyError(f"labels not in the data: {missing}")
    y = labels[:, [names.index(u) for u in used]].astype(np.float64)
    coef = regress_codes(codes, y, ridge)
    out = {}
    for name, spec in specs.items():
        vec = coef[used.index(spec.positive)].copy()
        pos = y[:, used.index(spec.positive)] == 1
        if spec.negative is not None:
            vec -= coef[used.index(spec.negative)]
            neg = y[:, used.index(spec.negative)] == 1
        else:
            neg = ~pos
        length = unit_length(codes, pos, neg, vec, unit)
        vec = vec * (length / max(float(np.linalg.norm(vec)), 1e-12))
        info: dict[str, object] = {
            "attribute": spec.positive,
            "negative": spec.negative or f"not {spec.positive}",
            "aliases": list(spec.aliases),
            "method": "direction: joint least-squares regression of the posterior means on "
            f"{len(used)} labels (ridge {ridge:g}), coefficient of {spec.positive}"
            + (f" minus that of {spec.negative}" if spec.negative else "")
            + f"; strength 1 = {UNITS[unit]}",
            "unit": unit,
            "regressors": used,
            "n_positive": int(pos.sum()),
            "n_negative": int(neg.sum()),
            "n_faces": len(codes),
        }
        out[name] = (vec.astype(np.float32), info)
    return out


def fit_face_concepts(
    model: str,
    out: Path,
    data: Path | None = None,
    attributes: Path | None = None,
    ridge: float = 1.0,
    unit: Unit = "discriminant",
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Encode the labelled TRAIN faces, fit :data:`FACE_CONCEPTS` and write one JSON each.

    Args:
        model: weights name or folder of a face VAE.
        out: folder for the concept files (``<name>.json``).
        data: ``lfw_64.npz`` (default: the data path in the weights' config).
        attributes: ``lfw_attributes.csv`` (default: beside ``data``).
        ridge: see :func:`regress_codes`.
        unit: what strength 1 means; see :data:`UNITS`.
        command: the command line, recorded in each file.
        progress: receives one line per step.

    Returns:
        The written files.
    """
    import torch

    from aepipe.batch import ImageBatch
    from aepipe.data.attributes import check_against_archive, load_attributes
    from aepipe.data.faces import load_faces
    from aepipe.stage import load_stage
    from aepipe.stages.face_generator import save_concept
    from aepipe.weights import read_config, resolve

    say = progress or (lambda _m: None)
    config = read_config(resolve(model))
    data = Path(data or config.get("training", {}).get("data", "../shared/data/faces/lfw_64.npz"))
    attributes = Path(attributes or data.with_name("lfw_attributes.csv"))
    attrs = load_attributes(attributes, "train")  # train rows only: the test is for evaluation
    images, files = load_faces(data, "train", with_files=True)
    check_against_archive(attrs, files)
    stage = load_stage(model, device="cpu")
    x = images[attrs.index]
    say(f"encoding {len(x)} labelled train faces")
    codes = np.concatenate(
        [
            stage.encode(ImageBatch.from_numpy(x[i : i + 256, :, :, None])).numpy()
            for i in range(0, len(x), 256)
        ]
    )
    fitted = fit_concepts(
        codes, attrs.labels, attrs.names, FACE_CONCEPTS, FACE_REGRESSORS, ridge, unit
    )
    written = []
    for name, (vec, info) in fitted.items():
        info = {
            **info,
            "model": str(model),
            "model_sha256": config.get("sha256", ""),
            "data": str(data),
            "labels": str(attributes),
            "command": command,
        }
        written.append(save_concept(out, name, torch.from_numpy(vec), info))
        say(f"{name}: |v| = {float(np.linalg.norm(vec)):.3f} ({info['method']})")
    return written
