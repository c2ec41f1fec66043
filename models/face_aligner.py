"""A small CNN that aligns a candidate face crop to the face VAE's framing and scores it.

Given a gray crop of a photo taken in a *candidate* frame (for example a detector box mapped to
the LFW framing), the network predicts the similarity transform from that frame to the true LFW
framing of the face in it (shift, log scale, roll) and a face / not-face logit. Applied twice
(crop again in the corrected frame, predict the remaining error) it lands close to the framing
the VAE was trained on.

Frames are 64x64 "template" coordinates: pixel (j, i) has its centre at (x, y) = (j, i). The
network sees the candidate frame enlarged by ``view`` about the centre, so a face a few pixels
off is still whole in its input.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

TEMPLATE = 64
CENTRE = (TEMPLATE - 1) / 2
SHIFT_UNIT = 8.0
"""Output units: shift in 8 template px, log scale in 0.2, roll in 0.2 rad (outputs near +-1)."""
SCALE_UNIT = 0.2
ROLL_UNIT = 0.2


def similarity(params: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) transforms ``q -> e^s R(r) (q - c) + c + t`` from (N, 4) ``(tx, ty, s, r)``.

    ``c`` is the template centre; shift in template px, ``s`` natural log of the scale, ``r``
    radians.
    """
    tx, ty, s, r = params.unbind(-1)
    k = s.exp()
    a, b = k * r.cos(), k * r.sin()
    rows = [
        torch.stack([a, -b, CENTRE + tx - a * CENTRE + b * CENTRE], -1),
        torch.stack([b, a, CENTRE + ty - b * CENTRE - a * CENTRE], -1),
    ]
    return torch.stack(rows, -2)


def params_of(mats: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`similarity` for (N, 2, 3) similarity transforms: (N, 4)."""
    a, b = mats[:, 0, 0], mats[:, 1, 0]
    k = torch.sqrt(a * a + b * b)
    r = torch.atan2(b, a)
    tx = mats[:, 0, 2] - CENTRE + a * CENTRE - b * CENTRE
    ty = mats[:, 1, 2] - CENTRE + b * CENTRE + a * CENTRE
    return torch.stack([tx, ty, k.log(), r], -1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FaceAligner(nn.Module):
    """Crop (N, 1, 64, 64) in a candidate frame -> transform to the true frame and face logit.

    Args:
        width: channels of the first block (doubled at each of the four blocks).
        hidden: units of the fully connected layer.
        view: how much larger than the 64x64 template the input crop's field of view is.
    """

    def __init__(self, width: int = 16, hidden: int = 128, view: float = 1.25) -> None:
        super().__init__()
        self.hparams = dict(width=width, hidden=hidden, view=view)
        self.view = view
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*[_block(a, b) for a, b in pairwise(chans)])
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(chans[-1] * (TEMPLATE // 16) ** 2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 5),
        )

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 1, 64, 64) gray in [0, 1] -> (N, 5): 4 transform outputs in units, face logit.

        Each crop is standardised first (brightness and contrast of a photo carry no pose).
        """
        flat = crops.flatten(1)
        x = (crops - flat.mean(1)[:, None, None, None]) / (flat.std(1)[:, None, None, None] + 0.02)
        return self.head(self.features(x))

    @staticmethod
    def to_params(out: torch.Tensor) -> torch.Tensor:
        """Network outputs -> (N, 4) ``(tx, ty, s, r)`` for :func:`similarity`."""
        units = out.new_tensor([SHIFT_UNIT, SHIFT_UNIT, SCALE_UNIT, ROLL_UNIT])
        return out[:, :4] * units

    @staticmethod
    def to_units(params: torch.Tensor) -> torch.Tensor:
        """(N, 4) ``(tx, ty, s, r)`` -> the network's output units (the regression targets)."""
        units = params.new_tensor([SHIFT_UNIT, SHIFT_UNIT, SCALE_UNIT, ROLL_UNIT])
        return params / units


def corner_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """(N,) mean distance (template px) between the template corners mapped by two transforms."""
    pts = torch.tensor([[0.0, 0.0, 1.0], [63.0, 0.0, 1.0], [0.0, 63.0, 1.0], [63.0, 63.0, 1.0]])
    a = pred @ pts.T
    b = true @ pts.T
    return (a - b).norm(dim=1).mean(1)


DEGREE = math.pi / 180
