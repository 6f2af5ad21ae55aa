"""Chinese-CLIP image towers: CLIP's modified ResNet (the RN50 model) and the plain ViT (the ViT-B/L/H models).

Module and parameter names follow Chinese-CLIP's ``cn_clip/clip/model.py`` so that its checkpoints load key for key
under the ``visual.`` prefix:

- ModifiedResNet: ``conv1..3``/``bn1..3`` stem, ``layer1..4`` of ``Bottleneck`` blocks (``downsample.0`` conv,
  ``downsample.1`` BN), ``attnpool.{positional_embedding, q_proj, k_proj, v_proj, c_proj}``.
- VisionTransformer: ``conv1`` (patchify), ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.N.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj,
  ln_2}``, ``ln_post``, ``proj``.

Both map (B, 3, R, R) images to (B, embed_dim) features (not normalised). The input size R is fixed by the
positional embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ResNetVisionConfig:
    """CLIP's modified ResNet; the defaults are Chinese-CLIP's RN50 (``model_configs/RN50.json``)."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64  # stem width; stage widths are width * (1, 2, 4, 8) * 4, the pooled feature is width * 32
    heads: int = 32  # attention-pool heads; Chinese-CLIP uses width * 32 // 64
    image_resolution: int = 224  # must be a multiple of 32


@dataclass(frozen=True)
class VitVisionConfig:
    """CLIP's ViT; the defaults are Chinese-CLIP's ViT-B-16."""

    layers: int = 12
    width: int = 768
    heads: int = 12  # Chinese-CLIP uses width // 64, except ViT-H (1280 // 80 = 16)
    patch_size: int = 16
    image_resolution: int = 224


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg-pool if strided) -> 1x1 (x4 channels) plus a shortcut; (B, C, H, W) -> (B, 4P, H/s, W/s)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or in_channels != out_channels:
            # anti-aliased shortcut: pool first, then a stride-1 projection; the keys are downsample.0 / .1
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride))
            self.downsample.add_module("0", nn.Conv2d(in_channels, out_channels, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean feature over all positions; (B, C, h, w) -> (B, output_dim)."""

    def __init__(self, grid: int, channels: int, heads: int, output_dim: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention-pool width {channels} is not divisible by {heads} heads")
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, channels) / channels**0.5)
        self.k_proj = nn.Linear(channels, channels)
        self.q_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, hw, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding  # (B, 1 + hw, C)
        # only the first (mean) token's output is used, so only its query is computed
        q = self.q_proj(x[:, :1]).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, 1, d)
        k = self.k_proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, 1 + hw, d)
        v = self.v_proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, 1 + hw, d)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, heads, 1, 1 + hw)
        pooled = (weights @ v).transpose(1, 2).flatten(1)  # (B, C)
        return self.c_proj(pooled)  # (B, output_dim)


class ModifiedResNet(nn.Module):
    """Three-conv stem with avg-pool, four Bottleneck stages (total stride 32), attention pooling."""

    def __init__(self, config: ResNetVisionConfig, output_dim: int):
        super().__init__()
        if config.image_resolution % 32:
            raise ValueError(f"image_resolution {config.image_resolution} is not a multiple of 32")
        width = config.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        channels = width
        stages = []
        for index, blocks in enumerate(config.layers):
            planes = width * 2**index
            stage = [Bottleneck(channels, planes, stride=1 if index == 0 else 2)]
            channels = planes * Bottleneck.expansion
            stage += [Bottleneck(channels, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(config.image_resolution // 32, channels, config.heads, output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(images)))  # (B, w/2, R/2, R/2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))  # (B, w, R/2, R/2)
        x = self.avgpool(x)  # (B, w, R/4, R/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32w, R/32, R/32)
        return self.attnpool(x)  # (B, output_dim)


class _QuickGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _PackedSelfAttention(nn.Module):
    """Self-attention whose q/k/v projections are one packed (3C, C) matrix, named as torch's MultiheadAttention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"ViT width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # 3 x (B, L, C)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, heads, L, L)
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2))  # (B, L, C)


class _ResidualBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a 4x QuickGELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = _PackedSelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", _QuickGelu())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[_ResidualBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """Patchify, prepend a class token, pre-norm transformer, LayerNorm of the class token, linear projection."""

    def __init__(self, config: VitVisionConfig, output_dim: int):
        super().__init__()
        if config.image_resolution % config.patch_size:
            raise ValueError(f"image_resolution {config.image_resolution} is not a multiple of {config.patch_size}")
        width, grid = config.width, config.image_resolution // config.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, g*g, C)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding  # (B, 1 + g*g, C)
        x = self.transformer(self.ln_pre(x))  # (B, 1 + g*g, C)
        return self.ln_post(x[:, 0]) @ self.proj  # (B, output_dim)


def build_vision_tower(config: ResNetVisionConfig | VitVisionConfig, output_dim: int) -> nn.Module:
    if isinstance(config, ResNetVisionConfig):
        return ModifiedResNet(config, output_dim)
    return VisionTransformer(config, output_dim)
