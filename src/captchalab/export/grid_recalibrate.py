"""Re-fit a grid bundle's decision rules on labelled grids of the kind it will solve (numpy + onnxruntime only).

``grid export`` calibrates on grids simulated from validation cells, which look like the training data. Pictures of
another kind (a new art style) score lower as a whole, so a threshold fitted in-distribution misses their matches;
a few hundred labelled grids of the target kind fit each rule's threshold and ``relative`` again (see
``runtime.grid_rules``). The model itself is unchanged: its ONNX files are copied as they are.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.export.common import install_bundle
from captchalab.export.grid_calibrate import RELATIVE_STEPS, count_solved, fit_rule
from captchalab.progress import track
from captchalab.runtime.bundle import MANIFEST, load_bundle
from captchalab.runtime.clip import ClipModel
from captchalab.runtime.grid import GridSolver
from captchalab.runtime.grid_rules import RULES, RuleParams, cell_scores

log = logging.getLogger(__name__)


def score_grids(solver: GridSolver, grids: str | Path) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], int]:
    """Every rule's cell scores and the truth of each labelled grid; grids that cannot be read or whose prompt the
    model does not know are skipped (counted in the third value)."""
    from captchalab.grid import read_grid_manifest

    root, rows = read_grid_manifest(grids)
    scores: dict[str, list[np.ndarray]] = {rule: [] for rule in RULES}
    truths: list[np.ndarray] = []
    skipped = 0
    for row in track(rows, len(rows), "scoring grids"):
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
        vectors = solver.model.embed_images(pictures)
        prompt = solver.model.embed_texts([text])[0]
        others = solver._other_vectors(text)
        for rule in RULES:
            scores[rule].append(cell_scores(rule, vectors, prompt, others, solver.model.logit_scale))
        truths.append(truth)
    if not truths:
        raise CaptchalabError(f"{grids}: no grid could be scored (unreadable images or prompts the model never saw)")
    return scores, truths, skipped


def recalibrate(model: str | os.PathLike, grids: str | Path, out: str | Path, keep_threshold: bool = False) -> dict:
    """Fit every rule on the labelled ``grids``, keep the best, write the bundle to ``out``; -> the report."""
    out = Path(out)
    bundle = load_bundle(model, "grid")
    solver = GridSolver(ClipModel(bundle))
    scores, truths, skipped = score_grids(solver, grids)
    manifest = copy.deepcopy(bundle.manifest)
    decision = manifest["decision"]
    report: dict = {"grids": str(grids), "scored": len(truths), "skipped": skipped, "keep_threshold": keep_threshold,
                    "rules": {}}  # fmt: skip
    for rule in RULES:
        old = RuleParams.from_dict(decision["rules"][rule])
        if keep_threshold:
            counts = [count_solved(scores[rule], truths, _with(old, old.threshold, float(r))) for r in RELATIVE_STEPS]
            best = int(np.argmax(counts))  # first maximum: the smallest relative
            threshold, relative = old.threshold, float(RELATIVE_STEPS[best])
        else:
            threshold, relative, _ = fit_rule(scores[rule], truths)
        new = _with(old, threshold, relative)
        before, after = count_solved(scores[rule], truths, old), count_solved(scores[rule], truths, new)
        if after < before:  # cannot happen for an exact fit; kept as a guard against float ties
            new, after = old, before
        decision["rules"][rule] = new.to_dict()
        report["rules"][rule] = {"before": before / len(truths), "after": after / len(truths),
                                 "threshold": new.threshold, "relative": new.relative}  # fmt: skip
        log.info("rule %s: solve rate %.4f -> %.4f (threshold %.4f, relative %.3f)", rule, before / len(truths),
                 after / len(truths), new.threshold, new.relative)  # fmt: skip
    current = decision["rule"]
    decision["rule"] = max(RULES, key=lambda r: (report["rules"][r]["after"], r == current))
    report["rule"] = decision["rule"]
    decision["recalibrated"] = report
    _write(bundle.path, out, manifest)
    return report


def _with(params: RuleParams, threshold: float, relative: float) -> RuleParams:
    return RuleParams(float(threshold), params.slope, params.valid_solve_rate, float(relative))


def _write(source: Path, out: Path, manifest: dict) -> None:
    """Copy the bundle's files next to ``out`` with the new manifest, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        for file in source.iterdir():
            if file.is_file() and file.name != MANIFEST:
                shutil.copy2(file, work / file.name)
        install_bundle(work, out, manifest)
    finally:
        if work.exists():
            shutil.rmtree(work)
