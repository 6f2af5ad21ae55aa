"""The context rule: a logistic model of each cell's margin among the cells of its grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import random_grid_truth, run_cli
from tests.test_grid_train_cli import _grid

from captchalab.export.grid_calibrate import context_rule, count_solved, fit_context, fit_rule
from captchalab.runtime.grid_rules import CONTEXT_FEATURES, ContextModel, RuleParams, context_features, rule_scores


def test_context_features_place_each_cell_among_its_grid():
    similarity = np.array([0.5, 0.1, 0.4])
    other = np.array([[0.2, 0.1, 0.0], [0.3, 0.6, 0.2], [0.1, 0.05, 0.3]])  # best others 0.2, 0.6, 0.3
    cells = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # unit vectors: cosines 0.8 (1-2), 0.6 (2-3), 0 (1-3)
    f = dict(zip(CONTEXT_FEATURES, context_features(similarity, other, cells).T, strict=True))
    np.testing.assert_allclose(f["margin"], [0.3, -0.5, 0.1])
    np.testing.assert_allclose(f["margin_below_best"], [0.0, -0.8, -0.2])
    np.testing.assert_allclose(f["similarity_below_best"], [0.0, -0.4, -0.1])
    np.testing.assert_allclose(f["gap_below"], [0.2, 0.0, 0.6])  # the lowest cell: no cell below it
    np.testing.assert_allclose(f["gap_above"], [0.0, 0.6, 0.2])  # the best cell: none above it
    assert f["is_best"].tolist() == [1, 0, 0] and f["in_top4"].tolist() == [1, 1, 1]
    assert f["nine_cells"].tolist() == [0, 0, 0]
    np.testing.assert_allclose(f["other_words_gap"], [0.1, 0.3, 0.2])
    assert abs(f["margin_z"].mean()) < 1e-9
    np.testing.assert_allclose(f["peer"], [0.8, 0.8, 0.6])  # the cosine to the most alike other cell
    np.testing.assert_allclose(f["peer_above_0.6"], [0.2, 0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(f["peer_above_0.8"], [0.0, 0.0, 0.0], atol=1e-12)


def unit_rows(rng: np.random.Generator, rows: int, dim: int = 16) -> np.ndarray:
    vectors = rng.normal(size=(rows, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def grids_at(level: float, seed: int, count: int = 300) -> tuple[list[tuple[np.ndarray, ...]], list]:
    """Grids (similarity, other, cell vectors) whose matching cells' margins sit near ``level`` + 0.3 and the others'
    near ``level`` - 0.1 or below: a new art style moves ``level``, not the gap. The cell vectors are random."""
    rng = np.random.default_rng(seed)
    inputs, truths = [], []
    for g in range(count):
        truth = random_grid_truth(rng, g)
        size = len(truth)
        margin = np.where(truth, rng.uniform(0.25, 0.35, size), rng.uniform(-0.4, -0.1, size)) + level
        other = rng.uniform(0.0, 0.3, (size, 20))
        inputs.append((margin + other.max(axis=1), other, unit_rows(rng, size)))
        truths.append(truth)
    return inputs, truths


def test_context_model_holds_where_a_fitted_threshold_does_not():
    train, train_truth = grids_at(0.0, seed=0)
    shifted, shifted_truth = grids_at(-0.3, seed=1)  # the same gaps, every margin 0.3 lower
    margins = [rule_scores("margin", s, o, 50.0) for s, o, _ in train]
    threshold, relative, solved = fit_rule(margins, train_truth)
    assert solved == len(train)  # in distribution both rules are perfect...
    entry, context_solved = context_rule([context_features(*grid) for grid in train], train_truth)
    assert context_solved == len(train)
    shifted_margins = [rule_scores("margin", s, o, 50.0) for s, o, _ in shifted]
    margin_rule = RuleParams(threshold, 1.0, relative=relative)
    assert count_solved(shifted_margins, shifted_truth, margin_rule) < 0.5 * len(shifted)  # ...after the shift not
    model = ContextModel.from_dict(entry["model"])
    log_odds = [rule_scores("context", s, o, 50.0, model, cells) for s, o, cells in shifted]
    assert count_solved(log_odds, shifted_truth, RuleParams.from_dict(entry)) > 0.9 * len(shifted)


def test_fit_context_probabilities_follow_the_data():
    inputs, truths = grids_at(0.0, seed=2)
    model = fit_context([context_features(*grid) for grid in inputs], truths)
    p = 1 / (1 + np.exp(-np.concatenate([model.log_odds(context_features(*grid)) for grid in inputs])))
    truth = np.concatenate(truths)
    assert p[truth].min() > 0.5 > p[~truth].max()
    assert abs(p.mean() - truth.mean()) < 0.01  # a logistic fit with a free bias matches the base rate


def test_context_model_manifest_round_trip_and_refusals():
    count = len(CONTEXT_FEATURES)
    model = ContextModel(np.arange(float(count)), np.ones(count), np.linspace(-1, 1, count), 0.5)
    again = ContextModel.from_dict(json.loads(json.dumps(model.to_dict())))
    x = np.random.default_rng(0).normal(size=(9, count))
    np.testing.assert_allclose(again.log_odds(x), model.log_odds(x))
    with pytest.raises(ValueError, match="other features"):
        ContextModel.from_dict({**model.to_dict(), "features": ["margin", "colour"]})
    with pytest.raises(ValueError, match="one value per feature"):
        ContextModel.from_dict({**model.to_dict(), "weights": [1.0, 2.0]})
    with pytest.raises(ValueError, match="needs its fitted model"):
        rule_scores("context", np.zeros(6), np.zeros((6, 5)), 50.0)
    with pytest.raises(ValueError, match="cell vectors"):
        rule_scores("context", np.zeros(6), np.zeros((6, 5)), 50.0, model)


def test_context_model_of_fewer_features_reads_its_own_columns():
    """A bundle fitted before the peer features were added (eleven features) still scores as it did."""
    old_names = CONTEXT_FEATURES[:11]
    old = ContextModel(np.zeros(11), np.ones(11), np.linspace(-1, 1, 11), 0.25, old_names)
    loaded = ContextModel.from_dict(json.loads(json.dumps(old.to_dict())))
    assert loaded.features == old_names
    x = np.random.default_rng(1).normal(size=(6, len(CONTEXT_FEATURES)))
    np.testing.assert_allclose(loaded.log_odds(x), x[:, :11] @ np.linspace(-1, 1, 11) + 0.25)


def test_a_cell_like_a_confident_match_is_picked_with_it():
    """Matching cells show one thing, the others one word each: in grids whose second match's margin is no better
    than a non-match's, only its likeness to the first match tells them apart, and the fitted rule uses it."""
    rng = np.random.default_rng(3)
    inputs, truths = [], []
    for _ in range(400):
        cells = unit_rows(rng, 6)
        cells[1] = cells[0] + 0.3 * unit_rows(rng, 1)[0]  # cell 1 looks like cell 0
        cells[1] /= np.linalg.norm(cells[1])
        other = rng.uniform(0.0, 0.3, (6, 20))
        margin = np.r_[0.5, rng.uniform(-0.2, 0.1, 5)]  # cell 0 clearly matches; 1..5 are alike in margin
        truth = np.array([True, True, False, False, False, False])
        order = rng.permutation(6)
        inputs.append(((margin + other.max(axis=1))[order], other[order], cells[order]))
        truths.append(truth[order])
    train, test = slice(0, 300), slice(300, 400)
    entry, _ = context_rule([context_features(*grid) for grid in inputs[train]], truths[train])
    model = ContextModel.from_dict(entry["model"])
    scores = [rule_scores("context", *grid[:2], 50.0, model, grid[2]) for grid in inputs[test]]
    assert count_solved(scores, truths[test], RuleParams.from_dict(entry)) > 0.95 * 100
    margins = [rule_scores("margin", s, o, 50.0) for s, o, _ in inputs]
    _, _, margin_solved = fit_rule(margins[train], truths[train])
    assert margin_solved < 0.6 * 300  # the margin alone cannot find the second match


def test_exported_bundle_solves_with_the_context_rule(tiny_grid_bundle: Path, tmp_path: Path):
    decision = json.loads((tiny_grid_bundle / "manifest.json").read_text())["decision"]
    assert set(decision["rules"]["context"]["model"]) == {"features", "mean", "scale", "weights", "bias"}
    grid = _grid(tmp_path, [0, 1, 0, 2, 3, 4])  # 猫 at 1 and 3
    result = run_cli("grid", "solve", str(grid), "-p", "猫", "--model", str(tiny_grid_bundle), "--rule", "context",
                     "--json")  # fmt: skip
    answer = json.loads(result.stdout_text)
    assert answer["rule"] == "context" and len(answer["probabilities"]) == 6 and answer["positions"]
    # its probabilities are the model's: above one half exactly for the cells it picks
    assert [i + 1 for i, p in enumerate(answer["probabilities"]) if p > 0.5] == answer["positions"] or (
        len(answer["positions"]) == 1 and max(answer["probabilities"]) <= 0.5
    )


def test_unreadable_context_model_is_one_line(tiny_grid_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_grid_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["decision"]["rules"]["context"]["model"]["weights"] = [1.0]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    grid = _grid(tmp_path, [0, 1, 0, 2, 3, 4])
    result = run_cli("grid", "solve", str(grid), "--prompt", "猫", "--model", str(bundle), check=False)
    assert result.returncode == 2 and "context rule is unreadable" in result.stderr_text
    assert "Traceback" not in result.stderr_text


def test_calibrate_without_rule_keeps_the_rule_that_solves_most(
    tiny_grid_bundle: Path, tiny_grid_cells: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import captchalab.export.grid_recalibrate as recalibration

    def hopeless(features, truths):  # noqa: ANN001, ANN202 - a context model that solves no grid
        entry, _ = context_rule(features, truths)
        return entry, 0

    monkeypatch.setattr(recalibration, "context_rule", hopeless)
    grids = tmp_path / "grids"
    run_cli("grid", "generate", str(grids), "--count", "20", "--cells", str(tiny_grid_cells), "--layout", "2x3",
            "--cell-size", "40", "--seed", "8")  # fmt: skip
    report = recalibration.recalibrate(tiny_grid_bundle, grids, tmp_path / "out")
    assert report["rules"]["context"]["after"] == 0.0 and report["rule"] != "context"
    assert report["rules"][report["rule"]]["after"] == max(row["after"] for row in report["rules"].values())
    assert recalibration.recalibrate(tiny_grid_bundle, grids, tmp_path / "ctx", rule="context")["rule"] == "context"
