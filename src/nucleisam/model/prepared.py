"""An inference copy of a model: the same maps (within float rounding), less work per tile.

Training needs the model as it is: LoRA unmerged (the adapters are what is trained), BatchNorm
as separate layers, kornia's attention recomputing its bias every call. For inference none of
that is needed, so :func:`prepare_for_inference` returns a copy in which

- every LoRA layer is a plain ``nn.Linear`` whose weight already holds ``W + scale · B A`` (one
  matrix product per layer instead of three, and no extra pass over the activations);
- every frozen ``Conv2d + BatchNorm2d`` pair of TinyViT is one convolution with the BatchNorm
  folded into its weight and bias (27 passes over feature maps fewer);
- every TinyViT window attention gathers its relative-position bias once, at preparation time,
  and runs as one fused ``scaled_dot_product_attention`` (the bias is the additive mask) instead
  of separate matmul, scale, add, softmax and matmul passes;
- every TinyViT block cuts its windows with the batch left free (``-1``), where kornia computes
  the batch from the window count: a traced or exported copy then runs any batch size.

The original model is not touched, so a training loop can keep training it between validations.
Measured in ``benchmarks/predict.py`` (the maps agree within 1e-4 of the unprepared model).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from kornia.models.tiny_vit import Attention, ConvBN, TinyViTBlock
from torch import nn

from nucleisam.model.lora import LoRALinear


class WindowAttention(nn.Module):
    """TinyViT's window attention with its bias gathered once and a fused attention kernel.

    Same computation as ``kornia.models.tiny_vit.Attention`` in eval mode: LayerNorm, qkv, per
    head ``softmax(q kᵀ · scale + bias) v``, output projection.

    Shapes: (B·windows, N, C) tokens of ``N = window²`` → (B·windows, N, C).
    """

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.norm = attention.norm
        self.qkv = attention.qkv
        self.proj = attention.proj
        self.num_heads = attention.num_heads
        self.key_dim = attention.key_dim
        self.value_dim = attention.d
        self.scale = float(attention.scale)
        with torch.no_grad():
            bias = attention.attention_biases[:, attention.attention_bias_idxs]
        self.register_buffer("bias", bias.detach().clone())  # (heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=3)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.value_dim))


class WindowBlock(nn.Module):
    """A TinyViT block (window attention, depthwise 3×3 convolution, MLP, with residuals), the
    same computation as ``kornia.models.tiny_vit.TinyViTBlock`` in eval mode.

    Shapes: tokens (B, H·W, C) of the block's (H, W) grid → (B, H·W, C).
    """

    def __init__(self, block: TinyViTBlock) -> None:
        super().__init__()
        self.attn = block.attn
        self.local_conv = block.local_conv
        self.mlp = block.mlp
        self.input_resolution = block.input_resolution  # (H, W), read by the encoder too
        self.window = block.window_size
        self.channels = block.attn.norm.normalized_shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), size, channels = self.input_resolution, self.window, self.channels
        padded_h, padded_w = h + (-h) % size, w + (-w) % size
        # Zero-pad the grid to whole windows, as kornia does: padding tokens take part in attention.
        grid = F.pad(x.view(-1, h, w, channels), (0, 0, 0, padded_w - w, 0, padded_h - h))
        rows, cols = padded_h // size, padded_w // size
        windows = grid.view(-1, rows, size, cols, size, channels).permute(0, 1, 3, 2, 4, 5)
        attended = self.attn(windows.reshape(-1, size * size, channels))
        attended = attended.view(-1, rows, cols, size, size, channels).permute(0, 1, 3, 2, 4, 5)
        attended = attended.reshape(-1, padded_h, padded_w, channels)[:, :h, :w]
        x = x + attended.reshape(-1, h * w, channels)
        x = self.local_conv(x.transpose(1, 2).reshape(-1, channels, h, w)).flatten(2).transpose(1, 2)
        return x + self.mlp(x)


def merged_linear(layer: LoRALinear) -> nn.Linear:
    """A plain ``nn.Linear`` computing what ``layer`` computes in eval mode (LoRA folded in)."""
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    linear.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        weight = layer.weight if layer.merged else layer.weight + layer.delta_weight()
        linear.weight.copy_(weight)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


def folded_conv(block: ConvBN) -> nn.Sequential:
    """``block`` (convolution, eval-mode BatchNorm, activation) as one biased convolution + activation."""
    conv, norm = block.c, block.bn
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        groups=conv.groups, bias=True,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        assert norm.running_var is not None and norm.running_mean is not None
        factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        folded.weight.copy_(conv.weight * factor.view(-1, 1, 1, 1))
        folded.bias.copy_(norm.bias - norm.running_mean * factor)
    return nn.Sequential(folded, block.act)


def _replacement(module: nn.Module) -> nn.Module | None:
    if isinstance(module, LoRALinear):
        return merged_linear(module)
    if isinstance(module, TinyViTBlock):
        return WindowBlock(module)
    if isinstance(module, Attention):
        return WindowAttention(module)
    if isinstance(module, ConvBN) and module.bn.track_running_stats:
        return folded_conv(module)
    return None


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference only (eval mode, no gradients), with LoRA merged,
    BatchNorm folded and TinyViT attention fused (see the module docstring).

    Modules the rewrite does not know are copied as they are, so any module obeying the
    NucleiSam contract works; ``model`` itself is left unchanged.
    """
    prepared = copy.deepcopy(model).eval().requires_grad_(False)
    # Outermost first: a replaced block's attention, and an attention's LoRA layers, are replaced
    # when the replacement's own children are visited.
    pending = [prepared]
    while pending:
        parent = pending.pop()
        for name, child in list(parent.named_children()):
            replacement = _replacement(child)
            if replacement is not None:
                child = replacement.eval().requires_grad_(False)
                setattr(parent, name, child)
            pending.append(child)
    return prepared
