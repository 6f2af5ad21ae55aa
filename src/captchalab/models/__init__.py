"""Torch models and their registry. Imported by training and export only, never by the runtime."""

from __future__ import annotations

import dataclasses

from torch import nn

from captchalab.models.ctc import CtcConfig, CtcRecognizer
from captchalab.models.resnet_fixed import ResnetFixed, ResnetFixedConfig

# arch name -> (model class, config class, decoder used at runtime, default input (height, width, channels))
OCR_ARCHS = {
    "ctc": (CtcRecognizer, CtcConfig, "ctc-greedy", (32, 112, 1)),
    "resnet18-fixed": (ResnetFixed, ResnetFixedConfig, "fixed", (24, 56, 3)),
}


def create_ocr_model(arch: str, **config: object) -> nn.Module:
    """Build an OCR model by name; ``config`` fields override the architecture's defaults."""
    if arch not in OCR_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(OCR_ARCHS)}")
    model_cls, config_cls, _, _ = OCR_ARCHS[arch]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields}
    return model_cls(config_cls(**kwargs))


def model_config_dict(model: nn.Module) -> dict:
    return dataclasses.asdict(model.config)
