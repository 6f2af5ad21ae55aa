import pytest

from captchalab.evaluation import edit_distance, ocr_report


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "abc") == 0


def test_report_counts_exact_chars_and_confusions():
    report = ocr_report(["abcd", "abce", "xbc"], ["abcd", "abcd", "abcd"])
    assert report["exact_accuracy"] == 1 / 3
    assert report["char_accuracy"] == 1 - (0 + 1 + 2) / 12
    assert report["top_confusions"][0] == {"true": "d", "predicted": "e", "count": 1}


def test_case_insensitive_report():
    assert ocr_report(["AbC"], ["abc"], case_sensitive=False)["exact_accuracy"] == 1.0
    assert ocr_report(["AbC"], ["abc"], case_sensitive=True)["exact_accuracy"] == 0.0


def test_grid_report_says_what_unsure_is_worth(tmp_path, monkeypatch):
    """Five grids: two right and sure, one right but unsure, one wrong and unsure, one wrong and sure."""
    import json

    from captchalab import grid
    from captchalab.runtime.grid import GridAnswer

    answers = {"a": ([1], False), "b": ([2], False), "c": ([3], True), "d": ([1, 2], True), "e": ([4], False)}
    rows = [{"image": f"{name}.png", "prompt": name, "positions": [i + 1], "layout": "2x3"}
            for i, name in enumerate(answers)]  # fmt: skip
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class FakeSolver:
        rule = "context"

        def solve(self, prompt, image, layout, rule=None):  # noqa: ANN001, ANN201
            positions, unsure = answers[prompt]
            return GridAnswer(prompt, layout, positions, [0.5] * 6, unsure, True, "context")

    monkeypatch.setattr(grid, "load_solver", lambda model: FakeSolver())
    report = grid.evaluate("fake", tmp_path)
    assert report["solve_rate"] == 3 / 5 and report["unsure_rate"] == 2 / 5
    assert report["solve_rate_when_sure"] == 2 / 3  # a, b right; e wrong
    assert report["wrong_flagged_unsure"] == 1 / 2  # d flagged, e not
    assert report["failure_kinds"] == {"too_many": 0, "too_few": 0, "swapped": 2}  # d: [1, 2] for [4]; e: [4] for [5]
    answers.update(d=([4], True), e=([5], False))  # now every answer is right
    assert grid.evaluate("fake", tmp_path)["wrong_flagged_unsure"] is None


def test_grid_failure_kinds():
    from captchalab.grid import failure_kind

    assert failure_kind({1, 2}, {1, 2, 5}) == "too_many"
    assert failure_kind({1, 2}, {2}) == "too_few"
    assert failure_kind({1, 2}, {2, 5}) == "swapped"
    assert failure_kind({1}, {3}) == "swapped"


def test_wilson_interval_of_an_accuracy():
    from captchalab.evaluation import wilson_interval

    low, high = wilson_interval(1980, 2000)  # 99.00 % of 2,000: about +-0.45 pt
    assert low == pytest.approx(0.98460, abs=2e-5) and high == pytest.approx(0.99352, abs=2e-5)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    report = ocr_report(["ab", "cd", "xx"], ["ab", "cd", "ef"])
    low, high = report["exact_accuracy_ci95"]
    assert low < report["exact_accuracy"] < high
