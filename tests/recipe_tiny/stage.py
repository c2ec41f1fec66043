"""Stage file (recipe step 2): the config and the stage class, a :class:`Generator` here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field

from aepipe.batch import ImageBatch
from aepipe.stage import Generator, StageConfig


class Config(StageConfig):
    """Options of the tiny generator.

    Attributes:
        temperature: spread of the sampled codes (the weights store their own default).
        batch_size: images decoded at once.
    """

    temperature: float = Field(default=1.0, ge=0.0, le=3.0)
    batch_size: int = Field(default=3, ge=1, le=1024)


class TinyGenerator(Generator):
    """Samples small gray images; calling it reproduces its input (no encoder)."""

    name: ClassVar[str] = "tiny-generator"
    Config: ClassVar[type[StageConfig]] = Config
    input_channels: ClassVar[tuple[int, ...]] = (1,)

    def forward(self, batch: ImageBatch) -> ImageBatch:
        """Return the batch as it is (this generator has no encoder)."""
        return batch.replace(batch.images.clone())

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
        """``n`` images named ``face_00000`` ..., the same for a seed whatever the batch size."""
        import torch

        temp = self.config.temperature if temperature is None else float(temperature)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(max(first + n, 1), self.model.latent_dim, generator=gen)
        z = z[first : first + n] * temp
        size = batch_size or self.config.batch_size
        for start in range(0, n, size):
            idx = range(first + start, first + min(n, start + size))
            with torch.inference_mode():
                images = self.model(z[start : start + len(idx)].to(self.device)).float().cpu()
            names = [f"face_{i:05d}" for i in idx]
            yield ImageBatch(images, names, [{"seed": seed, "index": i} for i in idx])

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> TinyGenerator:
        """A random 8x8 generator, seeded."""
        import torch

        from recipe_tiny.model import TinyDecoder

        torch.manual_seed(seed)
        return cls(TinyDecoder(), config)
