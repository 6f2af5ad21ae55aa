"""Re-fit a grid bundle's decision rules on labelled grids of the kind it will solve (numpy + onnxruntime only).

``grid export`` calibrates on grids simulated from validation cells, which look like the training data. Pictures of
another kind (a new art style) score lower as a whole, so a threshold fitted in-distribution misses their matches;
a few hundred labelled grids of the target kind fit each rule's threshold and ``relative`` again, and the
``context`` rule's model (see ``runtime.grid_rules``). With labelled cells (``pictures``), the bundle also learns
prototype pictures of each word (``runtime.grid_pictures``) and the share of the text similarity is fitted on the
grids too. The ONNX files are copied as they are.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.export.common import check_bundle_destination, install_bundle, make_work_folder
from captchalab.export.grid_calibrate import RELATIVE_STEPS, context_rule, count_solved, fit_rule
from captchalab.progress import track
from captchalab.runtime.bundle import MANIFEST, load_bundle, sha256_file
from captchalab.runtime.clip import ClipModel
from captchalab.runtime.grid import GridSolver
from captchalab.runtime.grid_pictures import PICTURES_FILE, WordPictures, kmeans_prototypes
from captchalab.runtime.grid_rules import ALL_RULES, RULES, RuleParams, context_features, rule_scores

log = logging.getLogger(__name__)


PICTURE_WEIGHTS = (1.0, 0.75, 0.5, 0.25)  # candidate shares of the text similarity, when the bundle has pictures
PROTOTYPES_PER_WORD = 8


def embed_grids(
    solver: GridSolver, grids: str | Path | Sequence[str | Path]
) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray], int]:
    """(prompt, cell vectors) and the truth of each labelled grid (of one folder or several); grids that cannot be
    read or whose prompt the model does not know are skipped (counted in the third value)."""
    from captchalab.grid import read_grid_manifest

    folders = _folders(grids)
    rows = [(root, row) for folder in folders for root, found in [read_grid_manifest(folder)] for row in found]
    empty = next((root / row["image"] for root, row in rows if not row["positions"]), None)
    if empty is not None:  # checked before the work: a grid without a match has no threshold to fit
        raise CaptchalabError(f"{empty}: its manifest line lists no positions; calibration needs at least one match")
    embedded: list[tuple[str, np.ndarray]] = []
    truths: list[np.ndarray] = []
    skipped = 0
    for root, row in track(rows, len(rows), "embedding grids"):
        text, known = solver.resolve_prompt(row["prompt"])
        if not known:
            skipped += 1
            continue
        try:
            pictures, _ = solver._cells(root / row["image"], None, row.get("layout", "auto"))
        except CaptchalabError as exc:
            log.warning("skipped: %s", exc)
            skipped += 1
            continue
        positions = [int(p) for p in row["positions"]]
        if not positions or min(positions) < 1 or max(positions) > len(pictures):
            raise CaptchalabError(f"{row['image']}: positions {positions} do not fit a grid of {len(pictures)} cells")
        truth = np.zeros(len(pictures), dtype=bool)
        truth[np.asarray(positions) - 1] = True
        embedded.append((text, solver.model.embed_images(pictures)))
        truths.append(truth)
    if not truths:
        names = ", ".join(str(f) for f in folders)
        raise CaptchalabError(f"{names}: no grid could be scored (unreadable images or prompts the model never saw)")
    return embedded, truths, skipped


def _folders(grids: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [grids] if isinstance(grids, (str, os.PathLike)) else list(grids)


def grid_inputs(
    solver: GridSolver, embedded: list[tuple[str, np.ndarray]], picture_weight: float | None = None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per embedded grid, what its rules score: its cells' similarity to the prompt (N,), to the other known words
    (N, K), and the cell vectors (N, D)."""
    return [(*solver.similarities(vectors, text, picture_weight=picture_weight), vectors) for text, vectors in embedded]


def score_grids(
    solver: GridSolver, embedded: list[tuple[str, np.ndarray]], picture_weight: float | None = None
) -> dict[str, list[np.ndarray]]:
    """Every rule's cell scores of each embedded grid, as the solver computes them (the context rule's when the
    bundle has one)."""
    rules = RULES + (("context",) if solver.context is not None else ())
    scores: dict[str, list[np.ndarray]] = {rule: [] for rule in rules}
    for similarity, other, cells in grid_inputs(solver, embedded, picture_weight):
        for rule in rules:
            scores[rule].append(rule_scores(rule, similarity, other, solver.model.logit_scale, solver.context, cells))
    return scores


def build_pictures(solver: GridSolver, cells: str | Path, per_word: int = PROTOTYPES_PER_WORD) -> WordPictures:
    """Prototype pictures of each known word from labelled cells (``<label>/<image>`` folder or JSONL): k-means
    centres of the word's cell vectors, so the distinct drawings of a word each keep a prototype. Cells of words
    the bundle does not know and unreadable images are skipped with a warning."""
    from captchalab.data.cnclip import labelled_cells
    from captchalab.imaging import load_image

    by_word: dict[str, list[Path]] = {}
    unknown: set[str] = set()
    for label, path in labelled_cells(cells):
        text, known = solver.resolve_prompt(label)
        if known:
            by_word.setdefault(text, []).append(path)
        else:
            unknown.add(label)
    if unknown:
        log.warning("%d label(s) the bundle does not know were left out of its pictures, e.g. %s", len(unknown),
                    ", ".join(sorted(unknown)[:5]))  # fmt: skip
    if not by_word:
        raise CaptchalabError(f"{cells}: no cell is labelled with a word the bundle knows")
    groups, bad = {}, []
    for word, paths in track(list(by_word.items()), len(by_word), "embedding cells"):
        images = []
        for path in paths:
            try:
                images.append(load_image(path))
            except CaptchalabError as exc:
                bad.append(str(exc))
        if images:
            seed = int.from_bytes(word.encode("utf-8")[:4].ljust(4, b"\0"), "little")  # same word, same centres
            groups[word] = kmeans_prototypes(solver.model.embed_images(images), per_word, seed=seed)
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), "; ".join(bad[:10]))
    if not groups:
        raise CaptchalabError(f"{cells}: none of the labelled cells could be read")
    return WordPictures.from_groups(groups)


def recalibrate(
    model: str | os.PathLike,
    grids: str | Path | Sequence[str | Path],
    out: str | Path,
    keep_threshold: bool = False,
    pictures: str | Path | None = None,
    rule: str | None = None,
    text_share: float | None = None,
) -> dict:
    """Fit every rule on the labelled ``grids`` (one folder or several), keep the best, write the bundle to ``out``;
    -> the report.

    ``pictures``: labelled cells to take each word's prototype pictures from (replacing any the bundle has); the
    share of the text similarity is then fitted as well (``PICTURE_WEIGHTS``; 1 = text only). Each rule's
    ``before`` is its solve rate with the bundle's old parameters and old share; ``after`` is at the chosen share,
    so a rule other than the best can end lower when new pictures change the share. ``rule``: the bundle's rule from
    now on (default: the one that solves the most of ``grids``). ``text_share``: keep this share instead of fitting
    it (a share chosen on other grids; close shares often differ by a grid or two on the fitted ones)."""
    out = Path(out)
    if pictures is not None and keep_threshold:
        raise CaptchalabError("--keep-threshold and --pictures do not go together: new pictures change every score")
    if text_share is not None and not 0.0 <= text_share <= 1.0:
        raise CaptchalabError(f"--text-share must be between 0 and 1 (1 = text only), got {text_share}")
    if text_share is not None and keep_threshold:
        raise CaptchalabError("--keep-threshold and --text-share do not go together: a new share changes every score")
    if rule is not None and rule not in ALL_RULES:
        raise CaptchalabError(f"unknown rule {rule!r}: use one of {', '.join(ALL_RULES)}")
    check_bundle_destination(out)  # before the fitting, not after it
    bundle = load_bundle(model, "grid")
    solver = GridSolver(ClipModel(bundle))
    if pictures is not None:
        solver.use_pictures(build_pictures(solver, pictures))
    if text_share is not None and solver.pictures is None:
        raise CaptchalabError(f"{bundle.path} has no word pictures, so there is no text share to set: add --pictures")
    embedded, truths, skipped = embed_grids(solver, grids)
    manifest = copy.deepcopy(bundle.manifest)
    decision = manifest["decision"]
    if text_share is not None:
        weights: tuple[float, ...] = (text_share,)
    elif solver.pictures is not None and not keep_threshold:
        weights = PICTURE_WEIGHTS
    else:
        weights = (solver.picture_weight,)
    report: dict = {"grids": ", ".join(str(f) for f in _folders(grids)), "scored": len(truths), "skipped": skipped,
                    "keep_threshold": keep_threshold, "rules": {}}  # fmt: skip
    old = {name: RuleParams.from_dict(p) for name, p in decision["rules"].items() if name in solver.rules}
    before = {name: count_solved(s, truths, old[name])
              for name, s in score_grids(solver, embedded, solver.picture_weight).items()}  # fmt: skip
    best: tuple[int, float, dict] | None = None
    scale = solver.model.logit_scale
    for weight in weights:
        inputs = grid_inputs(solver, embedded, weight)
        # per rule: (its manifest entry, grids solved)
        fitted = {name: _fit([rule_scores(name, s, o, scale) for s, o, _ in inputs], truths, old[name], keep_threshold)
                  for name in RULES}  # fmt: skip
        if not keep_threshold:  # a new context model, as the thresholds: fitted on these grids
            fitted["context"] = context_rule([context_features(*grid) for grid in inputs], truths)
        elif "context" in before:  # its model has no threshold to keep apart: kept whole
            fitted["context"] = (decision["rules"]["context"], before["context"])
        solved = max(count for _, count in fitted.values())
        log.info("text share %.2f: best rule solves %.4f", weight, solved / len(truths))
        if best is None or solved > best[0]:
            best = (solved, weight, fitted)
    _, weight, fitted = best
    for name, (entry, after) in fitted.items():  # not ``rule``: that is the caller's choice, read below
        decision["rules"][name] = entry
        report["rules"][name] = {"before": before[name] / len(truths) if name in before else None,
                                 "after": after / len(truths), "threshold": entry["threshold"],
                                 "relative": entry["relative"]}  # fmt: skip
        log.info("rule %s: solve rate %s -> %.4f (threshold %.4f, relative %.3f)", name,
                 "-" if name not in before else f"{before[name] / len(truths):.4f}", after / len(truths),
                 entry["threshold"], entry["relative"])  # fmt: skip
    current = decision["rule"]
    if rule is not None and rule not in report["rules"]:
        raise CaptchalabError(f"{bundle.path} has no {rule} rule to keep: fit it without --keep-threshold")
    decision["rule"] = rule or max(report["rules"], key=lambda r: (report["rules"][r]["after"], r == current))
    report["rule"] = decision["rule"]
    if solver.pictures is not None:
        decision["picture_weight"] = weight
        report["picture_weight"] = weight
        report["pictures"] = {"source": str(pictures) if pictures else "kept", "words": len(solver.pictures.words),
                              "prototypes": len(solver.pictures.vectors)}  # fmt: skip
    if "recalibrated" in decision:  # how the bundle came to be stays on record
        report["previous"] = decision["recalibrated"]
    decision["recalibrated"] = report
    _write(bundle.path, out, manifest, solver.pictures if pictures is not None else None)
    return report


def _fit(scores: list[np.ndarray], truths: list[np.ndarray], old: RuleParams, keep_threshold: bool) -> tuple[dict, int]:
    """One rule's new parameters on these scores (its manifest entry), and how many grids they solve."""
    if keep_threshold:
        counts = [count_solved(scores, truths, _with(old, old.threshold, float(r))) for r in RELATIVE_STEPS]
        best = int(np.argmax(counts))  # first maximum: the smallest relative
        new = _with(old, old.threshold, float(RELATIVE_STEPS[best]))
    else:
        threshold, relative, _ = fit_rule(scores, truths)
        new = _with(old, threshold, relative)
    return new.to_dict(), count_solved(scores, truths, new)


def _with(params: RuleParams, threshold: float, relative: float) -> RuleParams:
    return RuleParams(float(threshold), params.slope, params.valid_solve_rate, float(relative))


def _write(source: Path, out: Path, manifest: dict, pictures: WordPictures | None) -> None:
    """Copy the bundle's files next to ``out`` with the new manifest (and new ``pictures``), then move it into
    place."""
    work = make_work_folder(out)
    try:
        for file in source.iterdir():
            if file.is_file() and file.name != MANIFEST:
                shutil.copy2(file, work / file.name)
        if pictures is not None:
            pictures.save(work / PICTURES_FILE)
            manifest["files"]["pictures"] = PICTURES_FILE
            manifest.setdefault("sha256", {})[PICTURES_FILE] = sha256_file(work / PICTURES_FILE)
        install_bundle(work, out, manifest)
    finally:
        if work.exists():
            shutil.rmtree(work)
