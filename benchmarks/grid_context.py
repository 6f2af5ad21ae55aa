"""What the grid ``context`` rule owes to its features and its calibration grids (numbers quoted in the README).

    python benchmarks/grid_context.py --calib OPENMOJI SEEN --eval DEV DEV2 SEEN_GRIDS [--extra-calib NOTOMONO]
                                      [--model default] [--out benchmarks/results/grid-context.json]

The rule is fitted as ``grid calibrate MODEL CALIB... --rule context`` fits it (the bundle's own pictures and text
share), then each --eval folder is solved with:
- ``all_features``: every feature (the shipped rule, when MODEL is the default and CALIB its calibration grids);
- ``without_likeness``: the same fit without the cell-to-cell likeness features (``peer*``);
- ``with_extra_calib``: fitted on CALIB plus --extra-calib (e.g. grids of other designs the model never saw);
- ``fitted_on_itself``: fitted on the folder itself — what the rule's features could reach with perfect calibration;
- the last two ``..._without_likeness`` too, to tell what the likeness features give once the calibration is right;
- with ``--cuts C...``, ``all_features`` picking cells from log-odds C instead of 0 (``cut_C``), on each --eval
  folder and on the calibration grids themselves (``calibration`` in the JSON).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from captchalab.export.grid_calibrate import count_solved, fit_context
from captchalab.export.grid_recalibrate import embed_grids, grid_inputs
from captchalab.runtime.bundle import load_bundle
from captchalab.runtime.clip import ClipModel
from captchalab.runtime.grid import GridSolver
from captchalab.runtime.grid_rules import CONTEXT_FEATURES, ContextModel, RuleParams, context_features

WITHOUT_LIKENESS = tuple(name for name in CONTEXT_FEATURES if not name.startswith("peer"))


def grid_features(solver: GridSolver, folders: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every cell's ``context_features`` (N, F) and truth (N,), per grid of these folders."""
    embedded, truths, _ = embed_grids(solver, folders)
    return [context_features(*grid) for grid in grid_inputs(solver, embedded)], truths


def fit(features: list[np.ndarray], truths: list[np.ndarray], names: tuple[str, ...]) -> ContextModel:
    columns = [CONTEXT_FEATURES.index(name) for name in names]
    return replace(fit_context([f[:, columns] for f in features], truths), features=names)


def solve_rate(model: ContextModel, features: list[np.ndarray], truths: list[np.ndarray], cut: float = 0.0) -> float:
    return count_solved([model.log_odds(f) for f in features], truths, RuleParams(cut, 1.0)) / len(truths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--calib", type=Path, nargs="+", required=True, help="grid folders the rule is fitted on")
    parser.add_argument("--eval", type=Path, nargs="+", required=True, help="grid folders to solve")
    parser.add_argument("--extra-calib", type=Path, nargs="*", default=[], help="more grid folders to fit on")
    parser.add_argument("--cuts", type=float, nargs="*", default=[],
                        help="log-odds cuts other than 0 to solve with (the shipped fit)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid-context.json"))
    args = parser.parse_args()

    solver = GridSolver(ClipModel(load_bundle(args.model, "grid")))
    calib = grid_features(solver, args.calib)
    extra = grid_features(solver, args.extra_calib) if args.extra_calib else None
    models = {"all_features": fit(*calib, CONTEXT_FEATURES), "without_likeness": fit(*calib, WITHOUT_LIKENESS)}
    if extra is not None:
        both = calib[0] + extra[0], calib[1] + extra[1]
        models["with_extra_calib"] = fit(*both, CONTEXT_FEATURES)
        models["with_extra_calib_without_likeness"] = fit(*both, WITHOUT_LIKENESS)
    result = {"model": args.model, "calib": [str(f) for f in args.calib],
              "extra_calib": [str(f) for f in args.extra_calib], "eval": {}}  # fmt: skip

    def at_cuts(features: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
        return {f"cut_{cut:g}": solve_rate(models["all_features"], features, truths, cut) for cut in args.cuts}

    if args.cuts:
        result["calibration"] = {"all_features": solve_rate(models["all_features"], *calib), **at_cuts(*calib)}
        print("calibration grids: " + ", ".join(f"{k} {v:.4f}" for k, v in result["calibration"].items()))
    for folder in args.eval:
        features, truths = grid_features(solver, [folder])
        row = {name: solve_rate(model, features, truths) for name, model in models.items()} | at_cuts(features, truths)
        for suffix, names in (("", CONTEXT_FEATURES), ("_without_likeness", WITHOUT_LIKENESS)):
            row["fitted_on_itself" + suffix] = solve_rate(fit(features, truths, names), features, truths)
        row["grids"] = len(truths)
        result["eval"][str(folder)] = row
        print(f"{folder}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "grids"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
