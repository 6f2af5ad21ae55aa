"""Read captchas straight from a training run with torch (``ocr eval RUN`` / ``ocr predict --model RUN``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from captchalab.imaging import ImageInput, Preprocess, load_image
from captchalab.runtime.ocr import AUTO, OutputSpace, Reading
from captchalab.training.ocr import load_run_model


class TorchOcrReader:
    """Same interface as the ONNX ``OcrReader``, backed by the run's best checkpoint."""

    def __init__(self, run: str | Path, case_sensitive: bool = True, charset: str | None = AUTO):
        self.model, config = load_run_model(Path(run))
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.model_charset: str = config["charset"]
        self.decoder: str = config["decoder"]
        self.output = OutputSpace.make(
            self.model_charset, config["case_sensitive"], case_sensitive, charset, config.get("alphabets")
        )
        self.case_sensitive, self.charset = self.output.case_sensitive, self.output.chars

    @torch.no_grad()
    def read_batch(self, images: Sequence[ImageInput]) -> list[Reading]:
        batch = self.preprocess.normalize(np.stack([self.preprocess.to_uint8(load_image(i)) for i in images]))
        log_probs = self.model(torch.from_numpy(batch)).numpy()
        return self.output.readings(log_probs, self.decoder)

    def read(self, image: ImageInput) -> Reading:
        return self.read_batch([image])[0]
