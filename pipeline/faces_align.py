"""Faces in whole photos: detect, align to the face VAE's framing, and paste edits back.

The face VAE only knows faces framed like its LFW training crops (deep-funnelled, face centred at
a fixed scale). This module finds faces in any photo, warps each one to that framing
(:func:`align_faces`), and puts an edit back into the full-resolution photo
(:func:`paste_changes`) by transferring the *change* the VAE made (edited decode minus unedited
decode), warped back with the inverse transform and added to the photo's luma inside a feathered
face mask. Chroma is kept: the same amount is added to R, G and B, which moves the luma (any
weights summing to 1) and leaves Cb/Cr unchanged. Pixels outside the mask are copied, so they
equal the input bit for bit.

Detector: scikit-image's bundled LBP frontal-face cascade (``skimage.data.
lbp_frontal_face_cascade_filename``, trained by OpenCV), chosen because it works offline from an
installed dependency: opencv-python-headless 5 dropped ``CascadeClassifier`` and ships no cascade
files, and its DNN detector (YuNet) needs an ONNX model that no installed package bundles. It finds
upright frontal faces (roughly +-15 degrees of roll). The cascade only proposes candidates: its
box is mapped to the template framing (:data:`TEMPLATE_BOX`), then the project's face aligner
(``weights/face-aligner``, :class:`aepipe.models.face_aligner.FaceAligner`, trained by ``aepipe
train face-aligner`` on LFW train faces placed in train photos) corrects each candidate's frame
twice (shift, scale, roll) and scores face / not-face; candidates that land on the same face are
merged. Without an aligner (``aligner=None``) the box is used as it is, with the roll fitted
against the VAE's mean face (:func:`refine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

if TYPE_CHECKING:
    import torch
    from torch import nn

# Where the detector's box falls in a 64x64 LFW training crop (x, y of the top-left corner and
# the side, in crop pixels): medians over the first 300 train faces of ../shared/data/faces/
# lfw_64.npz, each pasted 3x enlarged into a train-split photo (found in 295 / 300; spread of the
# side 6.7 px, which :func:`refine` corrects). Measured with:
#   python benchmarks/faces_in_photos.py --measure-template 300
TEMPLATE_SIZE = 64
TEMPLATE_BOX = (4.67, 4.67, 55.33)
# Feathered elliptical face mask in template pixels: centre, radii, feather width.
MASK_CENTRE = (32.0, 34.0)
MASK_RADII = (22.0, 27.0)
MASK_FEATHER = 6.0
MIN_FACE_PX = 24
"""Smallest detected face side (photo pixels) that is aligned; smaller ones are reported."""
MIN_NEIGHBORS = 4
"""Raw cascade hits that must overlap for a face (2 finds more faces but also hair and texture)."""
DETECT_ROLLS = (0.0,)
"""Angles the photo is searched at. Adding -10 and 10 cost 3x the time and found no more of the
first 50 benchmark faces (35 / 50 either way), so only upright by default."""
MIN_RELATIVE = 0.4
"""Detections under this fraction of the largest face's size are treated as false: on pasted LFW
faces most false detections were small texture patches next to a much larger face (benchmark)."""
MIN_MATCH = 0.0
"""Least correlation with the mean face for a detection to count as a face (see refine); only
anti-correlated detections are dropped, because false detections on texture often correlate as
well as real faces (benchmark) and the astronaut's real face scores only 0.18."""
DETECT_PASSES = (1.0, 0.952, 0.907)
"""Relative sizes the photo is searched at; a face's boxes from all passes are averaged. Each pass
lays the cascade's position and size grid (10% size steps) differently over the face, so the mean
box is steadier. ``python benchmarks/faces_in_photos.py --n 100 --threads 1``: 89 of 100 pasted
faces found and placed within tolerance, against 81 of the same 100 with one pass (1.0,); the
misses were mostly boxes on the face but off in position or size. Costs about 2.3x the
detection time (0.74 -> 1.74 s on the 512x512 astronaut, one thread, busy machine)."""
DEFAULT_ALIGNER = "face-aligner"
"""Weights of the face aligner :func:`find_faces` uses by default."""
ALIGN_PASSES = 3
"""Corrections applied in a row. On 100 validation faces in photos (``python benchmarks/
faces_in_photos.py --split val --n 100 --no-edits``) the aligned crop's VAE code distance to the
original crop was 3.32 after two and 3.26 after three (1.32 for a perfect crop; 11.4 with the
cascade box alone, on test faces)."""
MIN_FACE_SCORE = 0.99
"""Least face probability (the aligner's, after its corrections) for a face. Validation faces:
97% found at 0.5 to 0.995 alike; false faces per photo 1.48 at 0.5, 0.22 at 0.99."""
MAX_RESIDUAL = 3.0
"""Largest last correction (template px, :attr:`FaceBox.residual`) of a face: on a real face
the aligner's frame settles after its corrections; on texture it took for a face (buildings,
a statue, scratches on an old print) it keeps moving. Chosen on 150 validation faces pasted
into validation photos, each also as a faded, scratched sepia print and as a noisy gray scan
(``benchmarks/faces_false_faces.py``, ``degrade`` in ``benchmarks/faces_in_photos.py``): false
faces per photo 0.23 -> 0.17 (clean), 1.05 -> 0.44 (sepia), 0.21 -> 0.15 (gray) for one
real face of 382 lost (sepia); 2 cut more false faces but lost 6 real ones, a higher score
threshold (0.998) lost 4."""
ALIGN_NEIGHBORS = 2
"""Cascade neighbours a candidate needs when the aligner checks candidates: it rejects texture
the cascade takes for a face, so the cascade may propose more. Validation: 95-97% found with 2
against 92-93% with 4 (faces rolled by 5-10 degrees often get fewer neighbours)."""
ALIGN_MIN_RELATIVE = 0.0
"""With the aligner no face is dropped for being much smaller than another: the aligner's score
already rejects texture, and the size rule cost 2 of 100 validation faces next to a larger false
detection (``benchmarks/faces_in_photos.py --split val``, settings table)."""
ALIGN_ZOOMS = (1.0, 1.5)
"""Sizes (relative to the cascade's box, same centre) each candidate is tried at: on large
faces wearing caps or with hair the cascade's box can be half the LFW framing, beyond what one
correction reaches (validation faces)."""
DETECT_MAX_SIDE = 1024
"""Photos are searched at most this large (longer side) so a 12-megapixel photo stays fast."""

MAX_FACE_INDEX = 9999
"""Largest face index ``--face N`` (and ``face = N`` in files and requests) takes."""
FaceIndex = Annotated[int, Field(ge=0, le=MAX_FACE_INDEX)]
FaceChoice = Literal["all", "largest"] | FaceIndex
"""Which faces of a photo an edit or reconstruction uses."""
OneFace = Literal["largest"] | FaceIndex
"""Which one face of a photo an interpolation or traversal starts from."""


def parse_face_choice(text: str, *, one: bool = False) -> FaceChoice:
    """``all``, ``largest`` or a face index, validated as the TOML ``face`` key is.

    Args:
        text: what the user typed (``--face``).
        one: only one face may be chosen (:data:`OneFace`: no ``all``).

    Raises:
        ConfigError: anything else, with the accepted values.
    """
    from pydantic import TypeAdapter, ValidationError

    from aepipe.errors import ConfigError

    value: str | int = int(text) if text.strip().lstrip("+-").isdigit() else text
    try:
        return TypeAdapter(OneFace if one else FaceChoice).validate_python(value)
    except ValidationError:
        accepted = "largest" if one else "all, largest"
        raise ConfigError(
            f"must be {accepted} or a face index from 0 to {MAX_FACE_INDEX}; got {text!r}"
        ) from None


@dataclass
class FaceBox:
    """One detected face and its alignment.

    Attributes:
        index: position in the photo's detections (largest first).
        box: (x, y, side) of the detection in photo pixels (with the aligner: the template box
            of the corrected frame, :func:`frame_box`).
        matrix: 2x3 affine mapping photo pixel coordinates to template pixel coordinates.
        status: "ok", or why the face was not aligned ("too small").
        message: human explanation for reports.
        match: correlation with the mean face after refinement (None when not refined).
        score: the aligner's face probability (None without an aligner).
        residual: size of the aligner's last correction (template px; small: converged).
    """

    index: int
    box: tuple[float, float, float]
    matrix: list[list[float]] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    match: float | None = None
    score: float | None = None
    residual: float | None = None


@lru_cache(maxsize=1)
def _detector():
    from skimage import data
    from skimage.feature import Cascade

    return Cascade(data.lbp_frontal_face_cascade_filename())


def detect_boxes(
    gray: torch.Tensor,
    max_side: int = DETECT_MAX_SIDE,
    neighbors: int = MIN_NEIGHBORS,
    rolls: tuple[float, ...] = DETECT_ROLLS,
    passes: tuple[float, ...] = DETECT_PASSES,
    keep_all: bool = False,
) -> list[tuple[float, ...]]:
    """Frontal faces in a gray image, largest first, overlaps merged.

    Args:
        gray: (H, W) luma in [0, 1].
        max_side: the image is downscaled so its longer side is at most this before searching.
        neighbors: overlapping raw detections a face needs (more: fewer false faces, fewer found).
        rolls: the image is also searched turned by these angles (degrees), because the cascade
            finds only nearly upright faces; boxes are mapped back (upright, same side).
        passes: the image is searched again at these relative sizes (see
            :data:`DETECT_PASSES`); the boxes of one face are averaged.
        keep_all: keep every candidate: boxes that agree are averaged, but a box is never
            dropped for overlapping a larger one (the aligner checks candidates instead).

    Returns:
        (x, y, side) boxes in the input's pixel coordinates.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from torch.nn import functional as F

    h, w = gray.shape
    jobs = []
    for k, rel in enumerate(passes):
        scale = min(1.0, max_side / max(h, w)) * rel
        img = gray
        if scale < 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            img = F.interpolate(gray[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
        if min(img.shape) >= 24:
            jobs += [(k, scale, img.to(torch.float32), roll) for roll in rolls]
    # The cascade releases the GIL for much of its work: the searches run side by side (same
    # boxes, in the same order, as one after the other).
    with ThreadPoolExecutor(max(1, min(len(jobs), torch.get_num_threads()))) as pool:
        found = list(pool.map(lambda j: _detect_turned(j[2], j[3], neighbors), jobs))
    boxes = [
        (x / scale, y / scale, side / scale, k)
        for (k, scale, _, _), hits in zip(jobs, found, strict=True)
        for x, y, side in hits
    ]
    return _merge_boxes(boxes, keep_all)


def _detect_turned(img: torch.Tensor, roll: float, neighbors: int) -> list[tuple[float, ...]]:
    """Cascade detections in ``img`` turned by ``roll`` degrees, mapped back to ``img``."""
    import torch

    cx, cy = (img.shape[1] - 1) / 2, (img.shape[0] - 1) / 2
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    # turned image pixel (x, y) samples the image at R(x - centre) + centre
    rot = [[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]]
    if roll:
        ys, xs = torch.meshgrid(
            torch.arange(img.shape[0], dtype=torch.float32),
            torch.arange(img.shape[1], dtype=torch.float32),
            indexing="ij",
        )
        img = _sample(img[None, None], rot, xs, ys)[0, 0]
    side = min(img.shape)
    found = _detector().detect_multi_scale(
        img.to(torch.float64).numpy(), scale_factor=1.1, step_ratio=1, min_size=(20, 20),
        max_size=(side, side), min_neighbor_number=neighbors,
    )  # fmt: skip
    out = []
    for d in found:
        half = d["width"] / 2
        x, y = d["c"] + half, d["r"] + half
        x, y = (
            rot[0][0] * x + rot[0][1] * y + rot[0][2],
            rot[1][0] * x + rot[1][1] * y + rot[1][2],
        )
        out.append((x - half, y - half, float(d["width"])))
    return out


def _merge_boxes(boxes: list[tuple[float, ...]], keep_all: bool = False) -> list[tuple[float, ...]]:
    """One box per face, largest first, from ``(x, y, side, pass)`` boxes of every pass.

    Boxes overlapping a larger one by 0.3 or more join its group. A face's box is the mean of the
    boxes in its group that agree with the largest one (overlap >= 0.5, side within 0.8-1.25x):
    each pass samples positions and sizes on its own grid, so their mean is closer to the face
    than any one of them. A group needs a box of the first pass or boxes of two passes, so that
    the extra passes add no face that only one of them sees (those were mostly texture).
    With ``keep_all``, a box that does not agree with any group starts its own, and every group
    is kept: a large false box over a face then no longer hides the face's own box.
    """
    groups: list[list[tuple[float, ...]]] = []
    for b in sorted(boxes, key=lambda b: -b[2]):
        if keep_all:
            home = next((g for g in groups if _agrees(b, g[0])), None)
        else:
            home = next((g for g in groups if _overlap(b, g[0]) >= 0.3), None)
        if home is None:
            groups.append([b])
        elif _agrees(b, home[0]):
            home.append(b)
    merged = [
        tuple(sum(v) / len(g) for v in list(zip(*g, strict=True))[:3])
        for g in groups
        if keep_all or len({b[3] for b in g}) >= 2 or any(b[3] == 0 for b in g)
    ]
    return sorted(merged, key=lambda b: -b[2])


def _agrees(b: tuple[float, ...], first: tuple[float, ...]) -> bool:
    """Whether box ``b`` is the same detection as a group's first box on another grid."""
    return _overlap(b, first) >= 0.5 and 0.8 <= b[2] / first[2] <= 1.25


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller square's area."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return ix * iy / min(a[2], b[2]) ** 2


def box_matrix(box: tuple[float, ...]) -> list[list[float]]:
    """Similarity transform (no rotation) taking a detected box onto :data:`TEMPLATE_BOX`."""
    tx, ty, tside = TEMPLATE_BOX
    s = tside / box[2]
    return [[s, 0.0, tx - s * box[0]], [0.0, s, ty - s * box[1]]]


def find_faces(
    images: torch.Tensor,
    min_face: int = MIN_FACE_PX,
    mean_face: torch.Tensor | None = None,
    min_match: float = MIN_MATCH,
    min_relative: float | None = None,
    aligner: str | nn.Module | None = DEFAULT_ALIGNER,
    min_score: float = MIN_FACE_SCORE,
    zooms: tuple[float, ...] | None = None,
    max_residual: float = MAX_RESIDUAL,
) -> list[FaceBox]:
    """Detect and align every face of one photo.

    Args:
        images: (1, C, H, W) in [0, 1], C in {1, 3}.
        min_face: smaller faces are reported with status "too small" and not aligned.
        mean_face: (64, 64) mean face; without an aligner, each face's roll is refined against
            it (:func:`refine`) and detections matching it worse than ``min_match`` are
            reported as "not a face".
        min_match: least normalised correlation with ``mean_face`` for a face.
        min_relative: faces smaller than this fraction of the largest are reported as likely
            false detections (texture the cascade mistakes for a small face); None:
            :data:`MIN_RELATIVE` for the cascade alone, :data:`ALIGN_MIN_RELATIVE` with an
            aligner.
        aligner: face-aligner weights (name or folder) or model that corrects and scores each
            candidate (:func:`correct`); ``None`` keeps the cascade's box.
        min_score: least face probability from the aligner for a face.
        zooms: with an aligner, each cascade box is tried at these relative sizes (None:
            :data:`ALIGN_ZOOMS`).
        max_residual: with an aligner, largest last correction (template px) of a face whose
            frame settled (:data:`MAX_RESIDUAL`); a frame still moving is "not a face".

    Returns:
        Faces, largest first (empty when none is found).
    """
    from aepipe.batch import to_gray

    model = load_aligner(aligner)
    neighbors = MIN_NEIGHBORS if model is None else ALIGN_NEIGHBORS
    gray = to_gray(images)[0, 0].float().cpu()
    boxes = detect_boxes(gray, neighbors=neighbors, keep_all=model is not None)
    if model is not None:
        boxes = [_zoomed(b, z) for b in boxes for z in (zooms or ALIGN_ZOOMS)]
    faces = [
        FaceBox(index=i, box=tuple(round(v, 1) for v in box), matrix=box_matrix(box))
        for i, box in enumerate(boxes)
    ]
    for face in faces:
        if face.box[2] < min_face:
            face.status = "too small"
            face.message = f"too small ({face.box[2]:.0f} px < {min_face} px)"
    if model is not None:
        rel = ALIGN_MIN_RELATIVE if min_relative is None else min_relative
        return _checked_faces(images, faces, model, (min_score, rel, max_residual))
    min_relative = MIN_RELATIVE if min_relative is None else min_relative
    for face in faces:
        if face.status != "ok":
            continue
        if face.box[2] < min_relative * faces[0].box[2]:
            face.status = "likely false"
            face.message = _relative_message(face, min_relative)
        elif mean_face is not None:
            face.match = refine(images, face, mean_face)
            if face.match < min_match:
                face.status = "not a face"
                face.message = f"not a face (match {face.match:.2f} < {min_match})"
    return faces


def _zoomed(box: tuple[float, ...], zoom: float) -> tuple[float, ...]:
    """The box ``zoom`` times as large about the same centre."""
    x, y, side = box[:3]
    return (x + side * (1 - zoom) / 2, y + side * (1 - zoom) / 2, side * zoom)


def _relative_message(face: FaceBox, min_relative: float) -> str:
    side = face.box[2]
    return f"likely a false detection ({side:.0f} px, under {min_relative:g}x the largest)"


def _checked_faces(
    images: torch.Tensor,
    faces: list[FaceBox],
    model: nn.Module,
    rules: tuple[float, float, float],
) -> list[FaceBox]:
    """Candidates corrected and scored by the aligner, one per face, largest first.

    Candidates that land on the same face (centres within 0.3 of its size, sizes within 1.4x)
    are merged into the one whose frame converged best (smallest last correction) among those
    that look like a face (probability >= 0.5): a candidate that started far off can end a few
    pixels short of the face with as high a face probability as a well-aligned one. The
    merged faces are then judged by ``rules``: ``(min_score, min_relative, max_residual)`` of
    :func:`judge`.
    """
    todo = [f for f in faces if f.status == "ok"]
    if todo:
        correct(images, todo, model)
    kept: list[FaceBox] = []
    for face in sorted(todo, key=lambda f: ((f.score or 0.0) < 0.5, f.residual or 0.0)):
        if not any(_same_face(face, k) for k in kept):
            kept.append(face)
    out = sorted(kept + [f for f in faces if f.status == "too small"], key=lambda f: -f.box[2])
    judge(out, *rules)
    # Accepted faces first (largest first), so ``--face N`` counts faces, not rejected candidates.
    out = [f for f in out if f.status == "ok"] + [f for f in out if f.status != "ok"]
    for i, face in enumerate(out):
        face.index = i
    return out


def judge(
    faces: list[FaceBox],
    min_score: float,
    min_relative: float,
    max_residual: float = MAX_RESIDUAL,
) -> None:
    """Set the status of aligner-scored faces from their scores (in place).

    "not a face" under ``min_score`` or when the frame was still moving by more than
    ``max_residual`` template px at the last correction, "likely false" under
    ``min_relative`` of the largest accepted face's size, else "ok"; "too small" faces keep
    their status.
    """
    for face in faces:
        if face.status == "too small" or face.score is None:
            continue
        face.status, face.message = "ok", ""
        if face.score < min_score:
            face.status = "not a face"
            face.message = f"not a face (score {face.score:.2f} < {min_score:g})"
        elif (face.residual or 0.0) > max_residual:
            face.status = "not a face"
            face.message = (
                f"not a face (its frame did not settle: last correction {face.residual:.1f} px "
                f"> {max_residual:g})"
            )
    largest = max((f.box[2] for f in faces if f.status == "ok"), default=0.0)
    for face in faces:
        if face.status == "ok" and face.box[2] < min_relative * largest:
            face.status = "likely false"
            face.message = _relative_message(face, min_relative)


def _same_face(a: FaceBox, b: FaceBox) -> bool:
    ax, ay, aside = a.box
    bx, by, bside = b.box
    dist = math.hypot(ax + aside / 2 - bx - bside / 2, ay + aside / 2 - by - bside / 2)
    return dist < 0.3 * max(aside, bside) and max(aside, bside) < 1.4 * min(aside, bside)


@lru_cache(maxsize=4)
def _load_aligner(name: str) -> nn.Module:
    from aepipe.weights import load_model

    return load_model(name)[0]


def load_aligner(aligner: str | nn.Module | None) -> nn.Module | None:
    """The face-aligner model for a weights name or folder (cached), a model, or None."""
    if aligner is None or not isinstance(aligner, str):
        return aligner
    return _load_aligner(aligner)


def correct(
    images: torch.Tensor, faces: list[FaceBox], model: nn.Module, passes: int | None = None
) -> None:
    """Move each face's frame onto the LFW framing with the aligner; set ``score`` and ``box``.

    Each pass cuts the faces in their current frames (enlarged by the model's field of view),
    predicts the similarity transform to the true framing and composes it onto ``matrix``. The
    face probability comes from the last pass, whose frame is already close to the face.

    Args:
        images: (1, C, H, W) photo in [0, 1].
        faces: candidates (their ``matrix`` from the detector box); changed in place.
        model: a :class:`~aepipe.models.face_aligner.FaceAligner`.
        passes: corrections applied in a row (None: :data:`ALIGN_PASSES`).
    """
    import torch

    from aepipe.models.face_aligner import corner_error, similarity

    c = (TEMPLATE_SIZE - 1) / 2
    k = 1 / model.view
    zoom = [[k, 0.0, c - k * c], [0.0, k, c - k * c]]
    probs: list[float] = []
    moves: list[float] = []
    for _ in range(passes or ALIGN_PASSES):
        views = [FaceBox(f.index, f.box, _compose(zoom, f.matrix)) for f in faces]
        with torch.inference_mode():
            out = model(align_crops(images, views).cpu().float())
            fixes = similarity(model.to_params(out))
            moves = corner_error(fixes, torch.eye(2, 3).expand_as(fixes)).tolist()
        for face, fix in zip(faces, fixes.tolist(), strict=True):
            face.matrix = _compose(fix, face.matrix)
        probs = out[:, 4].sigmoid().tolist()
    for face, p, move in zip(faces, probs, moves, strict=True):
        face.score, face.residual = p, move
        face.box = frame_box(face.matrix)


def frame_box(matrix: list[list[float]]) -> tuple[float, float, float]:
    """(x, y, side) in photo pixels of :data:`TEMPLATE_BOX` seen in a face's frame.

    For a rolled frame: the upright square of the same centre and size.
    """
    inv = _inverse(matrix)
    tx, ty, ts = TEMPLATE_BOX
    cx, cy = tx + ts / 2, ty + ts / 2
    px = inv[0][0] * cx + inv[0][1] * cy + inv[0][2]
    py = inv[1][0] * cx + inv[1][1] * cy + inv[1][2]
    side = ts * math.sqrt(abs(inv[0][0] * inv[1][1] - inv[0][1] * inv[1][0]))
    return (round(px - side / 2, 1), round(py - side / 2, 1), round(side, 1))


def select_faces(faces: list[FaceBox], choice: FaceChoice) -> list[FaceBox]:
    """The faces ``--face all|largest|N`` asks for (only those with status "ok")."""
    ok = [f for f in faces if f.status == "ok"]
    if choice == "all":
        return ok
    if choice == "largest":
        return ok[:1]
    return [f for f in ok if f.index == int(choice)]


def _inverse(m: list[list[float]]) -> list[list[float]]:
    (a, b, c), (d, e, f) = m
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return [[ia, ib, -(ia * c + ib * f)], [id_, ie, -(id_ * c + ie * f)]]


def _sample(images: torch.Tensor, m: list[list[float]], xs: torch.Tensor, ys: torch.Tensor):
    """Bilinear samples of ``images`` at ``m @ (x, y, 1)`` for pixel grids xs, ys (H', W')."""
    import torch
    from torch.nn import functional as F

    h, w = images.shape[-2:]
    u = m[0][0] * xs + m[0][1] * ys + m[0][2]
    v = m[1][0] * xs + m[1][1] * ys + m[1][2]
    grid = torch.stack([(2 * u + 1) / w - 1, (2 * v + 1) / h - 1], dim=-1)[None]
    grid = grid.expand(images.shape[0], -1, -1, -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def align_crops(images: torch.Tensor, faces: list[FaceBox], zoom: int = 1) -> torch.Tensor:
    """Warp faces to the 64x64 template framing (gray), antialiased by supersampling.

    Args:
        images: (1, C, H, W) photo in [0, 1].
        faces: faces from :func:`find_faces`.
        zoom: crops are ``64 * zoom`` pixels wide (same framing, finer sampling).

    Returns:
        (len(faces), 1, 64 * zoom, 64 * zoom) gray crops.
    """
    import torch
    from torch.nn import functional as F

    from aepipe.batch import to_gray

    gray = to_gray(images.float())
    crops = []
    for face in faces:
        inv = _inverse([[v * zoom for v in row] for row in face.matrix])
        # Supersample k x k per template pixel so a large face is averaged, not aliased.
        k = max(1, min(8, math.ceil(abs(inv[0][0]))))
        n = TEMPLATE_SIZE * zoom * k
        t = (torch.arange(n, dtype=torch.float32) + 0.5) / k - 0.5
        ys, xs = torch.meshgrid(t, t, indexing="ij")
        big = _sample(gray, inv, xs, ys)
        crops.append(F.avg_pool2d(big, k) if k > 1 else big)
    if not crops:
        return torch.zeros(0, 1, TEMPLATE_SIZE * zoom, TEMPLATE_SIZE * zoom)
    return torch.cat(crops).clamp(0, 1)


def _candidates(rolls, scales, shifts) -> torch.Tensor:
    """(K, 2, 3) similarity transforms about the mask centre, in template coordinates."""
    import torch

    cx, cy = MASK_CENTRE
    mats = []
    for roll in rolls:
        c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        for sc in scales:
            for dx in shifts:
                for dy in shifts:
                    a, b = sc * c, -sc * s
                    d, e = sc * s, sc * c
                    mats.append(
                        [[a, b, cx + dx - a * cx - b * cy], [d, e, cy + dy - d * cx - e * cy]]
                    )
    return torch.tensor(mats, dtype=torch.float32)


def _compose(r: list[list[float]], m: list[list[float]]) -> list[list[float]]:
    """The affine ``r`` after ``m`` (both 2x3)."""
    return [
        [r[i][0] * m[0][j] + r[i][1] * m[1][j] + (r[i][2] if j == 2 else 0.0) for j in range(3)]
        for i in range(2)
    ]


def refine(images: torch.Tensor, face: FaceBox, mean_face: torch.Tensor) -> float:
    """Fit a face's in-plane roll (+-14 degrees) to best match a mean face; returns the match.

    The detector gives only an upright box; this search rotates the crop about the face centre
    and scores each roll by normalised correlation with the VAE's mean face inside the face mask.
    Scale and shift are left to the box: searched too, the blurry mean face pulled the scale
    ~15% too small on pasted LFW faces (benchmarks/faces_in_photos.py).

    Args:
        images: (1, C, H, W) photo in [0, 1].
        face: a detected face; its ``matrix`` is replaced by the best candidate's.
        mean_face: (64, 64) gray mean face (e.g. the VAE's decode of the zero code).

    Returns:
        The best normalised correlation.
    """
    import torch

    big = align_crops(images, [face], zoom=2)
    t = torch.arange(TEMPLATE_SIZE, dtype=torch.float32)
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    w = _mask(xs, ys).flatten()
    ref = mean_face.flatten() - (mean_face.flatten() * w).sum() / w.sum()
    best = (-2.0, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    grids = [((-12, -8, -4, 0, 4, 8, 12), (1.0,), (0,)), (None, None, None)]
    for rolls, scales, shifts in grids:
        if rolls is None:  # second round: a finer grid around the first round's best
            rolls, scales, shifts = (-2, 0, 2), (1.0,), (0,)
            base = best[1]
        else:
            base = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        for r in _candidates(rolls, scales, shifts).tolist():
            cand = _compose(r, base)
            crop = _sample(big, [[v * 2 for v in row] for row in _inverse(cand)], xs, ys)
            x = crop.flatten()
            x = x - (x * w).sum() / w.sum()
            score = float((w * x * ref).sum() / ((w * x * x).sum() * (w * ref * ref).sum()).sqrt())
            if score > best[0]:
                best = (score, cand)
    face.matrix = _compose(best[1], face.matrix)
    return best[0]


def _mask(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Feathered ellipse in template coordinates: 1 inside, 0 beyond the feather (exactly)."""
    (cx, cy), (rx, ry) = MASK_CENTRE, MASK_RADII
    r = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
    # Distance outside the ellipse in (roughly) template pixels, then a smoothstep ramp.
    d = (r.sqrt() - 1.0) * min(rx, ry) / MASK_FEATHER
    t = (1.0 - d).clamp(0, 1)
    return t * t * (3 - 2 * t)


def paste_changes(images: torch.Tensor, faces: list[FaceBox], deltas: torch.Tensor) -> torch.Tensor:
    """Add per-face luma changes (template framing) to the photo inside feathered face masks.

    Args:
        images: (1, C, H, W) photo in [0, 1].
        faces: the aligned faces.
        deltas: (len(faces), 1, 64, 64) change to add (e.g. edited decode minus plain decode).

    Returns:
        (1, C, H, W) photo; pixels where every mask is 0 are the input's, unchanged.
    """
    import torch

    out = images.clone()
    h, w = images.shape[-2:]
    for face, delta in zip(faces, deltas, strict=True):
        inv = _inverse(face.matrix)
        corners = [(0.0, 0.0), (TEMPLATE_SIZE, 0.0), (0.0, TEMPLATE_SIZE), (TEMPLATE_SIZE,) * 2]
        px = [inv[0][0] * a + inv[0][1] * b + inv[0][2] for a, b in corners]
        py = [inv[1][0] * a + inv[1][1] * b + inv[1][2] for a, b in corners]
        x0, x1 = max(0, math.floor(min(px))), min(w, math.ceil(max(px)) + 1)
        y0, y1 = max(0, math.floor(min(py))), min(h, math.ceil(max(py)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        ys, xs = torch.meshgrid(
            torch.arange(y0, y1, dtype=torch.float32),
            torch.arange(x0, x1, dtype=torch.float32),
            indexing="ij",
        )
        m = face.matrix
        u = m[0][0] * xs + m[0][1] * ys + m[0][2]
        v = m[1][0] * xs + m[1][1] * ys + m[1][2]
        mask = _mask(u, v)
        change = _sample(delta[None].float(), m, xs, ys)[0, 0] * mask
        region = out[0, :, y0:y1, x0:x1]
        edited = (region + change).clamp(0, 1)
        out[0, :, y0:y1, x0:x1] = torch.where(mask > 0, edited, region)
    return out


def mean_face(stage) -> torch.Tensor | None:
    """(64, 64) the VAE's decode of the zero code: its average face, used to refine alignment.

    ``None`` for a model without a continuous latent mean (the face VQ-VAE): faces are then
    framed by the face aligner alone, which is what happens whenever the aligner is loaded.
    """
    import torch

    if not hasattr(stage, "latent_dim"):
        return None
    return stage.decode(torch.zeros(1, stage.latent_dim)).images[0, 0]


@dataclass
class PhotoEdit:
    """Result of :func:`edit_photo`: the whole photo and what happened to each face.

    Attributes:
        images: (1, C, H, W) the photo after the edit.
        faces: every face found.
        edited: the indices of the faces edited (or reconstructed).
        crops: (len(edited), 1, S, S) their aligned crops.
        done: what happened to those faces, for the report: ``edited`` (moved along
            concepts) or ``reconstructed``.
    """

    images: torch.Tensor
    faces: list[FaceBox]
    edited: list[int]
    crops: torch.Tensor | None = None
    done: Literal["edited", "reconstructed"] = "edited"


def edit_photo(
    stage,
    images: torch.Tensor,
    concepts: list[tuple[torch.Tensor, float]] | None,
    face: FaceChoice = "all",
    faces: list[FaceBox] | None = None,
) -> PhotoEdit:
    """Move the faces of a whole photo along concept vectors, keeping its resolution and colour.

    Args:
        stage: a loaded :class:`~aepipe.stages.face_generator.FaceGenerator` (or, to
            reconstruct, any face model: the face VQ-VAE too).
        images: (1, C, H, W) photo in [0, 1], C in {1, 3}.
        concepts: (vector, strength) pairs, applied in order; ``None`` reconstructs instead
            (the face's luma becomes the model's decode of it, to see what the model keeps).
        face: "all", "largest" or a face index (largest first).
        faces: the photo's faces from :func:`find_faces` (with the mean face), when already
            found (several edits of one photo); ``None`` detects them here.

    Returns:
        The edited photo (unchanged when no face was edited), the detections and the edited indices.
    """
    from aepipe.batch import ImageBatch

    if faces is None:
        faces = find_faces(images, mean_face=mean_face(stage))
    chosen = select_faces(faces, face)
    done = "reconstructed" if concepts is None else "edited"
    if not chosen:
        return PhotoEdit(images.clone(), faces, [], done=done)
    crops = align_crops(images, chosen)
    batch = ImageBatch(crops, [str(f.index) for f in chosen])
    if concepts is None:
        # Calling the stage reconstructs: the VAE's posterior-mean decode, the VQ-VAE's
        # quantised one.
        delta = stage(batch).images.cpu() - crops
    else:
        z = stage.encode(batch)
        moved = z
        for vector, strength in concepts:
            moved = stage.apply_concept(moved, vector, strength)
        delta = stage.decode(moved).images - stage.decode(z).images
    out = paste_changes(images, chosen, delta)
    return PhotoEdit(out, faces, [f.index for f in chosen], crops, done)


SHEET_WHITE = 0.85
"""Least value (every channel, 0..1) of a contact sheet's padding: ``io.make_grid`` pads with
255, and JPEG ringing beside dark tiles pulls a thin line down a little."""


def contact_sheet_tiles(images: torch.Tensor) -> tuple[int, int] | None:
    """(rows, columns) of tiles when an image is a contact sheet, else ``None``.

    A sheet, as ``gen-faces``, ``faces traverse`` or ``faces interpolate`` write one
    (``io.make_grid``), is a white frame around at least two tiles of one size separated by
    thin white lines. A photo with a white border has one "tile"; a white band across a photo
    does not cut it into equal parts.

    Args:
        images: (1, C, H, W) in [0, 1].
    """
    white = images[0].amin(0) >= SHEET_WHITE
    rows = _tile_runs((white.float().mean(1) >= 0.95).tolist())
    cols = _tile_runs((white.float().mean(0) >= 0.95).tolist())
    if rows is None or cols is None or len(rows) * len(cols) < 2:
        return None
    return len(rows), len(cols)


def _tile_runs(line_is_white: list[bool]) -> list[int] | None:
    """Lengths of the non-white runs along one axis, when they tile it as a sheet does.

    ``None`` unless the axis starts and ends white, the runs have one length (+-2 px, at
    least 8 px) and the white gaps between them are thin (at most a quarter of a tile).
    """
    if not line_is_white or not (line_is_white[0] and line_is_white[-1]):
        return None
    runs, gaps, length, gap = [], [], 0, 0
    for is_white in line_is_white:
        if is_white:
            if length:
                runs.append(length)
                length = 0
            gap += 1
        else:
            if gap and runs:
                gaps.append(gap)
            gap = 0
            length += 1
    if not runs or min(runs) < 8 or max(runs) - min(runs) > 2:
        return None
    return runs if all(g <= min(runs) / 4 for g in gaps) else None


def face_report(result: PhotoEdit, choice: FaceChoice) -> list[str]:
    """One line per face (found, edited or reconstructed, or why not) for CLI and service."""
    # Candidates the aligner rejected are summed up in one line, not listed one by one.
    rejected = [f for f in result.faces if f.status == "not a face" and f.score is not None]
    shown = [f for f in result.faces if not (f.status == "not a face" and f.score is not None)]
    unsettled = sum("did not settle" in f.message for f in rejected)
    note = (
        f"{len(rejected)} candidate(s) rejected by the face aligner (best face probability "
        f"{max(f.score or 0.0 for f in rejected):.2f}"
        + (f"; {unsettled} whose frame did not settle)" if unsettled else ")")
        if rejected
        else ""
    )
    if not shown:
        none = "no face found (the detector finds upright, frontal faces of at least 24 px)"
        return [f"{none}; {note}" if note else none]
    lines = []
    for f in shown:
        x, y, side = f.box
        where = f"face {f.index} at x={x:.0f} y={y:.0f} size={side:.0f}px"
        if f.index in result.edited:
            lines.append(f"{where}: {result.done}")
        elif f.status != "ok":
            lines.append(f"{where}: skipped, {f.message}")
        else:
            lines.append(f"{where}: not selected (--face {choice})")
    if note:
        lines.append(note)
    if isinstance(choice, int) and choice not in result.edited:
        lines.append(f"no usable face with index {choice}")
    return lines
