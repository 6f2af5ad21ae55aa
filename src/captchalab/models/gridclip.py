"""The small default image-text model for picture grids: fast on a laptop CPU, same interface as ``CnClip``.

Image tower: an EfficientNet-Lite0 trunk (ImageNet-initialised when trained from scratch) -> mean pool -> linear.
Text tower: a 2-layer pre-LN transformer over BERT-style token ids ([CLS] word [SEP], pad 0) -> [CLS] -> linear.
Both return unnormalised (B, D) features; ``forward`` normalises them and returns exp(logit_scale) as CnClip does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from captchalab.models.effnet_lite import EfficientNetLiteTrunk, load_imagenet_weights

PAD_ID = 0
# EfficientNet-Lite was trained on pixels scaled as (x - 127) / 128
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class GridClipConfig:
    vocab_size: int
    image_size: int = 64
    trunk_blocks: int = 11  # through stage 5 (112 ch, stride 16): 9 cells in ~9 ms on 2 cores
    embed_dim: int = 256
    context_length: int = 16
    text_width: int = 192
    text_layers: int = 2
    text_heads: int = 4

    def __post_init__(self) -> None:
        """Refuse sizes no model can have (ValueError naming the field), before any tensor is allocated."""
        limits = {"vocab_size": (1, 1_000_000), "image_size": (8, 1024), "trunk_blocks": (1, 16),
                  "embed_dim": (1, 4096), "context_length": (3, 512), "text_width": (1, 4096),
                  "text_layers": (1, 64), "text_heads": (1, 256)}  # fmt: skip
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not a multiple of text_heads {self.text_heads}")

    def to_dict(self) -> dict[str, Any]:
        return {"arch": "gridclip", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridClipConfig:
        return cls(**{k: v for k, v in data.items() if k != "arch"})

    @property
    def mean(self) -> tuple[float, float, float]:
        return LITE_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return LITE_STD


class ImageEncoder(nn.Module):
    """(B, 3, S, S) -> (B, D)."""

    def __init__(self, config: GridClipConfig) -> None:
        super().__init__()
        self.trunk = EfficientNetLiteTrunk(config.trunk_blocks)
        self.proj = nn.Linear(self.trunk.out_channels, config.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.trunk(images)  # (B, C, S/32, S/32)
        return self.proj(features.mean(dim=(2, 3)))  # (B, D)


class Block(nn.Module):
    """Pre-LN transformer block with a key padding mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape  # (B, L, W); bias (B, 1, 1, L): 0 for tokens, -inf-ish for padding
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=-1)
        q, k, v = (t.view(b, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))  # (B,h,L,w)
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + bias  # (B, h, L, L)
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, length, width)
        x = x + self.out(attended)
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """(B, L) int64 token ids, pad 0, [CLS] first -> (B, D)."""

    def __init__(self, config: GridClipConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.text_width)
        self.position = nn.Parameter(torch.zeros(config.context_length, config.text_width))
        self.blocks = nn.ModuleList(Block(config.text_width, config.text_heads) for _ in range(config.text_layers))
        self.ln = nn.LayerNorm(config.text_width)
        self.proj = nn.Linear(config.text_width, config.embed_dim)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        length = token_ids.shape[1]
        x = self.token(token_ids) + self.position[:length]  # (B, L, W)
        bias = (token_ids == PAD_ID).to(x.dtype)[:, None, None, :] * -1e4  # (B, 1, 1, L)
        for block in self.blocks:
            x = block(x, bias)
        return self.proj(self.ln(x[:, 0]))  # [CLS] -> (B, D)


class GridClip(nn.Module):
    def __init__(self, config: GridClipConfig, imagenet_init: bool = False) -> None:
        super().__init__()
        self.config = config
        self.visual = ImageEncoder(config)
        self.text = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if imagenet_init:
            load_imagenet_weights(self.visual.trunk)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, D) features, not normalised."""
        return self.visual(images)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 token ids, pad 0 -> (B, D) features, not normalised."""
        return self.text(token_ids)

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(token_ids), dim=-1)
        return image_features, text_features, self.logit_scale.exp()
