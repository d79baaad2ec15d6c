"""MobileSAM on kornia: building it for an input size, running its encoder for multi-scale features,
and SAM's resize-longest-side / pad / unpad geometry.

MobileSAM is TinyViT-5M (with MobileSAM's stride-1 last stage and a 256-channel neck) + SAM's prompt
encoder + SAM's mask decoder. kornia's modules reproduce the original exactly and their
``state_dict`` has the 439 keys of the official ``mobile_sam.pt``.

Input size. TinyViT is built for one square ``input_size`` (a multiple of 16): its attention stages
expect that token grid. Nothing that is stored in the checkpoint depends on the size (attention
biases depend on the window sizes 7/7/14/7, which stay fixed, and windows are zero-padded when the
grid is not a multiple of them), so the same weights load for 1024 (SAM's convention, a 512 tile is
upsampled ×2) and for 512 (a NuInsSeg tile at its native resolution, ¼ of the compute). The prompt
encoder is built for the matching embedding grid (``input_size / 16``), so the mask decoder's dense
positional encoding covers the image whatever the size. The mask decoder returns logits at
``input_size / 4``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from kornia.models.sam import Sam
from kornia.models.sam.architecture.mask_decoder import MaskDecoder
from kornia.models.sam.architecture.prompt_encoder import PromptEncoder
from kornia.models.sam.architecture.transformer import TwoWayTransformer
from kornia.models.tiny_vit import TinyViT

from nucleisam.config import ENCODER_STRIDE, check_input_size

#: Per-channel mean and standard deviation of SAM's preprocessing, on the 0–255 scale (RGB order),
#: from segment-anything's ``Sam.pixel_mean`` / ``Sam.pixel_std``.
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
#: SAM's prompt/mask embedding width.
EMBED_DIM = 256


def build_mobilesam(input_size: int = 1024) -> Sam:
    """Randomly initialised MobileSAM whose encoder is built for ``input_size`` × ``input_size`` images.

    The architecture is kornia's ``mobile_sam`` configuration with the image size made a parameter.
    The returned module holds ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``; never call its
    ``forward`` (it runs under ``torch.no_grad``).
    """
    check_input_size(input_size)
    grid = input_size // ENCODER_STRIDE
    return Sam(
        image_encoder=TinyViT.from_config("5m", img_size=input_size, mobile_sam=True),
        prompt_encoder=PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(input_size, input_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )


class EncoderFeatures(NamedTuple):
    """TinyViT features of a batch of ``S × S`` inputs.

    Attributes:
        stride4: (B, 64, S/4, S/4), the convolutional stage's output (before its patch merging):
            fine texture and edges.
        stride8: (B, 128, S/8, S/8), the first attention stage's output (before its patch merging).
        embedding: (B, 256, S/16, S/16), the neck output SAM's mask decoder reads.
    """

    stride4: torch.Tensor
    stride8: torch.Tensor
    embedding: torch.Tensor


def encode(image_encoder: TinyViT, images: torch.Tensor) -> EncoderFeatures:
    """Run MobileSAM's TinyViT stage by stage and keep the intermediate feature maps.

    Same computation as ``image_encoder(images)`` (whose result is ``.embedding``), with gradients.

    Args:
        image_encoder: a TinyViT built with ``mobile_sam=True`` for ``S = image_encoder.img_size``.
        images: (B, 3, S, S), normalised and padded.
    """
    stage0, stage1, stage2, stage3 = image_encoder.layers
    x = image_encoder.patch_embed(images)  # (B, 64, S/4, S/4) feature map
    for block in stage0.blocks:
        x = block(x)
    stride4 = x
    x = stage0.downsample(x)  # tokens (B, (S/8)², 128)
    for block in stage1.blocks:
        x = block(x)
    height, width = stage1.blocks[0].input_resolution
    stride8 = x.transpose(1, 2).unflatten(2, (height, width))
    x = stage1.downsample(x)  # tokens (B, (S/16)², 160)
    x = stage3(stage2(x))  # tokens (B, (S/16)², 320); the last two stages keep stride 16
    grid = image_encoder.feat_size
    x = x.unflatten(1, (grid, grid)).permute(0, 3, 1, 2)
    return EncoderFeatures(stride4=stride4, stride8=stride8, embedding=image_encoder.neck(x))


def resized_shape(height: int, width: int, input_size: int) -> tuple[int, int]:
    """Size after scaling the longest side to ``input_size`` (SAM's rounding: half up)."""
    scale = input_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_and_pad(images: torch.Tensor, input_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize so the longest side is ``input_size``, then zero-pad bottom and right to a square.

    Args:
        images: (B, C, H, W), already normalised (so zero padding is the mean colour, as in SAM).
    Returns:
        (B, C, input_size, input_size) and the resized (h, w) before padding.
    """
    height, width = images.shape[-2:]
    new_h, new_w = resized_shape(height, width, input_size)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(
            images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    padded = F.pad(images, (0, input_size - new_w, 0, input_size - new_h))
    return padded, (new_h, new_w)


def unpad_to_native(
    maps: torch.Tensor, *, input_size: int, resized_hw: tuple[int, int], native_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`resize_and_pad` for predicted maps (SAM's mask post-processing).

    Args:
        maps: (B, C, h, w) covering the whole padded square at any resolution (e.g. 256 × 256 logits).
    Returns:
        (B, C, H, W) at ``native_hw``: upsampled to the padded input, padding cropped, resized to native.
    """
    if tuple(maps.shape[-2:]) != (input_size, input_size):
        maps = F.interpolate(maps, size=(input_size, input_size), mode="bilinear", align_corners=False)
    maps = maps[..., : resized_hw[0], : resized_hw[1]]
    if tuple(resized_hw) != tuple(native_hw):
        maps = F.interpolate(maps, size=native_hw, mode="bilinear", align_corners=False)
    return maps


def prompt_free_mask_logits(
    prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, embedding: torch.Tensor
) -> torch.Tensor:
    """SAM's mask decoder with no prompt at all, batched over images: one mask per image.

    kornia's ``MaskDecoder.predict_masks`` repeats the image embedding once per prompt of a single
    image; here every image has exactly one (empty) prompt, so embeddings and tokens are paired along
    the batch instead and no embedding is copied. The result equals calling the decoder image by
    image with ``multimask_output=False`` (the first mask token; the IoU head is skipped).

    Args:
        embedding: (B, 256, s, s) image embeddings, ``s = input_size / 16``.
    Returns:
        Mask logits (B, 1, 4s, 4s).
    """
    batch = embedding.shape[0]
    # No points or boxes: the only tokens are the IoU token and the mask tokens; no mask input: the
    # dense prompt is the learned "no mask" embedding at every position.
    tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    tokens = tokens.unsqueeze(0).expand(batch, -1, -1)
    src = embedding + prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    image_pe = prompt_encoder.get_dense_pe().to(embedding.dtype)  # (1, 256, s, s), broadcast over the batch
    hidden, src = mask_decoder.transformer(src, image_pe, tokens)
    first_mask_token = hidden[:, 1, :]  # token 0 is the IoU token
    b, c, h, w = embedding.shape
    upscaled = mask_decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # (B, 32, 4s, 4s)
    weights = mask_decoder.output_hypernetworks_mlps[0](first_mask_token)  # (B, 32)
    b, c, h, w = upscaled.shape
    return (weights.unsqueeze(1) @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)


def normalize_for_sam(images: torch.Tensor) -> torch.Tensor:
    """Normalise images the way SAM was trained.

    Args:
        images: float tensor (B, 3, H, W) or (3, H, W) on the 0–255 scale, RGB.
    Returns:
        Tensor of the same shape, ``(x - mean) / std`` per channel.
    """
    shape = (3, 1, 1)
    mean = torch.tensor(SAM_PIXEL_MEAN, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(SAM_PIXEL_STD, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean) / std
