"""A second look at look-alike characters (such as 'O' and '0'): a small classifier reads a full-resolution crop
around each such character the CTC model emitted, and its scores are added to the CTC model's own.

The CTC model sees the captcha shrunk to its input size (112x32 for the default), where the few pixels that tell an
unslashed zero from a capital O are gone; the crop keeps them. Only characters of the refiner's group are looked at
again, so images without them cost nothing extra. Where the two best answers for a character are close, a bundle
whose manifest asks for it (``shifts``) has the classifier take a second look: it reads crops shifted by a pixel or
two as well (the CTC step that places a crop is 4 source pixels wide) and averages its probabilities over them.
onnxruntime and numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# A second look to try (RefineSpec.shifts, shift_margin; off unless a manifest asks for it): crops moved 2 px sideways
# and 1 px up or down, for characters whose two best scores are less than 2 apart (about one in six). It helped one
# refiner and hurt the next (benchmarks/ocr_second_look.py; the README has the figures), so nothing turns it on by
# default; `ocr refine` reports what it does on the held-out crops.
SECOND_LOOK_SHIFTS = tuple((dx, dy) for dx in (-2, 0, 2) for dy in (-1, 0, 1) if (dx, dy) != (0, 0))
SECOND_LOOK_MARGIN = 2.0

# (texts, log-probs (B, T, K+1) over chars, chars, rows of the batch) -> texts; see Refiner.refine
RefineHook = Callable[[list[str], np.ndarray, str, np.ndarray], list[str]]


@dataclass(frozen=True)
class RefineSpec:
    """Manifest ``refiner`` entry: which characters are refined and how crops are cut."""

    chars: str  # the classifier's classes, in output order (e.g. "0Oo")
    height: int = 60  # source images are scaled to this height (aspect kept) ...
    width: int = 48  # ... and a crop this wide is cut around each character
    mean: float = 0.5
    std: float = 0.5
    main_weight: float = 0.5  # weight of the CTC model's log-probability next to the classifier's ...
    # ... or, by the classes the reading's alphabet allows there (e.g. "0O" in an A-Z0-9 captcha), one of these
    main_weights: dict[str, float] = field(default_factory=dict)
    # second look: (dx, dy) source-pixel offsets of more crops, read for characters whose two best scores are closer
    # than shift_margin (in log-probability); none for manifests written before it, which read as they did
    shifts: tuple[tuple[int, int], ...] = ()
    shift_margin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RefineSpec:
        keys = ("chars", "height", "width", "mean", "std", "main_weight", "main_weights", "shift_margin")
        shifts = tuple((int(dx), int(dy)) for dx, dy in data.get("shifts", ()))
        return cls(**{k: data[k] for k in keys if k in data}, shifts=shifts)

    def weight_for(self, allowed: str) -> float:
        """The CTC model's weight where the classes ``allowed`` (in ``chars`` order) are the possible answers."""
        return self.main_weights.get(allowed, self.main_weight)

    def source(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (height, W') uint8 grey, aspect kept: what crops are cut from."""
        grey = image.convert("L")
        width = max(1, round(grey.width * self.height / grey.height))
        if grey.size != (width, self.height):
            grey = grey.resize((width, self.height), Image.Resampling.BILINEAR)
        return np.asarray(grey, dtype=np.uint8)

    def crop(self, source: np.ndarray, centre: float, dx: int = 0, dy: int = 0) -> np.ndarray:
        """(height, width) uint8 window centred at ``centre`` (0..1 of the image width), moved ``dx`` pixels right
        and ``dy`` down, edges repeated outside."""
        pad_x, pad_y = self.width + abs(dx), abs(dy)
        padded = np.pad(source, ((pad_y, pad_y), (pad_x, pad_x)), mode="edge")
        left = int(round(centre * source.shape[1])) + pad_x - self.width // 2 + dx
        top = pad_y + dy
        return padded[top : top + source.shape[0], left : left + self.width]

    def normalize(self, crops: np.ndarray) -> np.ndarray:
        """(N, height, width) uint8 -> (N, 1, height, width) float32 classifier input."""
        return ((crops.astype(np.float32) / np.float32(255.0) - np.float32(self.mean)) / np.float32(self.std))[:, None]


def char_runs(path: np.ndarray) -> list[tuple[int, int, int]]:
    """Greedy CTC path (T,) of class ids, 0 = blank -> [(class, first step, last step + 1)], one per character."""
    runs: list[tuple[int, int, int]] = []
    for t, c in enumerate(path.tolist()):
        if c and runs and runs[-1][0] == c and runs[-1][2] == t:
            runs[-1] = (c, runs[-1][1], t + 1)
        elif c:
            runs.append((c, t, t + 1))
    return runs


@dataclass(frozen=True)
class Candidate:
    """One emitted character of the refiner's group: where it is and what else it could be."""

    row: int  # index into the batch the hook was given
    position: int  # index into the text
    start: int  # its CTC steps [start, end)
    end: int
    options: str  # the output characters it may become (at least two)

    def ctc_score(self, log_probs: np.ndarray, chars: str, option: str) -> float:
        """The CTC model's best log-probability for ``option`` over this character's steps."""
        return float(log_probs[self.row, self.start : self.end, chars.index(option) + 1].max())

    def crop(self, spec: RefineSpec, source: np.ndarray, steps: int, dx: int = 0, dy: int = 0) -> np.ndarray:
        """The classifier's crop of ``source`` (``spec.source`` of this candidate's image) around the character's
        steps (of ``steps``), moved by (``dx``, ``dy``) pixels."""
        return spec.crop(source, (self.start + self.end) / 2 / steps, dx, dy)


def candidates(texts: Sequence[str], log_probs: np.ndarray, chars: str, group: str) -> list[Candidate]:
    """Characters of ``group`` (mapped into ``chars``; case-folded outputs map 'O' to 'o') in the greedy readings.
    Empty when fewer than two of the group can be output here (e.g. 'O' in an a-z0-9 captcha)."""
    options = "".join(dict.fromkeys(out for out in map(_output_char(chars), group) if out))
    if len(options) < 2:
        return []
    found: list[Candidate] = []
    wanted = set(options)
    rows = [b for b, text in enumerate(texts) if wanted.intersection(text)]  # most readings have none: skip them
    if not rows:
        return found
    paths = log_probs[rows].argmax(-1)
    for b, path in zip(rows, paths):
        text = texts[b]
        runs = char_runs(path)
        if len(runs) != len(text):  # not a CTC path (fixed-length decoder): nothing to align
            continue
        found += [Candidate(b, k, s, e, options) for k, (c, s, e) in enumerate(runs) if chars[c - 1] in options]
    return found


def sources_of(spec: RefineSpec, images: Sequence[Image.Image], found: Sequence[Candidate]) -> dict[int, np.ndarray]:
    """``spec.source`` of each image that has a candidate (once per image, none for the others)."""
    return {row: spec.source(images[row]) for row in dict.fromkeys(c.row for c in found)}


def _output_char(chars: str) -> Callable[[str], str | None]:
    """Refiner class -> the output character it counts for (its own, else its lower case when outputs are folded)."""
    return lambda g: g if g in chars else (g.lower() if g.lower() in chars else None)


class Refiner:
    """Loaded refiner of a bundle; thread-safe like the reader that owns it."""

    def __init__(self, model_file: Path, spec: RefineSpec, threads: int | None, providers: list[str] | None):
        from captchalab.runtime.bundle import onnx_session

        self.spec = spec
        self._session = onnx_session(model_file, threads, providers)
        self._input = self._session.get_inputs()[0].name

    def log_probs(self, crops: np.ndarray) -> np.ndarray:
        """(N, height, width) uint8 crops -> (N, len(chars)) log-probabilities."""
        (logits,) = self._session.run(None, {self._input: self.spec.normalize(crops)})
        top = logits.max(-1, keepdims=True)
        return logits - (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))

    def hook(self, images: Sequence[Image.Image]) -> RefineHook:
        """The decoding hook for one batch of loaded ``images``."""
        return lambda texts, log_probs, chars, rows: self.refine(texts, log_probs, chars, [images[r] for r in rows])

    def refine(self, texts: list[str], log_probs: np.ndarray, chars: str, images: Sequence[Image.Image]) -> list[str]:
        """Greedy readings of (B, T, K+1) ``log_probs`` over ``chars`` -> readings with the group's characters
        decided again: classifier log-probability (summed over classes that output the same character) plus
        the CTC model's best log-probability for that character over the character's steps, times its weight for the
        classes allowed there (``RefineSpec.weight_for``). Characters left with a margin under ``shift_margin`` get
        the second look (``RefineSpec.shifts``)."""
        found = candidates(texts, log_probs, chars, self.spec.chars)
        if not found:
            return texts
        sources = sources_of(self.spec, images, found)
        steps = log_probs.shape[1]
        scores = self.log_probs(np.stack([c.crop(self.spec, sources[c.row], steps) for c in found]))  # (N, G)
        outputs = list(map(_output_char(chars), self.spec.chars))  # what each class counts for (or None)
        decide = [self._option_scores(c, row, outputs, log_probs, chars) for c, row in zip(found, scores)]
        unsure: list[int] = []  # candidates that get the second look, if the manifest asks for one
        if self.spec.shifts:
            unsure = [i for i, options in enumerate(decide) if _margin(options) < self.spec.shift_margin]
        if unsure:
            shifted = [found[i].crop(self.spec, sources[found[i].row], steps, dx, dy)
                       for i in unsure for dx, dy in self.spec.shifts]  # fmt: skip
            more = np.exp(self.log_probs(np.stack(shifted))).reshape(len(unsure), len(self.spec.shifts), -1)
            for i, probs in zip(unsure, more):  # mean probability over the centre crop and the shifted ones
                row = np.log((np.exp(scores[i]) + probs.sum(0)) / (1 + len(probs)))
                decide[i] = self._option_scores(found[i], row, outputs, log_probs, chars)
        edited = [list(t) for t in texts]
        for c, options in zip(found, decide):
            edited[c.row][c.position] = max(options, key=options.__getitem__)
        return ["".join(t) for t in edited]

    def _option_scores(self, c: Candidate, row: np.ndarray, outputs: list[str | None], log_probs: np.ndarray,
                       chars: str) -> dict[str, float]:  # fmt: skip
        """Each output character ``c`` may become -> its score, from the classifier's (G,) log-probs ``row``."""
        allowed = "".join(g for g, out in zip(self.spec.chars, outputs) if out is not None and out in c.options)
        weight = self.spec.weight_for(allowed)
        return {option: float(np.logaddexp.reduce([row[i] for i, out in enumerate(outputs) if out == option]))
                + weight * c.ctc_score(log_probs, chars, option) for option in c.options}  # fmt: skip


def _margin(scores: dict[str, float]) -> float:
    """How far the best score is ahead of the next one."""
    top = sorted(scores.values(), reverse=True)
    return top[0] - top[1]
