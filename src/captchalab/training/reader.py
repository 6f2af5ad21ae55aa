"""Read captchas straight from a training run with torch (``ocr eval RUN`` / ``ocr predict --model RUN``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from captchalab.imaging import ImageInput, Preprocess, load_image
from captchalab.runtime.decode import fold_case_charset
from captchalab.runtime.ocr import Reading, decode_readings
from captchalab.training.ocr import load_run_model


class TorchOcrReader:
    """Same interface as the ONNX ``OcrReader``, backed by the run's best checkpoint."""

    def __init__(self, run: str | Path, case_sensitive: bool = True):
        self.model, config = load_run_model(Path(run))
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.model_charset: str = config["charset"]
        self.decoder: str = config["decoder"]
        self.case_sensitive: bool = config["case_sensitive"] and case_sensitive
        self._fold = config["case_sensitive"] and not case_sensitive
        self.charset = fold_case_charset(self.model_charset) if self._fold else self.model_charset

    @torch.no_grad()
    def read_batch(self, images: Sequence[ImageInput]) -> list[Reading]:
        batch = self.preprocess.normalize(np.stack([self.preprocess.to_uint8(load_image(i)) for i in images]))
        log_probs = self.model(torch.from_numpy(batch)).numpy()
        return decode_readings(log_probs, self.model_charset, self.decoder, self._fold)

    def read(self, image: ImageInput) -> Reading:
        return self.read_batch([image])[0]
