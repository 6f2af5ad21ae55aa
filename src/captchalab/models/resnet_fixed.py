"""The reference article's model: ResNet-18 (basic blocks) with one softmax per character position.

Fixed number of positions; shorter labels are padded with class 0, so mixed lengths still train.
Output: (B, positions, n_classes + 1) log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResnetFixedConfig:
    in_channels: int = 3
    height: int = 24
    width: int = 56
    n_classes: int = 36
    positions: int = 4
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """3x3 -> 3x3 with a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResnetFixed(nn.Module):
    def __init__(self, config: ResnetFixedConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True)
        )
        layers, c_in = [], w[0]
        for stage, (c_out, n_blocks) in enumerate(zip(w, config.blocks)):
            for b in range(n_blocks):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and b == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, config.positions * (config.n_classes + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, positions, K+1) log-probabilities."""
        f = self.pool(self.layers(self.stem(x))).flatten(1)  # (B, C)
        logits = self.fc(f).reshape(x.shape[0], self.config.positions, self.config.n_classes + 1)
        return logits.log_softmax(-1)
