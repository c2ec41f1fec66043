"""A fully convolutional, mask-aware switching denoiser for impulse (salt-and-pepper) noise.

Impulse noise replaces a fraction of the pixels and leaves the rest exactly intact, so the
useful output is a *switch*: keep a pixel when it is clean, replace it when it is corrupted.
The network therefore predicts two maps, a clean estimate ``c`` and a corruption logit ``s``,
and returns ``x + sigmoid(s) * (c - x)``. Classic salt-and-pepper only writes exact 0 or 1, so
two extra input channels flag those values; they are hints, not a hard mask, because real
images (MNIST backgrounds) hold true zeros and imgaug's ``SaltAndPepper`` also writes
near-extreme values. Dilated convolutions give a receptive field wide enough for 50% noise
without any down-sampling, so any image size works and border handling is plain zero padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Values within half an 8-bit step of 0 or 1 count as "extreme" for the flag channels.
_EXTREME_TOL = 0.5 / 255.0


class _DilatedBlock(nn.Module):
    """Residual block: x + conv_d(relu(conv_1(x))) with dilation ``d`` on the second conv."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ImpulseDenoiser(nn.Module):
    """Residual dilated CNN with a learned soft switch between input and estimate.

    Args:
        channels: feature width.
        dilations: one residual block (two 3x3 convs) per entry, the second conv of each with
            that dilation.
        flags: feed the two "pixel is exactly 0 / exactly 1" flag channels to the network.

    Input and output: float (N, 1, H, W) in [0, 1], any H, W >= 1.
    """

    def __init__(
        self,
        channels: int = 48,
        dilations: tuple[int, ...] | list[int] = (1, 2, 4, 2, 1),
        flags: bool = True,
    ) -> None:
        super().__init__()
        self.hparams = dict(channels=channels, dilations=list(dilations), flags=flags)
        in_ch = 3 if flags else 1
        self.flags = flags
        self.head = nn.Conv2d(in_ch, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[_DilatedBlock(channels, d) for d in dilations])
        self.tail = nn.Conv2d(channels, 2, 3, padding=1)

    def inputs(self, x: Tensor) -> Tensor:
        """The network input: (N, 1, H, W) -> (N, 3, H, W) with the 0/1 flags (or x as is)."""
        if not self.flags:
            return x
        lo = (x <= _EXTREME_TOL).to(x.dtype)
        hi = (x >= 1.0 - _EXTREME_TOL).to(x.dtype)
        return torch.cat([x, lo, hi], dim=1)

    def forward_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Denoise and also return the parts.

        Args:
            x: (N, 1, H, W) noisy images in [0, 1].

        Returns:
            ``(out, clean, switch)``: the output (unclamped), the clean estimate and the
            switch probability, each (N, 1, H, W).
        """
        feats = self.blocks(self.head(self.inputs(x)))
        raw = self.tail(F.relu(feats))
        clean = x + raw[:, 0:1]
        switch = torch.sigmoid(raw[:, 1:2])
        return x + switch * (clean - x), clean, switch

    def forward(self, x: Tensor) -> Tensor:
        """Denoise (N, 1, H, W) images in [0, 1]; returns (N, 1, H, W) clamped to [0, 1]."""
        return self.forward_parts(x)[0].clamp(0.0, 1.0)
