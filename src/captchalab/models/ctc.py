"""Small convolutional CTC recogniser, designed to be fast on a laptop CPU.

A plain VGG-like stack shrinks the image to a (C, 4, W/4) feature map; the height is folded into the
channels and a few 1-D convolutions give every time step some context before a per-step classifier.
Output: (B, T, n_classes + 1) log-probabilities, index 0 is the CTC blank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CtcConfig:
    in_channels: int = 1
    height: int = 32
    width: int = 96
    n_classes: int = 62
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    seq_channels: int = 128
    seq_layers: int = 2


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _SeqBlock(nn.Module):
    """Residual 1-D convolution over time: (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


class CtcRecognizer(nn.Module):
    def __init__(self, config: CtcConfig):
        super().__init__()
        if config.height % 8 or config.width % 4:
            raise ValueError("CTC input height must be a multiple of 8 and width a multiple of 4")
        self.config = config
        w1, w2, w3, w4 = config.widths
        self.features = nn.Sequential(
            _conv(config.in_channels, w1),
            nn.MaxPool2d(2),  # (B, w1, H/2, W/2)
            _conv(w1, w2),
            nn.MaxPool2d(2),  # (B, w2, H/4, W/4)
            _conv(w2, w3),
            _conv(w3, w3),
            nn.MaxPool2d((2, 1)),  # (B, w3, H/8, W/4)
            _conv(w3, w4),  # (B, w4, H/8, W/4)
        )
        folded = w4 * (config.height // 8)
        self.project = nn.Sequential(
            nn.Conv1d(folded, config.seq_channels, 1, bias=False),
            nn.BatchNorm1d(config.seq_channels),
            nn.ReLU(inplace=True),
        )
        self.sequence = nn.Sequential(*[_SeqBlock(config.seq_channels) for _ in range(config.seq_layers)])
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv1d(config.seq_channels, config.n_classes + 1, 1)

    @property
    def time_steps(self) -> int:
        return self.config.width // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) float in [0, 1] after normalisation -> (B, T, K+1) log-probabilities."""
        f = self.features(x)  # (B, C4, H/8, T)
        b, c, h, t = f.shape
        f = f.reshape(b, c * h, t)  # (B, C4*H/8, T)
        f = self.sequence(self.project(f))  # (B, S, T)
        logits = self.classifier(self.dropout(f))  # (B, K+1, T)
        return logits.transpose(1, 2).log_softmax(-1)  # (B, T, K+1)
