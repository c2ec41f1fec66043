"""The face-vqvae stage: a VQ-VAE that reconstructs gray faces and samples new ones from its prior.

Calling the stage reconstructs faces (centre-crop, resize to the model's size, gray, encode,
snap to the codebook, decode). :meth:`FaceVQVAE.sample` draws code grids from the causal
transformer prior (temperature, top-k, top-p) and decodes them; :meth:`~FaceVQVAE.interpolate`
mixes two faces in the continuous encoder space before quantisation; :meth:`~FaceVQVAE.codebook`
shows what each code looks like.

All randomness comes from a CPU ``torch.Generator`` seeded by the caller: the uniforms that pick
every code are drawn on the CPU in fixed blocks of faces before anything runs, so a seed gives
the same faces whatever the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError
from aepipe.stage import StageConfig, StagePrecision, precision_autocast, resolved_precision
from aepipe.stages.face_generator import FaceModel

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self

_NOISE_BLOCK = 64


class Config(StageConfig):
    """Options of the VQ-VAE face generator.

    Attributes:
        temperature: the prior's logits are divided by it (0: always the most likely code;
            below 1: cleaner, less varied faces).
        lead_codes: the first this many codes (raster order: the top rows, which settle a
            face's brightness and background) are drawn at ``lead_temperature`` instead. A
            low temperature throughout amplifies whatever the first codes chose, so faces
            come out too dark or too light far more often than real ones; drawing the first
            row at full temperature keeps that spread real and lets the rest be drawn cleaner.
            0: one temperature for every code.
        lead_temperature: temperature of the first ``lead_codes`` codes.
        top_k: sample only among the k most likely codes at each position (0: all).
        top_p: sample only among the most likely codes holding this much probability (1: all).
        batch_size: faces sampled or reconstructed at once.
        precision: arithmetic of the decoder and of the prior's attention over the codes
            drawn so far. "auto" is "bfloat16" on CPUs that run it natively
            (:func:`~aepipe.stage.fast_bfloat16`), "float32" elsewhere. In bfloat16 the
            decoder runs about 2.8x faster and the attention reads half the bytes (the prior
            trained under bfloat16 autocast; sampling times of both precisions are in
            docs/RESULTS.md); the prior's other layers and the encoder stay float32. Which
            faces a seed gives depends on it: "float32" gives the faces of CPUs without
            bfloat16 units, the same at any batch size; in bfloat16 the batch size can change
            a face's codes (measured: seed 3, 5 faces, batch size 2 against 5: four differ).
    """

    temperature: float = Field(default=1.0, ge=0.0, le=3.0)
    lead_codes: int = Field(default=0, ge=0, le=65536)
    lead_temperature: float = Field(default=1.0, ge=0.0, le=3.0)
    top_k: int = Field(default=0, ge=0, le=65536)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    batch_size: int = Field(default=64, ge=1, le=8192)
    precision: StagePrecision = "auto"


class FaceVQVAE(FaceModel):
    """Gray face VQ-VAE + autoregressive prior as a stage (``__call__`` reconstructs)."""

    name: ClassVar[str] = "face-vqvae"
    Config: ClassVar[type[StageConfig]] = Config

    def forward(self, batch: ImageBatch) -> ImageBatch:
        """Reconstruct: encode, quantise, decode; outputs are S x S gray."""
        codes = self.model.codes(self.preprocess(batch.images))
        with self._decoder_precision():
            out = self.model.decode_codes(codes)
        return ImageBatch(out.float(), list(batch.names), [dict(m) for m in batch.meta])

    def codes(self, batch: ImageBatch) -> torch.Tensor:
        """(N, G, G) code indices of (preprocessed) images, on the CPU."""
        import torch

        self.check(batch)
        with torch.inference_mode():
            return self.model.codes(self.preprocess(batch.to(self.device).images)).cpu()

    def uniforms(self, n: int, seed: int, first: int = 0) -> torch.Tensor:
        """The (n, tokens) uniforms that pick every code of faces ``first`` ..., on the CPU.

        They are drawn in fixed blocks of faces, so face i gets the same numbers whatever ``n``.
        """
        import torch

        if n < 0 or first < 0:
            raise ConfigError(
                f"{self.name}: number of samples and first must be >= 0; got {n}, {first}"
            )
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        tokens = self.model.prior.tokens
        blocks = [
            torch.rand(_NOISE_BLOCK, tokens, generator=gen)
            for _ in range(math.ceil((first + n) / _NOISE_BLOCK))
        ]
        return torch.cat(blocks)[first : first + n] if blocks else torch.zeros(0, tokens)

    def sample_codes(
        self,
        n: int,
        seed: int = 0,
        temperature: float | None = None,
        batch_size: int | None = None,
        first: int = 0,
    ) -> Iterator[torch.Tensor]:
        """Yield (B, G, G) code grids from the prior, ``batch_size`` at a time, on the CPU."""
        import torch

        cfg: Config = self.config  # type: ignore[assignment]
        temp = self.sampling_temperature(temperature)
        u = self.uniforms(n, seed, first)
        tokens = self.model.prior.tokens
        lead = min(cfg.lead_codes, tokens)
        temps = [cfg.lead_temperature] * lead + [temp] * (tokens - lead)
        size = self.sampling_batch_size(batch_size)
        g = self.model.grid
        dtype = getattr(torch, resolved_precision(cfg.precision, self.device))
        for start in range(0, n, size):
            with torch.inference_mode():
                codes = self.model.prior.sample(
                    u[start : start + size].to(self.device),
                    temps,
                    cfg.top_k,
                    cfg.top_p,
                    attention_dtype=dtype,
                )
            yield codes.view(-1, g, g).cpu()

    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        temperature: float | None = None,
        batch_size: int | None = None,
        first: int = 0,
        **options: Any,
    ) -> Iterator[ImageBatch]:
        """Generate ``n`` new faces, one batch at a time.

        Args:
            n: number of faces.
            seed: seeds the CPU generator; the same seed gives the same faces for any batch size.
            temperature: overrides the config's (``None``: the weights' default).
            batch_size: overrides the config's batch size.
            first: index of the first face in ``seed``'s sequence (a block of a larger run).
            **options: none are understood; given ones are an error.

        Yields:
            Batches of (B, 1, S, S) faces named ``face_00000`` ..., with ``seed`` and ``index``
            in their metadata.
        """
        if options:
            raise ConfigError(f"{self.name}: unknown sampling options {sorted(options)}")
        width = max(5, len(str(max(first + n - 1, 0))))
        start = first
        for codes in self.sample_codes(n, seed, temperature, batch_size, first):
            idx = range(start, start + len(codes))
            images = self.decode_codes(codes)
            names = [f"face_{i:0{width}d}" for i in idx]
            yield ImageBatch(images, names, [{"seed": seed, "index": i} for i in idx])
            start += len(codes)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, G, G) indices -> (N, 1, S, S) images in [0, 1] on the CPU."""
        import torch

        with torch.inference_mode(), self._decoder_precision():
            return self.model.decode_codes(codes.to(self.device)).cpu()

    def _decoder_precision(self) -> torch.autocast:
        """The context the decoder runs in (see ``Config.precision``)."""
        return precision_autocast(self.config.precision, self.device)  # type: ignore[attr-defined]

    def interpolate(self, a: ImageBatch, b: ImageBatch, steps: int = 8) -> ImageBatch:
        """Faces along the straight line between two faces in the continuous encoder space.

        Each point (taken before quantisation) is snapped to the codebook and decoded.

        Args:
            a: one image (batch of 1).
            b: another.
            steps: images on the path (>= 2), endpoints included.
        """
        import torch

        if steps < 2:
            raise ConfigError(f"{self.name}: interpolation needs steps >= 2; got {steps}")
        if len(a) != 1 or len(b) != 1:
            raise ConfigError(f"{self.name}: interpolate takes one image at each end")
        for end in (a, b):
            self.check(end)
        with torch.inference_mode():
            # Each end on its own: they may differ in size and channels.
            za, zb = (
                self.model.encode(self.preprocess(e.images.to(self.device)))[0] for e in (a, b)
            )
            t = torch.linspace(0.0, 1.0, steps, device=self.device)[:, None, None, None]
            z_q, _codes, _ = self.model.quantizer((1 - t) * za + t * zb)
            with self._decoder_precision():
                out = self.model.decode(z_q).clamp(0, 1).cpu()
        from aepipe.stages.face_generator import walk_names

        return ImageBatch(out, walk_names(steps))

    def codebook(self, first: int = 0, count: int = 64) -> ImageBatch:
        """What each code looks like: the decoded image of a grid filled with that one code.

        Args:
            first: first code index shown.
            count: how many codes.
        """
        import torch

        k = self.model.num_codes
        if not 0 <= first < k or count < 1:
            raise ConfigError(f"{self.name}: codes are 0..{k - 1}; got first={first}")
        ids = torch.arange(first, min(k, first + count))
        g = self.model.grid
        images = self.decode_codes(ids[:, None, None].expand(-1, g, g))
        return ImageBatch(images, [f"code_{int(i):04d}" for i in ids])

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> Self:
        """A small random 16x16 VQ-VAE (4x4 codes, 16 entries, tiny prior), seeded."""
        import torch

        from aepipe.models.vqvae import VQVAE

        torch.manual_seed(seed)
        model = VQVAE(
            size=16,
            channels=[8, 8],
            res_blocks=1,
            num_codes=16,
            code_dim=4,
            prior_dim=16,
            prior_layers=1,
            prior_heads=2,
        )
        return cls(model, {"batch_size": 4, **config})
