"""The instance head: a light decoder from TinyViT's multi-scale features to per-pixel nucleus maps.

SAM's own mask decoder predicts one binary mask at 1/4 resolution; touching nuclei merge in it and
no post-processing can split them reliably. The instance head instead predicts, at the input
resolution, the three maps of :func:`nucleisam.data.instance_targets` (foreground, normalised
distance to the nucleus centre, normalised distance to the nucleus boundary), from which a seeded
watershed separates touching nuclei. This is the HoVer-Net / micro-sam AIS idea on MobileSAM's
features, kept small (about 0.85 M parameters with the default widths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nucleisam.config import DEFAULT_WIDTHS
from nucleisam.model.mobilesam import EMBED_DIM, EncoderFeatures

#: TinyViT-5M channels at strides 8 and 4.
STRIDE8_CHANNELS = 128
STRIDE4_CHANNELS = 64
#: Output channels of the instance head, in order.
INSTANCE_MAPS: tuple[str, str, str] = ("foreground", "center_distance", "boundary_distance")


class ConvNormAct(nn.Sequential):
    """3×3 convolution, GroupNorm, GELU: (B, C_in, H, W) → (B, C_out, H/stride, W/stride).

    GroupNorm rather than BatchNorm: training batches of large tiles are small (2–8) and tiled
    inference runs one tile at a time, so batch statistics would be noisy and mode-dependent.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(math.gcd(8, out_channels), out_channels),
            nn.GELU(),
        )


class FuseBlock(nn.Module):
    """Merge a coarse decoder map into a finer skip map.

    The coarse map is projected (1×1) to ``out_channels`` at its own, cheaper resolution, upsampled
    (bilinear) to the skip's size, concatenated with the skip and refined by ``depth``
    :class:`ConvNormAct` layers.

    Shapes: coarse (B, C_c, h, w), skip (B, C_s, H, W) → (B, C_out, H, W).
    """

    def __init__(
        self, coarse_channels: int, skip_channels: int, out_channels: int, *, depth: int = 2
    ) -> None:
        super().__init__()
        self.project = nn.Conv2d(coarse_channels, out_channels, 1)
        layers = [ConvNormAct(out_channels + skip_channels, out_channels)]
        layers += [ConvNormAct(out_channels, out_channels) for _ in range(depth - 1)]
        self.convs = nn.Sequential(*layers)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(
            self.project(coarse), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.convs(torch.cat([coarse, skip], dim=1))


class FullResolutionOutput(nn.Module):
    """The last, full-resolution step: half-resolution decoder map + image stem → the output maps.

    Deliberately thin (a few channels, no normalisation): at full resolution every channel costs
    H × W memory traffic, which dominates the head's run time on a CPU.

    Shapes: coarse (B, C_c, S/2, S/2), stem (B, C_s, S, S) → (B, n_maps, S, S).
    """

    def __init__(self, coarse_channels: int, stem_channels: int, n_maps: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(coarse_channels, stem_channels, 1)
        self.conv = nn.Conv2d(2 * stem_channels, stem_channels, 3, padding=1)
        self.out = nn.Conv2d(stem_channels, n_maps, 1)

    def forward(self, coarse: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(
            self.project(coarse), size=stem.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.out(F.relu(self.conv(torch.cat([coarse, stem], dim=1))))


class InstanceHead(nn.Module):
    """U-Net-style decoder over MobileSAM's encoder plus a shallow full-resolution image stem.

    Parts and why they are there:

    - ``top`` (stride 16) reads SAM's 256-channel image embedding: the semantic "is this a nucleus,
      roughly where is its centre" signal, with a receptive field spanning many nuclei.
    - ``fuse8`` and ``fuse4`` add TinyViT's stride-8 and stride-4 stage features: the embedding alone
      is one vector per 16 × 16 pixels, coarser than a small nucleus (about 15–25 px at 40×).
    - ``stem1`` (full resolution, one thin convolution) and ``stem2`` (half resolution) see the
      normalised image itself: the gaps between touching nuclei are 1–3 px wide, finer than anything
      the encoder keeps.
    - ``fuse2`` and ``output`` bring the decoder to half and then full resolution with those edges;
      ``output`` ends in a 1×1 convolution to the three maps.

    Args:
        widths: decoder channels at strides 16, 8, 4, 2, 1.

    Shapes: ``images`` (B, 3, S, S) normalised and padded, ``features`` from
    :func:`nucleisam.model.mobilesam.encode` for the same images → raw maps (B, 3, S, S): channel 0 the
    foreground logit, channels 1 and 2 the centre- and boundary-distance logits (a sigmoid maps them
    to [0, 1]).
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        w16, w8, w4, w2, w1 = (int(w) for w in widths)
        self.widths = (w16, w8, w4, w2, w1)
        self.top = ConvNormAct(EMBED_DIM, w16)
        self.fuse8 = FuseBlock(w16, STRIDE8_CHANNELS, w8)
        self.fuse4 = FuseBlock(w8, STRIDE4_CHANNELS, w4)
        self.stem1 = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1), nn.ReLU())
        self.stem2 = ConvNormAct(w1, w2, stride=2)
        self.fuse2 = FuseBlock(w4, w2, w2, depth=1)
        self.output = FullResolutionOutput(w2, w1, len(INSTANCE_MAPS))

    def forward(self, images: torch.Tensor, features: EncoderFeatures) -> torch.Tensor:
        full = self.stem1(images)  # (B, w1, S, S)
        half = self.stem2(full)  # (B, w2, S/2, S/2)
        x = self.top(features.embedding)  # (B, w16, S/16, S/16)
        x = self.fuse8(x, features.stride8)  # (B, w8, S/8, S/8)
        x = self.fuse4(x, features.stride4)  # (B, w4, S/4, S/4)
        x = self.fuse2(x, half)  # (B, w2, S/2, S/2)
        return self.output(x, full)  # (B, 3, S, S)
