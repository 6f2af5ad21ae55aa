"""Image-text models behind one interface (``encode_image``, ``encode_text``, ``forward``, ``logit_scale``):
the small default ``gridclip`` and Chinese-CLIP (``cnclip``). A checkpoint stores ``kind`` + ``config`` + weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from captchalab.imaging import ClipPreprocess
from captchalab.models.cnclip import CnClip, CnClipConfig
from captchalab.models.gridclip import GridClip, GridClipConfig

CLIP_KINDS = ("gridclip", "cnclip")


def build_clip(kind: str, config: dict[str, Any], imagenet_init: bool = False) -> nn.Module:
    if kind == "gridclip":
        return GridClip(GridClipConfig.from_dict(config), imagenet_init=imagenet_init)
    if kind == "cnclip":
        return CnClip(CnClipConfig.from_dict(config))
    raise ValueError(f"unknown image-text model kind {kind!r}; known: {', '.join(CLIP_KINDS)}")


def describe_clip(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(kind, config dict) that ``build_clip`` turns back into the same architecture."""
    if isinstance(model, GridClip):
        return "gridclip", model.config.to_dict()
    if isinstance(model, CnClip):
        return "cnclip", model.config.to_dict()
    raise TypeError(f"not an image-text model: {type(model).__name__}")


def clip_preprocess(model: nn.Module) -> ClipPreprocess:
    if isinstance(model, GridClip):
        return ClipPreprocess(model.config.image_size, model.config.mean, model.config.std)
    if isinstance(model, CnClip):
        p = model.config.preprocess()
        return ClipPreprocess(p.image_size, p.mean, p.std, p.interpolation)
    raise TypeError(f"not an image-text model: {type(model).__name__}")


def context_length(model: nn.Module) -> int:
    if isinstance(model, GridClip):
        return model.config.context_length
    if isinstance(model, CnClip):
        return model.config.text.context_length
    raise TypeError(f"not an image-text model: {type(model).__name__}")


def vocab_size(model: nn.Module) -> int:
    if isinstance(model, GridClip):
        return model.config.vocab_size
    return model.config.text.vocab_size
