"""ScanUNet: a small fully convolutional U-Net that cleans scanned document pages.

The net works at half resolution: the page is folded with ``PixelUnshuffle(2)`` (four phase
channels per 2x2 block, nothing lost), run through a U-Net of ``levels`` resolutions with
additive skips, and unfolded back with ``PixelShuffle(2)``. Folding cuts the cost per page
pixel about fourfold, which is what lets a 300-DPI A4 page run in seconds on two CPU cores,
while the phase channels keep full-resolution stroke detail. The deepest level sees a wide
context (stains, shadows and creases are large-scale), the top level the stroke edges.

The output is ``sigmoid(z)`` (the original nets) or ``clamp(0.5 + z / 4, 0, 1)``
(``output="clamp"``). With a sigmoid and an MSE loss the gradient fades exactly where the
targets sit, at pure white paper and pure black ink: the sigmoid net left DDD ink 12 grey
levels too light on average, and fine-tuning it with the clamped output took its DDD
validation RMSE from 0.0355 to 0.030 in 1,000 steps. The clamp passes the gradient straight
through in training, so a pixel on the wrong side of the range is still pulled back.

``refine=R`` adds a stroke-edge correction. Why: the folded head predicts the four pixels of a
2x2 block from shared half-resolution features plus a linear input skip, and most of the
remaining DDD error sits on stroke edges. Fitted on the DDD training pages by least squares,
without retraining the net, a correction quadratic in the output and the input at each pixel took
the 0.0294 net's DDD validation RMSE to 0.0279, one that also sees their 3x3 neighbourhoods to
0.0252, but it made synthetic pages worse (0.0674 -> 0.0849; ``benchmarks/scan_edge_probe.py``):
where to apply it has to be learnt. So the correction is ``conv1x1(relu(a + b))`` with ``R``
hidden channels, added to the folded logits before they are unfolded: ``a`` is a 3x3 conv over
the folded logits and input (each pixel sees at least its 3x3 full-resolution neighbourhood),
``b`` a 1x1 projection of the top-level features, which tell where to apply it. Working on the
folded tensors keeps it cheap (``benchmarks/scan_refine_cost.py``); the same correction at full
resolution with 16 channels took 1.57x the stage's time in an ad-hoc timing. The last layer
starts at zero, so a ``refine`` net initialised from a trained net without it computes the same
output until training moves it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _block(channels: int, convs: int) -> nn.Sequential:
    """``convs`` conv3x3 + ReLU layers at constant width."""
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ScanUNet(nn.Module):
    """Small U-Net denoiser for gray document scans, any page size.

    Args:
        in_channels: image channels (1: gray pages).
        base: width of the top level; level ``i`` has ``base * 2**i`` channels.
        levels: number of resolutions (top level included), >= 1.
        convs: conv3x3 layers per level on the way down and on the way up.
        fold: ``PixelUnshuffle`` factor applied to the input (1 = full resolution).
        input_skip: add ``gain * (2x - 1)`` to the output logits, with a learnt ``gain``
            (initially 3) and a zero-initialised head: the untrained net is a contrast stretch
            of its input rather than a constant, so training starts with useful gradients on
            the ink instead of first collapsing to an all-white page.
        output: ``"sigmoid"`` or ``"clamp"`` (see the module docstring).
        refine: hidden width of the stroke-edge correction (0: none; see the module
            docstring).

    Input and output: (N, C, H, W) in [0, 1], any H, W >= 1 (padded internally by
    replication to a multiple of ``fold * 2**(levels-1)`` and cropped back).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base: int = 16,
        levels: int = 4,
        convs: int = 2,
        fold: int = 2,
        input_skip: bool = True,
        output: str = "sigmoid",
        refine: int = 0,
    ) -> None:
        super().__init__()
        if levels < 1 or fold < 1 or convs < 1:
            raise ValueError("levels, convs and fold must be >= 1")
        if refine < 0:
            raise ValueError("refine must be >= 0")
        self.hparams = dict(
            in_channels=in_channels,
            base=base,
            levels=levels,
            convs=convs,
            fold=fold,
            input_skip=input_skip,
        )
        if output not in ("sigmoid", "clamp"):
            raise ValueError(f"output must be 'sigmoid' or 'clamp', not {output!r}")
        # Only recorded when not the default, so configs of older nets stay as they were.
        if output != "sigmoid":
            self.hparams["output"] = output
        if refine:
            self.hparams["refine"] = refine
        self.output = output
        self.fold = fold
        self.multiple = fold * 2 ** (levels - 1)
        widths = [base * 2**i for i in range(levels)]
        folded = in_channels * fold * fold
        self.stem = nn.Sequential(nn.Conv2d(folded, base, 3, padding=1), nn.ReLU(inplace=True))
        self.down_blocks = nn.ModuleList([_block(widths[0], convs - 1 or 1)])
        self.downs = nn.ModuleList()
        for i in range(1, levels):
            self.downs.append(
                nn.Sequential(
                    nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1),
                    nn.ReLU(inplace=True),
                )
            )
            self.down_blocks.append(_block(widths[i], convs))
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in range(levels - 1, 0, -1):
            self.ups.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.up_blocks.append(_block(widths[i - 1], convs))
        self.head = nn.Conv2d(base, folded, 3, padding=1)
        self.input_skip = input_skip
        if input_skip:
            self.skip_gain = nn.Parameter(torch.tensor(3.0))
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.refine = refine
        if refine:
            # Zero padding is harmless: the correction is a residual on the U-Net's output and
            # is trained on patch borders too.
            self.refine_local = nn.Conv2d(2 * folded, refine, 3, padding=1, bias=False)
            self.refine_head = nn.Conv2d(base, refine, 1)
            self.refine_out = nn.Conv2d(refine, folded, 1)
            nn.init.zeros_(self.refine_out.weight)
            nn.init.zeros_(self.refine_out.bias)
        self.unfold = nn.PixelShuffle(fold) if fold > 1 else nn.Identity()
        self.fold_in = nn.PixelUnshuffle(fold) if fold > 1 else nn.Identity()

    @staticmethod
    def is_correction(name: str) -> bool:
        """Whether the parameter or state-dict entry ``name`` belongs to the ``refine`` layers."""
        return name.startswith("refine_")

    def logits(self, x: Tensor) -> Tensor:
        """Pre-sigmoid output for (N, C, H, W) input whose H, W divide by ``self.multiple``."""
        xs = x * 2.0 - 1.0
        xf = self.fold_in(xs)
        h = self.stem(xf)
        skips = []
        h = self.down_blocks[0](h)
        for down, block in zip(self.downs, self.down_blocks[1:], strict=True):
            skips.append(h)
            h = block(down(h))
        for up, block in zip(self.ups, self.up_blocks, strict=True):
            # Additive skips: as good as concatenation here and half the cost.
            h = block(F.relu(up(h) + skips.pop(), inplace=True))
        # Still folded: the skip adds each pixel to its own phase channel, so the result is
        # the same as adding after unfolding.
        out = self.head(h)
        out = out + self.skip_gain * xf if self.input_skip else out
        if self.refine:
            a = self.refine_local(torch.cat([out, xf], dim=1))
            out = out + self.refine_out(F.relu(a + self.refine_head(h)))
        return self.unfold(out)

    def _padded_logits(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            # Replicate (not zero) padding: zeros would read as ink at the page edge.
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.logits(x)[..., :h, :w]

    def unclamped(self, x: Tensor) -> Tensor:
        """The output of a ``clamp`` net before clamping (training losses with a margin)."""
        if self.output != "clamp":
            raise ValueError("unclamped() is defined for output='clamp' nets only")
        return self._padded_logits(x) * 0.25 + 0.5

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) dirty scan in [0, 1] -> (N, C, H, W) clean page in [0, 1]."""
        if self.output == "sigmoid":
            return self._padded_logits(x).sigmoid()
        y = self.unclamped(x)
        return clamp_through(y) if self.training else y.clamp_(0.0, 1.0)


def clamp_through(y: Tensor) -> Tensor:
    """``y`` clamped to [0, 1] with the gradient of the identity (straight-through).

    A pixel on the wrong side of the range is still pulled back by the loss.
    """
    return y + (y.clamp(0.0, 1.0) - y).detach()
