"""The two classic Keras-era convolutional denoising autoencoders, as baselines.

Both are plain encoder/decoder stacks with max-pooling and nearest up-sampling and a sigmoid
output. They pad the input to a multiple of their total pooling factor and crop the output back,
so they take any image size (the originals were tied to 28x28 or to the training page size).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


def _pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int, int]:
    """Replicate-pad the bottom/right of (N, C, H, W) so H, W divide by ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


class TutorialAE(nn.Module):
    """The tutorial denoising AE: Conv 64-32-16 with 2x2 max-pooling, mirrored with up-sampling.

    Encoder: for each width, conv3x3 + ReLU + max-pool 2; decoder: for each width reversed,
    conv3x3 + ReLU + up-sample 2; then conv3x3 to ``in_channels`` + sigmoid. (The Keras
    original used one 'valid' conv to get from 16x16 back to 14x14 for 28x28 inputs; here the
    input is padded to a multiple of 8 instead, which keeps the same layer list for any size.)

    Args:
        channels: encoder widths (decoder uses them reversed).
        in_channels: image channels.

    Input and output: (N, C, H, W) in [0, 1].
    """

    def __init__(
        self, channels: tuple[int, ...] | list[int] = (64, 32, 16), in_channels: int = 1
    ) -> None:
        super().__init__()
        self.hparams = dict(channels=list(channels), in_channels=in_channels)
        enc: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            enc += [nn.Conv2d(prev, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            prev = ch
        dec: list[nn.Module] = []
        for ch in reversed(channels):
            dec += [nn.Conv2d(prev, ch, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2)]
            prev = ch
        dec += [nn.Conv2d(prev, in_channels, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self._factor = 2 ** len(channels)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) noisy -> (N, C, H, W) denoised."""
        xp, h, w = _pad_to_multiple(x, self._factor)
        return self.decoder(self.encoder(xp))[..., :h, :w]


class ClassicDenoisingAE(nn.Module):
    """The classic document denoising AE: conv + max-pool, conv + up-sample, conv + sigmoid.

    Args:
        channels: width of both hidden conv layers.
        in_channels: image channels.

    Input and output: (N, C, H, W) in [0, 1].

    Attributes:
        multiple: the side a caller pads pages and aligns tiles to; 1, as this net pads each
            input itself (the scan stage reads it from every scan model).
    """

    multiple = 1

    def __init__(self, channels: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.hparams = dict(channels=channels, in_channels=in_channels)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(channels, in_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) noisy -> (N, C, H, W) denoised."""
        xp, h, w = _pad_to_multiple(x, 2)
        return self.decoder(self.encoder(xp))[..., :h, :w]
