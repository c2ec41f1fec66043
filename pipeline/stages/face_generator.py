"""The face-generator stage: a convolutional VAE that samples, reconstructs and edits gray faces.

Calling the stage reconstructs faces (centre-crop, resize to the model's size, gray, encode
the posterior mean, decode). The other operations are methods: :meth:`FaceGenerator.sample`,
:meth:`~FaceGenerator.encode` / :meth:`~FaceGenerator.decode`, :meth:`~FaceGenerator.interpolate`,
:meth:`~FaceGenerator.traverse` and concept vectors (:meth:`~FaceGenerator.make_concept`,
:meth:`~FaceGenerator.apply_concept`, :func:`save_concept`, :func:`load_concept`,
:func:`list_concepts`; face-vae ships named ones in ``weights/face-vae/concepts/``).

All randomness comes from a CPU ``torch.Generator`` seeded by the caller, and every latent is
drawn on the CPU before it moves to the model's device, so a seed gives the same faces on any
device and with any batch size (the same latents; float rounding in the decoder may move a
pixel by one gray level between batch sizes).

The same stage serves the MNIST / Fashion-MNIST VAEs (28x28 models); only the weights differ.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from aepipe.batch import ImageBatch, to_gray
from aepipe.errors import ConfigError, WeightsError
from aepipe.stage import Generator, StageConfig

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self

CONCEPT_SUFFIX = ".json"
MAX_CONCEPT_STRENGTH = 10.0
"""Largest ``|STRENGTH|`` of a concept edit. The shipped concepts are measured at -1 to +2
(docs/RESULTS.md) and strength 2 is already a strong edit; 10 leaves room for a user's weaker
concept vectors while refusing values that only overflow the decoder (``smile:1e308``)."""
_NOISE_BLOCK = 64


class Config(StageConfig):
    """Options of the face generator.

    Attributes:
        temperature: spread of sampled latents around the (component) mean (1 = the fitted
            distribution; below 1 trades variety for cleaner faces). Weights may set their
            own default: face-vae ships with 1.2, chosen on validation faces after seeing their
            FIDs (``benchmarks/results/faces_val.md``: 1.3 scored a little lower, a gap judged
            within noise, and the lower temperature was kept); above 1 because its distribution
            is fitted to posterior means, which spread less than the codes the decoder was
            trained on.
        sampler: ``"fitted"`` draws from the distribution fitted to the training codes (a
            Gaussian or a Gaussian mixture, as the weights say; the default, better faces),
            ``"prior"`` from the N(0, I) prior of the VAE.
        batch_size: latents decoded at once.
        sharpen: strength of an unsharp mask, ``x + sharpen * (x - blur(x))``, applied to
            sampled faces (:meth:`FaceGenerator.sample`, hence ``gen-faces``). A Gaussian
            decoder outputs the mean of the pixels given the code, which is blurred; this
            restores some edge contrast. Reconstructions, edits of given faces and
            ``decode`` stay the plain mean (the best estimate of a given face pixel by pixel:
            sharpening lowers their PSNR). 0 turns it off (the class default); weights may
            set their own default (face-vae's model card gives its value and how it was
            chosen).
        sharpen_sigma: standard deviation in pixels of the Gaussian blur of the unsharp mask
            (the scale of the detail it boosts).
    """

    temperature: float = Field(default=0.9, ge=0.0, le=3.0)
    sampler: Literal["fitted", "prior"] = "fitted"
    batch_size: int = Field(default=256, ge=1, le=8192)
    sharpen: float = Field(default=0.0, ge=0.0, le=4.0)
    sharpen_sigma: float = Field(default=1.0, ge=0.3, le=4.0)


def face_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square, resize to ``size`` and convert to gray (the face models' input).

    Args:
        images: (N, C, H, W) in [0, 1], C in {1, 3}, on any device.
        size: side S of the model's images.

    Returns:
        (N, 1, S, S) in [0, 1].
    """
    from torch.nn import functional as F

    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = to_gray(images[..., top : top + side, left : left + side])
    if side != size:
        # Antialiased resize: a plain bilinear downscale aliases hair and background.
        square = F.interpolate(
            square, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return square.clamp(0.0, 1.0)


def unsharp_mask(images: torch.Tensor, amount: float, sigma: float) -> torch.Tensor:
    """Sharpen images: ``x + amount * (x - gaussian_blur(x, sigma))``, clamped to [0, 1].

    Args:
        images: (N, C, H, W) in [0, 1], on any device.
        amount: strength (0 returns the images unchanged).
        sigma: standard deviation of the Gaussian blur in pixels.

    Returns:
        (N, C, H, W) in [0, 1], same device and dtype.
    """
    import torch
    from torch.nn import functional as F

    if amount == 0.0:
        return images
    # Separable kernel cut at 3 sigma; reflect padding, so borders are not darkened.
    radius = min(max(1, math.ceil(3.0 * sigma)), images.shape[-1] - 1, images.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    blur = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    blur = F.conv2d(blur, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    blur = F.conv2d(blur, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return (images + amount * (images - blur)).clamp(0.0, 1.0)


class FaceModel(Generator):
    """What the face generators share: gray or colour faces in, the model's square gray out."""

    input_channels: ClassVar[tuple[int, ...]] = (1, 3)
    min_size: ClassVar[int] = 4
    # Outputs are the model's size (64x64 for faces), whatever the input size.
    resizes: ClassVar[bool] = True

    @property
    def native_size(self) -> int:
        """Height = width of the images the model makes."""
        return int(self.model.size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Centre-crop, resize to the model size, gray: (N, C, H, W) -> (N, 1, S, S)."""
        return face_crop(images, self.native_size)


class FaceGenerator(FaceModel):
    """Gray face VAE as a stage (``__call__`` reconstructs; methods sample and edit)."""

    name: ClassVar[str] = "face-generator"
    Config: ClassVar[type[StageConfig]] = Config

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent space."""
        return int(self.model.latent_dim)

    # ---- image <-> model input ----------------------------------------------------------------

    def forward(self, batch: ImageBatch) -> ImageBatch:
        """Reconstruct: encode the posterior mean and decode it; outputs are S x S gray."""
        x = self.preprocess(batch.images)
        out = self.model.decode(self.model.encode(x).mean)
        return ImageBatch(out.float().clamp(0, 1), list(batch.names), [dict(m) for m in batch.meta])

    # ---- latent operations ----------------------------------------------------------------

    def encode(self, batch: ImageBatch) -> torch.Tensor:
        """Posterior means of (preprocessed) images.

        Args:
            batch: images of any size, gray or RGB.

        Returns:
            (N, latent_dim) on the CPU.
        """
        import torch

        self.check(batch)
        with torch.inference_mode():
            x = self.preprocess(batch.to(self.device).images)
            return self.model.encode(x).mean.float().cpu()

    def decode(self, z: torch.Tensor, names: Sequence[str] | None = None) -> ImageBatch:
        """Decode latents into mean images.

        Args:
            z: (N, latent_dim).
            names: optional names of the images.

        Returns:
            A batch of (N, 1, S, S) images on the CPU.
        """
        import torch

        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ConfigError(
                f"{self.name}: latents must have shape (N, {self.latent_dim}); got {tuple(z.shape)}"
            )
        with torch.inference_mode():
            out = self.model.decode(z.to(self.device, torch.float32)).float().clamp(0, 1).cpu()
        return ImageBatch(out, list(names) if names is not None else [])

    def sample_latents(
        self, n: int, seed: int = 0, temperature: float | None = None, first: int = 0
    ) -> torch.Tensor:
        """Draw latents ``first`` ... ``first + n - 1`` of ``seed``'s sequence, on the CPU.

        Returns:
            (n, latent_dim) float32 on the CPU.
        """
        import torch

        temp = self.sampling_temperature(temperature)
        if n < 0 or first < 0:
            raise ConfigError(
                f"{self.name}: number of samples and first must be >= 0; got {n}, {first}"
            )
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        mixture = self.config.sampler == "fitted" and self.model.sample_components > 1
        # Noise comes in fixed blocks of _NOISE_BLOCK faces (the last one drawn whole and cut),
        # so face i is the same whatever n and the batch size are: torch's randn fills a
        # tensor differently depending on its size. A mixture also draws, per block, the
        # uniforms that pick each face's component.
        eps_blocks, u_blocks = [], []
        for _ in range(math.ceil((first + n) / _NOISE_BLOCK)):
            eps_blocks.append(torch.randn(_NOISE_BLOCK, self.latent_dim, generator=gen))
            if mixture:
                u_blocks.append(torch.rand(_NOISE_BLOCK, generator=gen))
        end = first + n
        eps = torch.cat(eps_blocks)[first:end] if eps_blocks else torch.zeros(0, self.latent_dim)
        eps = eps * temp
        if self.config.sampler == "prior":
            return eps
        if n == 0:  # nothing to map (a mixture sampler would find no uniforms)
            return eps
        u = torch.cat(u_blocks)[first:end] if u_blocks else None
        return self.model.latents_from_noise(eps, u).float().cpu()

    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        temperature: float | None = None,
        batch_size: int | None = None,
        first: int = 0,
        concepts: Sequence[tuple[torch.Tensor, float]] = (),
    ) -> Iterator[ImageBatch]:
        """Generate ``n`` new faces, one batch at a time.

        Args:
            n: number of faces.
            seed: seeds the CPU generator; the same seed gives the same faces anywhere.
            temperature: overrides the config's temperature (``None``: the weights' default).
            batch_size: overrides the config's batch size.
            first: index of the first face in ``seed``'s sequence (a block of a larger run).
            concepts: ``(vector, strength)`` pairs added to every latent.

        Yields:
            Batches of (B, 1, S, S) faces named ``face_00000`` ..., with ``seed`` and ``index``
            in their metadata, sharpened as the config says.
        """
        z = self.sample_latents(n, seed, temperature, first)
        for vector, strength in concepts:
            z = self.apply_concept(z, vector, strength)
        size = self.sampling_batch_size(batch_size)
        width = max(5, len(str(max(first + n - 1, 0))))
        for start in range(0, n, size):
            idx = range(first + start, first + min(n, start + size))
            out = self.decode(z[start : start + len(idx)], [f"face_{i:0{width}d}" for i in idx])
            out.images = unsharp_mask(out.images, self.config.sharpen, self.config.sharpen_sigma)
            out.meta = [{"seed": seed, "index": i} for i in idx]
            yield out

    def interpolate(
        self,
        a: ImageBatch | torch.Tensor,
        b: ImageBatch | torch.Tensor,
        steps: int = 8,
        method: Literal["linear", "slerp"] = "linear",
    ) -> ImageBatch:
        """Decode a path between two faces (or two latents), endpoints included.

        Args:
            a: one image (batch of 1) or a latent of shape (latent_dim,) or (1, latent_dim).
            b: the same for the other end.
            steps: number of images on the path (>= 2).
            method: ``"linear"`` or ``"slerp"`` (great circle around the sampling mean, which
                keeps the latent norm typical of the distribution instead of shrinking it
                half way).

        Returns:
            A batch of ``steps`` images.
        """
        import torch

        if steps < 2:
            raise ConfigError(f"{self.name}: interpolation needs steps >= 2; got {steps}")
        za, zb = (self._one_latent(v) for v in (a, b))
        t = torch.linspace(0.0, 1.0, steps)[:, None]
        if method == "linear":
            z = (1 - t) * za + t * zb
        elif method == "slerp":
            z = slerp(za, zb, t, center=self.model.sample_loc.detach().float().cpu())
        else:
            raise ConfigError(f"{self.name}: method must be 'linear' or 'slerp'; got {method!r}")
        return self.decode(z, walk_names(steps))

    def traverse(
        self,
        dims: Sequence[int] | None = None,
        steps: int = 9,
        span: float = 2.5,
        base: torch.Tensor | None = None,
        top: int = 10,
    ) -> tuple[ImageBatch, list[int]]:
        """Vary one latent dimension at a time around a base code; one row per dimension.

        Args:
            dims: dimensions to vary; default: the ``top`` dimensions with the largest spread
                in the fitted sampling Gaussian (the ones the model uses most).
            steps: images per row.
            span: the row goes from -span to +span standard deviations of that dimension.
            base: (latent_dim,) code to start from; default the sampling mean.
            top: how many dimensions when ``dims`` is None.

        Returns:
            ``(batch, dims)``: ``len(dims) * steps`` images in row-major order and the dims used.
        """
        import torch

        tril = self.model.sample_scale_tril.detach().float().cpu()
        std = (tril**2).sum(1).sqrt()
        if dims is None:
            dims = torch.argsort(std, descending=True)[: min(top, self.latent_dim)].tolist()
        dims = [int(d) for d in dims]
        bad = [d for d in dims if not 0 <= d < self.latent_dim]
        if bad:
            raise ConfigError(
                f"{self.name}: latent dims must be in 0..{self.latent_dim - 1}; got {bad}"
            )
        center = (
            self.model.sample_loc.detach().float().cpu() if base is None else base.float().cpu()
        )
        offsets = torch.linspace(-span, span, steps)
        rows = []
        for d in dims:
            z = center.expand(steps, -1).clone()
            z[:, d] = center[d] + offsets * std[d]
            rows.append(z)
        names = [f"dim{d:03d}_{j:02d}" for d in dims for j in range(steps)]
        return self.decode(torch.cat(rows), names), dims

    # ---- concept vectors ------------------------------------------------------------------

    def make_concept(self, positive: ImageBatch, negative: ImageBatch) -> torch.Tensor:
        """Difference of the mean latent codes of two groups of faces; (latent_dim,)."""
        if len(positive) == 0 or len(negative) == 0:
            raise ConfigError(
                f"{self.name}: a concept needs at least one positive and one negative image"
            )
        return self.encode(positive).mean(0) - self.encode(negative).mean(0)

    def apply_concept(
        self, z: torch.Tensor, vector: torch.Tensor, strength: float = 1.0
    ) -> torch.Tensor:
        """Move latents along a concept vector: ``z + strength * vector``."""
        if vector.shape[-1] != self.latent_dim:
            raise ConfigError(
                f"{self.name}: concept has {vector.shape[-1]} dims; the model has {self.latent_dim}"
            )
        return z + float(strength) * vector.to(z)

    def edit(self, batch: ImageBatch, concepts: Sequence[tuple[torch.Tensor, float]]) -> ImageBatch:
        """Encode faces, move them along concept vectors and decode them."""
        z = self.encode(batch)
        for vector, strength in concepts:
            z = self.apply_concept(z, vector, strength)
        out = self.decode(z, batch.names)
        out.meta = [dict(m) for m in batch.meta]
        return out

    def _one_latent(self, value: ImageBatch | torch.Tensor) -> torch.Tensor:
        if isinstance(value, ImageBatch):
            if len(value) != 1:
                raise ConfigError(f"{self.name}: expected one image; got {len(value)}")
            return self.encode(value)[0]
        z = value.float().cpu().reshape(-1)
        if z.numel() != self.latent_dim:
            raise ConfigError(
                f"{self.name}: latent must have {self.latent_dim} values; got {z.numel()}"
            )
        return z

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> Self:
        """A small random 16x16 VAE (4-d latent), seeded."""
        import torch

        from aepipe.models.vae import ConvVAE

        torch.manual_seed(seed)
        model = ConvVAE(size=16, channels=[4, 8], latent_dim=4, likelihood="gaussian")
        return cls(model, config)


def slerp(
    za: torch.Tensor, zb: torch.Tensor, t: torch.Tensor, center: torch.Tensor
) -> torch.Tensor:
    """Spherical interpolation of ``za -> zb`` about ``center``.

    Args:
        za: (D,) start.
        zb: (D,) end.
        t: (T, 1) positions in [0, 1].
        center: (D,) the point the great circle goes around.

    Returns:
        (T, D); falls back to linear interpolation for (anti)parallel endpoints.
    """
    import torch

    a, b = za - center, zb - center
    na, nb = a.norm(), b.norm()
    cos = (a @ b / (na * nb).clamp_min(1e-12)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-4 or abs(float(omega) - math.pi) < 1e-4:
        return center + (1 - t) * a + t * b
    so = torch.sin(omega)
    return center + (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


# ---- concept files --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptTarget:
    """The weights concept vectors are about to be applied to: what a concept file must fit.

    Attributes:
        weights: the weights as the user named them (for messages).
        latent_dim: the generator's latent size (None: not in its config, e.g. the VQ-VAE).
        sha256: the weights' sha256 from their ``config.json``, which concept files made for
            them record as ``model_sha256``.
    """

    weights: str
    latent_dim: int | None
    sha256: str | None


class ConceptDirs(list[Path]):
    """The folders ``--concept`` searches, in order, and the weights the concepts are for.

    Every front end gets its folders from :func:`default_concept_dirs`, and every concept it
    reads goes through :func:`load_concept`; carrying the weights with the folders lets that one
    function refuse a vector of the wrong size or fitted on other weights when the file is read,
    before any photo is opened.
    """

    def __init__(self, dirs: Sequence[Path] = (), target: ConceptTarget | None = None) -> None:
        super().__init__(dirs)
        self.target = target


def concept_target(model: str | os.PathLike[str]) -> ConceptTarget:
    """What a concept must fit to be applied to ``model`` (read from its ``config.json``).

    Raises:
        WeightsError: ``model`` is not a weights folder or shipped name.
    """
    from aepipe.weights import read_config, resolve

    config = read_config(resolve(model))
    dim = config.get("model_kwargs", {}).get("latent_dim")
    return ConceptTarget(str(model), int(dim) if dim is not None else None, config.get("sha256"))


def default_concept_dirs(
    user_dir: str | os.PathLike[str] | None = None, model: str | os.PathLike[str] | None = None
) -> ConceptDirs:
    """Where concepts are looked up, in order, for the weights ``model``.

    The user folder (if given), the ``concepts/`` folder of the model's weights (if ``model``
    names a weights folder), then the shipped face-vae concepts. With a ``model`` that
    resolves, :func:`load_concept` checks each vector against it (:class:`ConceptTarget`);
    weights that do not resolve are left to the loader to report.
    """
    from aepipe.weights import resolve, shipped_weights_dir

    dirs = [Path(user_dir)] if user_dir else []
    target = None
    if model is not None:
        with contextlib.suppress(WeightsError):
            dirs.append(resolve(model) / "concepts")
            target = concept_target(model)
    shipped = shipped_weights_dir() / "face-vae" / "concepts"
    if shipped not in dirs:
        dirs.append(shipped)
    return ConceptDirs(dirs, target)


def check_concept_fits(doc: dict[str, Any], path: Path, target: ConceptTarget) -> None:
    """Refuse a concept file that cannot mean anything to the weights ``target``.

    A vector of another length cannot be added to the codes; one fitted on other weights
    (its ``model_sha256``, which ``faces concept`` and ``faces fit-concepts`` record) points
    somewhere meaningless in this model's latent space even when the length matches (face-vae's
    smile on face-ae's codes). Files that record no weights (written by hand, or by older
    versions) are checked for their length only.

    Raises:
        ConfigError: naming the file, the weights and how to make a concept for them.
    """
    n = len(doc["vector"])
    if target.latent_dim is not None and n != target.latent_dim:
        raise ConfigError(
            f"{path}: concept has {n} dims; {target.weights}'s latent has {target.latent_dim}"
        )
    fitted = doc.get("model_sha256")
    if fitted and target.sha256 and fitted != target.sha256:
        raise ConfigError(
            f"{path}: fitted on other weights ({doc.get('model', '?')}, sha256 {fitted[:12]}...), "
            f"not on {target.weights} (sha256 {target.sha256[:12]}...); make one for these "
            f"weights with aepipe faces concept --model {target.weights}"
        )


def save_concept(
    path: str | os.PathLike[str],
    name: str,
    vector: torch.Tensor,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a concept vector as a small JSON file (atomically).

    Args:
        path: a ``.json`` file, or a folder (the file is ``<folder>/<name>.json``).
        name: the concept's name (letters, digits, ``-``, ``_``).
        vector: (latent_dim,).
        info: extra fields (image counts, model).
    """
    from aepipe.io import atomic_write

    check_concept_name(name)
    target = Path(path)
    if target.suffix.lower() != CONCEPT_SUFFIX:
        target.mkdir(parents=True, exist_ok=True)
        target = target / f"{name}{CONCEPT_SUFFIX}"
    doc = {"name": name, "latent_dim": int(vector.numel()), **(info or {})}
    doc["vector"] = [round(float(v), 6) for v in vector.reshape(-1)]
    data = (json.dumps(doc, indent=1) + "\n").encode()
    return atomic_write(target, lambda fh: fh.write(data))


def check_concept_name(name: str) -> str:
    """``name`` if it is a usable concept name (letters, digits, ``-``, ``_``).

    Raises:
        ConfigError: otherwise.
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"concept name must use letters, digits, '-' or '_'; got {name!r}")
    return name


def check_new_concept(name: str, dirs: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse a new concept ``name`` that would silently replace or hide one in ``dirs``.

    ``dirs`` are the folders ``--concept`` searches, the new file's folder first
    (:func:`default_concept_dirs`): a file of that name there would be replaced, and a
    concept found later under that name or alias (a shipped one) would no longer be used.

    Raises:
        ConfigError: ``name`` is malformed, or taken and ``overwrite`` is not set.
    """
    check_concept_name(name)
    taken = None if overwrite else find_concept(name, dirs)
    if taken is None:
        return
    what = (
        "exists" if taken.parent == Path(dirs[0]) else "is already a concept; yours would hide it"
    )
    raise ConfigError(
        f"concept {name!r} {what} ({taken}); pass --overwrite to replace it, or choose another name"
    )


def _read_concept_file(path: Path) -> dict[str, Any]:
    """A concept file's fields, its vector as floats; refuses one that is not a finite vector.

    Raises:
        ConfigError: naming the file: not JSON, no ``vector``, or NaN / infinite values (JSON
            readers accept ``NaN`` and ``Infinity``; added to a code they paint the face black).
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["vector"] = [float(v) for v in doc["vector"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a concept file ({exc})") from None
    if not doc["vector"]:
        raise ConfigError(f"{path}: not a concept file (empty vector)")
    bad = sum(not math.isfinite(v) for v in doc["vector"])
    if bad:
        raise ConfigError(
            f"{path}: not a concept file ({bad} of {len(doc['vector'])} vector values are NaN "
            "or infinite)"
        )
    return doc


def list_concepts(dirs: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """The concept files in ``dirs`` (first folder wins for a repeated name), vectors left out.

    Returns:
        One dict per concept: ``name``, ``path``, ``norm`` (length of the vector) and the
        file's other fields (``attribute``, ``aliases``, ``method``, counts ...); with ``dirs``
        made for a model (:func:`default_concept_dirs`), ``unfit`` says why a concept cannot
        be applied to it (absent when it can).
    """
    target = getattr(dirs, "target", None)
    seen: dict[str, dict[str, Any]] = {}
    for folder in dirs or default_concept_dirs():
        for path in sorted(Path(folder).glob(f"*{CONCEPT_SUFFIX}")) if folder.is_dir() else []:
            doc = _read_concept_file(path)
            doc.setdefault("name", path.stem)
            if doc["name"] in seen:
                continue
            entry = {**doc, "path": str(path), "norm": math.hypot(*doc["vector"])}
            del entry["vector"]
            if target is not None:
                try:
                    check_concept_fits(doc, path, target)
                except ConfigError as exc:
                    entry["unfit"] = str(exc)
            seen[doc["name"]] = entry
    return list(seen.values())


def load_concept(
    name_or_path: str | os.PathLike[str], dirs: Sequence[Path] | None = None
) -> torch.Tensor:
    """Read a concept vector by file path, by name or by an alias in ``dirs``.

    A name is matched against the file names first, then (case-insensitively) against the
    ``aliases`` and ``attribute`` fields of the files (``smiling`` or ``Smiling`` find
    ``smile.json``).

    ``dirs`` from :func:`default_concept_dirs` with a model also check that the vector fits
    that model (:func:`check_concept_fits`).

    Raises:
        ConfigError: the concept is not found, the file is malformed or holds non-finite values,
            or it does not fit the weights ``dirs`` are for (the message names the file).
    """
    import torch

    target = getattr(dirs, "target", None)
    dirs = list(dirs or default_concept_dirs())
    path = Path(name_or_path)
    if path.suffix.lower() == CONCEPT_SUFFIX:
        found = path if path.is_file() else None
    else:
        found = find_concept(str(name_or_path), dirs)
    if found is None:
        where = ", ".join(str(d) for d in dirs)
        known = sorted(
            {f.stem for d in map(Path, dirs) if d.is_dir() for f in d.glob(f"*{CONCEPT_SUFFIX}")}
        )
        names = f"known: {', '.join(known)}; " if known else ""
        raise ConfigError(f"concept {str(name_or_path)!r} not found ({names}looked in {where})")
    doc = _read_concept_file(found)
    if target is not None:
        check_concept_fits(doc, found, target)
    return torch.tensor(doc["vector"], dtype=torch.float32)


def find_concept(name: str, dirs: Sequence[Path]) -> Path | None:
    """The concept file ``--concept NAME`` reads, or ``None``.

    ``<dir>/NAME.json`` in the first of ``dirs`` that has it, else the first concept whose
    ``aliases`` or ``attribute`` is ``name`` in any case (``smiling`` finds ``smile.json``).
    """
    files = (d / f"{name}{CONCEPT_SUFFIX}" for d in dirs)
    found = next((f for f in files if f.is_file()), None)
    if found is not None:
        return found
    key = name.lower()
    for doc in list_concepts(dirs):
        names = [doc.get("name", ""), doc.get("attribute") or "", *doc.get("aliases", [])]
        if key in (str(n).lower() for n in names):
            return Path(doc["path"])
    return None


def parse_concept_arg(text: str) -> tuple[str, float]:
    """Parse ``NAME:STRENGTH`` (``smile:1.5``, ``smile:+1``, ``smile`` = strength 1).

    Every front end's concept strings come through here (``--concept``, TOML ``concepts``,
    HTTP ``concept=``), so one range holds: ``|STRENGTH| <= MAX_CONCEPT_STRENGTH``.

    Raises:
        ConfigError: STRENGTH is not a number or is out of range.
    """
    name, sep, value = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        strength = float(value)
    except ValueError:
        strength = math.nan
    # nan, inf or a huge number would overflow the decoder and paint the face black.
    if not abs(strength) <= MAX_CONCEPT_STRENGTH:
        raise ConfigError(
            f"concept NAME:STRENGTH needs a number from -{MAX_CONCEPT_STRENGTH:g} to "
            f"{MAX_CONCEPT_STRENGTH:g} (e.g. smile:1.5); got {text!r}"
        )
    return name, strength


def walk_names(steps: int) -> list[str]:
    """``step_00`` ... for a walk's frames, padded to the count's width.

    They sort in walk order past 100 steps; every generator's ``interpolate`` names them so.
    """
    width = max(2, len(str(steps - 1)))
    return [f"step_{i:0{width}d}" for i in range(steps)]
