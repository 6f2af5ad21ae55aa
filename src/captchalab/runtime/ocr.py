"""Read text captchas with an exported OCR bundle (onnxruntime only)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.imaging import ImageInput, Preprocess, load_image
from captchalab.runtime.bundle import load_bundle, onnx_session, reading_manifest
from captchalab.runtime.decode import (
    DECODERS,
    allowed_chars,
    check_charset,
    choose_alphabets,
    decode,
    fold_case_charset,
    project,
)
from captchalab.runtime.ocr_refine import RefineHook, Refiner, RefineSpec

AUTO = "auto"  # ``charset`` value: infer each captcha's alphabet among those the model was trained on
ANY = "any"  # ``charset`` value: any character the model knows

# average_shifts: readings less sure than this are read again with the input moved 1 px up and 1 px down, and the
# three outputs' probabilities averaged. Chosen on the development sets (seeds 8001-8005 and 8102/8202; 0.5 and 0.8
# gained less); vertical only, as a sideways shift moves the CTC alignment and costs more than it gains.
SHIFT_GATE = 0.9


@dataclass(frozen=True)
class Reading:
    text: str
    confidence: float


class OcrReader:
    """One loaded model; ``read`` / ``read_batch`` are safe to call from many threads at once (no shared state
    changes after construction, and onnxruntime sessions are thread-safe)."""

    def __init__(
        self,
        model: str | os.PathLike = "default",
        threads: int | None = None,
        providers: list[str] | None = None,
        case_sensitive: bool = True,
        charset: str | None = AUTO,
        refine: bool = True,
        average_shifts: bool = False,
    ):
        """``case_sensitive=False`` merges the two cases of each letter before decoding (output in lower case);
        ``charset`` (e.g. ``'lower+digits'``) limits what can be read to that alphabet; ``'auto'`` (the default)
        infers it per image among the alphabets the model was trained on (manifest ``alphabets``), ``'any'`` or
        None lets the model answer any character it knows. ``refine=False`` skips the bundle's refiner of
        look-alike characters (manifest ``refiner``), if it has one. ``average_shifts=True`` reads unsure captchas
        again shifted a pixel up and down and averages (``SHIFT_GATE``): fewer errors, slower."""
        self.average_shifts = average_shifts
        self.bundle = load_bundle(model, "ocr")
        with reading_manifest(self.bundle):
            manifest = self.bundle.manifest
            self.preprocess = Preprocess.from_dict(manifest["preprocess"])
            self.model_charset: str = manifest["charset"]
            self.decoder: str = manifest["decoder"]
            _check_manifest(manifest)
            model_case_sensitive = manifest.get("case_sensitive", True)
            self.output = OutputSpace.make(
                self.model_charset, model_case_sensitive, case_sensitive, charset, manifest.get("alphabets")
            )
            self.case_sensitive, self.charset = self.output.case_sensitive, self.output.chars
            self.threads = threads
            self._session = onnx_session(self.bundle.file("model"), threads, providers)
            self._input = self._session.get_inputs()[0].name
            self._check_model_shapes()
            self.refiner: Refiner | None = None
            if refine and "refiner" in manifest:
                spec = RefineSpec.from_dict(manifest["refiner"])
                self.refiner = Refiner(self.bundle.file("refiner"), spec, threads, providers)

    def _check_model_shapes(self) -> None:
        """The ONNX model must take the manifest's input size and output one class per character plus the blank."""
        expected = (self.preprocess.channels, self.preprocess.height, self.preprocess.width)
        given = tuple(self._session.get_inputs()[0].shape[1:])
        if len(given) != 3 or any(isinstance(g, int) and g != e for g, e in zip(given, expected)):
            raise ValueError(f"the model takes input {list(given)}, the manifest's preprocess says {list(expected)}")
        classes = self._session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.model_charset) + 1:
            raise ValueError(
                f"the model outputs {classes} classes, the manifest's charset needs {len(self.model_charset) + 1}"
            )

    def inputs(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> the (B, C, H, W) float32 batch the model takes."""
        return self.prepare(images)[0]

    def prepare(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[Image.Image]]:
        """Images -> (model batch, the loaded images, which the refiner crops from)."""
        loaded = [load_image(i) for i in images]
        return self.preprocess.normalize(np.stack([self.preprocess.to_uint8(i) for i in loaded])), loaded

    def run(
        self, batch: np.ndarray, images: Sequence[Image.Image] | None = None, hook: RefineHook | None = None
    ) -> list[Reading]:
        """A preprocessed (B, C, H, W) batch -> readings; given the loaded ``images`` too (``prepare``), the
        refiner (if any) looks again at look-alike characters. ``hook`` replaces the refiner (training uses it to
        collect crops)."""
        (log_probs,) = self._session.run(None, {self._input: batch})
        if self.average_shifts:
            log_probs = self._averaged_over_shifts(batch, log_probs)
        if hook is None and self.refiner is not None and images is not None:
            hook = self.refiner.hook(images)
        return self.output.readings(log_probs, self.decoder, hook)

    def _averaged_over_shifts(self, batch: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
        """(B, T, K+1) ``log_probs`` of ``batch`` with the rows whose reading is less sure than ``SHIFT_GATE``
        replaced by the mean probability over the input as it is and moved 1 px down and up (one more model call)."""
        unsure = np.flatnonzero([r.confidence < SHIFT_GATE for r in self.output.readings(log_probs, self.decoder)])
        if not len(unsure):
            return log_probs
        rows = batch[unsure]
        (moved,) = self._session.run(None, {self._input: np.concatenate([shift_rows(rows, 1), shift_rows(rows, -1)])})
        probs = np.exp(log_probs[unsure]) + np.exp(moved[: len(unsure)]) + np.exp(moved[len(unsure) :])
        averaged = log_probs.copy()
        averaged[unsure] = np.log(np.maximum(probs / 3, 1e-30))
        return averaged

    def read(self, image: ImageInput) -> Reading:
        """One image (path, bytes, PIL image or uint8 array) -> Reading(text, confidence)."""
        return self.run(*self.prepare([image]))[0]

    def read_batch(self, images: Sequence[ImageInput], batch_size: int = 256, workers: int = 1) -> list[Reading]:
        """Many images, in batches, results in input order.

        ``workers=1``: the next batch is decoded on a helper thread while the model runs (pair it with a
        multi-threaded session). ``workers=N``: N threads each decode and run whole batches (pair it with
        ``threads=1``: N independent pipelines, no locking between them; the fastest on a small CPU).
        """
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        if len(chunks) <= 1:
            return self.run(*self.prepare(chunks[0])) if chunks else []
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                return [r for batch in pool.map(lambda c: self.run(*self.prepare(c)), chunks) for r in batch]
        readings: list[Reading] = []
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.prepare, chunks[0])
            for following in [*chunks[1:], None]:
                prepared = pending.result()
                if following is not None:
                    pending = pool.submit(self.prepare, following)
                readings += self.run(*prepared)
        return readings


def shift_rows(batch: np.ndarray, dy: int) -> np.ndarray:
    """(B, C, H, W) -> the same images moved ``dy`` rows down (up when negative), edge rows repeated."""
    if dy > 0:
        return np.concatenate([np.repeat(batch[:, :, :1], dy, axis=2), batch[:, :, :-dy]], axis=2)
    if dy < 0:
        return np.concatenate([batch[:, :, -dy:], np.repeat(batch[:, :, -1:], -dy, axis=2)], axis=2)
    return batch


def _check_manifest(manifest: dict) -> None:
    """ValueError for a charset, decoder or alphabets entry the runtime could not use (a hand-edited manifest)."""
    chars, decoder = manifest["charset"], manifest["decoder"]
    check_charset(chars)
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    alphabets = manifest.get("alphabets")
    if alphabets is not None:
        if not isinstance(alphabets, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for k, v in alphabets.items()
        ):
            raise ValueError(f"alphabets {alphabets!r} is not a mapping of alphabet to a positive prior")
        for spec in alphabets:
            try:
                allowed_chars(spec, chars)
            except CaptchalabError:
                raise ValueError(f"alphabet {spec!r} has none of the model's characters") from None


@dataclass(frozen=True)
class OutputSpace:
    """What a reader may answer: the model's characters, optionally limited to an alphabet (given, or inferred per
    image among the model's training alphabets), then case-folded."""

    model_chars: str
    allowed: str | None  # a subset of model_chars, or None for all of them
    fold: bool
    case_sensitive: bool
    alphabets: tuple[str, ...] = ()  # inferred per image among these subsets of model_chars (empty: no inference)
    priors: tuple[float, ...] = ()

    @classmethod
    def make(
        cls,
        model_chars: str,
        model_case_sensitive: bool,
        case_sensitive: bool,
        charset: str | None,
        training_alphabets: dict[str, float] | None = None,
    ) -> OutputSpace:
        """``charset``: an alphabet spec, ``'any'`` / None (every model character), or ``'auto'``: per image, the
        likeliest of ``training_alphabets`` (spec -> prior probability, from the bundle manifest); a model trained
        on one alphabet has none, and ``auto`` then reads any of its characters."""
        fold = model_case_sensitive and not case_sensitive
        alphabets: dict[str, float] = {}
        if charset == AUTO:
            for spec, prior in (training_alphabets or {}).items():
                allowed = allowed_chars(spec, model_chars)
                alphabets[allowed] = alphabets.get(allowed, 0.0) + float(prior)
            charset = None
        elif charset == ANY:
            charset = None
        allowed = allowed_chars(charset, model_chars) if charset is not None else None
        if len(alphabets) < 2:  # nothing to choose between
            alphabets = {}
        return cls(model_chars, allowed, fold, model_case_sensitive and case_sensitive, tuple(alphabets),
                   tuple(alphabets.values()))  # fmt: skip

    @property
    def chars(self) -> str:
        """The characters readings are made of."""
        base = self.allowed if self.allowed is not None else self.model_chars
        return fold_case_charset(base) if self.fold else base

    def readings(self, log_probs: np.ndarray, decoder: str, hook: RefineHook | None = None) -> list[Reading]:
        if not self.alphabets:
            rows = np.arange(len(log_probs))
            return decode_readings(log_probs, self.model_chars, decoder, self.fold, self.allowed, hook, rows)
        chosen = choose_alphabets(log_probs, self.model_chars, self.alphabets, self.priors)  # (B,)
        readings: list[Reading | None] = [None] * len(log_probs)
        for a, alphabet in enumerate(self.alphabets):
            rows = np.flatnonzero(chosen == a)
            if len(rows):
                decoded = decode_readings(log_probs[rows], self.model_chars, decoder, self.fold, alphabet, hook, rows)
                for row, reading in zip(rows, decoded):
                    readings[row] = reading
        return readings  # type: ignore[return-value]


def decode_readings(
    log_probs: np.ndarray,
    chars: str,
    decoder: str,
    fold: bool,
    allowed: str | None = None,
    hook: RefineHook | None = None,
    rows: np.ndarray | None = None,
) -> list[Reading]:
    """Model output (B, T, K+1) -> readings, optionally restricted to the ``allowed`` characters, then case-folded,
    then passed through the refiner ``hook`` (``rows``: these images' indices in the batch the hook knows).
    Confidence stays the greedy path's."""
    if (allowed is not None and allowed != chars) or fold:
        log_probs, chars = project(log_probs, chars, None if allowed == chars else allowed, fold)
    decoded = decode(log_probs, chars, decoder)
    if hook is None or decoder != "ctc-greedy":
        return [Reading(text, conf) for text, conf in decoded]
    texts = hook([t for t, _ in decoded], log_probs, chars, np.arange(len(decoded)) if rows is None else rows)
    return [Reading(text, conf) for text, (_, conf) in zip(texts, decoded)]


_default_readers: dict[str, OcrReader] = {}


def read(image: ImageInput, model: str | Path = "default", charset: str | None = AUTO) -> Reading:
    """Read one captcha with a cached reader for ``model`` (the shipped default unless told otherwise), optionally
    limited to the alphabet ``charset`` (e.g. ``'lower+digits'``; ``'auto'``: inferred, ``'any'``: none)."""
    key = f"{model}\0{charset}"
    if key not in _default_readers:
        _default_readers[key] = OcrReader(model, charset=charset)
    return _default_readers[key].read(image)
