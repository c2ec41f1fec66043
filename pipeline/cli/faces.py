"""Face and MNIST VAE commands: ``aepipe train``, ``gen-faces``, ``aepipe faces``, ``aepipe vae``.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast): torch, numpy and
the stage are imported inside the command functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aepipe.cli.apps import app, faces_app, vae_app
from aepipe.cli.common import (
    OverwriteOpt,
    OverwriteShippedOpt,
    RecursiveOpt,
    cli_errors,
    err,
    image_target,
    invocation,
    train_out,
)
from aepipe.cli.train_options import add_train_command

if TYPE_CHECKING:
    from aepipe.runner import RunOptions

_TRAIN_HELP = {
    "face-vae": "Train the 64x64 gray face VAE on LFW luma (Gaussian likelihood, learned scale).",
    "mnist-vae": "Train the 32-d MNIST VAE of the likelihood benchmark (Bernoulli, binarised).",
    "mnist-vae-2d": "Train the 2-D MNIST VAE for the latent grid / scatter pictures.",
    "fashion-vae-2d": "Train the 2-D Fashion-MNIST VAE for the latent grid / scatter pictures.",
}


for _preset, _help in _TRAIN_HELP.items():
    add_train_command(_preset, "aepipe.train.vae", help=_help, fixed={"preset": _preset})
add_train_command(
    "face-aligner",
    "aepipe.train.face_aligner",
    help="Train the CNN that aligns faces found in photos to the face VAE's LFW framing.",
)


# ---- helpers ---------------------------------------------------------------------------------

ModelOpt = Annotated[str, typer.Option("--model", help="Weights name or folder.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
ConceptDirOpt = Annotated[
    Path,
    typer.Option(
        "--concepts-dir", help="Folder of your concept files (searched before the shipped ones)."
    ),
]
ConceptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--concept",
        help="NAME:STRENGTH (e.g. smile:1.5; STRENGTH from -10 to 10); repeatable. NAME may be "
        "a .json path.",
    ),
]


def _load_face_vae(model: str, device: str, **overrides: object):
    """The face VAE for the latent-space commands (encode, decode, interpolate, traverse)."""
    from aepipe.core import load_face_vae

    return load_face_vae(model, device=device, **overrides)


def _load_face_model(model: str, device: str):
    """Any face model that reconstructs (the VAE or the VQ-VAE), for ``faces reconstruct``."""
    from aepipe.core import load_face_model

    return load_face_model(model, device=device)


def _concepts(specs: list[str] | None, concepts_dir: Path, model: str) -> list:
    from aepipe.core import face_concepts
    from aepipe.stages.face_generator import default_concept_dirs

    return face_concepts(specs or [], default_concept_dirs(concepts_dir, model))


def _read_one(path: Path):
    """First page of an image file as a batch named after the file."""
    from aepipe.core import read_photo

    return read_photo(path)


def _image_files(folder: Path) -> list[Path]:
    from aepipe.errors import ConfigError
    from aepipe.io import is_image_path

    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if not files:
        raise ConfigError(f"{folder}: no image files")
    return files


def _write_grid(batch, path: Path, ncols: int | None = None, what: str = "--out") -> Path:
    import numpy as np

    from aepipe.io import make_grid

    return _write_sheet(make_grid(batch.to_numpy(np.uint8), ncols=ncols), path, what)


def _write_sheet(sheet, path: Path, what: str = "--out") -> Path:
    """Write an (H, W, C) uint8 contact sheet, gray sheets as 8-bit gray PNGs.

    A file that cannot be written (checked before the work, but a folder may refuse only when
    it is written) is a one-line error naming ``what``, the option that gave ``path``.
    """
    from aepipe.io import write_image
    from aepipe.pipeline import output_errors

    with output_errors(what, path):
        return write_image(sheet[..., 0] if sheet.shape[-1] == 1 else sheet, path)


def _resolve_device(device: str) -> str:
    from aepipe.cli.common import DEVICES, check_choice

    return check_choice(device, DEVICES, "--device")


# ---- gen-faces ---------------------------------------------------------------------------------


@app.command("gen-faces")
def gen_faces(
    n: Annotated[int, typer.Option("--n", "-n", min=1, max=1_000_000, help="How many faces.")] = 64,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Same seed, same faces (the noise is drawn on the CPU); 0 to 2**63 - 1. "
            "face-vqvae draws code after code, so a different CPU, GPU or precision can change "
            "its faces.",
        ),
    ] = 0,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            "-t",
            # No bounds here: the model's config holds the range (0 to 3), for every front end.
            help="Latent spread, 0 to 3 (default: the model's; 1.2 for face-vae). For face-vqvae, "
            "the temperature of the codes after its first row (lead_codes, drawn at their own).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG files.")] = Path(
        "faces"
    ),
    grid: Annotated[
        Path | None,
        typer.Option(
            "--grid", help="Contact sheet file (default: OUT/grid.png; up to 1024 faces)."
        ),
    ] = None,
    no_grid: Annotated[
        bool, typer.Option("--no-grid", help="Do not write a contact sheet.")
    ] = False,
    colorize: Annotated[
        bool, typer.Option("--colorize", help="Colorize the faces with the colorizer stage.")
    ] = False,
    concept: ConceptOpt = None,
    concepts_dir: ConceptDirOpt = Path("concepts"),
    prior: Annotated[
        bool,
        typer.Option(
            "--prior",
            help="Sample the N(0,I) prior instead of the fitted latent Gaussian (face VAE only).",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=8192)] = 256,
    sharpen: Annotated[
        float | None,
        typer.Option(
            "--sharpen",
            min=0.0,
            max=4.0,
            help="Unsharp-mask strength for the faces (default: the model's; 0: off; face VAE "
            "only).",
        ),
    ] = None,
    model: ModelOpt = "face-vae",
    device: DeviceOpt = "cpu",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace existing faces and grid in OUT (default: keep them)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Generate N new gray faces as PNG files plus a contact-sheet grid, reproducibly from --seed.

    Files are named face_00000.png ... and written atomically; a second run with the same
    seed writes the same images. Files that already exist in OUT (and the grid) are kept, not
    replaced, as aepipe run's folder sink does: a re-run with the same options resumes, and
    a run with other options (another --seed, a --concept) into the same folder says it kept
    another run's faces and draws no grid of them (--overwrite replaces them). Faces of an
    earlier, larger run left in OUT are reported, never deleted.
    """
    with cli_errors():
        from aepipe.core import generate, load_generator
        from aepipe.errors import ConfigError
        from aepipe.io import check_creatable

        overrides: dict[str, object] = {"batch_size": batch_size}
        if prior:
            overrides["sampler"] = "prior"
        if sharpen is not None:
            overrides["sharpen"] = sharpen
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: is a file; the faces go into a folder")
        if no_grid and grid is not None:
            raise ConfigError("--grid and --no-grid: give one or the other")
        check_creatable(out, "--out")
        # The default grid lies in --out: a problem with it names the option the user gave.
        grid_what = "--out" if grid is None else "--grid"
        grid_path = None if no_grid else image_target(grid or out / "grid.png", grid_what)
        face_vae_only = {"--prior": prior, "--sharpen": sharpen is not None, "--concept": concept}
        _face_vae_only(model, [name for name, given in face_vae_only.items() if given])
        # Concepts before the model: one that does not fit these weights costs no work.
        options = {"concepts": _concepts(concept, concepts_dir, model)} if concept else {}
        stage = load_generator(model, _resolve_device(device), **overrides)
        then = []
        if colorize:
            from aepipe.stage import load_stage

            then.append(load_stage("colorizer", device=_resolve_device(device)))
        batches = generate(stage, n, seed=seed, temperature=temperature, stages=then, **options)
        _write_faces(batches, n, out, (grid_path, grid_what), overwrite, quiet)


def _face_vae_only(model: str, options: list[str]) -> None:
    """Refuse gen-faces ``options`` the weights' generator does not have, before any work.

    Only the face VAE has a sampler choice, an unsharp mask and concept vectors; the stage
    would refuse them too, but by its config key (``face-vqvae.sampler``), not by the option
    the user typed.

    Raises:
        ConfigError: naming the options, for weights of another generator.
    """
    from aepipe.errors import ConfigError
    from aepipe.stage import stage_class
    from aepipe.stages.face_generator import FaceGenerator
    from aepipe.weights import read_config, resolve

    if not options:
        return
    name = read_config(resolve(model))["stage"]
    if not issubclass(stage_class(name), FaceGenerator):
        raise ConfigError(
            f"{', '.join(options)}: for the face VAE only (face-generator weights, e.g. "
            f"face-vae); --model {model} is a {name!r} generator"
        )


def _write_faces(
    batches, n: int, out: Path, grid: tuple[Path | None, str], overwrite: bool, quiet: bool
) -> None:
    """Write each face as ``<name>.png`` under ``out`` and up to 1024 of them as a grid.

    As ``aepipe run``'s folder sink (:func:`aepipe.pipeline.write_batches`, the same call):
    existing files are kept unless ``overwrite``; kept faces another run made (other options)
    are said to be, and then no grid is made. Face files of another run left beside them are
    reported, not deleted. ``grid`` is the grid file (``None``: none) and the option that
    named it.
    """
    from aepipe.pipeline import write_batches

    grid_path, grid_what = grid
    # The folder appears with the first file: a sampling option the generator refuses (it
    # checks when it starts) leaves nothing behind.
    with _progress(n, quiet) as advance:
        done = write_batches(
            _advancing(batches, advance), out, grid_path, overwrite, what=("--out", grid_what)
        )
    for line in done.report(out, grid_path, "faces", "--overwrite"):
        err(line)
    _report_leftovers(out, "face_*.png", done)


def _advancing(batches, advance):
    """The batches, moving the progress bar on as each one is handed over."""
    for batch in batches:
        yield batch
        advance(len(batch))


def _report_leftovers(out: Path, pattern: str, done) -> None:
    """Note files like the ones just written that this run did not make (an earlier run's)."""
    ours = {p.resolve() for p in (*done.written, *done.skipped)}
    others = sorted(p.name for p in out.glob(pattern) if p.resolve() not in ours)
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        err(
            f"note: {out} also holds {len(others)} file(s) of another run ({shown}); they are "
            "not this run's: remove them or choose another folder"
        )


class _progress:
    """A rich progress bar over generated images (silent when not a terminal or --quiet)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("faces"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=self.quiet or not console.is_terminal,
        )
        self.progress.__enter__()
        task = self.progress.add_task("faces", total=self.total)
        return lambda k: self.progress.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)


# ---- aepipe faces ... ----------------------------------------------------------------------------


FaceOpt = Annotated[
    str,
    typer.Option(
        "--face", help="Which faces of a photo: all | largest | N (index, largest first)."
    ),
]
AlignOpt = Annotated[
    str,
    typer.Option(
        "--align",
        help="photo: find, align and paste faces back into the whole photo; crop: the input is "
        "already a face crop (centre-crop, 64x64 out); auto: photo unless the image is at most "
        "twice the model size.",
    ),
]


def _face_choice(face: str, *, one: bool = False):
    """``--face`` validated as the TOML ``face`` key (``one``: interpolate's, without ``all``)."""
    from aepipe.cli.common import fail
    from aepipe.errors import ConfigError, ExitCode
    from aepipe.faces_align import parse_face_choice

    try:
        return parse_face_choice(face, one=one)
    except ConfigError as exc:
        fail(f"--face {exc}", ExitCode.BAD_ARGS)


def _photo_edit(stage, vectors: list | None, face, align: str, quiet: bool):
    """The core's face editor for whole photos or face crops (``vectors=None`` reconstructs)."""
    from aepipe.core import FaceEditor

    return FaceEditor(stage, vectors, face=face, align=align, report=None if quiet else err)


@faces_app.command("reconstruct")
def reconstruct(
    inputs: Annotated[
        list[Path], typer.Argument(help="Photos, face images or folders.", show_default=False)
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder \\[default: <input>_recon].")
    ] = None,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = False,
    face: FaceOpt = "all",
    align: AlignOpt = "auto",
    model: ModelOpt = "face-vae",
    device: DeviceOpt = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Encode and decode faces to see what the VAE (or --model face-vqvae) keeps.

    Photos come back whole: each face is aligned, and its luma inside a feathered face mask
    becomes the model's decode (chroma and everything outside the mask kept). Face crops
    (--align crop) are centre-cropped and come back as 64x64 gray decodes.

    Exit codes: 0 all done, 1 some files failed, 2 bad arguments, 3 nothing processed (all failed),
    4 weights could not be loaded, 130 interrupted.
    """
    from aepipe.cli.common import check_choice, run_job

    align = check_choice(align, ("auto", "photo", "crop"), "--align")
    choice = _face_choice(face)
    dev = _resolve_device(device)
    options = _photo_options(out, "recon", overwrite, recursive)
    run_job(
        inputs,
        lambda: _photo_edit(_load_face_model(model, dev), None, choice, align, quiet),
        options,
        quiet=quiet,
    )


@faces_app.command("edit")
def edit(
    inputs: Annotated[
        list[Path], typer.Argument(help="Photos, face images or folders.", show_default=False)
    ],
    concept: ConceptOpt = None,
    concepts_dir: ConceptDirOpt = Path("concepts"),
    face: FaceOpt = "all",
    align: AlignOpt = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder \\[default: <input>_edit].")
    ] = None,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = False,
    model: ModelOpt = "face-vae",
    device: DeviceOpt = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Move faces along concept vectors (--concept smile:+1).

    Photos come back whole, at their resolution and in colour: each face is found, aligned to the
    VAE's framing, edited, and the change (edited minus plain decode) is warped back and added to
    the luma inside a feathered face mask; pixels outside the mask are unchanged. A photo with no
    usable face fails with the reason per face. Face crops (--align crop) give 64x64 gray faces.

    Exit codes: 0 all done, 1 some files failed, 2 bad arguments, 3 nothing processed (all failed),
    4 weights could not be loaded, 130 interrupted.
    """
    from aepipe.cli.common import check_choice, fail, run_job
    from aepipe.errors import ExitCode

    if not concept:
        fail("give at least one --concept NAME:STRENGTH", ExitCode.BAD_ARGS)
    align = check_choice(align, ("auto", "photo", "crop"), "--align")
    choice = _face_choice(face)
    dev = _resolve_device(device)
    with cli_errors():
        # Read and checked against --model before any photo: a bad concept is exit 2 at once.
        vectors = _concepts(concept, concepts_dir, model)

    def load():
        return _photo_edit(_load_face_vae(model, dev), vectors, choice, align, quiet)

    options = _photo_options(out, "edit", overwrite, recursive)
    run_job(inputs, load, options, quiet=quiet)


# The two-photo walks' arguments (`faces interpolate`, `faces vq-interpolate`).
PhotoA = Annotated[Path, typer.Argument(help="First photo or face image.", show_default=False)]
PhotoB = Annotated[Path, typer.Argument(help="Second photo or face image.", show_default=False)]
StepsOpt = Annotated[
    int, typer.Option("--steps", min=2, max=256, help="Images on the path, ends included.")
]
OneFaceOpt = Annotated[
    str,
    typer.Option("--face", help="Which face of each photo: largest | N (index, largest first)."),
]


@faces_app.command("interpolate")
def interpolate(
    a: PhotoA,
    b: PhotoB,
    steps: StepsOpt = 8,
    method: Annotated[
        str, typer.Option("--method", help="linear | slerp | both (one row each).")
    ] = "linear",
    face: OneFaceOpt = "largest",
    align: AlignOpt = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG strip to write.")] = Path(
        "interpolation.png"
    ),
    frames: Annotated[
        Path | None, typer.Option("--frames", help="Also write each step as a PNG here.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace existing frames in --frames (default: keep)."),
    ] = False,
    model: ModelOpt = "face-vae",
    device: DeviceOpt = "cpu",
) -> None:
    """Walk the latent space from face A to face B (linear and/or great circle) as a strip.

    A and B may be ordinary photos: the chosen face of each is found and aligned to the VAE's
    framing first (as faces edit does); face crops (--align crop) are centre-cropped.
    Frames (--frames, <method>_step_NN.png) that already exist are kept, as in aepipe run's
    folder sink, unless --overwrite; frames of another walk left there are reported.
    """
    from aepipe.cli.common import check_choice

    method = check_choice(method, ("linear", "slerp", "both"), "--method")
    align = check_choice(align, ("auto", "photo", "crop"), "--align")
    choice = _face_choice(face, one=True)
    with cli_errors():
        from aepipe.core import face_strip, interpolate_faces, named_by_method, walk_methods
        from aepipe.io import check_creatable
        from aepipe.pipeline import check_walk_outputs, write_batches

        image_target(out, "--out")
        if frames is not None:
            check_creatable(frames, "--frames")
        check_walk_outputs(
            [a, b], out, frames, steps, method, overwrite=overwrite, what=("--out", "--frames")
        )
        stage = _load_face_vae(model, _resolve_device(device))
        methods = walk_methods(method)
        rows = interpolate_faces(
            stage, _read_one(a), _read_one(b), steps, methods, face=choice, align=align
        )
        _write_sheet(face_strip(rows), out)
        err(f"wrote {out}")
        if frames is not None:
            rows = named_by_method(rows, methods)
            done = write_batches(rows, frames, None, overwrite, what=("--frames", "--frames"))
            for line in done.report(frames, None, "frames", "--overwrite"):
                err(line)
            _report_leftovers(frames, "*_step_*.png", done)


@faces_app.command("traverse")
def traverse(
    dims: Annotated[
        list[int] | None,
        typer.Option("--dims", help="Latent dims to vary, repeatable (default: the 10 most used)."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=2, max=64, help="Images per row.")] = 9,
    span: Annotated[
        float, typer.Option("--span", min=0.0, max=10.0, help="Range in standard deviations.")
    ] = 2.5,
    image: Annotated[
        Path | None,
        typer.Option(
            "--image",
            help="Start from this face: a crop, or a photo's largest face (default: mean face).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")] = Path(
        "traversal.png"
    ),
    model: ModelOpt = "face-vae",
    device: DeviceOpt = "cpu",
) -> None:
    """Vary one latent dimension per row around a face and write the grid."""
    with cli_errors():
        from aepipe.core import aligned_face
        from aepipe.pipeline import check_not_an_input

        image_target(out, "--out")
        check_not_an_input(out, [image] if image else [], "--out")
        stage = _load_face_vae(model, _resolve_device(device))
        # A photo's largest face, found and aligned as interpolate does (a crop stays as it is).
        base = stage.encode(aligned_face(stage, _read_one(image)))[0] if image else None
        batch, used = stage.traverse(dims, steps=steps, span=span, base=base)
        _write_grid(batch, out, ncols=steps)
        err(f"wrote {out} (rows: dims {', '.join(map(str, used))})")


@faces_app.command("concept")
def concept_cmd(
    positive: Annotated[
        Path, typer.Option("--positive", help="Folder of faces WITH the attribute.")
    ],
    negative: Annotated[Path, typer.Option("--negative", help="Folder of faces WITHOUT it.")],
    name: Annotated[str, typer.Option("--name", help="Concept name (letters, digits, - and _).")],
    concepts_dir: ConceptDirOpt = Path("concepts"),
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace your concept of that name, or hide a shipped one (smile, ...) that "
            "--concept NAME would otherwise use.",
        ),
    ] = False,
    model: ModelOpt = "face-vae",
    device: DeviceOpt = "cpu",
) -> None:
    """Store a concept vector: mean latent of the positive faces minus that of the negative ones.

    Each image may be a face crop (at most twice the model's size: used whole, as faces edit
    uses crops) or a photo with one face, which is found and aligned to the model's framing
    as faces edit does. Photos with no usable face or with several faces, and contact sheets
    (gen-faces' grid.png), are skipped with a note each; a folder left with no face is an
    error. The file records the weights it was fitted on (model_sha256): --concept refuses it
    for other weights. A name that --concept already finds (a file in --concepts-dir, or a
    shipped concept's name or alias) is refused unless --overwrite is given.
    """
    with cli_errors():
        from aepipe.io import check_creatable
        from aepipe.pipeline import output_errors
        from aepipe.stages.face_generator import (
            check_new_concept,
            concept_target,
            default_concept_dirs,
            save_concept,
        )

        # Before the model loads and the faces are encoded: a taken name or a folder that
        # cannot be made costs no work.
        check_new_concept(name, default_concept_dirs(concepts_dir, model), overwrite)
        check_creatable(concepts_dir, "--concepts-dir")
        stage = _load_face_vae(model, _resolve_device(device))
        pos, pos_skipped = _concept_codes(stage, positive)
        neg, neg_skipped = _concept_codes(stage, negative)
        vector = pos.mean(0) - neg.mean(0)
        info = {
            "model": model,
            "model_sha256": concept_target(model).sha256,
            "positive": str(positive),
            "negative": str(negative),
            "n_positive": len(pos),
            "n_negative": len(neg),
            "n_skipped": pos_skipped + neg_skipped,
            "faces": "photos: the one face found and aligned as faces edit does; crops whole",
        }
        with output_errors("--concepts-dir", concepts_dir):
            path = save_concept(concepts_dir, name, vector, info)
        skipped = pos_skipped + neg_skipped
        err(
            f"wrote {path} (|v| = {float(vector.norm()):.3f}, {len(pos)} positive, "
            f"{len(neg)} negative" + (f"; {skipped} images skipped, see above)" if skipped else ")")
        )


def _concept_codes(stage, folder: Path):
    """Codes of the one face of each image in ``folder``, and how many images were skipped.

    Raises:
        ConfigError: ``folder`` is not a folder of images, or none of them gives a face.
    """
    import torch

    from aepipe.errors import ConfigError

    codes, skipped = [], 0
    for path in _image_files(folder):
        face, why = _concept_face(stage, path)
        if face is None:
            err(f"{path}: skipped, {why}")
            skipped += 1
        else:
            codes.append(stage.encode(face))
    if not codes:
        raise ConfigError(f"{folder}: no usable face in {skipped} image(s) (reasons above)")
    return torch.cat(codes), skipped


def _concept_face(stage, path: Path):
    """``(face, None)``: the image's one face at the model's framing; ``(None, why)`` if none.

    Crops (at most twice the model's size) are the face as they are, as faces edit takes them.
    """
    from aepipe import faces_align as fa
    from aepipe.batch import ImageBatch
    from aepipe.core import _is_face_crop

    batch = _read_one(path)
    tiles = fa.contact_sheet_tiles(batch.images[:1])
    if tiles is not None:
        return None, f"a contact sheet of {tiles[0]} x {tiles[1]} images, not one face"
    if _is_face_crop(stage, batch, "auto"):
        return batch, None
    faces = fa.find_faces(batch.images[:1], mean_face=fa.mean_face(stage))
    found = fa.select_faces(faces, "all")
    if len(found) > 1:
        return None, f"{len(found)} faces found; a concept needs one face per image (crop it)"
    if not found:
        return None, "; ".join(fa.face_report(fa.PhotoEdit(batch.images, faces, []), "all"))
    crop = fa.align_crops(batch.images[:1], found)
    return ImageBatch(crop, batch.names[:1], [dict(batch.meta[0])]), None


@faces_app.command("concepts")
def concepts_cmd(
    concepts_dir: ConceptDirOpt = Path("concepts"),
    model: ModelOpt = "face-vae",
) -> None:
    """List the concept vectors --concept can use with --model: name, contrast, aliases, length.

    Concepts fitted on other weights (face-vae's shipped ones, for --model face-ae) are not
    listed; one line says how many and why. Exit 4: --model is not a weights folder or name.
    """
    with cli_errors():
        from aepipe.stages.face_generator import (
            concept_target,
            default_concept_dirs,
            list_concepts,
        )

        concept_target(model)  # unknown weights: exit 4, as every command that loads them
        found = list_concepts(default_concept_dirs(concepts_dir, model))
        usable = [doc for doc in found if "unfit" not in doc]
        for doc in usable:
            aliases = ", ".join(doc.get("aliases", [])) or "-"
            # Shipped files name a labelled attribute; `faces concept` records its folders.
            positive = doc.get("attribute") or doc.get("positive", "?")
            typer.echo(
                f"{doc['name']:<12} {positive} vs {doc.get('negative', '?')}"
                f" | aliases: {aliases} | |v| = {doc['norm']:.2f}"
                f" | {doc.get('n_positive', '?')} / {doc.get('n_negative', '?')} faces"
            )
            typer.echo(f"{'':<12} {doc.get('method', 'difference of mean codes')}")
            typer.echo(f"{'':<12} {doc['path']}")
        unfit = [doc for doc in found if "unfit" in doc]
        if unfit:
            names = ", ".join(doc["name"] for doc in unfit)
            err(
                f"not listed: {names} (fitted on other weights or for another latent size than "
                f"--model {model}'s; aepipe faces concept --model {model} makes one for it)"
            )
        if not usable:
            err(f"no concept files for --model {model}")


@faces_app.command("fit-concepts")
def fit_concepts_cmd(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the concept files \\[default: runs/<model>/concepts]."
        ),
    ] = None,
    overwrite_shipped: OverwriteShippedOpt = False,
    attributes: Annotated[
        Path | None,
        typer.Option("--attributes", help="lfw_attributes.csv (default: beside the data)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="lfw_64.npz (default: the path in the weights' config)."),
    ] = None,
    ridge: Annotated[
        float, typer.Option("--ridge", min=0.0, help="Ridge penalty of the regression.")
    ] = 1.0,
    unit: Annotated[
        str,
        typer.Option(
            "--unit", help="What strength 1 means: coefficient | projection | discriminant."
        ),
    ] = "discriminant",
    model: ModelOpt = "face-vae",
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads.")] = 1,
) -> None:
    """Build the shipped concept vectors (smile, eyeglasses, mustache, male, senior, blond, hat).

    Only the TRAIN rows of lfw_attributes.csv are read. Direction: a joint least-squares
    regression of the train faces' codes (posterior means) on 23 labels at once, so each vector
    holds the other labels fixed (smiling does not also change gender). Male, senior and
    eyeglasses contrast two labels (Female -> Male, Youth -> Senior, No Eyewear -> Eyeglasses).
    Strength 1 (--unit discriminant, the default) = the step along that direction that moves
    the two groups' linear discriminant by as much as their difference of mean codes does.
    Reproduce the shipped files with:
    aepipe faces fit-concepts --out weights/face-vae/concepts --overwrite-shipped
    """
    import torch

    from aepipe.cli.common import check_choice
    from aepipe.train.concepts import UNITS, fit_face_concepts

    unit = check_choice(unit, tuple(UNITS), "--unit")
    with cli_errors():
        torch.set_num_threads(threads)
        target = train_out(out, f"{Path(model).name}/concepts", overwrite_shipped)
        written = fit_face_concepts(
            model, target, data, attributes, ridge, unit, command=invocation(), progress=err
        )
        err(f"wrote {len(written)} concepts to {target}")


@faces_app.command("fit-sampler")
def fit_sampler_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights folder to write.")],
    components: Annotated[
        int,
        typer.Option(
            "--components", min=1, max=256, help="Gaussians in the sampling mixture (1: one)."
        ),
    ] = 10,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Training data (default: the path in the weights' config)."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            min=0.0,
            max=3.0,
            help="Default sampling temperature stored with the weights (default: the model's).",
        ),
    ] = None,
    model: ModelOpt = "face-vae",
    overwrite_shipped: OverwriteShippedOpt = False,
) -> None:
    """Refit the latent sampling distribution of a trained VAE (network weights unchanged)."""
    with cli_errors():
        from aepipe.train.vae import refit_sampler

        # Before the data is encoded and the sampler fitted (a minute and more of work); the
        # shipped weights are replaced only when asked, as by the training commands.
        train_out(out, "face-vae", overwrite_shipped)
        refit_sampler(
            model,
            out,
            components,
            data=data,
            temperature=temperature,
            command=invocation(),
            progress=err,
        )
        err(f"wrote {out}")


# ---- aepipe vae ... ------------------------------------------------------------------------------


@vae_app.command("grid")
def vae_grid(
    model: ModelOpt = "mnist-vae-2d",
    n: Annotated[int, typer.Option("--n", min=2, max=64, help="Points per side.")] = 15,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write \\[default: <model>-grid.png].")
    ] = None,
) -> None:
    """Decode an n x n grid of 2-D latents at Gaussian quantiles (norm.ppf of an even grid)."""
    with cli_errors():
        import torch

        from aepipe.errors import ConfigError

        target = image_target(out or Path(f"{Path(model).name}-grid.png"), "--out")
        stage = _load_face_vae(model, "cpu")
        if stage.latent_dim != 2:
            raise ConfigError(
                f"{model}: the grid needs a 2-D latent; this model has {stage.latent_dim}"
            )
        # Quantiles of an even grid that avoids 0 and 1, as in Kingma & Welling (2013), fig. 4.
        q = torch.linspace(0.05, 0.95, n)
        vals = torch.distributions.Normal(0.0, 1.0).icdf(q)
        zy, zx = torch.meshgrid(vals.flip(0), vals, indexing="ij")
        z = torch.stack([zx.reshape(-1), zy.reshape(-1)], 1)
        _write_grid(stage.decode(z), target, ncols=n)
        err(f"wrote {target}")


@vae_app.command("scatter")
def vae_scatter(
    model: ModelOpt = "mnist-vae-2d",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="IDX folder (default: the data the model was trained on)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Test images to plot.")] = 10_000,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="PNG to write \\[default: <model>-scatter.png]."),
    ] = None,
) -> None:
    """Plot the 2-D posterior means of the test set, coloured by class."""
    with cli_errors():
        from aepipe.errors import ConfigError

        target = image_target(out or Path(f"{Path(model).name}-scatter.png"), "--out")
        try:
            import matplotlib
        except ModuleNotFoundError as exc:
            raise ConfigError(
                "the scatter plot needs matplotlib: pip install 'aepipe[plot]'"
            ) from exc
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch

        from aepipe.cli.common import training_data_errors
        from aepipe.data.idx import load_mnist_like
        from aepipe.io import atomic_write
        from aepipe.pipeline import output_errors
        from aepipe.weights import read_config, resolve

        stage = _load_face_vae(model, "cpu")
        if stage.latent_dim != 2:
            raise ConfigError(
                f"{model}: the scatter needs a 2-D latent; this model has {stage.latent_dim}"
            )
        folder = data or Path(
            read_config(resolve(model)).get("training", {}).get("data", "../shared/data/mnist")
        )
        with training_data_errors():  # the data's test split, missing: a one-line exit 2
            images, labels = load_mnist_like(folder, "test")
        images, labels = images[:limit], labels[:limit]
        with torch.inference_mode():
            x = torch.from_numpy(images).unsqueeze(1).float() / 255.0
            z = stage.model.encode(x).mean.numpy()
        fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
        pts = ax.scatter(
            z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7, vmin=-0.5, vmax=9.5
        )
        fig.colorbar(pts, ax=ax, ticks=range(10), label="class")
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        ax.set_title(f"{Path(model).name}: posterior means of {len(z)} test images")
        with output_errors("--out", target):
            atomic_write(target, lambda fh: fig.savefig(fh, format="png", bbox_inches="tight"))
        plt.close(fig)
        err(f"wrote {target}")


def _photo_options(out: Path | None, suffix: str, overwrite: bool, recursive: bool) -> RunOptions:
    """The runner's options of the photo commands: PNG out, one photo per batch."""
    from aepipe.runner import RunOptions

    return RunOptions(
        out_dir=out,
        out_suffix=suffix,
        fmt="png",
        overwrite=overwrite,
        recursive=recursive,
        batch_size=1,
    )
